# %%
#| default_exp cli

# %% [markdown]
# # The command line
#
# > `urbansound-nb`: sync, run, bench, predict, compare, site and lab, on top of every other module.

# %% [markdown]
# | command | does |
# |---|---|
# | `urbansound-nb sync` | `nbs/*.py` -> `nbs/*.ipynb` with stable cell ids, then `nbdev-export` (notebook 90) |
# | `urbansound-nb run [NB ...] [-p NAME VALUE ...] [--run-dir DIR]` | the chapters, headless, into a run directory |
# | `urbansound-nb run ... --plan [--workers N ...]` | what the run will train and cost, before it runs (90d) |
# | `urbansound-nb bench [--dataset D] [--max-items N]` | throughput of the features and the pretrained network |
# | `urbansound-nb bench --predict-memory [CHECKPOINT]` | `predict`'s memory and speed, torch and ONNX (10a) |
# | `urbansound-nb predict MODEL FILE... [--timeline F] [--truth F] [--threshold T]` | a class or `unknown` per file |
# | `urbansound-nb export SOURCE OUT.onnx [--check FILE...]` | a checkpoint or run's model as one ONNX file (06e) |
# | `urbansound-nb compare RUN_DIR RUN_DIR... [--json/--csv]` | runs side by side: accuracies, what differs (90a) |
# | `urbansound-nb site [--run-dir DIR] [--compare RUN_DIR...] [--check]` | a run's report site (91), checked (91a) |
# | `urbansound-nb lab` | JupyterLab with the `.py` notebooks opening as notebooks (notebook 90) |
#
# This module sits on top: it imports the others, none imports it, and the heavy ones are imported by the command that
# needs them, so `urbansound-nb sync` starts fast.

# %%
#| export
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from urbansound_nb.calibration import REJECTION_SCORES
from urbansound_nb.params import ParameterError

OFF = "off"   # `predict --no-reject`: no threshold, every file gets a class

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# Arguments are checked as parsed: a count out of range is one line and exit status 2, before any work.

# %%
#| export
def count(lo: int = 1, hi: int | None = None):
    "An argparse type: a whole number from `lo` (to `hi`), or a one-line error naming the value."
    def parse(text: str) -> int:
        try: value = int(text)
        except ValueError: raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi if hi is not None else ''}")
        return value
    return parse

def refuse(message: str, status: int = 2) -> int:
    "Print `message` on standard error and return the exit status `status`."
    print(message, file=sys.stderr)
    return status

def usable_run_dir(path) -> str | None:
    "Why `path` cannot hold a run (a file, not writable, not creatable), or None when it can."
    path = Path(path).expanduser()
    try: path.mkdir(parents=True, exist_ok=True)
    except FileExistsError: return f"{path}: exists and is not a directory"
    except OSError as e: return f"{path}: cannot be created ({e.strerror})"
    if not os.access(path, os.W_OK | os.X_OK): return f"{path}: not writable"
    return None

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="urbansound-nb",
                                 description="Run, test and publish the UrbanSound8K notebook study.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="generate nbs/*.ipynb (stable ids) and export the package")
    s.add_argument("--no-export", action="store_true", help="only generate the notebooks")
    r = sub.add_parser("run", help="run study notebooks headless with papermill")
    r.add_argument("notebooks", nargs="*", help="numbers (00) or names; default: all, in order")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    r.add_argument("--run-dir", default=os.environ.get("URBANSOUND_RUN_DIR", "runs/latest"))
    r.add_argument("--dataset", help="shorthand for -p dataset VALUE")
    r.add_argument("--site", action="store_true", help="build the report site when the run succeeds")
    r.add_argument("--plan", action="store_true", help="instead: every training the run needs, which the store holds, "
                   "and the wall time here, on Dask workers, and for the full dataset (trains nothing)")
    r.add_argument("--workers", type=count(1), nargs="+", default=[4, 16], metavar="N",
                   help="--plan: the numbers of Dask workers to estimate (default 4 16)")
    b = sub.add_parser("bench", help="benchmark the feature pipeline (prints figures; last line JSON)")
    b.add_argument("--dataset", default=None)
    b.add_argument("--max-items", type=count(1), default=512)
    b.add_argument("--workers", type=count(1), default=None)
    b.add_argument("--sample-rate", type=count(4000, 192000), default=22050)
    b.add_argument("--network", default="mn04_as", help="EfficientAT width whose throughput to measure")
    b.add_argument("--compile", action="store_true", help="training steps under torch.compile (a trial, not taken)")
    b.add_argument("--predict-memory", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="instead: peak memory of predict on a 10-minute file (default: a study-shaped checkpoint)")
    p = sub.add_parser("predict", help="top-k classes of audio files with a checkpoint, or a run's chosen model")
    p.add_argument("checkpoint")
    p.add_argument("files", nargs="+")
    p.add_argument("-k", "--top-k", type=count(1), default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--per-window", action="store_true", help="also report every window of long files")
    p.add_argument("--timeline", metavar="FILE.csv|.json", help="per-window probabilities and merged segments")
    p.add_argument("--plot", metavar="FILE.png", help="classes against time, for one recording")
    p.add_argument("--truth", metavar="EVENTS.csv", help="score the timeline against true events (start,end,class): "
                   "segment- and event-based F1 by sed_eval")
    p.add_argument("--threads", type=count(1), default=None, help="threads of the model (default: all cores)")
    declines = p.add_mutually_exclusive_group()
    declines.add_argument("--threshold", type=float, default=None, metavar="T",
                          help="answer 'unknown' under T on the model's score (default: the threshold it carries)")
    declines.add_argument("--no-reject", dest="threshold", action="store_const", const=OFF,
                          help="always answer a class, never 'unknown'")
    e = sub.add_parser("export", help="a checkpoint, or a run's chosen model, as one ONNX file (front end included)")
    e.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    e.add_argument("out", metavar="OUT.onnx")
    e.add_argument("--check", nargs="*", default=None, metavar="FILE",
                   help="compare ONNX Runtime with torch on these audio files (max probability difference, top-1)")
    c = sub.add_parser("compare", help="runs side by side: every model's accuracy per run, the parameters that differ")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the first is the reference")
    as_ = c.add_mutually_exclusive_group()
    as_.add_argument("--json", action="store_true", help="the same as JSON")
    as_.add_argument("--csv", action="store_true", help="the table as CSV (warnings on stderr)")
    w = sub.add_parser("site", help="build the report website of a run directory")
    w.add_argument("--run-dir", default=os.environ.get("URBANSOUND_RUN_DIR", "runs/latest"))
    w.add_argument("--out", default=None)
    w.add_argument("--renderer", choices=["quarto", "nbconvert"], default=None, help="default: quarto when on the PATH")
    w.add_argument("--screenshots", action="store_true", help="a PNG of each page's top into RUN_DIR/screenshots/")
    w.add_argument("--check", action="store_true", help="open every page in headless Chromium; exit 1 on a problem")
    w.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR", help="other runs for the Runs page")
    lab = sub.add_parser("lab", help="JupyterLab with the .py notebooks opening as notebooks")
    lab.add_argument("extra", nargs=argparse.REMAINDER)
    return ap

# %%
test_eq(_parser().parse_args(["run", "00", "-p", "seed", "1", "-p", "train_folds", "[1]"]).param,
        [["seed", "1"], ["train_folds", "[1]"]])
test_eq(count(1)("3"), 3)
for bad in ("0", "abc", "-2"): test_fail(lambda: count(1)(bad), exc=argparse.ArgumentTypeError)
import tempfile
with tempfile.TemporaryDirectory() as d:
    (Path(d)/"file").write_text("x")
    test_eq(usable_run_dir(Path(d)/"new"/"run"), None)
    assert "exists and is not a directory" in usable_run_dir(Path(d)/"file")
    assert "cannot be created" in usable_run_dir(Path(d)/"file"/"run")

# %% [markdown]
# ## predict
#
# Each file's top-k classes, a line per file (or JSON lines); a file that cannot be classified is reported, the others
# still classified, and the exit status is 1. An unusable checkpoint stops the command with status 2, saying why.

# %%
#| export
def _classes_text(predictions) -> str: return ", ".join(f"{p['class']} {p['probability']:.2f}" for p in predictions)

def _predictor(model, threads: int | None):
    "An ONNX predictor (a `.onnx` file: no torch imported) or a checkpoint's, or the one-line reason there is none."
    if str(model).lower().endswith(".onnx"):
        from urbansound_nb.deploy import OnnxModelError, OnnxPredictor
        try: return OnnxPredictor(model, threads), None
        except OnnxModelError as e: return None, str(e)
    from urbansound_nb.models import CheckpointError
    from urbansound_nb.predict import Predictor
    if threads:
        import torch
        torch.set_num_threads(threads)
    try: return Predictor(model), None   # a missing, unreadable or wrong file: a CheckpointError naming it
    except CheckpointError as e: return None, str(e)

def _print_record(rec: dict, as_json: bool):
    if as_json: print(json.dumps(rec), flush=True)
    elif rec["error"]: print(f"{rec['file']}: ERROR {rec['error']}", file=sys.stderr)
    else:
        print(f"{rec['file']}: {rec['answer']} ({_classes_text(rec['predictions'])})")
        for w in rec.get("windows", []):
            print(f"    {w['start_seconds']:7.2f} s: {w['answer']} ({_classes_text(w['predictions'])})")

def _set_threshold(predictor, threshold) -> str | None:
    "The predictor's 'none of these' rule as asked: its own (None), none (`OFF`), or another threshold; else why not."
    if threshold is None: return None
    if threshold == OFF:
        predictor.rejection = None
        return None
    if not math.isfinite(threshold): return f"--threshold must be a finite number, got {threshold}"
    score = (predictor.rejection or {}).get("score", REJECTION_SCORES[0])
    predictor.rejection = dict(score=score, threshold=float(threshold))
    return None

@dataclass
class TimelineOutputs:
    "What `predict` makes of one recording's timeline: a table (`path`), a drawing (`plot`), scores against `truth`."
    path: str | None = None
    plot: str | None = None
    truth: str | None = None

    def __bool__(self): return bool(self.path or self.plot or self.truth)

    def make(self, rec: dict, predictor) -> list[str]:
        "The timeline of a classified file, written, drawn and scored as asked; a line for each thing made."
        import soundfile as sf

        from urbansound_nb.windows import plot_timeline, timeline, write_timeline
        info = sf.info(rec["file"])
        tl = timeline(rec["probabilities"], rec["start_seconds"], predictor.classes, predictor.clip_seconds,
                      info.frames / info.samplerate, rule=predictor.timeline_rule, rejection=predictor.rejection)
        said = [f"wrote {p}" for p in (write_timeline(tl, self.path) if self.path else [])]
        if self.plot:
            plot_timeline(tl, f"Timeline of {Path(rec['file']).name}", self.plot)
            said.append(f"wrote {self.plot}")
        if self.truth:    # sed_eval's measures (notebook 10b); it is not in the [onnx] extra, so imported here
            from urbansound_nb.events import read_events, sed_scores
            rec["timeline_scores"] = scores = sed_scores(tl["segments"], read_events(self.truth, predictor.classes),
                                                         predictor.classes)
            said.append(f"against {self.truth}: segment-based F1 {scores['segment_f1']:.3f} (1 s segments), "
                        f"event-based F1 {scores['event_f1']:.3f} (200 ms onset collar)")
        return said

def predict_cli(model, files, top_k: int = 3, as_json: bool = False, per_window: bool = False,
                outputs: TimelineOutputs | None = None, threads: int | None = None, threshold=None) -> int:
    "`urbansound-nb predict`: each file's answer and top-k classes (or JSON lines); exit status 1 if any file failed."
    from urbansound_nb.windows import classify_files
    outputs = outputs or TimelineOutputs()
    if outputs and len(files) != 1:
        return refuse("error: --timeline, --plot and --truth describe one recording; give one file")
    predictor, why = _predictor(model, threads)
    if predictor is None: return refuse(f"error: {why}")
    why = _set_threshold(predictor, threshold)
    if why: return refuse(f"error: {why}")
    records = classify_files(predictor, files, top_k, per_window, with_probs=bool(outputs))
    for rec in records:
        try: said = outputs.make(rec, predictor) if rec["error"] is None and outputs else []
        except (ValueError, OSError) as e: return refuse(f"error: {e}")      # a truth file that cannot be used
        rec.pop("probabilities", None), rec.pop("start_seconds", None)
        _print_record(rec, as_json)
        for line in said: print(line, file=sys.stderr)
    return 1 if any(rec["error"] for rec in records) else 0

def export_cli(source, out, check=None) -> int:
    "`urbansound-nb export`: a run's chosen model or a checkpoint as one ONNX file; with `check`, its parity."
    from urbansound_nb.export import export_onnx, parity
    from urbansound_nb.models import CheckpointError
    try: path = export_onnx(source, out)
    except CheckpointError as e: return refuse(f"error: {e}")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB) and its model card {path.with_suffix('.md')}")
    if check:
        from urbansound_nb.predict import resolve_checkpoint
        print(json.dumps(parity(path, resolve_checkpoint(source), check)))
    return 0

# %% [markdown]
# Given something that is not a checkpoint (here a training state, `.last.pt`), the command exits 2 naming the file:

# %%
import contextlib
import io
import tempfile
import torch
from pathlib import Path
with tempfile.TemporaryDirectory() as d:
    torch.save(dict(state_dict={}, epoch=3), Path(d)/"resnet.last.pt")
    err = io.StringIO()
    with contextlib.redirect_stderr(err): test_eq(predict_cli(Path(d)/"resnet.last.pt", [Path(d)/"clip.wav"]), 2)
    print(err.getvalue())
    assert "not a model checkpoint of this study" in err.getvalue()

# %% [markdown]
# ## site
#
# `--screenshots` writes a PNG of each page's top into `RUN_DIR/screenshots/`; `--check` opens every page in headless
# Chromium and fails when one has a problem (notebook 91a).

# %%
#| export
def compare_cli(run_dirs, fmt: str = "text") -> int:
    "`urbansound-nb compare`: the runs side by side as text, JSON or CSV; 2 when no folder given is a run."
    from urbansound_nb.compare import NotARun, compare_runs, comparison_json, comparison_text, wide_table
    try: c = compare_runs(run_dirs)
    except NotARun as e: return refuse(f"error: {e}")
    if fmt == "json": print(json.dumps(comparison_json(c), indent=2, allow_nan=False))
    elif fmt == "csv":
        for line in [*c.skipped, *c.warnings]: print(f"warning: {line}", file=sys.stderr)
        print(wide_table(c).to_csv(), end="")
    else: print(comparison_text(c))
    return 0

def site_cli(run_dir, out=None, renderer=None, screenshots=False, check=False, compare=()) -> int:
    "Build the site of `run_dir`; photograph and check its pages when asked. 1: a check found a problem; 2: no site."
    from urbansound_nb.site import build_site
    try: site = build_site(run_dir, out, renderer, compare=compare)
    except (FileNotFoundError, RuntimeError) as e: return refuse(f"site: {e}")
    if not (screenshots or check): return 0
    from urbansound_nb.browser import check_site, missing_browser, screenshot_site
    if missing_browser(): return refuse(f"cannot open the pages: {missing_browser()}", 1)
    if screenshots:
        shots = screenshot_site(site, Path(run_dir)/"screenshots")
        print(f"screenshots: {len(shots)} pages in {Path(run_dir)/'screenshots'}")
    if not check: return 0
    problems = {page: found for page, found in check_site(site).items() if found}
    for page, found in problems.items(): print(f"{page}:\n  " + "\n  ".join(found), file=sys.stderr)
    print("checked in Chromium: " + (f"{len(problems)} page(s) with problems" if problems else "every page is fine"))
    return 1 if problems else 0

# %% [markdown]
# A run directory with nothing executed in it gets a one-line error and exit status 2, not a traceback:

# %%
with tempfile.TemporaryDirectory() as d, contextlib.redirect_stderr(io.StringIO()) as err:
    test_eq(site_cli(d), 2)
assert "no executed notebooks" in err.getvalue()

# %%
#| export
def run_cli(args) -> int:
    "`urbansound-nb run`: the chapters into a run directory; 2 for a refusal before any chapter, 1 for a failure."
    from urbansound_nb.data import DatasetUnavailable  # here: `datasets` is slow to import for the other commands
    from urbansound_nb.runner import RunFailed, parse_value, run_notebooks
    params = {k: parse_value(v) for k, v in args.param}
    if args.dataset: params["dataset"] = args.dataset
    if why := usable_run_dir(args.run_dir): return refuse(f"error: run directory {why}")
    if args.plan: return plan_cli(args.notebooks, params, args.run_dir, args.workers)
    try: run_dir = run_notebooks(args.notebooks, params, args.run_dir)
    except RunFailed as e: return refuse(f"FAILED: {e}", 1)
    except (ParameterError, DatasetUnavailable) as e:   # before any chapter ran
        return refuse(f"error: {e}")
    print(f"run complete: {run_dir}")
    if args.site:
        from urbansound_nb.site import build_site
        build_site(run_dir)
    return 0

def plan_cli(notebooks, params: dict, run_dir, workers) -> int:
    "`urbansound-nb run --plan`: the run's trainings and their cost, and the full dataset's; nothing is trained."
    from urbansound_nb.data import DatasetUnavailable
    from urbansound_nb.plan import plan_run, plan_text
    from urbansound_nb.runner import prepare_run
    try:
        chapters, params, declared = prepare_run(notebooks, params, run_dir)
        plan = plan_run(chapters, params, declared)
        full = plan_run(chapters, params, declared, full=True)
    except (ParameterError, DatasetUnavailable) as e: return refuse(f"error: {e}")
    print(plan_text(plan, full, workers=tuple(workers)))
    return 0

def bench_cli(args) -> int:
    "`urbansound-nb bench`: the data path, the pretrained network and training, or (`--predict-memory`) predict's."
    from urbansound_nb import bench
    if args.predict_memory is not None:
        bench.benchmark_predict(args.predict_memory or None)
        return 0
    from urbansound_nb.models import SmallAudioCNN  # the data path is compared with this model's training step
    bench.benchmark(args.dataset, max_items=args.max_items, workers=args.workers, sample_rate=args.sample_rate,
                    model=SmallAudioCNN())
    print("\nThe pretrained network (chapter 05): its front end and its embeddings")
    bench.benchmark_pretrained(args.dataset, max_items=args.max_items, network=args.network, workers=args.workers)
    bench.print_training_throughput(args.network, compiled=args.compile)
    return 0

def main(argv=None):
    "Entry point of the `urbansound-nb` console script."
    args = _parser().parse_args(argv)
    if args.command == "sync":
        from urbansound_nb.runner import sync
        sync(export=not args.no_export)
        return 0
    if args.command == "run": return run_cli(args)
    if args.command == "bench": return bench_cli(args)
    if args.command == "predict":
        return predict_cli(args.checkpoint, args.files, top_k=args.top_k, as_json=args.json, per_window=args.per_window,
                           outputs=TimelineOutputs(args.timeline, args.plot, args.truth), threads=args.threads,
                           threshold=args.threshold)
    if args.command == "export": return export_cli(args.source, args.out, args.check)
    if args.command == "site":
        return site_cli(args.run_dir, args.out, args.renderer, screenshots=args.screenshots, check=args.check,
                        compare=args.compare)
    if args.command == "compare":
        return compare_cli(args.run_dirs, "json" if args.json else "csv" if args.csv else "text")
    if args.command == "lab":
        from urbansound_nb.runner import configure_lab, lab_command
        print("JupyterLab settings:", configure_lab())
        os.execv(sys.executable, lab_command(extra=[a for a in args.extra if a != "--"]))

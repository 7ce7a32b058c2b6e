# %%
#| default_exp compare

# %% [markdown]
# # Runs side by side
#
# > Every model's validation and test accuracy in several runs, the parameters that differ, and what moved.

# %% [markdown]
# A parameterised run changes one thing (a seed, the epochs, an augmentation, the data) to see what moves.
# `compare_runs` reads run directories without writing into them and gives each model's validation (rotated mean) and
# test accuracy and macro F1 per run, with the test difference to the first run; the parameters that differ (the
# shared ones from `results/00_setup.json`, each chapter's own from its executed notebook); and warnings where a
# comparison is not honest (another dataset, test fold or class list, a chapter one run lacks). A folder that is not a
# run is named and left out. `urbansound-nb compare` prints it (`--json`, `--csv`); `site --compare` adds a Runs page
# (notebook 91).

# %%
#| export
from __future__ import annotations

import ast
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pandas as pd

from urbansound_nb.core import SETUP, plain
from urbansound_nb.runner import notebook_parameters, read_timings

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## One run, read

# %%
#| export
class NotARun(ValueError):
    "A folder that is not a run directory of this study (the message says why)."

UNCOMPARED = ("run_dir", "cache_dir")  # where a run wrote and read its files: they differ and change nothing

@dataclass
class Run:
    "What one run directory recorded: its results by chapter, its effective parameters and chapter timings."
    path: Path
    label: str
    results: dict = field(default_factory=dict)      # chapter -> its results JSON
    parameters: dict = field(default_factory=dict)   # name -> value, shared and chapters' own
    passed: dict = field(default_factory=dict)       # what the run was given (papermill's injected values)
    timings: dict = field(default_factory=dict)      # chapter -> wall time and status (`read_timings`)
    unreadable: list = field(default_factory=list)   # results files that could not be read, with why

    @property
    def dataset(self): return self.results.get(SETUP, {}).get("dataset") or self._first("dataset")
    @property
    def test_fold(self): return self.setup_entry("split").get("test_fold")
    @property
    def classes(self) -> list:
        "The class names the run's models were scored on (chapter 00's list, else every per-class table's)."
        listed = self.setup_entry("dataset").get("classes")
        if listed: return list(listed)
        return sorted({c for doc in self.results.values() for e in _entries(doc).values()
                       for c in (e.get("per_class_accuracy") or {})})
    def setup_entry(self, entry: str) -> dict:
        "An entry of chapter 00's results ({} where there is none)."
        return (self.results.get(SETUP, {}).get("entries") or {}).get(entry) or {}
    def _first(self, key):
        return next((doc[key] for doc in self.results.values() if doc.get(key) is not None), None)

def _entries(doc: dict) -> dict:
    entries = doc.get("entries")
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}

# %% [markdown]
# A chapter's own parameters: papermill keeps the `parameters` cell's defaults and records what it injected.

# %%
#| export
def _literal(text: str):
    "A parameters-cell default as a value (`64` -> 64); the source text itself where it is not a literal."
    try: return ast.literal_eval(text)
    except (ValueError, SyntaxError): return text

def executed_parameters(executed: Path) -> tuple[dict, dict]:
    "An executed chapter's parameters: its `parameters` cell's defaults, and what papermill passed."
    defaults = {name: _literal(p["default"]) for name, p in notebook_parameters(executed).items()}
    return defaults, nbformat.read(executed, as_version=4).metadata.get("papermill", {}).get("parameters") or {}

def read_run(path, label: str | None = None) -> Run:
    "Read a run directory (nothing is written); `NotARun` when it has neither results nor executed chapters."
    path = Path(path)
    if not path.is_dir(): raise NotARun(f"{path}: not a folder")
    results_dir, executed = path/"results", sorted(path.glob("[0-9][0-9]_*.ipynb"))
    if not results_dir.is_dir() and not executed:
        raise NotARun(f"{path}: not a run directory (no results/ folder and no executed chapters)")
    run = Run(path, label or path.name, timings=read_timings(path))
    for f in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        try: doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            run.unreadable.append(f"{f.name} ({e})")
            continue
        if isinstance(doc, dict) and "entries" in doc: run.results[f.stem] = doc
    for nb in executed:
        try: defaults, passed = executed_parameters(nb)
        except Exception as e:
            run.unreadable.append(f"{nb.name} ({type(e).__name__}: {e})")
            continue
        run.parameters.update({**defaults, **passed})
        run.passed.update(passed)
    run.parameters.update(run.results.get(SETUP, {}).get("params") or {})
    for name in UNCOMPARED:
        run.parameters.pop(name, None)
        run.passed.pop(name, None)
    return run

# %% [markdown]
# ## Models, parameters, warnings

# %% [markdown]
# Every entry with a test accuracy is a model (or a condition, chapter 08); chapter 09's `model/foldN` entries become
# one row per model, the mean over its folds.

# %%
#| export
FIGURES = ("val_accuracy", "test_accuracy", "macro_f1")

def model_rows(run: Run) -> pd.DataFrame:
    "One row per chapter and model: validation (rotated mean where there is one), test accuracy, macro F1."
    rows = []
    for chapter, doc in run.results.items():
        for name, e in _entries(doc).items():
            if e.get("test_accuracy") is None: continue
            rows.append(dict(chapter=chapter, model=name.split("/fold")[0], cv="/fold" in name,
                             val_accuracy=e.get("val_mean", e.get("val_accuracy")),
                             test_accuracy=e["test_accuracy"], macro_f1=e.get("macro_f1")))
    df = pd.DataFrame(rows, columns=["chapter", "model", "cv", *FIGURES]).astype({"cv": bool})
    cv = df[df.cv].groupby(["chapter", "model"], sort=False)
    means = cv[list(FIGURES)].mean().reset_index()
    means["model"] = [f"{m} (mean of {n} folds)" for m, n in zip(means.model, cv.size().values)]
    out = pd.concat([df[~df.cv], means], ignore_index=True) if len(means) else df[~df.cv]
    out = out.drop(columns="cv").assign(run=run.label)
    return out.astype({f: float for f in FIGURES})

def differing_parameters(runs: list[Run]) -> pd.DataFrame:
    "The parameters whose values are not the same in every run: one row each, one column per run."
    names = sorted(set().union(*(r.parameters for r in runs)))
    table = pd.DataFrame({r.label: [r.parameters.get(n, "(absent)") for n in names] for r in runs}, index=names)
    same = table.apply(lambda row: len({json.dumps(v, sort_keys=True, default=str) for v in row}) == 1, axis=1)
    return table[~same] if len(table) else table

def comparison_warnings(runs: list[Run]) -> list[str]:
    "Why some differences between these runs are not a fair comparison."
    out, first = [], runs[0]
    for r in runs[1:]:
        if r.dataset != first.dataset or r.test_fold != first.test_fold:
            out.append(f"{r.label} and {first.label} differ in dataset or test fold ({r.dataset!r}, fold {r.test_fold} "
                       f"vs {first.dataset!r}, fold {first.test_fold}): their test accuracies are not comparable")
        if r.classes and first.classes and r.classes != first.classes:
            only = sorted(set(r.classes) ^ set(first.classes))
            out.append(f"{r.label} and {first.label} have different class lists (differing: {only or 'the order'})")
    chapters = set().union(*(r.results for r in runs))
    for r in runs:
        if missing := sorted(chapters - set(r.results)):
            out.append(f"{r.label} has no results of {', '.join(missing)} (interrupted, or not run)")
        out += [f"{r.label}: unreadable {u}" for u in r.unreadable]
    return out

# %% [markdown]
# ## The comparison

# %%
#| export
@dataclass
class Comparison:
    "Runs compared: the long table (one row per run, chapter and model), parameters that differ, warnings."
    runs: list
    rows: pd.DataFrame
    parameters: pd.DataFrame
    warnings: list
    skipped: list

def _labels(paths) -> list[str]:
    "Each run's folder name, with its parent's where two names are the same."
    names = [Path(p).name for p in paths]
    return [f"{Path(p).parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]

def compare_runs(run_dirs) -> Comparison:
    "Read and compare `run_dirs` (the first is the reference); folders that are not runs are named in `skipped`."
    runs, skipped = [], []
    for path, label in zip(run_dirs, _labels(run_dirs)):
        try: runs.append(read_run(path, label))
        except NotARun as e: skipped.append(str(e))
    if not runs: raise NotARun("nothing to compare: " + "; ".join(skipped))
    rows = pd.concat([model_rows(r) for r in runs], ignore_index=True)
    first = rows[rows.run == runs[0].label].set_index(["chapter", "model"])["test_accuracy"]
    rows["test_vs_first"] = [t - first.get((c, m), float("nan")) for c, m, t in
                             zip(rows.chapter, rows.model, rows.test_accuracy)]
    return Comparison(runs, rows, differing_parameters(runs), comparison_warnings(runs), skipped)

def wide_table(c: Comparison) -> pd.DataFrame:
    "Rows chapter/model; for each run its validation, test and macro F1 (%), then the test difference with the first."
    wide = c.rows.set_index(["chapter", "model", "run"])[[*FIGURES, "test_vs_first"]].unstack("run")
    order = list(dict.fromkeys(zip(c.rows.chapter, c.rows.model)))      # as the chapters list them
    wide = wide.reindex(pd.MultiIndex.from_tuples(order, names=["chapter", "model"]))
    columns = [(f, r.label) for r in c.runs for f in FIGURES]
    columns += [("test_vs_first", r.label) for r in c.runs[1:]]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(columns)) * 100
    short = dict(val_accuracy="val", test_accuracy="test", macro_f1="F1", test_vs_first="test vs first")
    wide.columns = [f"{run}: {short[f]}" for f, run in wide.columns]
    return wide.round(1)

# %% [markdown]
# Two small runs: the second changes the seed and the epochs, lost chapter 05 and holds a file that is not JSON.

# %%
#| export
def comparison_text(c: Comparison) -> str:
    "The comparison as plain text: runs, skipped folders, differing parameters, warnings, the table."
    lines = ["runs:"] + [f"  {r.label}: {r.path} (dataset {r.dataset!r}, test fold {r.test_fold})" for r in c.runs]
    lines += [f"skipped: {s}" for s in c.skipped]
    if len(c.runs) > 1:
        lines += (["parameters that differ:", c.parameters.to_string()] if len(c.parameters)
                  else ["parameters: the same in every run"])
    lines += [f"warning: {w}" for w in c.warnings]
    lines += ["accuracy (%) per model and run; 'test vs first': points against the first run:",
              wide_table(c).to_string(na_rep="-")]
    return "\n".join(lines + moved_text(c))

def moved_text(c: Comparison) -> list[str]:
    "Below the table: what moved against the first run, model by model (test accuracy, points)."
    rows = c.rows[(c.rows.run != c.runs[0].label) & c.rows.test_vs_first.notna()]
    if not len(rows): return []
    moved = rows[rows.test_vs_first.abs() >= 0.0005]
    head = f"against {c.runs[0].label}: " + (f"{len(moved)} of {len(rows)} test accuracies moved" if len(moved)
                                              else f"all {len(rows)} test accuracies the same")
    return [head] + [f"  {r.run}: {r.model} ({r.chapter[:2]}) {100 * r.test_vs_first:+.1f} points"
                     for r in moved.itertuples()]

def comparison_json(c: Comparison) -> dict:
    "The comparison for other tools: runs, skipped folders, differing parameters, warnings and the table (strict JSON)."
    table = wide_table(c).reset_index()
    return plain(dict(runs=[dict(label=r.label, path=str(r.path), dataset=r.dataset, test_fold=r.test_fold)
                                  for r in c.runs],
                            skipped=c.skipped, parameters=c.parameters.to_dict("index"), warnings=c.warnings,
                            table=table.astype(object).where(table.notna(), None).to_dict("records")))

def run_overview(r: Run) -> list[tuple[str, str]]:
    "A run in a few rows: dataset, split, what it was given, chapters with results, wall time."
    split = r.setup_entry("split")
    folds = (f"train {split.get('train_folds')} · validation {split.get('val_fold')} · test {split.get('test_fold')}"
             if split else "unknown (no results of chapter 00)")
    given = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(r.passed.items()) if k != "dataset")
    failed = [ch for ch, t in r.timings.items() if t["status"] != "ok"]
    seconds = sum(t["seconds"] for t in r.timings.values())
    return [("dataset", str(r.dataset)), ("split", folds), ("given", given or "the defaults"),
            ("chapters with results", f"{len(r.results)}" + (f"; failed: {', '.join(failed)}" if failed else "")),
            ("wall time", f"{seconds / 60:.1f} min")]

# %%
import tempfile
from urbansound_nb.core import write_results

def _demo_run(d: Path, seed: int, test: float, with_05: bool = True) -> Path:
    entries = {"split": dict(train_folds=[1], val_fold=2, test_fold=3), "dataset": dict(classes=["a", "b"])}
    write_results(d, "00_setup", entries, dataset="mini", params=dict(seed=seed, epochs=2))
    write_results(d, "03_baselines", {"svm": dict(val_accuracy=0.4, test_accuracy=test, macro_f1=0.3)})
    if with_05: write_results(d, "05_transfer", {"probe": dict(val_accuracy=0.7, val_mean=0.72, test_accuracy=0.6)})
    write_results(d, "09_cross_validation", {f"probe/fold{f}": dict(val_accuracy=0.7, test_accuracy=t, macro_f1=0.5)
                                             for f, t in ((1, 0.6), (2, 0.8))})
    return d

with tempfile.TemporaryDirectory() as d:
    a, b = _demo_run(Path(d)/"a", 0, 0.40), _demo_run(Path(d)/"b", 1, 0.45, with_05=False)
    (b/"results"/"04_cnn.json").write_text("{not json")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in Path(d).rglob("*"))
    c = compare_runs([a, b, Path(d)/"absent", Path(d)])
    print(comparison_text(c))
    test_eq((list(c.parameters.index), len(c.skipped)), (["seed"], 2))
    assert any("b has no results of 05_transfer" in w for w in c.warnings)
    assert any("unreadable 04_cnn.json" in w for w in c.warnings)
    t = wide_table(c)
    test_eq(t.loc[("03_baselines", "svm"), "b: test vs first"], 5.0)
    test_eq(t.loc[("09_cross_validation", "probe (mean of 2 folds)"), "a: test"], 70.0)
    test_eq(sorted((p.name, p.stat().st_mtime_ns) for p in Path(d).rglob("*")), before)   # nothing written
    test_fail(lambda: compare_runs([Path(d)/"absent"]), contains="nothing to compare")
    test_eq(json.loads(json.dumps(comparison_json(c), allow_nan=False))["parameters"], {"seed": {"a": 0, "b": 1}})

# %% [markdown]
# ## A chart for the site
#
# Test accuracy, one bar per run, grouped by model.

# %%
#| export
def runs_chart(c: Comparison) -> bytes:
    "A PNG of every model's test accuracy in each run (bars grouped by model)."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    wide = c.rows.pivot_table(index=["chapter", "model"], columns="run", values="test_accuracy", sort=False)
    wide = wide.reindex(columns=[r.label for r in c.runs])
    n_runs, height = len(wide.columns), 0.8 / max(len(wide.columns), 1)
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(wide) * n_runs + 1.6))
    for k, run in enumerate(wide.columns):
        ax.barh([i - 0.4 + height * (k + 0.5) for i in range(len(wide))], 100 * wide[run], height=height, label=run)
    ax.set_yticks(range(len(wide)), [f"{m} ({ch[:2]})" for ch, m in wide.index])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("model (chapter)")
    ax.set_title("Test accuracy of every model, run by run")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=min(n_runs, 4), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

# %%
with tempfile.TemporaryDirectory() as d:
    png = runs_chart(compare_runs([_demo_run(Path(d)/"a", 0, 0.4), _demo_run(Path(d)/"b", 1, 0.45)]))
    test_eq(png[:4], b"\x89PNG")

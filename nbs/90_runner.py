# %%
#| default_exp runner

# %% [markdown]
# # Runner: sync and headless runs
#
# > py:percent sources to notebooks with stable ids and exported modules; parameterised papermill runs.

# %% [markdown]
# The notebooks are Jupytext **py:percent** files: they diff and merge like code, and JupyterLab opens them as
# notebooks. nbdev, papermill and the site renderer need `.ipynb` files; this notebook holds that glue, which
# `urbansound-nb sync`, `run` and `lab` expose (notebook 92).

# %%
#| export
from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from urbansound_nb.core import atomic_write_bytes, save_json
from urbansound_nb.params import DATASET_ENV, OTHER_SOUNDS_ENV, SHARED

# %% [markdown]
# ## From text to notebooks with stable ids
#
# nbdev copies cell ids into the exported modules, and `jupytext --to ipynb` gives random ones, so every export would
# rewrite every module. Here a cell's id hashes its type and source: an unchanged notebook regenerates byte-identical.

# %%
#| export
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}

def stable_cell_ids(nb) -> list[str]:
    "Ids derived from each cell's type and source; repeated cells get a numbered suffix."
    seen, ids = {}, []
    for cell in nb.cells:
        h = hashlib.sha1(f"{cell.cell_type}\0{cell.source}".encode()).hexdigest()[:10]
        seen[h] = seen.get(h, 0) + 1
        ids.append(h if seen[h] == 1 else f"{h}-{seen[h]}")
    return ids

def py_to_notebook(py_path):
    "Read a py:percent file as a notebook with stable cell ids and a python3 kernelspec."
    import jupytext
    nb = jupytext.read(py_path, fmt="py:percent")
    for cell, cid in zip(nb.cells, stable_cell_ids(nb)):
        cell.id = cid
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type == "code": cell.outputs, cell.execution_count = [], None
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb

def notebook_text(nb) -> str: return nbformat.writes(nb) + "\n"

# %%
import tempfile
from fastcore.test import test_eq
_src = ('# %%\n#| default_exp demo\n\n# %% [markdown]\n# # Demo\n\n'
        '# %% tags=["parameters"]\nx = 1\n\n# %%\nx\n\n# %%\nx\n')
with tempfile.TemporaryDirectory() as d:
    p = Path(d)/"demo.py"
    p.write_text(_src)
    nb1, nb2 = py_to_notebook(p), py_to_notebook(p)
    test_eq(notebook_text(nb1), notebook_text(nb2))                      # byte-identical
    test_eq(nb1.metadata.kernelspec.name, "python3")
    test_eq(nb1.cells[2].metadata, {"tags": ["parameters"]})             # papermill finds its cell
    test_eq(nb1.cells[4].id, nb1.cells[3].id + "-2")                     # identical cells, distinct ids
    print([c.id for c in nb1.cells])

# %% [markdown]
# `sync` writes a notebook only when its text changed, then runs `nbdev-export`, and checks that every source produced
# a notebook (nbdev-export says nothing when it finds none).

# %%
#| export
def project_root(start=None) -> Path:
    "The nearest folder above `start` (default: cwd, then this package) with a pyproject.toml and nbs/."
    for base in ([Path(start)] if start else [Path.cwd(), Path(__file__).resolve().parent]):
        for d in [base.resolve(), *base.resolve().parents]:
            if (d/"pyproject.toml").is_file() and (d/"nbs").is_dir(): return d
    raise FileNotFoundError("no project root (a folder with pyproject.toml and nbs/) above the current directory")

def notebook_sources(root=None) -> list[Path]:
    "Every numbered py:percent notebook in nbs/ (`00_setup`, `00a_params`, ...), in order."
    return sorted(p for p in (project_root(root)/"nbs").glob("[0-9][0-9]*_*.py"))

def sync(root=None, export: bool = True, quiet: bool = False) -> list[Path]:
    "Generate nbs/*.ipynb from nbs/*.py (only where changed) and, with `export`, run nbdev-export."
    root = project_root(root)
    written = []
    sources = notebook_sources(root)
    if not sources: raise FileNotFoundError(f"{root/'nbs'}: no numbered py:percent notebooks to sync")
    for py in sources:
        ipynb, text = py.with_suffix(".ipynb"), notebook_text(py_to_notebook(py))
        if not ipynb.exists() or ipynb.read_text() != text:
            atomic_write_bytes(ipynb, text.encode())
            written.append(ipynb)
    for stale in set((root/"nbs").glob("[0-9][0-9]*_*.ipynb")) - {py.with_suffix(".ipynb") for py in sources}:
        stale.unlink()  # generated from a source that was renamed or removed: nbdev would test and export it
    if not quiet: print(f"sync: {len(sources)} notebooks, {len(written)} regenerated")
    if export: export_package(root)
    return written

def export_package(root=None):
    "Run nbdev-export in the project root (with the same interpreter); fail loudly."
    root = project_root(root)
    exe = Path(sys.executable).parent/"nbdev-export"
    subprocess.run([str(exe) if exe.exists() else "nbdev-export"], cwd=root, check=True)

# %% [markdown]
# ## Parameters from the command line
#
# `-p NAME VALUE` values are YAML: `-p train_folds "[1,2]"`, `-p max_items null` mean what they look like.

# %%
#| export
def parse_value(text: str):
    "A command-line parameter value: YAML (lists, null, numbers), else a Python literal, else the string."
    try: return yaml.safe_load(text)
    except yaml.YAMLError: pass
    try: return ast.literal_eval(text)
    except (ValueError, SyntaxError): return text

# %%
test_eq(parse_value("[1,2]"), [1, 2])
test_eq(parse_value("null"), None)
test_eq(parse_value("3"), 3)
test_eq(parse_value("../shared/data/urbansound8k-mini"), "../shared/data/urbansound8k-mini")
test_eq(parse_value("danavery/urbansound8K"), "danavery/urbansound8K")

# %% [markdown]
# ## Running notebooks headless
#
# Each notebook runs with papermill in `nbs/`, its parameters cell overridden. The shared parameters (`params.SHARED`)
# go to every chapter; any other goes to the chapters that declare it, and one that no selected chapter declares is an
# error. The run stops at the first failing notebook, naming it and the cell, and records each notebook's wall time in
# `timings.csv`. A chapter's output streams to the terminal, with the time it took last time; Ctrl-C stops the run,
# and the same command resumes from the caches.

# %%
#| export
class RunFailed(RuntimeError):
    "A notebook failed during `run_notebooks`."

def is_chapter(py) -> bool:
    "A chapter of the study (`NN_name`, NN below 90); lettered notebooks (`04a_models`) are its library parts."
    name = Path(py).name
    return name[2] == "_" and int(name[:2]) < 90

def select_notebooks(names=None, root=None) -> list[Path]:
    "Chapters by number ('03'), stem or file name; all of them, in order, when `names` is empty."
    study = [p for p in notebook_sources(root) if is_chapter(p)]
    if not names: return study
    out = []
    for n in names:
        n = Path(str(n)).name.removesuffix(".py").removesuffix(".ipynb")
        hit = [p for p in study if p.stem == n or p.name[:2] == n.zfill(2) or p.stem[3:] == n]
        if not hit: raise SystemExit(f"no notebook {n!r}; choose from {[p.stem for p in study]}")
        out += [h for h in hit if h not in out]
    return out

def notebook_parameters(ipynb) -> dict:
    "The parameters a notebook declares in its `parameters` cell, as papermill sees them."
    import papermill as pm
    return pm.inspect_notebook(str(ipynb))

# %% [markdown]
# Every parameter of every selected chapter is checked before the first chapter starts, so a value chapter 09 would
# refuse does not cost the hours before it. `check_parameters` runs, in this process, each chapter's imports, its
# parameters cell, the run's values and its `checks` cell; a refusal is a `ParameterError` naming chapter and
# parameter.

# %%
#| export
def check_parameters(notebooks, params: dict) -> None:
    "Run each chapter's parameters and `checks` cells with `params` (before any chapter runs); ParameterError if not."
    from urbansound_nb.params import ParameterError
    for nb in notebooks:
        cells = nbformat.read(str(nb.with_suffix(".ipynb")), as_version=4).cells
        tagged = {t: c for c in cells for t in c.metadata.get("tags", [])}
        if "checks" not in tagged or "parameters" not in tagged: continue
        before = cells[:cells.index(tagged["checks"])]
        imports = [ast.unparse(n) for c in before if c.cell_type == "code" for n in _top_level(c.source)
                   if isinstance(n, (ast.Import, ast.ImportFrom))]
        module = next((c.source.split()[-1] for c in cells if c.source.startswith("#| default_exp")), None)
        namespace = dict(vars(importlib.import_module(f"urbansound_nb.{module}"))) if module else {}
        try:
            exec("\n".join(imports), namespace)
            exec(tagged["parameters"].source, namespace)
            namespace.update({k: v for k, v in params.items() if k in namespace or k in SHARED})
            exec(tagged["checks"].source, namespace)
        except ParameterError as e: raise ParameterError(f"{nb.stem}: {e}") from None
        except Exception as e:
            raise ParameterError(f"{nb.stem}: its parameters are refused ({type(e).__name__}: {e})") from None

def _top_level(source: str) -> list:
    "The top-level statements of a code cell (none where it is not Python, e.g. a magic)."
    try: return ast.parse(source).body
    except SyntaxError: return []

# %% [markdown]
# The data is checked first too: `check_dataset` loads the dataset once, which checks its columns and every metadata
# row (notebook 00c), so a fold 11, a file name leaving the folder or an unreachable hub is one line before any
# chapter.

# %%
#| export
def check_dataset(params: dict) -> None:
    "Load the run's dataset (`params['dataset']`, else the default) once, checking its metadata; raise if unusable."
    from urbansound_nb.data import load_urbansound
    load_urbansound(params.get("dataset"))

# %% [markdown]
# papermill says where a notebook failed (`PapermillExecutionError`) and how long it ran (`metadata.papermill`); the
# runner reports both.

# %%
#| export
def failing_cell(error) -> str:
    "Where a `PapermillExecutionError` happened: the cell's index, execution count and first line of code."
    first = next((line for line in error.source.splitlines() if line.strip() and not line.startswith("#|")), "")
    return f"cell {error.cell_index} (In [{error.exec_count}]: {first[:80]})"

def papermill_seconds(executed) -> float:
    "The wall time papermill recorded for an executed notebook (0 if it recorded none)."
    meta = nbformat.read(executed, as_version=4).metadata.get("papermill", {})
    return round(float(meta.get("duration") or 0.0), 1)

# %%
import papermill as pm
_err = pm.PapermillExecutionError(4, 3, "#| hide\nx = 1 / 0", "ZeroDivisionError", "division by zero", [])
test_eq(failing_cell(_err), "cell 4 (In [3]: x = 1 / 0)")

# %%
#| export
def _shared_is_known(record) -> bool:
    "Drop papermill's 'Passed unknown parameter' warning for the shared parameters, which every chapter takes."
    return not any(record.getMessage() == f"Passed unknown parameter: {name}" for name in SHARED)

def keep_if_whole(partial: Path, out: Path) -> bool:
    "Move `partial` onto `out` if it is a whole notebook; a half-written one stays aside and `out` is untouched."
    try: nbformat.read(partial, as_version=4)
    except Exception: return False
    os.replace(partial, out)
    return True

def execute_chapter(nb: Path, out: Path, parameters: dict, timeout=None, stream: bool = True):
    "Run chapter `nb` with papermill into `out`, which only ever holds a whole notebook (papermill writes aside)."
    import papermill as pm
    partial = out.with_name(f".{out.stem}.partial.ipynb")   # papermill rewrites its output after every cell
    try:
        # the kernel's output (the chapters' progress bars, their prints) goes to the terminal as it comes;
        # ipykernel 7 warns on every start that its local TCP sockets are unencrypted; errors still show
        pm.execute_notebook(str(nb.with_suffix(".ipynb")), str(partial), parameters=parameters, cwd=str(nb.parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout,
                            stdout_file=sys.stdout if stream else None, stderr_file=sys.stderr if stream else None,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    finally: keep_if_whole(partial, out)

def prepare_run(names=None, params: dict | None = None, run_dir="runs/latest", root=None):
    "The run's chapters, its parameters (paths resolved, every chapter's checked) and what each chapter declares."
    root = project_root(root)
    params = dict(params or {})
    run_dir = Path(run_dir).expanduser().resolve()
    for key in ("cache_dir", "dataset", "weights", "other_sounds"):  # paths are relative to where the command was typed
        if isinstance(params.get(key), str) and Path(params[key]).expanduser().exists():
            params[key] = str(Path(params[key]).expanduser().resolve())
    for var in (DATASET_ENV, "URBANSOUND_PRETRAINED", OTHER_SOUNDS_ENV):  # the same for the paths chapters read there
        if os.environ.get(var) and Path(os.environ[var]).expanduser().exists():
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    params.setdefault("cache_dir", str(root/"cache"))
    params["run_dir"] = str(run_dir)
    sync(root, export=False, quiet=True)
    notebooks = select_notebooks(names, root)
    declared = {nb: set(notebook_parameters(nb.with_suffix(".ipynb"))) | set(SHARED) for nb in notebooks}
    unknown = set(params) - set().union(*declared.values())
    if unknown: raise SystemExit(f"unknown parameter(s) {sorted(unknown)}: no selected notebook declares them "
                                 f"(declared: {sorted(set().union(*declared.values()))})")
    check_parameters(notebooks, params)
    check_dataset(params)
    return notebooks, params, declared

def run_notebooks(names=None, params: dict | None = None, run_dir="runs/latest", root=None, timeout=None,
                  stream: bool = True) -> Path:
    "Execute the selected notebooks with papermill into `run_dir`, streaming their output; results: `run_dir/results`."
    import papermill as pm
    run_dir = Path(run_dir).expanduser().resolve()
    (run_dir/"results").mkdir(parents=True, exist_ok=True)
    notebooks, params, declared = prepare_run(names, params, run_dir, root)
    timings = read_timings(run_dir)
    for i, nb in enumerate(notebooks, 1):
        own = {k: v for k, v in params.items() if k in declared[nb]}
        out = run_dir/nb.with_suffix(".ipynb").name
        logging.getLogger("papermill").addFilter(_shared_is_known)
        last = timings.get(nb.stem, {})
        expected = f" (about {last['seconds'] / 60:.1f} min last time)" if last.get("status") == "ok" else ""
        print(f"[{i}/{len(notebooks)}] {nb.stem} ...{expected}", flush=True)
        try: execute_chapter(nb, out, own, timeout, stream)
        except KeyboardInterrupt:
            raise RunFailed(f"interrupted in {nb.stem}; run the same command again to resume: features, trainings and "
                            "finished grid cells are kept in the cache and run directory") from None
        except pm.PapermillExecutionError as e:
            timings[nb.stem] = dict(seconds=papermill_seconds(out), status="failed")
            _write_timings(run_dir, timings)
            raise RunFailed(f"{nb.stem} failed in {failing_cell(e)}: {e.ename}: {e.evalue}\n"
                            f"executed notebook with the traceback: {out}") from None
        except OSError as e:   # a full disk, a folder made read-only meanwhile: the run directory keeps what it had
            raise RunFailed(f"{nb.stem}: cannot write into the run directory ({e})") from None
        timings[nb.stem] = dict(seconds=papermill_seconds(out), status="ok")
        _write_timings(run_dir, timings)
        print(f"    {nb.stem}: {timings[nb.stem]['seconds']:.1f} s", flush=True)
    return run_dir

# %% [markdown]
# papermill rewrites its output after every cell, so an interruption would leave half a notebook. It writes beside the
# executed notebook (`.NAME.partial.ipynb`), moved into place only when it reads back whole.

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    out, partial = Path(d)/"03_baselines.ipynb", Path(d)/".03_baselines.partial.ipynb"
    out.write_text(notebook_text(nbformat.v4.new_notebook()))
    whole = out.read_text()
    partial.write_text(whole[:len(whole) // 2])                        # cut short, as by a full disk
    test_eq(keep_if_whole(partial, out), False)
    test_eq(out.read_text(), whole)
    partial.write_text(whole)
    test_eq(keep_if_whole(partial, out), True)
    assert not partial.exists()

# %% [markdown]
# `timings.csv` holds a row per chapter and, below them, a row per training each chapter used (trained or reused).

# %%
#| export
TIMINGS_HEADER = "notebook,seconds,status,cell"

def _timing_rows(run_dir) -> list[list[str]]:
    f = Path(run_dir)/"timings.csv"
    if not f.exists(): return []
    return [line.split(",") for line in f.read_text().splitlines()[1:] if line.strip()]

def read_timings(run_dir) -> dict:
    "Each chapter's wall time (s) and status ('ok', 'failed') in a run directory, from its `timings.csv`."
    return {r[0]: dict(seconds=float(r[1]), status=r[2]) for r in _timing_rows(run_dir)
            if len(r) == 3 or (len(r) == 4 and not r[3])}

def read_training_timings(run_dir) -> list[dict]:
    "Each training cell the run's chapters used: chapter, seconds, 'trained' or 'reused', the cell's name."
    return [dict(notebook=r[0], seconds=float(r[1]), status=r[2], cell=r[3]) for r in _timing_rows(run_dir)
            if len(r) == 4 and r[3]]

def _chapter_trainings(run_dir, notebook: str) -> list[dict]:
    f = Path(run_dir)/"results"/f"{notebook}.json"
    try: return json.loads(f.read_text()).get("trainings") or [] if f.exists() else []
    except (OSError, ValueError): return []

def _write_timings(run_dir, timings: dict):
    "Per-notebook wall times of this run directory and each chapter's training cells, as CSV (written atomically)."
    lines = [TIMINGS_HEADER] + [f"{k},{v['seconds']},{v['status']}," for k, v in sorted(timings.items())]
    lines += [f"{nb},{t['seconds']},{t['status']},{t['cell']}" for nb in sorted(timings)
              for t in _chapter_trainings(run_dir, nb)]
    atomic_write_bytes(Path(run_dir)/"timings.csv", ("\n".join(lines) + "\n").encode())

# %%
from urbansound_nb.core import write_results
with tempfile.TemporaryDirectory() as d:
    write_results(d, "04_cnn", {}, trainings=[dict(cell="resnet-train1-val2-seed0-20ep-ab", status="reused",
                                                  seconds=12.5)])
    _write_timings(d, {"04_cnn": dict(seconds=30.0, status="ok"), "03_baselines": dict(seconds=5.0, status="ok")})
    test_eq(read_timings(d)["04_cnn"], dict(seconds=30.0, status="ok"))
    test_eq(read_training_timings(d), [dict(notebook="04_cnn", seconds=12.5, status="reused",
                                            cell="resnet-train1-val2-seed0-20ep-ab")])

# %% [markdown]
# Where a chapter's time goes: from papermill's cell timings, starting (the kernel), importing (the cells before
# `parameters`) and work. `time_table` gives a run's table; the tests print the reduced study's.

# %%
#| export
def chapter_profile(executed) -> dict:
    "Seconds an executed chapter spent starting its kernel, importing, and working (papermill's cell timings)."
    from datetime import datetime
    nb = nbformat.read(executed, as_version=4)
    when = lambda meta: datetime.fromisoformat(meta["start_time"]).timestamp()
    cells = [c for c in nb.cells if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not cells: return dict(kernel=0.0, imports=0.0, work=0.0, total=papermill_seconds(executed))
    params = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), 0)
    kernel = max(0.0, when(cells[0].metadata.papermill) - when(nb.metadata.papermill))
    imports = sum(c.metadata.papermill.get("duration") or 0 for c in cells[:params] if c.cell_type == "code")
    total = papermill_seconds(executed)
    return dict(kernel=round(kernel, 1), imports=round(imports, 1), work=round(max(0.0, total - kernel - imports), 1),
                total=total)

def time_table(run_dir) -> str:
    "Each executed chapter's wall time split into kernel start, imports and work, as text, with the run's totals."
    rows = {nb.stem: chapter_profile(nb) for nb in sorted(Path(run_dir).glob("[0-9][0-9]_*.ipynb"))}
    rows["all"] = {k: round(sum(r[k] for r in rows.values()), 1) for k in ("kernel", "imports", "work", "total")}
    lines = [f"{'chapter':<22}{'kernel':>8}{'imports':>9}{'work':>8}{'total':>8}  (seconds)"]
    lines += [f"{name:<22}{r['kernel']:>8}{r['imports']:>9}{r['work']:>8}{r['total']:>8}" for name, r in rows.items()]
    return "\n".join(lines)

# %% [markdown]
# Every notebook also runs with plain papermill on its generated `.ipynb`, from `nbs/`:
#
# ```sh
# cd nbs && papermill 00_setup.ipynb ../runs/manual/00_setup.ipynb -p dataset ../../shared/data/urbansound8k-mini
# ```

# %% [markdown]
# ## JupyterLab
#
# `urbansound-nb lab` makes Jupytext the default viewer of `.py` files inside the virtual environment (never the
# user's home), then starts JupyterLab in the project root (`--allow-root` as root).

# %%
#| export
LAB_OVERRIDES = {"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}

def configure_lab(prefix=None) -> Path:
    "Merge the jupytext default-viewer setting into the environment's JupyterLab overrides.json."
    f = Path(prefix or sys.prefix)/"share"/"jupyter"/"lab"/"settings"/"overrides.json"
    cur = json.loads(f.read_text()) if f.exists() else {}
    for plugin, settings in LAB_OVERRIDES.items():
        cur.setdefault(plugin, {}).setdefault("defaultViewers", {}).update(settings["defaultViewers"])
    save_json(cur, f)
    return f

def lab_command(root=None, extra=()) -> list[str]:
    "The command line that starts JupyterLab in the project root."
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={project_root(root)}", *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in cmd: cmd.append("--allow-root")
    return cmd

# %%
with tempfile.TemporaryDirectory() as d:
    f = configure_lab(d)
    configure_lab(d)
    test_eq(json.loads(f.read_text()), LAB_OVERRIDES)

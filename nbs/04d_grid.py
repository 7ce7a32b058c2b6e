# %%
#| default_exp grid

# %% [markdown]
# # Experiment grids, here or on a Dask cluster
#
# > Independent trainings run here, on a local Dask cluster or an existing one: same results, one resumable record.

# %% [markdown]
# Every training of the study is a cell of a grid: chapters 03-05 fit each model on each rotation, chapter 06 refits
# the chosen one, chapter 08 trains conditions x seeds and chapter 09 folds x models. This notebook is the thin layer
# between the chapters and `dask.distributed`:
#
# * **`scheduler`**: `None` runs the cells here; `"local:N"` starts a `LocalCluster` of N processes, the cores split
#   between them and one GPU each where there are several; `"tcp://host:8786"` connects to a running cluster
#   (CONTRIBUTING.md says how to start one).
# * **Features before the grid.** The chapter computes features and embeddings first; a worker gets a small reference
#   (`CachedData`), reads the cache read-only and never decodes audio, so the workers must see the cache at the same
#   path (checked on connecting).
# * **The store keeps every result** (notebook 04e), so an interrupted grid resumes on any scheduler. A cell that
#   reads others runs after them; a dead worker costs only its cell, which Dask reschedules; a cell that raises is
#   retried, and one that keeps failing is reported after the others have finished.

# %%
#| export
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import WorkerPlugin
from tqdm import tqdm

from urbansound_nb.batches import LogMelSet, StudyData
from urbansound_nb.cache import FeatureCache

# %% [markdown]
# ## The scheduler parameter

# %%
#| export
def parse_scheduler(spec) -> tuple[str, object]:
    "('inline', None), ('local', number of workers) or ('address', URL) from the `scheduler` parameter."
    if spec is None or str(spec).strip().lower() in ("", "none", "null"): return "inline", None
    text = str(spec).strip()
    if m := re.fullmatch(r"local:(\d+)", text):
        if int(m[1]) < 1: raise ValueError(f"scheduler {text!r}: a local cluster needs at least one worker")
        return "local", int(m[1])
    if re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", text): return "address", text
    raise ValueError(f"scheduler must be None, 'local:N' or a scheduler address such as 'tcp://host:8786', "
                     f"got {spec!r}")

# %%
from fastcore.test import test_close, test_eq, test_fail
test_eq([parse_scheduler(s) for s in (None, "null", "local:2", "tcp://10.0.0.5:8786")],
        [("inline", None), ("inline", None), ("local", 2), ("address", "tcp://10.0.0.5:8786")])
test_fail(lambda: parse_scheduler("local:0"), contains="at least one worker")
test_fail(lambda: parse_scheduler("10.0.0.5:8786"), contains="scheduler must be None, 'local:N'")

# %% [markdown]
# ## What a worker gets instead of the data
#
# A `StudyData` holds the dataset and every log-mel in memory: too much to send, and it would let a worker decode
# audio. `CachedData` is what rebuilds it from the cache: the folder, feature parameters, each clip's key, label and
# fold, and the split.

# %%
#| export
@dataclasses.dataclass(frozen=True)
class CachedData:
    "A small, picklable reference to a StudyData's features in the cache; `load()` rebuilds it read-only."
    cache_dir: str
    fp: object
    keys: tuple
    labels: tuple
    folds: tuple
    recordings: tuple
    split: object = dataclasses.field(hash=False)     # a FoldSplit (lists inside): compared, not hashed
    clip_seconds: float = 4.0
    n_frames: int = 0
    train: tuple = ()
    val: tuple = ()
    test: tuple = ()

    def load(self) -> StudyData: return _load_cached(self)

def cached_data(data: StudyData, cache_dir) -> CachedData:
    "The reference to `data`'s features in `cache_dir` (where `study_data` cached them)."
    if data.keys is None: raise ValueError("this StudyData has no cache keys, so a worker could not find its features")
    as_tuple = lambda a: tuple(int(i) for i in a)
    return CachedData(str(Path(cache_dir).expanduser().resolve()), data.fp, tuple(data.keys),
                      as_tuple(data.logmels.labels), as_tuple(data.meta["fold"]), as_tuple(data.meta["fsID"]),
                      data.split, data.clip_seconds,
                      data.n_frames, as_tuple(data.train), as_tuple(data.val), as_tuple(data.test))

@functools.lru_cache(maxsize=4)          # once per worker process (and per feature set), not once per cell
def _load_cached(ref: CachedData) -> StudyData:
    cache = FeatureCache(ref.cache_dir, ref.fp, read_only=True)
    missing = [k for k in ref.keys if k not in cache]
    if missing: raise FileNotFoundError(f"{len(missing)} clips are not in the feature cache {cache.dir}")
    meta = pd.DataFrame({"fold": ref.folds, "classID": ref.labels, "fsID": ref.recordings})
    arr = lambda t: np.asarray(t, dtype=np.int64)
    return StudyData(None, ref.split, meta, ref.fp, LogMelSet.from_cache(cache, list(ref.keys), ref.labels),
                     ref.clip_seconds, ref.n_frames, arr(ref.train), arr(ref.val), arr(ref.test),
                     dict(computed=0, reused=len(ref.keys)), list(ref.keys))

# %% [markdown]
# Objects that hold a `StudyData` in a field (the registry's `Inputs`), and dicts of them, travel the same way:
# `portable` swaps each for its reference, `materialise` swaps it back.

# %%
#| export
def portable(obj, cache_dir):
    "`obj` with every StudyData (itself, in a dataclass field or a dict's value) replaced by its CachedData."
    if isinstance(obj, StudyData): return cached_data(obj, cache_dir)
    if isinstance(obj, dict): return {k: portable(v, cache_dir) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {f.name: cached_data(getattr(obj, f.name), cache_dir) for f in dataclasses.fields(obj)
                   if isinstance(getattr(obj, f.name), StudyData)}
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj

def materialise(obj):
    "The inverse of `portable`, on the worker: every CachedData loaded (once per process)."
    if isinstance(obj, CachedData): return obj.load()
    if isinstance(obj, dict): return {k: materialise(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {f.name: getattr(obj, f.name).load() for f in dataclasses.fields(obj)
                   if isinstance(getattr(obj, f.name), CachedData)}
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj

# %% [markdown]
# A round trip: the same log-mels, labels and folds, never touching the dataset.

# %%
import tempfile
from urbansound_nb.batches import study_data
from urbansound_nb.params import StudyParams
with tempfile.TemporaryDirectory() as d:
    small = study_data(StudyParams(dataset="synthetic", max_items=60, cache_dir=d, run_dir=d), progress=False)
    ref = cached_data(small, d)
    again = materialise(ref)
    assert again.ds is None and again.logmels.data.equal(small.logmels.data)
    test_eq(again.logmels.labels.tolist(), small.logmels.labels.tolist())
    test_eq(again.meta["fold"].tolist(), small.meta["fold"].tolist())
    test_eq(again.train.tolist(), small.train.tolist())
    assert materialise(ref) is again                                   # loaded once per process
    test_fail(lambda: FeatureCache(Path(d)/"nowhere", small.fp, read_only=True), contains="no feature cache")

# %% [markdown]
# ## Connecting to the cluster
#
# `"local:N"` splits the cores between N workers and gives worker i GPU i modulo their number; an address connects
# within `CONNECT_TIMEOUT` seconds or fails naming what to start. The workers are then asked whether they can import
# the package and see the grid's paths.

# %%
#| export
CONNECT_TIMEOUT = 10   # seconds to reach a scheduler before giving up

class GridFailed(RuntimeError):
    "Some cells of a grid failed for good; the finished ones are recorded."

def _worker_facts(paths) -> dict:
    "Run on every worker: the package version it imports, and which of `paths` it cannot see."
    try:
        import urbansound_nb
        version = urbansound_nb.__version__
    except ImportError: version = None
    return dict(version=version, missing=[p for p in paths if not Path(p).exists()])

def check_workers(client, paths=()) -> dict:
    "Ask every worker of `client` whether it has the package and sees `paths`; an error naming what is missing."
    paths = [str(Path(p).expanduser().resolve()) for p in paths]
    facts = client.run(_worker_facts, paths)
    where = client.scheduler.address
    if not facts:
        raise RuntimeError(f"the Dask scheduler at {where} has no workers: start some with `dask worker {where}`")
    from urbansound_nb import __version__
    problems = [f"{w}: urbansound_nb is not installed" if f["version"] is None else
                f"{w}: urbansound_nb {f['version']} (this notebook runs {__version__})" for w, f in facts.items()
                if f["version"] != __version__]
    problems += [f"{w}: cannot see {p} (workers must see the cache and the dataset at the same paths)"
                 for w, f in facts.items() for p in f["missing"]]
    if problems: raise RuntimeError(f"the Dask workers at {where} cannot run this grid:\n  " + "\n  ".join(problems))
    return facts

class TorchPerWorker(WorkerPlugin):
    "Set a worker's torch thread count, and its GPU (worker i takes GPU i modulo the number of GPUs)."
    name = "urbansound-torch-per-worker"
    def __init__(self, threads: int): self.threads = threads
    def setup(self, worker):
        import torch
        torch.set_num_threads(self.threads)
        if torch.cuda.is_available() and torch.cuda.device_count() > 1:
            index = worker.name if isinstance(worker.name, int) else abs(hash(worker.name))
            torch.cuda.set_device(index % torch.cuda.device_count())

@contextlib.contextmanager
def grid_client(scheduler, paths=()):
    "A Dask client for the `scheduler` parameter (None when it is None), checked; the cluster closed afterwards."
    kind, arg = parse_scheduler(scheduler)
    if kind == "inline":
        yield None
        return
    from distributed import Client, LocalCluster
    cluster = None
    if kind == "local":
        threads = max(1, (os.cpu_count() or 1) // arg)
        # ":0": the scheduler's HTTP endpoint on a free port, so that two clusters on one machine do not collide
        cluster = LocalCluster(n_workers=arg, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": str(threads)})
        client = Client(cluster)
        client.register_plugin(TorchPerWorker(threads))
    else:
        try: client = Client(arg, timeout=f"{CONNECT_TIMEOUT}s")
        except (OSError, TimeoutError) as e:
            raise ConnectionError(f"no Dask scheduler answered at {arg} within {CONNECT_TIMEOUT} s "
                                  f"({e.__class__.__name__}): start one with `dask scheduler`, and workers with "
                                  f"`dask worker {arg}`") from None
    try:
        check_workers(client, paths)
        yield client
    finally:
        client.close()
        if cluster is not None: cluster.close()

# %% [markdown]
# ## Running a grid
#
# On a CPU a training's figures depend on one thing besides its parameters and seed: torch's thread count, which
# orders the sums. Training amplifies the noise: on mini, one cell with one thread and with two ends up to a point
# apart. So every cell runs with an explicit thread count, recorded with it: the scheduler's share of the cores by
# default, or `cell_threads` on every scheduler, which then all give the same figures.

# %%
#| export
def run_cell(fn, shared: dict, args: dict, threads: int | None = None) -> dict:
    "One cell, here or on a worker: `fn` on the materialised shared inputs and the cell's arguments, with `threads`."
    import torch
    before = torch.get_num_threads()
    if threads: torch.set_num_threads(threads)
    try: return {**fn(**{k: materialise(v) for k, v in shared.items()}, **args), "threads": torch.get_num_threads()}
    finally: torch.set_num_threads(before)

@dataclasses.dataclass
class Placement:
    "Where a grid's cells run: here (no client) or on a Dask client's workers, which read `cache_dir`; threads each."
    client: object = None
    cache_dir: object = None
    threads: int | None = None       # torch threads per cell; None: as the process has them

@dataclasses.dataclass(frozen=True)
class Cell:
    "A grid cell: the keyword arguments of the grid's function, and the cells whose results it reads (`after`)."
    args: dict
    after: tuple = ()

# %% [markdown]
# `run_grid` runs the cells in waves (those that read no other cell first), here or over the cluster; a cell gets the
# results it reads as `after`. When a cell fails for good, the cells that read it are reported with it.

# %%
#| export
def _waves(cells: dict) -> list[list[str]]:
    "The cells in waves: each after the waves holding every cell it reads."
    waves, placed = [], set()
    while len(placed) < len(cells):
        wave = [k for k, c in cells.items() if k not in placed and set(c.after) <= placed]
        if not wave: raise ValueError(f"cells read cells that are not in the grid, or each other: "
                                      f"{sorted(set(cells) - placed)[:3]}")
        waves.append(wave)
        placed |= set(wave)
    return waves

def _wave(fn, cells: dict, keys: list, done: dict, shared, place: Placement, retries: int, desc: str):
    "(key, result or exception) of every cell of one wave, as each finishes, here or on the cluster."
    args = lambda k: {**cells[k].args, **({"after": [done[a] for a in cells[k].after]} if cells[k].after else {})}
    if place.client is None:
        for key in keys: yield key, run_cell(fn, shared, args(key), place.threads)
        return
    from distributed import as_completed
    futures = {place.client.submit(run_cell, fn, shared, args(k), place.threads, key=f"{desc}-{k}-{time.time_ns()}",
                                   retries=retries, pure=False): k for k in keys}
    for future in as_completed(futures):
        try: yield futures[future], future.result()
        except Exception as e: yield futures[future], e

def run_grid(fn, cells: dict, *, shared: dict | None = None, place: Placement | None = None, retries: int = 2,
             describe=None, desc: str = "grid cells") -> dict:
    "`fn(**shared, **cell.args)` for every cell (a `Cell`, or a dict of arguments), in waves. Results by key."
    cells = {k: c if isinstance(c, Cell) else Cell(c) for k, c in cells.items()}
    shared, place = shared or {}, place or Placement()
    if place.client is not None:
        if place.cache_dir is None:
            raise ValueError("run_grid on a cluster needs cache_dir, where the workers read the features")
        shared = {k: None if v is None else place.client.scatter(portable(v, place.cache_dir), broadcast=True)
                  for k, v in shared.items()}
    done, failed = {}, {}
    with tqdm(total=len(cells), desc=desc, unit="cell") as bar:
        for wave in _waves(cells):
            waiting = [k for k in wave if any(a in failed for a in cells[k].after)]
            failed.update({k: "a cell it reads failed" for k in waiting})
            bar.update(len(waiting))
            for key, result in _wave(fn, cells, [k for k in wave if k not in waiting], done, shared, place, retries,
                                     desc):
                if isinstance(result, Exception): failed[key] = f"{result.__class__.__name__}: {result}"
                else:
                    done[key] = result
                    if describe: tqdm.write(describe(key, result))
                bar.update()
    if failed:
        raise GridFailed(f"{len(failed)} of {len(cells)} cells failed (the others' results are kept in the store):\n  "
                         + "\n  ".join(f"{k}: {v}" for k, v in failed.items()))
    return {k: done[k] for k in cells}

# %% [markdown]
# Three cells and a fourth that reads two of them. On a local cluster with the same thread count the figures are the
# same (`tests/test_grid.py`).

# %%
def _mean_level(data, fold, offset, after=()):
    "A stand-in for a training: the mean log-mel level of one fold's clips, plus an offset and what it reads."
    idx = np.flatnonzero(data.meta["fold"].to_numpy() == fold)
    return dict(fold=fold, level=float(data.logmels.data[idx].float().mean()) + offset + sum(r["level"] for r in after))

with tempfile.TemporaryDirectory() as d:
    small = study_data(StudyParams(dataset="synthetic", max_items=60, cache_dir=d, run_dir=d), progress=False)
    grid = {f"fold{f}": Cell(dict(fold=f, offset=0.0)) for f in (1, 2, 3)}
    grid["both"] = Cell(dict(fold=1, offset=0.0), after=("fold2", "fold3"))
    test_eq(_waves(grid), [["fold1", "fold2", "fold3"], ["both"]])
    here = run_grid(_mean_level, grid, shared=dict(data=small))
    test_close(here["both"]["level"], sum(here[f"fold{f}"]["level"] for f in (1, 2, 3)))
    test_fail(lambda: run_grid(_mean_level, dict(x=Cell({}, after=("y",)))), contains="not in the grid")
here

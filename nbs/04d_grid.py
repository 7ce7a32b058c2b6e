# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%
#| default_exp grid

# %% [markdown]
# # Experiment grids, here or on a Dask cluster
#
# > Independent trainings run here, on a local Dask cluster or an existing one: same results, one resumable record.

# %% [markdown]
# The study's two grids (chapter 07: conditions x seeds; chapter 08: folds x models) are many
# independent trainings that read the same feature cache. `dask.distributed` runs such work on
# many processes or machines; this notebook is the thin layer between it and the chapters:
#
# * **`scheduler`**, a parameter of the grid chapters: `None` runs the cells here, one after
#   another; `"local:N"` starts a `LocalCluster` of N worker processes on this machine, the cores
#   split between them (torch's thread count set to match) and one GPU each where there are
#   several; `"tcp://host:8786"` connects to a running cluster (CONTRIBUTING.md says how to start
#   one).
# * **Features before the grid.** The chapter computes the features (and embeddings) before it
#   dispatches anything. A worker gets a small reference to them (`CachedData`), reads the
#   feature cache read-only, once per worker process, and never decodes audio. So the workers
#   must see the cache directory at the same path: the connect-time check says so when they do not.
# * **Only the notebook writes the record.** Workers return their cell's result; the notebook
#   writes the record atomically as each finishes, so an interrupted grid resumes on any
#   scheduler. A worker that dies costs only its cell, which Dask reschedules; a cell that raises
#   is retried (`retries`), and a cell that keeps failing is reported with its error after the
#   others have finished and been recorded.

# %%
#| export
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
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
from urbansound_nb.core import save_json

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
# A `StudyData` holds the dataset object and every clip's log-mels in memory: too much to send
# to every worker, and the dataset would let a worker decode audio. `CachedData` is what a
# worker needs to rebuild the same `StudyData` from the feature cache: the cache folder, the
# feature parameters, each clip's cache key, label and fold, the split and the fold indices.

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
                      as_tuple(data.logmels.labels), as_tuple(data.meta["fold"]), data.split, data.clip_seconds,
                      data.n_frames, as_tuple(data.train), as_tuple(data.val), as_tuple(data.test))

@functools.lru_cache(maxsize=4)          # once per worker process (and per feature set), not once per cell
def _load_cached(ref: CachedData) -> StudyData:
    cache = FeatureCache(ref.cache_dir, ref.fp, read_only=True)
    missing = [k for k in ref.keys if k not in cache]
    if missing: raise FileNotFoundError(f"{len(missing)} clips are not in the feature cache {cache.dir}")
    meta = pd.DataFrame({"fold": ref.folds, "classID": ref.labels})
    arr = lambda t: np.asarray(t, dtype=np.int64)
    return StudyData(None, ref.split, meta, ref.fp, LogMelSet.from_cache(cache, list(ref.keys), ref.labels),
                     ref.clip_seconds, ref.n_frames, arr(ref.train), arr(ref.val), arr(ref.test),
                     dict(computed=0, reused=len(ref.keys)), list(ref.keys))

# %% [markdown]
# Objects that hold a `StudyData` in a field (chapter 08's `Transfer`) travel the same way:
# `portable` swaps each such field for its reference, and `materialise` swaps it back on the
# worker.

# %%
#| export
def portable(obj, cache_dir):
    "`obj` with every StudyData (itself or in a dataclass field) replaced by its CachedData."
    if isinstance(obj, StudyData): return cached_data(obj, cache_dir)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {f.name: cached_data(getattr(obj, f.name), cache_dir) for f in dataclasses.fields(obj)
                   if isinstance(getattr(obj, f.name), StudyData)}
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj

def materialise(obj):
    "The inverse of `portable`, on the worker: every CachedData loaded (once per process)."
    if isinstance(obj, CachedData): return obj.load()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {f.name: getattr(obj, f.name).load() for f in dataclasses.fields(obj)
                   if isinstance(getattr(obj, f.name), CachedData)}
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj

# %% [markdown]
# A round trip on the synthetic stand-in: the rebuilt data has the same log-mels, labels and
# folds, and loading it never touches the dataset.

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
# `"local:N"` splits this machine's cores between N worker processes, one thread each for Dask
# and the rest for torch, and gives worker i GPU i modulo the number of GPUs. An address
# connects within `CONNECT_TIMEOUT` seconds or fails naming what to start. Either way the
# workers are then asked whether they can import the package and see the paths the grid reads.

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

# %%
#| export
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
# On a CPU a training's figures depend on one thing besides its parameters and seed: torch's
# thread count, which sets the order in which sums are added. The difference starts at
# floating-point noise, but training amplifies it: on the mini data, the same cell trained with one
# thread and with two ends up to a point of accuracy apart. So every cell runs with an explicit
# thread count (`threads`, recorded with its result): by default the scheduler's share of the cores
# (all of them here, `cores // N` on `local:N`, the worker's own on a cluster), or the number given,
# on every scheduler. Fix it (the chapters' `cell_threads`) and any scheduler gives the same figures.

# %%
#| export
def run_cell(fn, shared: dict, cell: dict, threads: int | None = None) -> dict:
    "One cell, here or on a worker: `fn` on the materialised shared inputs and the cell's parameters, with `threads`."
    import torch
    before = torch.get_num_threads()
    if threads: torch.set_num_threads(threads)
    try: return {**fn(**{k: materialise(v) for k, v in shared.items()}, **cell), "threads": torch.get_num_threads()}
    finally: torch.set_num_threads(before)

@dataclasses.dataclass
class Placement:
    "Where a grid's cells run: here (no client) or on a Dask client's workers, which read `cache_dir`; threads each."
    client: object = None
    cache_dir: object = None
    threads: int | None = None       # torch threads per cell; None: as the process has them

def run_grid(fn, cells: dict, *, shared: dict | None = None, record_path=None, place: Placement | None = None,
             retries: int = 2, describe=None, desc: str = "grid cells") -> dict:
    "`fn(**shared, **cells[key])` for every key not in the record yet; each result recorded as it comes. All results."
    shared, place = shared or {}, place or Placement()
    client, cache_dir, threads = place.client, place.cache_dir, place.threads
    done = json.loads(Path(record_path).read_text()) if record_path and Path(record_path).exists() else {}
    todo = [k for k in cells if k not in done]
    failed = {}
    def finish(key, result):
        done[key] = result
        if record_path: save_json(done, record_path)           # atomic: an interrupted grid resumes from here
        if describe: tqdm.write(describe(key, result))
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc=desc, unit="cell") as bar:
        if client is None:
            for key in todo:
                finish(key, run_cell(fn, shared, cells[key], threads))
                bar.update()
        else:
            from distributed import as_completed
            if cache_dir is None:
                raise ValueError("run_grid on a cluster needs cache_dir, where the workers read the features")
            remote = {k: None if v is None else client.scatter(portable(v, cache_dir), broadcast=True)
                      for k, v in shared.items()}
            futures = {client.submit(run_cell, fn, remote, cells[k], threads, key=f"{desc}-{k}-{time.time_ns()}",
                                     retries=retries, pure=False): k for k in todo}
            for future in as_completed(futures):
                key = futures[future]
                try: finish(key, future.result())
                except Exception as e: failed[key] = f"{e.__class__.__name__}: {e}"
                bar.update()
    if failed:
        kept = f" (the other results are recorded in {record_path})" if record_path else ""
        raise GridFailed(f"{len(failed)} of {len(cells)} cells failed{kept}:\n  "
                         + "\n  ".join(f"{k}: {v}" for k, v in failed.items()))
    return {k: done[k] for k in cells}

# %% [markdown]
# A grid of three cells on the synthetic data, here and then (a slow cell: it starts two worker
# processes) on a local cluster of two workers: the same results, one record.

# %%
def _mean_level(data, fold, offset):
    "A stand-in for a training: the mean log-mel level of one fold's clips, plus an offset."
    idx = np.flatnonzero(data.meta["fold"].to_numpy() == fold)
    return dict(fold=fold, level=float(data.logmels.data[idx].float().mean()) + offset)

with tempfile.TemporaryDirectory() as d:
    small = study_data(StudyParams(dataset="synthetic", max_items=60, cache_dir=d, run_dir=d), progress=False)
    grid = {f"fold{f}": dict(fold=f, offset=0.0) for f in (1, 2, 3)}
    here = run_grid(_mean_level, grid, shared=dict(data=small), record_path=Path(d)/"record.json")
    test_eq(sorted(json.loads((Path(d)/"record.json").read_text())), ["fold1", "fold2", "fold3"])
    # a second run resumes from the record: nothing is computed again
    test_eq(run_grid(lambda **kw: 1 / 0, grid, shared=dict(data=small), record_path=Path(d)/"record.json"), here)
here

# %% [markdown]
# Worker processes import what they run, so the cluster runs the exported module's functions (a
# class defined in a notebook cannot be unpickled elsewhere).

# %%
#| slow
from urbansound_nb import grid as exported
with tempfile.TemporaryDirectory() as d, exported.grid_client("local:2", paths=[d]) as client:
    small = study_data(StudyParams(dataset="synthetic", max_items=60, cache_dir=d, run_dir=d), progress=False)
    there = exported.run_grid(_mean_level, grid, shared=dict(data=small), place=exported.Placement(client, d))
    # the same to floating-point noise: a worker sums with one thread, this process with two
    test_close([r["level"] for r in there.values()], [r["level"] for r in here.values()], eps=1e-3)
    test_eq({r["threads"] for r in there.values()}, {max(1, (os.cpu_count() or 1) // 2)})
    # with the thread count fixed, the same to the last bit
    pinned = exported.run_grid(_mean_level, grid, shared=dict(data=small), place=exported.Placement(client, d, 1))
    test_eq(exported.run_grid(_mean_level, grid, shared=dict(data=small), place=Placement(threads=1)), pinned)

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
#| default_exp core

# %% [markdown]
# # Setup: the run, its data and its split
#
# > Seeding, device and the run directory; then the dataset this run uses, split by fold as its authors require.

# %% [markdown]
# Every chapter of this study works fold by fold:
#
# * the model is **chosen on a validation fold**,
# * the **test fold is touched once**, after every choice is made,
# * the official figure is **10-fold cross-validation** (chapter 08).
#
# This chapter sets a run up: one seed for everything, the best device present, and a run
# directory whose results files are written atomically. It then loads the dataset this run
# uses and splits it. The parts it builds on have notebooks of their own, after it:
# the parameters (00a), audio decoding and the synthetic stand-in (00b), and the data layer
# with its folds (00c).

# %%
#| export
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# %%
from dataclasses import asdict
from fastcore.test import test_eq
from urbansound_nb.audio import first_decodable, is_synthetic
from urbansound_nb.data import fold_split, load_urbansound, split_class_counts
from urbansound_nb.params import study_params, use_test_values

# %% tags=["parameters"]
# the shared parameters are notebook 00a's `StudyParams`: dataset, train_folds, val_fold, test_fold, max_items,
# sample_rate, clip_seconds, epochs, seed, run_dir and cache_dir; set any of them here to override its default

# %% tags=["checks"]
use_test_values(globals())
params = study_params(globals())
params

# %% [markdown]
# ## Reproducibility and device
#
# One seed drives Python, NumPy and PyTorch. The device is the best one present: CUDA, then
# Apple's MPS, then the CPU; everything in the study also runs on two CPU cores.
#
# On the CPU a seeded training repeats exactly. On a GPU it does not by default: some of
# cuDNN's convolution algorithms (those of the backward pass in particular) add partial sums in
# a varying order, and its benchmark mode picks algorithms by timing them. `seed_everything`
# therefore holds cuDNN to its deterministic algorithms with benchmark mode off, so that two
# seeded GPU trainings match epoch for epoch.

# %%
#| export
def seed_everything(seed: int = 0):
    "Seed Python, NumPy and PyTorch (all devices) from one integer, with cuDNN's deterministic algorithms."
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available(): torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # repeatable GPU trainings
    return seed

def pick_device(prefer: str | None = None) -> torch.device:
    "`prefer` if given, else CUDA, then MPS, then CPU."
    if prefer: return torch.device(prefer)
    if torch.cuda.is_available(): return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

# %%
seed_everything(params.seed)
a = torch.rand(3)
seed_everything(params.seed)
test_eq(a, torch.rand(3))
assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
device = pick_device()
print("device:", device, "| torch", torch.__version__, "| threads", torch.get_num_threads())

# %% [markdown]
# ## The run directory and its results files
#
# Each run writes into one directory: the executed notebooks, `results/NN_name.json` per
# chapter, and `models/` for checkpoints. Files are written atomically (a temporary file
# renamed into place), so an interrupted run never leaves half a results file behind. They take
# the permissions the user's umask gives a new file (a plain temporary file would be private to
# its owner), and results files are strict JSON: a figure that is undefined (NaN, as a p-value
# without variance) is written `null`, so that `jq`, browsers and other tools read every file.

# %%
#| export
def atomic_write_bytes(path, data: bytes):
    "Write `data` to `path` through a temporary file and a rename: readers never see half a file."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)  # read without changing it
        os.fchmod(fd, 0o666 & ~umask)              # as open() would create it; mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f: f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

def strict_json(o):
    "`o` as plain JSON values: NumPy and torch values converted, paths as text, NaN and infinities as None."
    if isinstance(o, dict): return {str(k) if not isinstance(k, (str, int, float, bool)) else k: strict_json(v)
                                    for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [strict_json(v) for v in o]
    if isinstance(o, (np.ndarray, torch.Tensor)): return strict_json(o.tolist())
    if isinstance(o, (np.bool_, np.integer, np.floating)): o = o.item()
    if isinstance(o, float) and not np.isfinite(o): return None
    if isinstance(o, (Path, torch.device)): return str(o)
    if o is None or isinstance(o, (str, int, float, bool)): return o
    raise TypeError(f"cannot write {type(o).__name__} to JSON")

def save_json(obj, path):
    "Write `obj` as indented strict JSON (NaN as null), atomically."
    return atomic_write_bytes(path, json.dumps(strict_json(obj), indent=2, allow_nan=False).encode())

# %%
#| export
def make_run_dir(run_dir) -> Path:
    "Create the run directory with its `results/` and `models/` folders."
    run_dir = Path(run_dir).expanduser()
    for sub in ("", "results", "models"): (run_dir/sub).mkdir(parents=True, exist_ok=True)
    return run_dir

def write_results(run_dir, notebook: str, entries: dict, **info):
    "Write `results/<notebook>.json`: one entry per model or condition, plus run information."
    doc = dict(notebook=notebook, created=time.strftime("%Y-%m-%dT%H:%M:%S"), **info, entries=entries)
    return save_json(doc, Path(run_dir)/"results"/f"{notebook}.json")

def read_results(run_dir, notebook: str) -> dict:
    "Read back what `write_results` wrote."
    return json.loads((Path(run_dir)/"results"/f"{notebook}.json").read_text())

# %%
with tempfile.TemporaryDirectory() as d:
    rd = make_run_dir(Path(d)/"run")
    write_results(rd, "00_demo", {"majority": {"test_accuracy": np.float32(0.25)}}, dataset="demo")
    test_eq(read_results(rd, "00_demo")["entries"]["majority"]["test_accuracy"], 0.25)
    test_eq(sorted(p.name for p in rd.iterdir()), ["models", "results"])
    write_results(rd, "00_nan", {"m": {"paired_t_p": float("nan"), "x": np.array([1.0, np.inf])}})
    test_eq(read_results(rd, "00_nan")["entries"]["m"], {"paired_t_p": None, "x": [1.0, None]})
    _umask = os.umask(0)
    os.umask(_umask)
    test_eq(oct((rd/"results"/"00_nan.json").stat().st_mode & 0o777), oct(0o666 & ~_umask))   # the umask's, not 0600

# %% [markdown]
# ## The dataset this run uses

# %%
t0 = time.time()
ds = load_urbansound(params.dataset, params.max_items, params.seed)
load_seconds = time.time() - t0
print(f"{params.dataset}: {len(ds):,} clips in {load_seconds:.1f} s",
      "(SYNTHETIC stand-in)" if is_synthetic(ds) else "")
ds

# %%
split = fold_split(ds, **params.split)
print(f"train folds {split.train_folds} | validation fold {split.val_fold} | test fold {split.test_fold}")
counts = split_class_counts(split)
counts

# %% [markdown]
# Decoding a clip of each split confirms the audio path end to end (a damaged clip is passed over here; chapter 02
# names every one):

# %%
for name, sub in split.items():
    row, x, r = first_decodable(sub)
    print(f"{name:5s} {row['slice_file_name']:28s} {row['class']:17s} {len(x)/r:5.2f} s at {r} Hz")

# %%
make_run_dir(params.run_dir)
path = write_results(params.run_dir, "00_setup", {
    "dataset": dict(n_clips=len(ds), folds=sorted(set(ds["fold"])), classes=split.classes, synthetic=is_synthetic(ds),
                    load_seconds=round(load_seconds, 2)),
    "split": dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold,
                  n_train=len(split.train), n_val=len(split.val), n_test=len(split.test),
                  class_counts=counts.drop(index="total").to_dict())},
    dataset=params.dataset, device=str(device), torch=torch.__version__, params=asdict(params))
print("wrote", path)

# %%
#| default_exp core

# %% [markdown]
# # Setup: the run, its data and its split
#
# > Seeding, device and the run directory; then the dataset this run uses, split by fold as its authors require.

# %% [markdown]
# Every chapter works fold by fold: the model is **chosen on a validation fold**, the **test fold is touched once**,
# and the official figure is **10-fold cross-validation** (chapter 09). This chapter sets a run up (one seed, the best
# device, a run directory written atomically), then loads and splits the dataset. Its parts have notebooks after it:
# parameters (00a), audio and the synthetic stand-in (00b), the data layer and its folds (00c).

# %%
#| export
from __future__ import annotations

import dataclasses
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
from fastcore.test import test_eq, test_fail
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
# One seed drives Python, NumPy and PyTorch; the device is CUDA, then MPS, then the CPU (two cores suffice). On a GPU
# some cuDNN algorithms add partial sums in a varying order and benchmark mode picks them by timing, so
# `seed_everything` holds cuDNN to its deterministic algorithms: two seeded trainings match epoch for epoch.

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
# A run writes one directory: executed notebooks, `results/NN_name.json` per chapter, checkpoints in `models/`. Files
# are written atomically (renamed into place), with the user's umask, and results are strict JSON (NaN is `null`), so
# `jq` and browsers read every file.

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

def plain(o, keep_tensors: bool = False):
    "`o` as plain values: NumPy values, dataclasses and paths converted, NaN and infinity None; tensors kept or listed."
    if isinstance(o, torch.Tensor) and keep_tensors: return o
    if isinstance(o, dict): return {k if isinstance(k, (str, int, float, bool)) else str(k): plain(v, keep_tensors)
                                    for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [plain(v, keep_tensors) for v in o]
    if isinstance(o, (np.ndarray, torch.Tensor)): return plain(o.tolist())
    if isinstance(o, (np.bool_, np.integer, np.floating)): o = o.item()
    if isinstance(o, float) and not np.isfinite(o): return None
    if isinstance(o, (Path, torch.device)): return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type): return plain(dataclasses.asdict(o), keep_tensors)
    if o is None or isinstance(o, (str, int, float, bool)): return o
    raise TypeError(f"only tensors and plain values can be written, not {type(o).__name__}")

def save_json(obj, path):
    "Write `obj` as indented strict JSON (NaN as null), atomically."
    return atomic_write_bytes(path, json.dumps(plain(obj), indent=2, allow_nan=False).encode())

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

def results_files(run_dir) -> list[Path]:
    "A run's results files of the chapters, in order (not the resumable records beside them)."
    return sorted(p for p in (Path(run_dir)/"results").glob("[0-9][0-9]_*.json") if p.stem.count(".") == 0)

# %% [markdown]
# Two results files describe the whole run, each read through one function: chapter 00's dataset, split and parameters
# (`read_setup`), and the choice chapter's model and the checkpoint that serves it (`read_choice`), which `predict
# RUN_DIR`, the analysis, the deployment, the reports and the site all read.

# %%
#| export
SETUP, CHOICE = "00_setup", "06_choice"   # the results files of the run's setup and of the choice of its model

def read_setup(run_dir) -> dict:
    "Chapter 00's results of a run (dataset, split, parameters); {} where it has not run."
    path = Path(run_dir)/"results"/f"{SETUP}.json"
    return read_results(run_dir, SETUP) if path.is_file() else {}

class NoChoice(FileNotFoundError):
    "A run directory in which the study's model has not been chosen (chapter 06 has not run)."

def read_choice(run_dir) -> dict:
    "The study's model as chapter 06 chose and serves it: its `model`, `checkpoint`, `refit` and figures."
    path = Path(run_dir)/"results"/f"{CHOICE}.json"
    if not path.is_file():
        raise NoChoice(f"{run_dir}: no results/{CHOICE}.json, which names the study's model; run the study (chapter "
                       "06 chooses the model), or give a checkpoint file")
    try: doc = json.loads(path.read_text())
    except ValueError as e: raise NoChoice(f"{path}: not a results file ({e})") from None
    served = doc.get("served") if isinstance(doc, dict) else None
    if not isinstance(served, dict) or not served.get("model"):
        raise NoChoice(f"{path}: names no served model; run chapter 06 again")
    return dict(served, reason=doc.get("reason"), rule=doc.get("rule"))

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
    test_fail(lambda: read_choice(rd), contains="no results/06_choice.json")
    write_results(rd, CHOICE, {}, served=dict(model="probe", checkpoint="models/probe.refit.pt"), reason="tied")
    test_eq(read_choice(rd)["checkpoint"], "models/probe.refit.pt")
    test_eq(plain(dict(a=np.float64(0.5), b=(np.int64(2), Path("x")), c=np.arange(2))),
            dict(a=0.5, b=[2, "x"], c=[0, 1]))
    test_fail(lambda: plain(dict(a=object())), contains="not object")

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

# %%
#| default_exp params

# %% [markdown]
# # Parameters
#
# > The parameters every chapter shares: one dataclass, checked once, with errors that name the parameter.

# %% [markdown]
# Every chapter starts with one cell tagged `parameters`, whose values papermill replaces when the chapter runs
# headless (`urbansound-nb run -p NAME VALUE`). Values arrive as YAML, or as strings from plain papermill, so they are
# checked here, once, and a bad one stops the chapter before anything is computed. The line after the cell,
# `study_params(globals())`, builds the checked `StudyParams` from the shared names it finds.

# %%
#| export
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

HUB_ID = "danavery/urbansound8K"
DATASET_ENV = "URBANSOUND_DATASET"  # the documented way to point every chapter at a local copy
OTHER_SOUNDS_ENV = "URBANSOUND_OTHER_SOUNDS"  # sounds that are none of the ten, for chapter 06's "none of these"

class ParameterError(ValueError):
    "A notebook parameter has a value the study cannot use."

# %% [markdown]
# ## Checking one value
#
# Each checker takes the parameter's name, so its error says which one is wrong; chapters' own parameters use them
# too.

# %%
#| export
def _range_error(name, out, lo, hi) -> ParameterError:
    if lo is not None and hi is not None: return ParameterError(f"parameter {name!r}: {out} is outside {lo}..{hi}")
    if hi is None: return ParameterError(f"parameter {name!r}: must be at least {lo}, got {out}")
    return ParameterError(f"parameter {name!r}: must be at most {hi}, got {out}")

def as_int(name, value, lo=None, hi=None) -> int:
    "`value` as an int within [lo, hi], or a `ParameterError` naming `name`."
    wrong = ParameterError(f"parameter {name!r}: expected an integer, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, str)): raise wrong
    try: out = int(value) if isinstance(value, float) else int(str(value).strip())
    except ValueError: raise wrong from None
    if isinstance(value, float) and value != out: raise wrong
    if (lo is not None and out < lo) or (hi is not None and out > hi): raise _range_error(name, out, lo, hi)
    return out

def _as_list(value) -> list:
    "A list from a list, one value, or a string such as '[a, b]' or '1,2' (how plain papermill's -p passes a list)."
    if isinstance(value, str):
        value = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]

def as_folds(name, value) -> list[int]:
    "A sorted fold list from a list, a single fold or a string such as '1,2'."
    folds = [as_int(name, v, 1, 10) for v in _as_list(value)]
    if not folds: raise ParameterError(f"parameter {name!r}: needs at least one fold")
    if len(set(folds)) != len(folds): raise ParameterError(f"parameter {name!r}: fold listed twice in {folds}")
    return sorted(folds)

def as_fraction(name, value) -> float:
    "`value` as a number in (0, 1], or a `ParameterError` naming `name`."
    try: out = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError): out = None
    if isinstance(value, bool) or out is None or not 0 < out <= 1:
        raise ParameterError(f"parameter {name!r}: expected a number in (0, 1], got {value!r}")
    return out

def as_names(name, value, choices) -> list[str]:
    "A list of names out of `choices` from a list, one name, or a string such as '[a, b]'."
    names = _as_list(value) if value not in (None, "", []) else []
    if not names: raise ParameterError(f"parameter {name!r}: expected one or more of {sorted(choices)}, got {value!r}")
    unknown = [v for v in names if v not in choices]
    if unknown: raise ParameterError(f"parameter {name!r}: unknown {unknown}; choose from {sorted(choices)}")
    return names

def as_name(name, value, choices) -> str:
    "One name out of `choices`, or a `ParameterError` naming the parameter."
    names = as_names(name, value, choices)
    if len(names) != 1: raise ParameterError(f"parameter {name!r}: expected one of {sorted(choices)}, got {names}")
    return names[0]

def as_bool(name, value) -> bool:
    "`value` as a bool, also from 'true'/'false', 'yes'/'no' or 1/0 as plain papermill may pass them."
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, (bool, np.bool_)): return bool(value)
    if isinstance(value, (int, str)) and str(value).strip().lower() in words: return words[str(value).strip().lower()]
    raise ParameterError(f"parameter {name!r}: expected true or false, got {value!r}")

# %%
from fastcore.test import test_eq, test_fail
test_eq((as_folds("train_folds", "1,2"), as_names("models", "[resnet]", ["resnet", "small_cnn"])), ([1, 2], ["resnet"]))
test_eq([as_bool("deltas", v) for v in (True, "False", "yes")], [True, False, True])
test_fail(lambda: as_int("resnet_seeds", 0, 1), contains="'resnet_seeds': must be at least 1, got 0")

# %% [markdown]
# ## The fold protocol, as a parameter check
#
# A fold never has two roles: the model is chosen on validation and the test fold is touched once. `None` for a fold
# means "choose from the folds present" (notebook 00c fills it in).

# %%
#| export
def check_fold_roles(train_folds, val_fold, test_fold):
    "The protocol: validation, test and training folds never overlap."
    if val_fold is not None and val_fold == test_fold:
        raise ParameterError(f"parameters 'val_fold' and 'test_fold' are both {val_fold}: "
                             "model selection must not see the test fold")
    for role, fold in (("val_fold", val_fold), ("test_fold", test_fold)):
        if fold is not None and train_folds and fold in train_folds:
            raise ParameterError(f"parameter {role!r}={fold} is also in 'train_folds' {train_folds}: "
                                 "folds must not be shared")

def resolve_dataset(dataset=None) -> str:
    "The dataset to use: `dataset`, else $URBANSOUND_DATASET, else the hub id."
    ds = dataset if dataset not in (None, "") else os.environ.get(DATASET_ENV) or HUB_ID
    if not isinstance(ds, (str, os.PathLike)):
        raise ParameterError(f"parameter 'dataset': expected a hub id, a folder or 'synthetic', got {ds!r}")
    # a bare name would silently load whatever a hub cache holds under it
    if str(ds) != "synthetic" and "/" not in str(ds) and os.sep not in str(ds) and not Path(ds).expanduser().exists():
        raise ParameterError(f"parameter 'dataset': {str(ds)!r} is neither a folder nor a hub id (owner/name) "
                             "nor 'synthetic'")
    return str(ds)

# %%
from fastcore.test import test_fail
test_fail(lambda: resolve_dataset("somename"), contains="'somename' is neither a folder nor a hub id")
assert resolve_dataset("owner/name") == "owner/name" and resolve_dataset("synthetic") == "synthetic"

# %% [markdown]
# ## The shared parameters, once
#
# `StudyParams` holds the parameters every chapter shares, with their defaults, defined nowhere else. The runner
# passes them to every chapter (papermill adds them after the parameters cell), and `study_params(globals())` picks up
# whichever are set, there or by a reader who types `dataset = "/data/UrbanSound8K"` into the parameters cell.

# %%
#| export
LOG_MEL = dict(sample_rate=22050, n_mels=64, n_fft=1024, hop_length=512)  # the front end (notebook 02), defined here
BATCH_SIZE = 32                                  # training batches of every network
INFERENCE_BATCH = 16   # batches of validation, prediction and embeddings: on 2 CPU cores small ones stay in cache
                       # (1.4-3.4x the clips/s of 128, the same outputs; explanations, "time against validation")
FINETUNE_INITS = ("probe", "random")             # the head fine-tuning starts from: the fitted probe's, or a new one

@dataclass
class StudyParams:
    "The parameters shared by every chapter, checked."
    dataset: str | None = None       # hub id, local folder (hub or official layout) or "synthetic"
    train_folds: list | None = None  # None: every fold that is neither validation nor test
    val_fold: int | None = None      # None: the second-to-last fold present
    test_fold: int | None = None     # None: the last fold present
    sample_rate: int = LOG_MEL["sample_rate"]  # Hz, every clip is resampled to this rate
    n_mels: int = LOG_MEL["n_mels"]            # mel bands of the log-mel front end
    n_fft: int = LOG_MEL["n_fft"]              # its STFT window, samples (46 ms at 22.05 kHz)
    hop_length: int = LOG_MEL["hop_length"]    # its STFT hop, samples (23 ms at 22.05 kHz)
    clip_seconds: float = 4.0        # the length every clip is padded or cropped to
    seed: int = 0
    max_items: int | None = None     # None: every clip; a number: a stratified subset, for quick runs
    models: list | None = None       # registry models to train, cross-validate and choose among; None: every one
    epochs: int = 30                 # epochs of SmallAudioCNN, and the most of any network trained from scratch
    resnet_seeds: int = 2            # `resnet` averages this many UrbanResNet trainings, seeds seed, seed+1, ...
    resnet_epochs: int = 20          # epochs of each UrbanResNet training, at most `epochs`
    patience: int = 10               # UrbanResNet stops after this many epochs without a better validation accuracy
    finetune_epochs: int = 3         # epochs of fine-tuning the pretrained network from its probe
    finetune_seeds: int = 3          # `finetune_ensemble` averages this many fine-tunings, seeds seed, seed+1, ...
    n_mfcc: int = 40                 # MFCC coefficients of the engineered features (their statistics: 03, 09)
    deltas: bool = True              # the engineered features add statistics of the MFCC deltas
    train_fraction: float = 1.0      # every model trains on this share of each class's training recordings (whole ones)
    multicrop: bool = True           # networks score a clip longer than their input by averaging its windows
    batch_size: int = BATCH_SIZE     # training batches
    selection_folds: int = 2         # validation rotates over this many non-test folds (notebook 03b); 1: one fold
    network: str = "mn04_as"         # the pretrained network: EfficientAT mn04_as, mn10_as or mn20_as
    weights: str | None = None       # its weights file or folder; None: $URBANSOUND_PRETRAINED, else the download
    finetune_init: str = "probe"     # fine-tuning starts from the fitted probe's head, or a "random" one
    scheduler: str | None = None     # where trainings run: None here; "local:N" processes; "tcp://host:8786" (04d)
    cell_threads: int | None = None  # torch threads per grid cell; None: the scheduler's share of the cores
    strict_audio: bool = False       # True: a clip that cannot be decoded stops the run; False: it is skipped, named
    run_dir: Path = Path("../runs/notebook")  # relative to nbs/, where chapters run
    cache_dir: Path = Path("../cache")

    def __post_init__(self):
        self.dataset = resolve_dataset(self.dataset)
        self.train_folds = None if self.train_folds is None else as_folds("train_folds", self.train_folds)
        self.val_fold = None if self.val_fold is None else as_int("val_fold", self.val_fold, 1, 10)
        self.test_fold = None if self.test_fold is None else as_int("test_fold", self.test_fold, 1, 10)
        self.sample_rate = as_int("sample_rate", self.sample_rate, 4000, 192000)
        self.n_fft = as_int("n_fft", self.n_fft, 16, 65536)
        self.n_mels = as_int("n_mels", self.n_mels, 1, self.n_fft // 2 + 1)
        self.hop_length = as_int("hop_length", self.hop_length, 1, self.n_fft)
        self.seed = as_int("seed", self.seed, 0)
        self.max_items = None if self.max_items is None else as_int("max_items", self.max_items, 1)
        self.models = None if self.models in (None, "", "null") else [str(m) for m in _as_list(self.models)]
        self.epochs = as_int("epochs", self.epochs, 1, 10000)
        self.resnet_seeds = as_int("resnet_seeds", self.resnet_seeds, 1, 100)
        self.resnet_epochs = as_int("resnet_epochs", self.resnet_epochs, 1, 10000)
        self.patience = as_int("patience", self.patience, 1, 10000)
        self.finetune_epochs = as_int("finetune_epochs", self.finetune_epochs, 1, 10000)
        self.finetune_seeds = as_int("finetune_seeds", self.finetune_seeds, 1, 100)
        # the cepstrum of n_mels bands has at most n_mels coefficients
        self.n_mfcc = as_int("n_mfcc", self.n_mfcc, 1, self.n_mels)
        self.deltas = as_bool("deltas", self.deltas)
        self.train_fraction = as_fraction("train_fraction", self.train_fraction)
        self.multicrop = as_bool("multicrop", self.multicrop)
        self.batch_size = as_int("batch_size", self.batch_size, 1)
        self.selection_folds = as_int("selection_folds", self.selection_folds, 1, 9)
        self.finetune_init = as_name("finetune_init", self.finetune_init, FINETUNE_INITS)
        self.cell_threads = None if self.cell_threads is None else as_int("cell_threads", self.cell_threads, 1)
        self.strict_audio = as_bool("strict_audio", self.strict_audio)
        self.clip_seconds = _as_seconds(self.clip_seconds)
        self.run_dir, self.cache_dir = Path(self.run_dir), Path(self.cache_dir)
        check_fold_roles(self.train_folds, self.val_fold, self.test_fold)

    @property
    def split(self) -> dict:
        "The fold roles, as `fold_split` takes them."
        return dict(train_folds=self.train_folds, val_fold=self.val_fold, test_fold=self.test_fold)

def _as_seconds(value) -> float:
    try: out = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"parameter 'clip_seconds': expected seconds, got {value!r}") from None
    if not 0.1 <= out <= 30: raise ParameterError(f"parameter 'clip_seconds': {out} is outside 0.1..30 s")
    return out

SHARED = tuple(f.name for f in fields(StudyParams))

def validate_params(**values) -> StudyParams:
    "Check the shared parameters given by name and return them as `StudyParams`; an unknown name is an error."
    unknown = sorted(set(values) - set(SHARED))
    if unknown: raise ParameterError(f"unknown parameter(s) {unknown}; known: {list(SHARED)}")
    return StudyParams(**values)

def study_params(namespace: dict) -> StudyParams:
    "The checked `StudyParams` of a chapter: the shared names its `parameters` cell defined in `namespace`."
    return validate_params(**{k: namespace[k] for k in SHARED if k in namespace})

# %%
test_fail(lambda: validate_params(val_fold=3, test_fold=3), contains="must not see the test fold")
test_eq(validate_params(train_folds="1,2").train_folds, [1, 2])

# %% [markdown]
# ## Test mode
#
# `nbdev-test` sets `IN_TEST` and runs every notebook offline and quickly: one call after the parameters cell gives it
# the synthetic stand-in, temporary folders and the chapter's short settings; a normal run is untouched.

# %%
#| export
def use_test_values(namespace: dict, **overrides) -> bool:
    "Under nbdev-test (`IN_TEST` set): the synthetic data, temporary run and cache folders, and `overrides`."
    if not os.environ.get("IN_TEST"): return False
    namespace.update(dataset="synthetic", run_dir=tempfile.mkdtemp(), cache_dir=tempfile.mkdtemp(), **overrides)
    return True

# %%
_ns = dict(dataset="danavery/urbansound8K", epochs=30)
test_eq(use_test_values(_ns, epochs=2) == bool(os.environ.get("IN_TEST")), True)
if os.environ.get("IN_TEST"): test_eq((_ns["dataset"], _ns["epochs"]), ("synthetic", 2))

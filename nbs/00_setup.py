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
# # Setup: parameters, reproducibility and the data layer
#
# > One function turns a hub id, a local folder or a synthetic stand-in into the same UrbanSound8K table, and folds are split the way the dataset's authors require.

# %% [markdown]
# UrbanSound8K (Salamon, Jacoby and Bello, 2014) has 8,732 labelled clips of at most 4 s from
# ten urban sound classes, pre-sorted into **ten folds**. Clips cut from the same recording
# always share a fold, so the folds are the only honest way to split: reshuffling clips across
# folds puts near-duplicates on both sides of the split and inflates accuracy by ten points or
# more. Everything in this study therefore works fold by fold:
#
# * the model is **chosen on a validation fold**,
# * the **test fold is touched once**, after every choice is made,
# * the official figure is **10-fold cross-validation** (notebook 07).
#
# This notebook defines what every later one uses: the parameters and their validation,
# seeding and device detection, the run directory with its results files, and the data layer.

# %%
#| export
from __future__ import annotations

import io, json, os, random, socket, tempfile, threading, time, warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import TqdmWarning

# `datasets` and `huggingface_hub` use tqdm.auto, which in a kernel without ipywidgets warns
# "IProgress not found" into every executed notebook and falls back to the text bar we want anyway
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

# %% [markdown]
# ## Parameters
#
# Every notebook starts with one cell tagged `parameters`. papermill replaces its values when
# the notebook runs headless (`urbansound-nb run -p NAME VALUE`), so the names below are shared
# by all notebooks. `None` for a fold means "choose from the folds present": test on the last,
# validate on the one before, train on the rest (folds 1-8 / 9 / 10 on the full dataset).

# %% tags=["parameters"]
dataset = None          # hub id, local folder (hub or official layout) or "synthetic"; None: $URBANSOUND_DATASET, else the hub id
train_folds = None      # e.g. [1, 2]; None: every fold that is neither validation nor test
val_fold = None         # None: the second-to-last fold present
test_fold = None        # None: the last fold present
sample_rate = 22050     # Hz, every clip is resampled to this rate
clip_seconds = 4.0      # the length every clip is padded or cropped to
seed = 0
max_items = None        # None: every clip; an integer: a stratified subset, for quick runs
epochs = 30             # used by the training notebooks
run_dir = "../runs/notebook"
cache_dir = "../cache"

# %%
#| hide
# nbdev-test (which sets IN_TEST) executes every notebook offline: it gets the synthetic stand-in.
if os.environ.get("IN_TEST"): dataset, run_dir, cache_dir = "synthetic", tempfile.mkdtemp(), tempfile.mkdtemp()

# %% [markdown]
# Parameters arrive from the command line as YAML (`-p train_folds "[1,2]"`), so they are
# checked here, once, with errors that name the parameter and what would be accepted.

# %%
#| export
HUB_ID = "danavery/urbansound8K"
DATASET_ENV = "URBANSOUND_DATASET"  # the documented way to point every notebook at a local copy
COLUMNS = ("audio", "slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
URBANSOUND_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                      "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")
ALL_FOLDS = tuple(range(1, 11))

class ParameterError(ValueError):
    "A notebook parameter has a value the study cannot use."

# %%
#| export
def as_int(name, value, lo=None, hi=None):
    "`value` as an int within [lo, hi], or a `ParameterError` naming `name` (also for the integer parameters of later notebooks)."
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, str)):
        raise ParameterError(f"parameter {name!r}: expected an integer, got {value!r}")
    try: out = int(str(value).strip()) if not isinstance(value, float) else int(value)
    except ValueError: raise ParameterError(f"parameter {name!r}: expected an integer, got {value!r}") from None
    if isinstance(value, float) and value != out:
        raise ParameterError(f"parameter {name!r}: expected an integer, got {value!r}")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        if lo is not None and hi is not None: raise ParameterError(f"parameter {name!r}: {out} is outside {lo}..{hi}")
        raise ParameterError(f"parameter {name!r}: must be at least {lo}, got {out}" if hi is None else
                             f"parameter {name!r}: must be at most {hi}, got {out}")
    return out

def as_folds(name, value):
    "A fold list from a list, a single fold or a string such as '1,2'."
    if isinstance(value, str): value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)): value = [value]
    folds = [as_int(name, v, 1, 10) for v in value]
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
    "A list of names out of `choices` from a list, one name, or a string such as '[a, b]' (how plain papermill's -p passes a list)."
    if isinstance(value, str): value = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ParameterError(f"parameter {name!r}: expected one or more of {sorted(choices)}, got {value!r}")
    unknown = [v for v in value if v not in choices]
    if unknown: raise ParameterError(f"parameter {name!r}: unknown {unknown}; choose from {sorted(choices)}")
    return list(value)

def as_bool(name, value) -> bool:
    "`value` as a bool (also from 'true'/'false', 'yes'/'no', 1/0, as plain papermill may pass them), or a `ParameterError` naming `name`."
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, (bool, np.bool_)): return bool(value)
    if isinstance(value, (int, str)) and str(value).strip().lower() in words: return words[str(value).strip().lower()]
    raise ParameterError(f"parameter {name!r}: expected true or false, got {value!r}")

def as_name(name, value, choices) -> str:
    "One name out of `choices`, or a `ParameterError` naming the parameter."
    names = as_names(name, value, choices)
    if len(names) != 1: raise ParameterError(f"parameter {name!r}: expected one of {sorted(choices)}, got {names}")
    return names[0]

# %%
#| export
@dataclass
class Params:
    "The parameters shared by every notebook, validated."
    dataset: str = HUB_ID
    train_folds: list | None = None
    val_fold: int | None = None
    test_fold: int | None = None
    sample_rate: int = 22050
    clip_seconds: float = 4.0
    seed: int = 0
    max_items: int | None = None
    epochs: int = 30
    run_dir: Path = Path("runs/notebook")
    cache_dir: Path = Path("cache")

def resolve_dataset(dataset=None):
    "The dataset to use: `dataset`, else $URBANSOUND_DATASET, else the hub id."
    ds = dataset if dataset not in (None, "") else os.environ.get(DATASET_ENV) or HUB_ID
    if not isinstance(ds, (str, os.PathLike)):
        raise ParameterError(f"parameter 'dataset': expected a hub id, a folder or 'synthetic', got {ds!r}")
    return str(ds)

# %%
#| export
def validate_params(dataset=None, train_folds=None, val_fold=None, test_fold=None, sample_rate=22050,
                    clip_seconds=4.0, seed=0, max_items=None, epochs=30, run_dir="runs/notebook",
                    cache_dir="cache", **extra) -> Params:
    "Check the shared parameters and return them as `Params`; unknown names are an error."
    if extra: raise ParameterError(f"unknown parameter(s) {sorted(extra)}; known: {[f for f in Params.__dataclass_fields__]}")
    p = Params(dataset=resolve_dataset(dataset),
               train_folds=None if train_folds is None else as_folds("train_folds", train_folds),
               val_fold=None if val_fold is None else as_int("val_fold", val_fold, 1, 10),
               test_fold=None if test_fold is None else as_int("test_fold", test_fold, 1, 10),
               sample_rate=as_int("sample_rate", sample_rate, 4000, 192000), seed=as_int("seed", seed, 0),
               max_items=None if max_items is None else as_int("max_items", max_items, 1),
               epochs=as_int("epochs", epochs, 1, 10000), run_dir=Path(run_dir), cache_dir=Path(cache_dir))
    try: p.clip_seconds = float(clip_seconds)
    except (TypeError, ValueError): raise ParameterError(f"parameter 'clip_seconds': expected seconds, got {clip_seconds!r}") from None
    if not 0.1 <= p.clip_seconds <= 30: raise ParameterError(f"parameter 'clip_seconds': {p.clip_seconds} is outside 0.1..30 s")
    check_fold_roles(p.train_folds, p.val_fold, p.test_fold)
    return p

def check_fold_roles(train_folds, val_fold, test_fold):
    "The protocol: validation, test and training folds never overlap."
    if val_fold is not None and val_fold == test_fold:
        raise ParameterError(f"parameters 'val_fold' and 'test_fold' are both {val_fold}: model selection must not see the test fold")
    for role, f in (("val_fold", val_fold), ("test_fold", test_fold)):
        if f is not None and train_folds and f in train_folds:
            raise ParameterError(f"parameter {role!r}={f} is also in 'train_folds' {train_folds}: folds must not be shared")

# %%
params = validate_params(dataset, train_folds, val_fold, test_fold, sample_rate, clip_seconds,
                         seed, max_items, epochs, run_dir, cache_dir)
params

# %% [markdown]
# Bad values fail with the parameter's name:

# %%
from fastcore.test import test_fail, test_eq
test_fail(lambda: validate_params(val_fold=3, test_fold=3), contains="must not see the test fold")
test_fail(lambda: validate_params(train_folds=[1, 2], test_fold=2), contains="'test_fold'=2 is also in 'train_folds'")
test_fail(lambda: validate_params(val_fold="nine"), contains="'val_fold': expected an integer")
test_fail(lambda: validate_params(epochs=0), contains="outside 1..10000")
test_fail(lambda: as_int("resnet_seeds", 0, 1), contains="'resnet_seeds': must be at least 1, got 0")
test_fail(lambda: validate_params(clip_seconds="long"), contains="'clip_seconds'")
test_fail(lambda: validate_params(lr=0.1), contains="unknown parameter")
# list parameters of later notebooks: `urbansound-nb run` passes YAML lists, plain papermill `-p` a string
test_eq(as_names("models", "[resnet, 'small_cnn']", ["resnet", "small_cnn"]), ["resnet", "small_cnn"])
test_eq(as_names("models", ["resnet"], ["resnet", "small_cnn"]), ["resnet"]); test_eq(as_names("models", "resnet", ["resnet"]), ["resnet"])
test_fail(lambda: as_names("models", "[vgg]", ["resnet"]), contains="parameter 'models': unknown ['vgg']")
test_fail(lambda: as_names("models", "[]", ["resnet"]), contains="expected one or more")
test_eq([as_bool("deltas", v) for v in (True, "False", "yes", 0, np.True_)], [True, False, True, False, True])
test_fail(lambda: as_bool("deltas", "maybe"), contains="parameter 'deltas': expected true or false, got 'maybe'")
test_eq(as_name("model", "resnet", ["resnet", "small_cnn"]), "resnet")
test_fail(lambda: as_name("model", "vgg", ["resnet"]), contains="parameter 'model': unknown ['vgg']")
test_fail(lambda: as_name("model", ["resnet", "resnet"], ["resnet"]), contains="expected one of ['resnet']")
test_eq(validate_params(train_folds="1,2").train_folds, [1, 2])
test_eq(validate_params(train_folds=3).train_folds, [3])

# %% [markdown]
# ## Reproducibility, device and run directory
#
# One seed drives Python, NumPy and PyTorch. The device is the best one present: CUDA, then
# Apple's MPS, then the CPU; everything in the study also runs on two CPU cores.
#
# On the CPU a seeded training repeats exactly. On a GPU it does not by default: some of
# cuDNN's convolution algorithms (those of the backward pass in particular) add partial sums
# in a varying order. On an H100, two seed-0 trainings of each model on the mini data went
# different ways (best validation accuracy 59.8% and 60.8% for UrbanResNet, 52.9% and 52.7% for
# SmallAudioCNN). With cuDNN held to its deterministic algorithms, and its benchmark mode (which
# picks algorithms by timing them) off, they matched epoch for epoch at about the same speed
# (7.8 s against 7.4 s for 20 UrbanResNet epochs), so `seed_everything` sets both.

# %%
#| export
def seed_everything(seed: int = 0):
    "Seed Python, NumPy and PyTorch (all devices) from one integer, with cuDNN's deterministic algorithms."
    random.seed(seed); np.random.seed(seed % 2**32); torch.manual_seed(seed)
    if torch.cuda.is_available(): torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # repeatable GPU trainings, at no measured cost
    return seed

def pick_device(prefer: str | None = None) -> torch.device:
    "`prefer` if given, else CUDA, then MPS, then CPU."
    if prefer: return torch.device(prefer)
    if torch.cuda.is_available(): return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(): return torch.device("mps")
    return torch.device("cpu")

# %%
seed_everything(params.seed)
a = torch.rand(3); seed_everything(params.seed); test_eq(a, torch.rand(3))
assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
device = pick_device()
print("device:", device, "| torch", torch.__version__, "| threads", torch.get_num_threads())

# %% [markdown]
# Each run writes into one directory: the executed notebooks, `results/NN_name.json` per
# notebook, and `models/` for checkpoints. Files are written atomically (a temporary file
# renamed into place), so an interrupted run never leaves half a results file behind.

# %%
#| export
def make_run_dir(run_dir) -> Path:
    "Create the run directory with its `results/` and `models/` folders."
    run_dir = Path(run_dir).expanduser()
    for sub in ("", "results", "models"): (run_dir/sub).mkdir(parents=True, exist_ok=True)
    return run_dir

def _jsonable(o):
    if isinstance(o, (np.integer,)): return int(o)
    if isinstance(o, (np.floating,)): return float(o)
    if isinstance(o, np.ndarray): return o.tolist()
    if isinstance(o, (Path, torch.device)): return str(o)
    if isinstance(o, torch.Tensor): return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")

# %%
#| export
def atomic_write_bytes(path, data: bytes):
    "Write `data` to `path` through a temporary file and a rename: readers never see half a file."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f: f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True); raise
    return path

def save_json(obj, path):
    "Write `obj` as indented JSON, atomically."
    return atomic_write_bytes(path, json.dumps(obj, indent=2, default=_jsonable).encode())

# %%
#| export
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

# %% [markdown]
# ## Decoding audio
#
# The real dataset mixes formats: 8-bit unsigned to 32-bit float WAV, 8 to 96 kHz, mono and
# stereo, clips from a few milliseconds to 4 s. `soundfile` (libsndfile) reads all of them, and
# OGG and FLAC too. Every clip becomes float32 mono at its own rate; resampling comes in
# notebook 02. Bytes that cannot be decoded raise an error that names the clip.

# %%
#| export
class AudioDecodeError(ValueError):
    "Audio bytes that soundfile cannot turn into samples."

def decode_audio(data: bytes, name: str = "clip") -> tuple[np.ndarray, int]:
    "Decode audio bytes of any format soundfile reads to (float32 mono samples, sample rate)."
    if data is None or len(data) == 0: raise AudioDecodeError(f"{name}: the audio is empty (0 bytes)")
    try: samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioDecodeError(f"{name}: soundfile cannot decode these {len(data)} bytes ({e}); "
                               "the file is corrupt or in a format libsndfile does not read") from None
    if samples.shape[0] == 0: raise AudioDecodeError(f"{name}: the file holds no samples")
    return samples.mean(axis=1, dtype=np.float32), int(rate)

# %%
#| export
def audio_file(audio: dict | None) -> str | None:
    "The path of a clip held as a file (a path and no bytes, as the official layout gives), else None."
    return audio["path"] if audio and audio.get("bytes") is None and audio.get("path") else None

def audio_bytes(audio: dict, name: str = "clip") -> bytes:
    "The encoded bytes of an `audio` cell ({bytes, path}), read from `path` when `bytes` is absent."
    if audio is None: raise AudioDecodeError(f"{name}: no audio")
    path, data = audio_file(audio), audio.get("bytes")
    if path and Path(path).is_file(): data = Path(path).read_bytes()
    if data is None: raise AudioDecodeError(f"{name}: neither bytes nor a readable path ({audio.get('path')!r})")
    return data

def decode_row(row: dict) -> tuple[np.ndarray, int]:
    "Decode the audio of one dataset row, naming the clip in any error."
    name = row.get("slice_file_name", "clip")
    return decode_audio(audio_bytes(row["audio"], name), name)

# %%
test_eq(audio_file(dict(bytes=None, path="/data/a.wav")), "/data/a.wav")
test_eq(audio_file(dict(bytes=b"RIFF", path="a.wav")), None); test_eq(audio_file(dict(bytes=None, path=None)), None)
test_fail(lambda: audio_bytes(dict(bytes=None, path="/nowhere/a.wav"), "a.wav"), contains="a.wav: neither bytes nor a readable path")

# %% [markdown]
# The reverse, `encode_audio`, makes test clips in any format soundfile writes:

# %%
#| export
def encode_audio(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    "Encode samples ([n] or [n, channels]) as audio-file bytes; the same samples always give the same bytes."
    buf = io.BytesIO(); sf.write(buf, samples, rate, format=fmt, subtype=subtype); data = bytearray(buf.getvalue())
    # libsndfile stamps the PEAK chunk of float WAV/AIFF files with the current time; zero the stamp so that
    # identical audio hashes identically (the feature cache is keyed by content). The chunk sits in the header,
    # before the samples: search only there, so that sample bytes that happen to spell PEAK are never touched.
    peak = data.find(b"PEAK", 0, 512) if subtype in ("FLOAT", "DOUBLE") else -1
    if peak >= 0: data[peak + 12:peak + 16] = bytes(4)
    return bytes(data)

# %%
tone = np.sin(2*np.pi*440*np.arange(8000)/8000).astype(np.float32)*0.5
x, r = decode_audio(encode_audio(np.stack([tone, tone], 1), 8000, subtype="PCM_U8"), "u8-stereo.wav")
test_eq((x.shape, x.dtype, r), ((8000,), np.float32, 8000))
assert np.abs(x - tone).max() < 0.02  # 8-bit quantisation
f1 = encode_audio(tone, 8000, subtype="FLOAT"); time.sleep(1.1)
test_eq(encode_audio(tone, 8000, subtype="FLOAT"), f1)  # deterministic, although libsndfile time-stamps float WAVs
test_fail(lambda: decode_audio(b"", "empty.wav"), contains="empty.wav: the audio is empty")
test_fail(lambda: decode_audio(b"RIFF\x00garbage" * 10, "bad.wav"), contains="bad.wav: soundfile cannot decode")

# %% [markdown]
# ## A synthetic stand-in
#
# Tests and offline demos need data that is always there. `synthetic_urbansound` generates ten
# classes of **synthetic** sounds, one per UrbanSound8K class name (a hum for the air
# conditioner, a two-tone horn, a swept siren, impulses for the gun shot, ...), with the same
# columns and folds, random durations, rates and formats. It is clearly no substitute for the
# real data: its file names start with `synthetic-` and every notebook says when it is in use.

# %%
#| export
def _synthetic_sound(cls: int, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    "One clip of synthetic class `cls`: distinguishable by spectrum and rhythm, varied by `rng`."
    t = np.arange(n) / rate; f = rng.uniform(0.85, 1.15)  # pitch jitter
    noise = rng.standard_normal(n)
    if cls == 0: x = np.convolve(noise, np.ones(40)/40, "same")*3 + 0.3*np.sin(2*np.pi*120*f*t)      # hum
    elif cls == 1: x = np.sin(2*np.pi*420*f*t) + np.sin(2*np.pi*520*f*t) + 0.3*np.sin(2*np.pi*1040*f*t)  # horn
    elif cls == 2: x = np.sin(2*np.pi*(1500*f + 700*np.sin(2*np.pi*3*t))*t)                          # chirps
    elif cls == 3: x = np.sin(2*np.pi*600*f*t) * (np.sin(2*np.pi*2*t) > 0.6) * np.exp(-((t*2) % 1)*4)  # barks
    elif cls == 4: x = np.sin(2*np.pi*2400*f*t) * (0.6 + 0.4*np.sin(2*np.pi*35*t))                   # drill
    elif cls == 5: x = np.sign(np.sin(2*np.pi*45*f*t)) * 0.5 + 0.1*noise                               # engine
    elif cls == 6: x = noise * np.exp(-t*12)                                                            # shot
    elif cls == 7: x = noise * (np.sin(2*np.pi*11*f*t) > 0.3)                                           # hammer
    elif cls == 8: x = np.sin(2*np.pi*np.cumsum(900*f + 300*np.sin(2*np.pi*0.5*t))/rate)             # siren
    else: x = sum(np.sin(2*np.pi*h*f*t) for h in (262, 330, 392)) * (1 + np.sin(2*np.pi*1.5*t))/2     # music
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.9)
    return (x + 0.01*rng.standard_normal(n)).astype(np.float32)

# %%
#| export
_SYNTH_FORMATS = (("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"), ("FLAC", "PCM_16"), ("WAV", "PCM_U8"))

def synthetic_urbansound(clips_per_class_fold: int = 3, folds: Sequence[int] = ALL_FOLDS, seed: int = 0):
    "A small dataset of ten synthetic sound classes with UrbanSound8K's columns and folds."
    rng, rows = np.random.default_rng(seed), []
    for fold in folds:
        for cls, name in enumerate(URBANSOUND_CLASSES):
            for k in range(clips_per_class_fold):
                rate, secs = int(rng.choice([8000, 16000, 22050])), float(rng.choice([0.5, 1.5, 2.5, 4.0]))
                x = _synthetic_sound(cls, int(rate*secs), rate, rng)
                if k % 4 == 3: x = np.stack([x, x*0.8], 1)  # some stereo
                fmt, sub = _SYNTH_FORMATS[(fold + cls + k) % len(_SYNTH_FORMATS)]
                fs_id = 900000 + fold*1000 + cls*10 + k
                rows.append(dict(audio=dict(bytes=encode_audio(x, rate, fmt, sub), path=f"synthetic-{fs_id}-{cls}-0-0.{fmt.lower()}"),
                                 slice_file_name=f"synthetic-{fs_id}-{cls}-0-0.wav", fsID=fs_id, start=0.0, end=secs,
                                 salience=1 + (k % 2), fold=fold, classID=cls, **{"class": name}))
    return _dataset_from_rows(rows, description="SYNTHETIC stand-in for UrbanSound8K (generated, not real audio)")

# %% [markdown]
# `datasets` 5 would need torchcodec to encode or decode audio, so the table is built from
# plain dicts of `{bytes, path}` with `Audio(decode=False)`: `datasets` stores the bytes and
# never decodes them; `decode_audio` does. (`Dataset.from_pandas` cannot cast pandas 3 strings
# to `Audio`; `from_dict` with explicit features can.)

# %%
#| export
def _features(audio=None):
    from datasets import Audio, Features, Value
    audio = audio or Audio(decode=False)
    return Features(dict(audio=audio, slice_file_name=Value("string"), fsID=Value("int64"),
                         start=Value("float64"), end=Value("float64"), salience=Value("int64"),
                         fold=Value("int64"), classID=Value("int64"), **{"class": Value("string")}))

def _dataset_from_rows(rows: list[dict], description: str = ""):
    "A `datasets.Dataset` with UrbanSound8K's columns from a list of row dicts."
    from datasets import Audio, Dataset, Value
    cols = {c: [r[c] for r in rows] for c in COLUMNS}
    # a plain {bytes, path} struct first: giving `Audio` to from_dict would encode, which needs torchcodec
    ds = Dataset.from_dict(cols, features=_features({"bytes": Value("binary"), "path": Value("string")}))
    ds = ds.cast_column("audio", Audio(decode=False))
    ds.info.description = description
    return ds

def is_synthetic(ds) -> bool: return "SYNTHETIC" in (ds.info.description or "")

# %%
synth = synthetic_urbansound(clips_per_class_fold=1, folds=[1, 2])
test_eq(synth.column_names, list(COLUMNS)); test_eq(len(synth), 20); assert is_synthetic(synth)
x, r = decode_row(synth[0]); print(synth[0]["slice_file_name"], x.shape, r)

# %% [markdown]
# ## Loading UrbanSound8K from anywhere
#
# `load_urbansound` takes one string and always returns the same table:
#
# 1. **a hub id** (default `danavery/urbansound8K`), fetched by `datasets.load_dataset`;
#    fallback ids in `$URBANSOUND_HUB_FALLBACKS` (comma-separated) are tried in order;
# 2. **a local folder in the hub layout** (parquet shards), such as a downloaded hub copy;
# 3. **a folder in the official layout**, `metadata/UrbanSound8K.csv` + `audio/foldN/*.wav`,
#    exactly what the official download unpacks to; the table holds each file's absolute path
#    and the bytes are read when a clip is needed (on a stand-in of the release's size and formats,
#    holding the bytes took 13 GB of memory and 39 s in every notebook; paths take 0.6 GB and 2.5 s);
# 4. **`synthetic`**, the stand-in above.
#
# The hub is checked first with a three-second connection test: offline, `load_dataset`
# would otherwise spend about 24 s before failing. A copy already in the local Hugging Face
# cache is still used offline.

# %%
#| export
class DatasetUnavailable(RuntimeError):
    "The dataset cannot be loaded from the given source; the message says what to do instead."

def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    "Why the Hugging Face hub cannot be reached (None when it can), decided within `timeout` s."
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""): return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlparse
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port, err = url.hostname, url.port or (443 if url.scheme == "https" else 80), []
    def _probe():
        try: socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e: err.append(f"cannot connect to {host}:{port} ({e})")
    t = threading.Thread(target=_probe, daemon=True); t.start(); t.join(timeout + 0.5)  # DNS has no timeout of its own
    return err[0] if err else (f"no answer from {host}:{port} within {timeout:.0f} s" if t.is_alive() else None)

# %%
#| export
_LOCAL_HELP = ("Point the study at a local copy instead: dataset='/path/to/UrbanSound8K' (the official download, "
               "with metadata/UrbanSound8K.csv and audio/foldN/) or a folder in the hub layout; on the command line "
               f"`urbansound-nb run -p dataset /path` or ${DATASET_ENV}=/path; or dataset='synthetic' for an offline demo.")

def _load_hub_cached(hub_id: str):
    "Load `hub_id` from the local Hugging Face cache only (offline mode)."
    import datasets, huggingface_hub.constants as hfc
    old = datasets.config.HF_HUB_OFFLINE, hfc.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hfc.HF_HUB_OFFLINE = True
    try: return datasets.load_dataset(hub_id, split="train")
    finally: datasets.config.HF_HUB_OFFLINE, hfc.HF_HUB_OFFLINE = old

# %%
#| export
def load_hub(hub_id: str = HUB_ID, fallbacks: Sequence[str] | None = None):
    "Load the train split of `hub_id` (then each fallback id), failing fast and clearly when offline."
    import datasets
    if fallbacks is None: fallbacks = [s.strip() for s in os.environ.get("URBANSOUND_HUB_FALLBACKS", "").split(",") if s.strip()]
    offline, failures = hub_unreachable_reason(), []
    for hid in [hub_id, *[f for f in fallbacks if f != hub_id]]:
        try: ds = _load_hub_cached(hid) if offline else datasets.load_dataset(hid, split="train")
        except Exception as e:
            failures.append(f"  {hid}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"); continue
        return ds
    why = f"the Hugging Face hub is unreachable ({offline}) and no local cache holds it" if offline else "loading failed"
    raise DatasetUnavailable(f"Cannot load UrbanSound8K from the hub: {why}.\n" + "\n".join(failures) + "\n" + _LOCAL_HELP)

# %%
#| export
def load_official(root) -> "datasets.Dataset":
    "Load a folder in the official layout: metadata/UrbanSound8K.csv and audio/foldN/<slice_file_name>."
    root = Path(root).expanduser().absolute(); csv = root/"metadata"/"UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    missing = [c for c in COLUMNS if c != "audio" and c not in meta.columns]
    if missing: raise DatasetUnavailable(f"{csv}: missing column(s) {missing}; expected the official header {list(COLUMNS[1:])}")
    rows, absent = [], []
    for r in meta.to_dict("records"):
        wav = root/"audio"/f"fold{int(r['fold'])}"/r["slice_file_name"]
        if not wav.is_file(): absent.append(str(wav.relative_to(root))); continue
        # the path only: reading the bytes here would hold the whole download (about 6 GB) in memory
        # in every notebook; `audio_bytes` reads each file when a clip is needed
        rows.append(dict(r, audio=dict(bytes=None, path=str(wav))))
    if absent: raise DatasetUnavailable(f"{root}: {len(absent)} clip(s) listed in the metadata are missing, e.g. {absent[:3]}")
    if not rows: raise DatasetUnavailable(f"{csv} lists no clips")
    return _dataset_from_rows(rows, description=f"UrbanSound8K, official layout at {root}")

# %%
#| export
def load_hub_layout(folder) -> "datasets.Dataset":
    "Load a local folder in the hub layout (parquet shards with a `train` split)."
    import datasets
    try: dd = datasets.load_dataset(str(folder))
    except Exception as e: raise DatasetUnavailable(f"{folder}: not a dataset folder datasets can read ({type(e).__name__}: {e})") from None
    return dd["train"] if "train" in dd else datasets.concatenate_datasets(list(dd.values()))

# %%
#| export
def check_columns(ds, source: str):
    "Keep UrbanSound8K's columns, in order, with raw (undecoded) audio; name any that are missing."
    from datasets import Audio
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing: raise DatasetUnavailable(f"{source}: missing column(s) {missing}; found {ds.column_names}, expected {list(COLUMNS)}")
    ds = ds.select_columns(list(COLUMNS))
    if not (isinstance(ds.features["audio"], Audio) and not ds.features["audio"].decode):
        ds = ds.cast_column("audio", Audio(decode=False))  # bytes stay bytes; soundfile decodes them
    if len(ds) == 0: raise DatasetUnavailable(f"{source}: the dataset has no rows")
    return ds

# %% [markdown]
# `max_items` keeps a stratified subset, so a quick run still sees every class in every fold.

# %%
#| export
def metadata_frame(ds) -> pd.DataFrame:
    "Every column but the audio, as a DataFrame (cheap: the audio bytes are not read)."
    return ds.select_columns([c for c in COLUMNS if c != "audio"]).to_pandas()

def stratified_subset(ds, max_items: int | None, seed: int = 0):
    "At most `max_items` rows, sampled evenly across (fold, class), reproducible from `seed`."
    if max_items is None or max_items >= len(ds): return ds
    meta = metadata_frame(ds).reset_index()
    meta["key"] = np.random.default_rng(seed).random(len(meta))
    meta = meta.sort_values("key")
    meta["rank"] = meta.groupby(["fold", "classID"]).cumcount()
    groups = meta.drop_duplicates(["fold", "classID"])[["fold", "classID"]]
    groups["group_order"] = groups.groupby("classID").cumcount()
    meta = meta.merge(groups, on=["fold", "classID"])
    # round-robin: one clip of every class first, then of every (fold, class) group, then seconds, ...
    keep = meta.sort_values(["rank", "group_order", "key"]).head(max_items)["index"]
    return ds.select(sorted(keep.tolist()))

# %%
#| export
def load_urbansound(source: str | None = None, max_items: int | None = None, seed: int = 0):
    "UrbanSound8K as a `datasets.Dataset` with columns `COLUMNS`, from a hub id, a folder or 'synthetic'."
    source = resolve_dataset(source)
    if source == "synthetic": ds = synthetic_urbansound(seed=seed)
    elif Path(source).expanduser().exists():
        root = Path(source).expanduser()
        if not root.is_dir(): raise DatasetUnavailable(f"{root}: expected a folder (hub or official layout), got a file")
        ds = load_official(root) if (root/"metadata"/"UrbanSound8K.csv").is_file() else load_hub_layout(root)
    elif source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise DatasetUnavailable(f"{source}: no such folder. " + _LOCAL_HELP)
    else: ds = load_hub(source)
    return stratified_subset(check_columns(ds, source), max_items, seed)

# %%
test_fail(lambda: load_urbansound("/no/such/folder"), contains="no such folder")
with tempfile.TemporaryDirectory() as d:
    (Path(d)/"metadata").mkdir(); pd.DataFrame({"slice_file_name": ["a.wav"], "fold": [1]}).to_csv(Path(d)/"metadata"/"UrbanSound8K.csv")
    test_fail(lambda: load_urbansound(d), contains="missing column(s) ['fsID'")
test_eq(len(stratified_subset(synth, 10)), 10)
test_eq(metadata_frame(stratified_subset(synth, 10))["classID"].nunique(), 10)

# %% [markdown]
# Now the dataset this run uses:

# %%
t0 = time.time()
ds = load_urbansound(params.dataset, params.max_items, params.seed)
load_seconds = time.time() - t0
print(f"{params.dataset}: {len(ds):,} clips in {load_seconds:.1f} s", "(SYNTHETIC stand-in)" if is_synthetic(ds) else "")
ds

# %% [markdown]
# ## Folds and labels
#
# Labels come from the data itself (`classID` -> `class`), and a split is only accepted if
# its folds are present and disjoint and no split is empty.

# %%
#| export
def class_names(ds) -> list[str]:
    "Class names indexed by classID, built from the data (UrbanSound8K's names fill any id absent here)."
    meta = metadata_frame(ds)[["classID", "class"]].drop_duplicates()
    clash = meta[meta.duplicated("classID", keep=False)]
    if len(clash): raise DatasetUnavailable(f"classID maps to several class names: {clash.values.tolist()}")
    names = dict(zip(meta["classID"], meta["class"]))
    return [names.get(i, URBANSOUND_CLASSES[i] if i < len(URBANSOUND_CLASSES) else f"class_{i}") for i in range(max(names) + 1)]

# %%
#| export
@dataclass
class FoldSplit:
    "Train/validation/test subsets of one dataset, chosen by fold."
    train: Any; val: Any; test: Any
    train_folds: list; val_fold: int; test_fold: int
    classes: list
    def items(self): return dict(train=self.train, val=self.val, test=self.test).items()

def default_folds(present: Sequence[int], train_folds=None, val_fold=None, test_fold=None):
    "Fill unset fold roles from the folds present: test the last, validate the one before, train on the rest."
    present = sorted(set(int(f) for f in present))
    if test_fold is None: test_fold = next(f for f in reversed(present) if f != val_fold) if present else None
    if val_fold is None: val_fold = next((f for f in reversed(present) if f != test_fold), None)
    if train_folds is None: train_folds = [f for f in present if f not in (val_fold, test_fold)]
    return list(train_folds), val_fold, test_fold

# %%
#| export
def fold_split(ds, train_folds=None, val_fold=None, test_fold=None) -> FoldSplit:
    "Split `ds` by fold under the UrbanSound8K protocol (folds disjoint, present, non-empty)."
    folds = np.asarray(ds["fold"]); present = sorted(set(folds.tolist()))
    train_folds, val_fold, test_fold = default_folds(present, train_folds, val_fold, test_fold)
    check_fold_roles(train_folds, val_fold, test_fold)
    absent = [f for f in [*train_folds, val_fold, test_fold] if f not in present]
    hint = f"this dataset has folds {present}; choose e.g. -p train_folds \"[1]\" -p val_fold 2 -p test_fold 3"
    if absent: raise ParameterError(f"fold(s) {absent} not in this dataset: {hint}")
    if val_fold is None or not train_folds: raise ParameterError(f"no fold is left for training: {hint}")
    idx = lambda fs: np.flatnonzero(np.isin(folds, fs)).tolist()
    return FoldSplit(ds.select(idx(train_folds)), ds.select(idx([val_fold])), ds.select(idx([test_fold])),
                     train_folds, val_fold, test_fold, class_names(ds))

# %%
#| export
def split_class_counts(split: FoldSplit) -> pd.DataFrame:
    "Clips per class in each split, with totals."
    counts = {name: pd.Series(sub["classID"]).value_counts() for name, sub in split.items()}
    df = pd.DataFrame(counts).reindex(range(len(split.classes))).fillna(0).astype(int)
    df.index = split.classes
    df.loc["total"] = df.sum()
    return df

# %%
# with only two folds, nothing is left to train on, and the error says so
test_fail(lambda: fold_split(synth), contains="no fold is left for training")
s = fold_split(synthetic_urbansound(1, folds=[1, 2, 3]))
test_eq((s.train_folds, s.val_fold, s.test_fold), ([1], 2, 3))
test_fail(lambda: fold_split(synth, [1], 2, 7), contains="fold(s) [7] not in this dataset")

# %% [markdown]
# A learning curve needs smaller training sets that keep the protocol: clips of one recording
# are near-duplicates, so a subset takes or leaves *whole recordings* (`fsID`), the same share of
# each class's recordings, never some clips of one.

# %%
#| export
def recording_subset(meta: pd.DataFrame, idx, fraction: float, seed: int = 0, name: str = "fraction") -> np.ndarray:
    "The rows `idx` of `meta` that belong to `fraction` of each class's recordings (at least one), chosen reproducibly from `seed`."
    fraction, idx = as_fraction(name, fraction), np.asarray(idx)
    if fraction == 1: return idx
    rows, rng, keep = meta.iloc[idx], np.random.default_rng(seed), []
    for cls, group in rows.groupby("classID"):
        recordings = rng.permutation(np.array(sorted(group["fsID"].unique())))
        keep += [(cls, r) for r in recordings[:max(1, round(len(recordings) * fraction))]]
    chosen = pd.MultiIndex.from_frame(rows[["classID", "fsID"]]).isin(keep)
    return idx[chosen]

# %%
_m = pd.DataFrame(dict(classID=[0] * 8 + [1] * 4, fsID=[1, 1, 2, 2, 3, 3, 4, 4, 9, 9, 8, 8]))
half = recording_subset(_m, np.arange(12), 0.5, seed=1)
test_eq(len(half), 6); test_eq(sorted(set(_m.classID[half])), [0, 1])          # every class kept
for r, g in _m.groupby("fsID"): assert set(g.index) <= set(half) or not set(g.index) & set(half)   # whole recordings only
test_eq(recording_subset(_m, np.arange(12), 0.5, seed=1), half)               # reproducible
test_eq(len(recording_subset(_m, np.arange(12), 0.01)), 4)                    # at least one recording per class
test_eq(recording_subset(_m, [3, 5], 1.0), [3, 5])
test_fail(lambda: recording_subset(_m, np.arange(12), 0, name="train_fraction"), contains="'train_fraction': expected a number in (0, 1]")
test_fail(lambda: recording_subset(_m, np.arange(12), 1.5), contains="got 1.5")
test_eq(as_fraction("f", "0.25"), 0.25); test_fail(lambda: as_fraction("f", True), contains="got True")

# %%
split = fold_split(ds, params.train_folds, params.val_fold, params.test_fold)
print(f"train folds {split.train_folds} | validation fold {split.val_fold} | test fold {split.test_fold}")
counts = split_class_counts(split)
counts

# %% [markdown]
# Decoding a clip of each split confirms the audio path end to end:

# %%
for name, sub in split.items():
    x, r = decode_row(sub[0])
    print(f"{name:5s} {sub[0]['slice_file_name']:28s} {sub[0]['class']:17s} {len(x)/r:5.2f} s at {r} Hz")

# %%
from dataclasses import asdict
make_run_dir(params.run_dir)
path = write_results(params.run_dir, "00_setup", {
    "dataset": dict(n_clips=len(ds), folds=sorted(set(ds["fold"])), classes=split.classes, synthetic=is_synthetic(ds),
                    load_seconds=round(load_seconds, 2)),
    "split": dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold,
                  n_train=len(split.train), n_val=len(split.val), n_test=len(split.test),
                  class_counts=counts.drop(index="total").to_dict())},
    dataset=params.dataset, device=str(device), torch=torch.__version__, params=asdict(params))
print("wrote", path)

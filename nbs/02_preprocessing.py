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
#| default_exp features

# %% [markdown]
# # Preprocessing: log-mel features, computed once
#
# > Decode, resample, log-mel: each clip once per feature setting, cached on disk; training never reads audio.

# %% [markdown]
# The starting notebook decoded and transformed every clip again on every epoch: with 30
# epochs, all but one pass of its audio work was repeated work. Here the pipeline is
#
# **decode -> mono -> resample -> log-mel (-> MFCC)**, then **pad or crop to the clip length**,
#
# and everything up to the log-mel is computed **once per clip and feature setting** and stored
# in a cache on disk. Cropping and padding are cheap and happen when a batch is built, so that
# training can still take a *random* crop of a long clip each epoch while evaluation always
# takes the *centre*.

# %%
#| export
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from urbansound_nb.audio import AudioDecodeError, audio_bytes, audio_file, decode_audio
from urbansound_nb.core import atomic_write_bytes, pick_device, save_json
from urbansound_nb.params import LOG_MEL

# %%
from urbansound_nb.audio import is_synthetic
from urbansound_nb.core import write_results
from urbansound_nb.data import fold_split, load_urbansound, metadata_frame
from urbansound_nb.params import as_int, study_params, use_test_values

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
# (the front end's n_mels, n_fft and hop_length are shared: the next chapters read the features this one caches)
workers = None          # extraction threads; None: every core
bench_items = 256       # clips for the on-the-fly comparison below

# %% tags=["checks"]
use_test_values(globals(), bench_items=32)
params = study_params(globals())
workers = None if workers is None else as_int("workers", workers, 1)
bench_items = as_int("bench_items", bench_items, 1)

# %%
ds = load_urbansound(params.dataset, params.max_items, params.seed)
split = fold_split(ds, **params.split)
print(f"{len(ds):,} clips from {params.dataset}", "(SYNTHETIC stand-in)" if is_synthetic(ds) else "")

# %% [markdown]
# ## Feature parameters
#
# One frozen object holds every setting that changes the numbers. Its `key` names the cache
# folder, so changing any setting (or `FEATURE_VERSION`, when the code changes) starts a new
# cache instead of reading a stale one.
#
# Why these values: **22.05 kHz** keeps everything up to 11 kHz, which covers the classes'
# energy, and it is the rate most of the data already has; a **1024-sample window (46 ms)
# with a 512 hop (23 ms)** gives 173 frames for 4 s; **64 mel bands** is what the starting
# notebook used (notebook 04 shows what a model does with them).

# %%
#| export
FEATURE_VERSION = 1  # bump when the computation below changes: old caches are then ignored

@dataclass(frozen=True)
class FeatureParams:
    "Everything that determines a clip's log-mel."
    sample_rate: int = LOG_MEL["sample_rate"]   # the study's defaults are notebook 00a's
    n_mels: int = LOG_MEL["n_mels"]
    n_fft: int = LOG_MEL["n_fft"]
    hop_length: int = LOG_MEL["hop_length"]
    f_min: float = 0.0
    f_max: float | None = None
    def __post_init__(self):
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"feature parameter {name!r} must be a positive integer, got {v!r}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"feature parameter 'hop_length' ({self.hop_length}) exceeds 'n_fft' ({self.n_fft})")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"feature parameter 'n_mels' ({self.n_mels}) exceeds the {self.n_fft//2+1} STFT bins")
    @property
    def key(self) -> str:
        spec = json.dumps(dict(asdict(self), version=FEATURE_VERSION), sort_keys=True)
        return "logmel-" + hashlib.sha1(spec.encode()).hexdigest()[:12]
    def frames(self, seconds: float) -> int:
        "Frames of a clip of `seconds` (centred STFT: one frame per hop, plus one)."
        return int(round(seconds * self.sample_rate)) // self.hop_length + 1
    @property
    def pad_value(self) -> float: return DB_FLOOR  # the features of silence, which pads short clips
    def front_end(self) -> nn.Module: return LogMel(self)

def study_features(params) -> FeatureParams:
    "The log-mel front end a run's parameters (`StudyParams`) ask for."
    return FeatureParams(**{name: getattr(params, name) for name in LOG_MEL})

# %%
import dataclasses
from fastcore.test import test_eq, test_ne, test_fail, test_close
from urbansound_nb.params import StudyParams
features = study_features(params)
test_eq(study_features(StudyParams(dataset="synthetic")), FeatureParams())    # one set of defaults: notebook 00a's
test_ne(features.key, dataclasses.replace(features, n_mels=features.n_mels + 1).key)
test_fail(lambda: FeatureParams(n_mels=0), contains="'n_mels' must be a positive integer")
print(features, features.key, f"{features.frames(params.clip_seconds)} frames per {params.clip_seconds:g} s clip")

# %% [markdown]
# ## The log-mel front end
#
# A small `nn.Module`: mel power spectrogram, then decibels (torchaudio's `AmplitudeToDB`) with
# its floor at -100 dB (power 1e-10). It takes a batch of waveforms `[batch, samples]` on any
# device, so the same module runs on the CPU here and on a GPU when there is one. Other front ends
# (chapter 05's) plug into the cache below the same way: parameters with a `key`, `frames`,
# `pad_value` and a `front_end()` module.

# A clip, or a waveform, shorter than what it must fill is repeated, never padded with silence
# (notebook 02a says why): `repeat_frames` does it on the last axis, for frames and samples alike.

# %%
#| export
def repeat_frames(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    "The last axis of `x` repeated until it is `n_frames` long, then cut there (a longer `x` keeps its start)."
    reps = -(-n_frames // max(x.shape[-1], 1))
    return x.repeat(*([1] * (x.dim() - 1)), reps)[..., :n_frames]

# %%
test_eq(repeat_frames(torch.tensor([[7., 8.]]), 5).tolist(), [[7., 8., 7., 8., 7.]])
test_eq(repeat_frames(torch.arange(6.), 4).tolist(), [0., 1., 2., 3.])

# %%
#| export
DB_FLOOR = -100.0  # dB: the log-mel of digital silence, and so of zero padding

class LogMel(nn.Module):
    "Waveforms [..., samples] -> log-mel power in dB [..., n_mels, frames]."
    def __init__(self, fp: FeatureParams = FeatureParams()):
        super().__init__()
        self.fp = fp
        self.mel = torchaudio.transforms.MelSpectrogram(fp.sample_rate, n_fft=fp.n_fft, hop_length=fp.hop_length,
                                                        n_mels=fp.n_mels, f_min=fp.f_min, f_max=fp.f_max, power=2.0)
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=None)  # 10 log10, floored at 1e-10 = DB_FLOOR
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # a centred STFT pads by reflection, which needs more than half a window: a shorter clip is repeated
        if wave.shape[-1] <= self.fp.n_fft // 2:
            wave = repeat_frames(wave, wave.shape[-1] * (self.fp.n_fft // wave.shape[-1] + 1))
        return self.to_db(self.mel(wave))

# %%
front = LogMel(features)
wave = torch.randn(2, int(params.clip_seconds * features.sample_rate)) * 0.1
lm = front(wave)
test_eq(lm.shape, (2, features.n_mels, features.frames(params.clip_seconds)))
test_eq(front(torch.zeros(1, 4096)).max().item(), DB_FLOOR)  # silence sits exactly at the floor
test_eq(front(torch.randn(1, 441)).shape[0], 1)                 # 0.02 s, the shortest clip decode_audio lets through
if torch.cuda.is_available(): test_close(LogMel(features).cuda()(wave.cuda()).cpu(), lm, eps=1e-2)
print(lm.shape, f"{lm.min():.1f} .. {lm.max():.1f} dB")

# %% [markdown]
# ## One clip, from bytes to waveform
#
# Decoding is `core.decode_audio` (soundfile, float32 mono). Resampling uses torchaudio's
# windowed-sinc resampler; one resampler per source rate is kept, because building its kernel
# costs more than applying it.

# %%
#| export
_resamplers: dict = {}

def resample(wave: torch.Tensor, orig: int, target: int) -> torch.Tensor:
    "Resample `wave` from `orig` to `target` Hz (kernels cached per rate pair)."
    if orig == target: return wave
    if (orig, target) not in _resamplers: _resamplers[(orig, target)] = torchaudio.transforms.Resample(orig, target)
    return _resamplers[(orig, target)](wave)

def load_waveform(data: bytes, sample_rate: int, name: str = "clip") -> torch.Tensor:
    "Audio bytes -> float32 mono waveform at `sample_rate`."
    samples, rate = decode_audio(data, name)
    return resample(torch.from_numpy(samples), rate, sample_rate)

# %%
row = split.train[0]
w = load_waveform(audio_bytes(row["audio"]), features.sample_rate, row["slice_file_name"])
print(row["slice_file_name"], row["class"], tuple(w.shape),
      f"{len(w)/features.sample_rate:.2f} s at {features.sample_rate} Hz")

# %% [markdown]
# ## Pad or crop, and "duration cheating"
#
# Models need a fixed input length; **4 s** is the longest clip in UrbanSound8K, so nothing is
# lost by cropping. Longer inputs (other datasets, `clip_seconds < 4`, or a user's file) are
# cropped: a **random** window in training, so every epoch sees a different part, and the
# **centre** at evaluation, so a score never depends on luck.
#
# Shorter clips are **repeated** until they fill the input, not padded with silence. Zero padding
# has a known trap, *duration cheating*: in UrbanSound8K the classes have very different clip
# lengths (most gun shots and many dog barks and car horns are under 1 s, most air conditioners
# exactly 4 s), so the amount of trailing silence alone predicts the class fairly well, and a
# model that learns that has learnt the dataset's editing, not the sound. Chapter 06 measures
# accuracy by clip duration to see whether short clips are won or lost by their length. The cache
# keeps every clip's frames at their own length; the crop or the repeat happens once, where
# batches are built (`batch_frames`, notebook 02a), for every model and for `predict`.

# %% [markdown]
# ## The feature cache
#
# Each clip is identified by a hash of its encoded bytes, so the cache is keyed by
# **(feature parameters, clip content)**: the same audio in another dataset copy, subset or
# fold order hits the same entry, and different audio under the same file name never does.
#
# On disk, `cache_dir/<feature key>/` holds shards: `shard-*.npy`, the log-mel frames of up to
# 256 clips as one float16 array (half the size of float32; log-mels in dB lose nothing that
# matters at 0.03 dB resolution), and `shard-*.json`, the index (clip key, offset, length).
# A shard's index is written last and atomically, so an interrupted extraction leaves only
# complete shards, and the next call computes just the clips that are missing.
#
# The cache is checked as it is opened. A shard whose index cannot be read, whose frames are
# truncated, or whose index lists more frames than it holds is named in a warning and removed,
# and its clips are computed again (a read-only cache, as Dask workers open it, names it and
# says to delete it instead). A clip that cannot be decoded gets no features: its key and the
# reason go into `undecodable.json`, so it is named again without being decoded again, and the
# chapters leave it out and say so (`study_data`, notebook 02a).

# %%
#| export
def clip_key(data: bytes) -> str:
    "Content hash of a clip's encoded bytes."
    return hashlib.blake2b(data, digest_size=12).hexdigest()

def clip_batches(ds, batch_size=256):
    "(names, bytes) of `ds` in order, in batches, without decoding."
    for batch in ds.select_columns(["audio", "slice_file_name"]).iter(batch_size=batch_size):
        names = batch["slice_file_name"]
        yield names, [audio_bytes(a, n) for a, n in zip(batch["audio"], names)]

# %%
#| export
UNDECODABLE = "undecodable.json"  # in each feature folder: {clip key: why it cannot be decoded}

class CacheDamaged(RuntimeError):
    "A cache file that cannot be used as it is: the message names it and says how to clear it."

def _json_or_empty(path: Path) -> dict:
    "A JSON object from `path`; {} when it is absent or damaged (it is only a memo)."
    try: out = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError): out = {}
    return out if isinstance(out, dict) else {}

class FeatureCache:
    "Log-mel frames on disk, one folder per `FeatureParams`, sharded, resumable; `read_only`: never writes."
    def __init__(self, cache_dir, fp: FeatureParams, read_only: bool = False):
        self.fp, self.dir, self.read_only = fp, Path(cache_dir).expanduser()/fp.key, read_only
        if read_only and not self.dir.is_dir():
            raise FileNotFoundError(f"no feature cache at {self.dir}: compute the features first (study_data)")
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_json(dict(asdict(fp), version=FEATURE_VERSION), self.dir/"params.json")
        self.index: dict = {}
        for f in sorted(self.dir.glob("shard-*.json")): self._add_shard(f)
        # clips that cannot be decoded, by key, with the reason: remembered so they are not decoded again
        self.undecodable: dict = _json_or_empty(self.dir/UNDECODABLE)
        self.unreadable: dict = {}  # files that could not be read this time: never remembered
        self._open: dict = {}

    def _add_shard(self, index_file: Path):
        "Index one shard, or (damaged: unreadable, truncated, inconsistent) drop it so its clips are computed again."
        npy = index_file.with_suffix(".npy")
        try:
            clips = json.loads(index_file.read_text())["clips"]
            rows, width = np.load(npy, mmap_mode="r").shape   # the header only: a truncated file fails here
            if width != self.fp.n_mels or any(off < 0 or n < 1 or off + n > rows for _, off, n in clips):
                raise ValueError(f"{rows}x{width} frames do not hold the clips its index lists")
        except (OSError, ValueError, KeyError, TypeError) as e:
            what = f"damaged feature-cache shard {index_file.name} / {npy.name} in {self.dir} ({e})"
            if self.read_only: raise CacheDamaged(f"{what}; delete both files to have its clips computed again")
            warnings.warn(f"{what}: removed, its clips are computed again")
            index_file.unlink(missing_ok=True)
            npy.unlink(missing_ok=True)
            return
        for k, off, n in clips: self.index[k] = (npy.name, off, n)

    def __contains__(self, key): return key in self.index
    def __len__(self): return len(self.index)

    def skip_reason(self, key) -> str | None:
        "Why the clip of `key` has no features (it cannot be read or decoded), else None."
        return self.unreadable.get(key) or self.undecodable.get(key)

    def mark_undecodable(self, reasons: dict):
        "Remember clips (key: reason) that cannot be decoded."
        self.undecodable.update(reasons)
        if reasons and not self.read_only: save_json(self.undecodable, self.dir/UNDECODABLE)

    def get(self, key) -> np.ndarray:
        "Frames [frames, n_mels] (float16, memory-mapped) of one clip."
        if key not in self.index:
            raise KeyError(f"clip {key} has no features in {self.dir}: {self.skip_reason(key) or 'not computed'}")
        shard, off, n = self.index[key]
        if shard not in self._open:
            try: self._open[shard] = np.load(self.dir/shard, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CacheDamaged(f"damaged feature-cache shard {self.dir/shard} ({e}); delete it and its .json "
                                   "to have its clips computed again") from None
        return self._open[shard][off:off + n]

# %%
#| export
@torch.no_grad()
def _clip_logmel(data: bytes, name: str, front: LogMel, device) -> np.ndarray:
    "One clip's log-mel frames [frames, n_mels] as float16."
    wave = load_waveform(data, front.fp.sample_rate, name).to(device)
    return front(wave).T.to(torch.float16).cpu().numpy()

def _logmel_or_reason(data: bytes, name: str, front: LogMel, device) -> np.ndarray | str:
    "A clip's log-mel frames, or why it cannot be decoded (the caller skips it and says so)."
    try: return _clip_logmel(data, name, front, device)
    except AudioDecodeError as e: return str(e)

def _write_shard(cache: FeatureCache, keys: list, frames: list):
    "One shard: the frames first, then (atomically) the index that makes them visible."
    name = "shard-" + hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
    buf = io.BytesIO()
    np.save(buf, np.concatenate(frames) if frames else np.zeros((0, cache.fp.n_mels), np.float16))
    atomic_write_bytes(cache.dir/f"{name}.npy", buf.getvalue())
    offs = np.cumsum([0] + [len(f) for f in frames[:-1]]).tolist()
    atomic_write_bytes(cache.dir/f"{name}.json",
                       json.dumps({"clips": [[k, o, len(f)] for k, o, f in zip(keys, offs, frames)]}).encode())
    for k, o, f in zip(keys, offs, frames): cache.index[k] = (f"{name}.npy", o, len(f))

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    c = FeatureCache(d, features)
    _write_shard(c, ["a", "b"], [np.zeros((3, 64), np.float16)] * 2)
    test_eq(len(FeatureCache(d, features)), 2)
    shard = next(c.dir.glob("shard-*.npy"))
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    test_fail(lambda: FeatureCache(d, features, read_only=True), contains="damaged feature-cache shard")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        test_eq(len(FeatureCache(d, features)), 0)
    assert shard.name in str(said[0].message) and not shard.exists()     # named, removed: computed again
    c.mark_undecodable({"c": "c.wav: the audio is empty (0 bytes)"})
    test_eq(FeatureCache(d, features).skip_reason("c"), "c.wav: the audio is empty (0 bytes)")
    test_fail(lambda: c.get("c"), contains="c.wav: the audio is empty")

# %% [markdown]
# Finding a clip's key means reading and hashing its bytes, and every notebook does it to look
# its features up. For the official layout, whose clips are files, that reads the whole release
# in each chapter (about 6 GB; the explanations page gives the times measured). `FileKeys`
# remembers each file's key in `cache_dir/file_keys.json`, under its path, with the four things
# git's index compares to call a file unchanged: size, modification time, status-change time and
# inode. An unchanged file is not read again, and the look-up takes a fraction of a second.
#
# * Editing, replacing or moving a file changes at least one of the four, even a copy that
#   keeps the old modification time (`cp -p`, `rsync -a`): the kernel sets the status-change
#   time, and no tool can set it back. Such a file is hashed afresh.
# * As in git, a file changed within the last two seconds is hashed but not remembered: file
#   times move in clock ticks of a few milliseconds, so a second change within the same tick
#   would not show.
# * Clips held as bytes (the hub layout) are always hashed. Deleting `file_keys.json` costs
#   one rehash, nothing else.

# %%
#| export
class FileKeys:
    "Content keys of audio files, remembered in `cache_dir/file_keys.json` by path, size, times and inode."
    fresh_seconds = 2.0  # a file changed this recently is hashed but not remembered

    def __init__(self, cache_dir):
        self.path = Path(cache_dir).expanduser()/"file_keys.json"
        self.entries = _json_or_empty(self.path)  # a damaged memo costs a rehash, nothing else
        self.hashed, self.changed = 0, False

    def key(self, audio: dict, name: str = "clip") -> str:
        "A clip's content key: remembered when its file is unchanged, else hashed from its bytes."
        path = audio_file(audio)
        try: st = os.stat(path) if path else None
        except OSError: st = None  # reading it below raises the error that names the clip
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] if st else None
        known = self.entries.get(path) if sig else None
        if isinstance(known, list) and known[:-1] == sig: return known[-1]
        k = clip_key(audio_bytes(audio, name))
        self.hashed += 1
        if sig and time.time_ns() - st.st_ctime_ns > self.fresh_seconds * 1e9:
            self.entries[path] = [*sig, k]
            self.changed = True
        return k

    def save(self):
        if self.changed:
            save_json(self.entries, self.path)
            self.changed = False

# %% [markdown]
# A file is read once; a second look-up, or a new `FileKeys` on the same folder, answers
# from the memo until the file changes:

# %%
from urbansound_nb.audio import encode_audio
with tempfile.TemporaryDirectory() as d:
    wav = Path(d)/"a.wav"
    wav.write_bytes(encode_audio(np.zeros(800, np.float32), 8000))
    # just written: not remembered yet
    fk = FileKeys(d)
    k = fk.key(dict(bytes=None, path=str(wav)))
    test_eq(fk.entries, {})
    fk.fresh_seconds = 0
    test_eq(fk.key(dict(bytes=None, path=str(wav))), k)
    test_eq(fk.hashed, 2)
    test_eq(k, clip_key(wav.read_bytes()))
    fk.key(dict(bytes=None, path=str(wav)))
    test_eq(fk.hashed, 2)  # remembered
    fk.save()
    fk2 = FileKeys(d)
    test_eq(fk2.key(dict(bytes=None, path=str(wav))), k)
    test_eq(fk2.hashed, 0)
    before = wav.stat()
    time.sleep(0.05)  # past the clock tick of file times
    # other audio, same size, old modification time
    wav.write_bytes(encode_audio(np.ones(800, np.float32) / 4, 8000))
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns))
    test_eq(wav.stat().st_size, before.st_size)
    assert fk2.key(dict(bytes=None, path=str(wav))) != k and fk2.hashed == 1  # noticed all the same: hashed afresh
    test_eq(fk2.key(dict(bytes=wav.read_bytes(), path=None)), clip_key(wav.read_bytes()))  # bytes are always hashed
    (Path(d)/"file_keys.json").write_text("{not json")
    test_eq(FileKeys(d).entries, {})  # a damaged memo is ignored
    test_fail(lambda: fk2.key(dict(bytes=None, path=str(Path(d)/"gone.wav")), "gone.wav"), contains="gone.wav")

# %%
#| export
def _hash_clips(ds, cache: FeatureCache, file_keys: FileKeys) -> tuple[list, dict]:
    "Every clip's key in order, and {key: row} for the clips not yet in `cache` (their rows, not their bytes)."
    keys, todo = [], {}
    try:
        for batch in ds.select_columns(["audio", "slice_file_name"]).iter(batch_size=256):
            for audio, name in zip(batch["audio"], batch["slice_file_name"]):
                try: k = file_keys.key(audio, name)
                except (AudioDecodeError, OSError) as e:  # missing or unreadable: skipped and named, like bad audio
                    k = f"unreadable:{audio_file(audio) or name}"
                    cache.unreadable[k] = f"{name}: {e}"
                if k not in cache and k not in todo and not cache.skip_reason(k): todo[k] = len(keys)
                keys.append(k)
    finally: file_keys.save()  # the files hashed before an unreadable one stay remembered
    return keys, todo

# %% [markdown]
# Extraction reads each clip not yet cached twice: once to hash it, once to compute its
# log-mel. Memory then holds only the few chunks of 32 clips being worked on, never the whole
# dataset (the official release is about 6 GB of audio). Chunks are collected in order, so a
# shard's content does not depend on which thread finished first.

# %%
#| export
def _extract_missing(cache: FeatureCache, ds, todo: dict, front: LogMel, device, workers: int, shard_size: int, bar):
    "Compute and store the log-mels of the rows in `todo`, reading their audio again 32 clips at a time."
    keys, pending, inflight = list(todo), ([], []), deque()
    def work(ks, names, datas): return ks, [_logmel_or_reason(d, n, front, device) for n, d in zip(names, datas)]
    def collect(keep: int):  # oldest chunk first; a full shard is written at once
        nonlocal pending
        while len(inflight) > keep:
            ks, frames = inflight.popleft().result()
            cache.mark_undecodable({k: f for k, f in zip(ks, frames) if isinstance(f, str)})
            good = [(k, f) for k, f in zip(ks, frames) if not isinstance(f, str)]
            pending[0].extend(k for k, _ in good)
            pending[1].extend(f for _, f in good)
            bar.update(len(ks))
            if len(pending[0]) >= shard_size:
                _write_shard(cache, *pending)
                pending = ([], [])
    try:
        with ThreadPoolExecutor(workers) as ex:
            for i, (names, datas) in enumerate(clip_batches(ds.select(list(todo.values())), 32)):
                inflight.append(ex.submit(work, keys[32 * i:32 * (i + 1)], names, datas))
                collect(2 * workers)  # at most 2 chunks per thread in memory, however large the dataset
            collect(0)
    finally:
        if pending[0]: _write_shard(cache, *pending)  # clips finished before an error or interruption are kept

# %%
from datasets import concatenate_datasets
tiny = load_urbansound("synthetic", max_items=12)
tiny = concatenate_datasets([tiny, tiny.select([0])])                     # the first clip twice
with tempfile.TemporaryDirectory() as d:
    c = FeatureCache(d, features)
    ks, todo = _hash_clips(tiny, c, FileKeys(d))
    # the copy is not computed again
    test_eq(len(ks), 13)
    test_eq(ks[12], ks[0])
    test_eq(list(todo.values()), list(range(12)))
    _extract_missing(c, tiny, todo, LogMel(features), "cpu", 2, 256, tqdm(disable=True))
    test_eq(len(c), 12)
    test_eq(_hash_clips(tiny, c, FileKeys(d))[1], {})  # all cached now

# %%
#| export
def cache_logmels(ds, fp: FeatureParams, cache_dir, workers: int | None = None, device=None,
                  shard_size: int = 256, progress: bool = True) -> tuple[FeatureCache, list[str], dict]:
    "Cache every clip of `ds` that decodes (`cache.skip_reason` says why others do not); the cache, keys, statistics."
    t0 = time.time()
    cache, file_keys = FeatureCache(cache_dir, fp), FileKeys(cache_dir)
    keys, todo = _hash_clips(ds, cache, file_keys)
    hashed = time.time()
    device = torch.device(device) if device else pick_device()
    front, workers, threads = fp.front_end().to(device), workers or os.cpu_count() or 1, torch.get_num_threads()
    bar = tqdm(total=len(todo), desc=f"log-mel {fp.key}", unit="clip", disable=not progress or not todo, mininterval=2)
    torch.set_num_threads(1)  # one core per worker thread: the threads are the parallelism
    try:
        if todo: _extract_missing(cache, ds, todo, front, device, workers, shard_size, bar)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    skipped, computed = sum(bool(cache.skip_reason(k)) for k in keys), sum(k in cache for k in todo)
    stats = dict(clips=len(keys), computed=computed, reused=len(keys) - computed - skipped, skipped=skipped,
                 hashed=file_keys.hashed, hash_seconds=round(hashed - t0, 3),
                 extract_seconds=round(time.time() - hashed, 3), workers=workers, device=str(device))
    return cache, keys, stats

# %% [markdown]
# Computing the features of this run's dataset (a second run finds them all in the cache):

# %%
cache, keys, stats = cache_logmels(ds, features, params.cache_dir, workers=workers)
stats

# %%
cache2, keys2, stats2 = cache_logmels(ds, features, params.cache_dir, workers=workers)
test_eq(keys2, keys)
test_eq(stats2["computed"], 0)
print(f"second pass: {stats2['reused']} clips reused, {stats2['hash_seconds']:.2f} s to hash and look them up")

# %% [markdown]
# ## The run's features in memory
#
# `LogMelSet` (notebook 02a) holds the frames of a list of clips as one padded float16 tensor
# and builds batches by indexing: a random crop per clip in training, the centre at evaluation.
# This is the whole data path of a training epoch: no decoding, no worker processes.

# %%
from urbansound_nb.batches import LogMelSet, band_stats, batch_frames, study_data
meta = metadata_frame(ds)
allset = LogMelSet.from_cache(cache, keys, meta["classID"].values)
n_frames = features.frames(params.clip_seconds)
x = batch_frames(allset, range(min(64, len(allset))), n_frames)
print(f"cached: {tuple(allset.data.shape)} float16 = {allset.data.numel()*2/2**20:.1f} MiB in memory")
print(f"a batch: {tuple(x.shape)}, {x.min():.1f} .. {x.max():.1f} dB, mean {x.mean():.1f} dB")
print(f"clip lengths: {allset.lengths.min().item()} .. {allset.lengths.max().item()} frames; "
      f"{(allset.lengths < n_frames).float().mean():.0%} of clips are padded")

# %% [markdown]
# Models see log-mels standardised per mel band with the **training folds'** mean and standard
# deviation (padding frames excluded). Statistics from the validation or test folds would leak
# information about them into the model.

# %%
train_idx = np.flatnonzero(np.isin(meta["fold"].values, split.train_folds))
mean, std = band_stats(allset, train_idx)
test_eq(mean.shape, (features.n_mels,))
print(f"train-fold band means {mean.min():.1f} .. {mean.max():.1f} dB, stds {std.min():.1f} .. {std.max():.1f} dB")

# %% [markdown]
# Every modelling chapter starts the same way: load the dataset, split it by fold, read the
# cached log-mels, and find the clips of each fold role. `study_data` does exactly that:

# %%
data = study_data(params, features)
test_eq(data.cache_stats["computed"], 0)               # everything came from the cache filled above
test_eq(data.train, train_idx)
test_eq(len(data.val), len(split.val))
test_eq(len(data.test), len(split.test))
test_close(data.band_stats()[0], mean)
print(f"train {len(data.train)}, validation {len(data.val)}, test {len(data.test)} clips; "
      f"inputs {features.n_mels} x {data.n_frames}")

# %% [markdown]
# ## What the features look like
#
# One training clip per class, as the model sees it (centre crop, padding at the floor):

# %%
import matplotlib.pyplot as plt
first = meta[meta["fold"].isin(split.train_folds)].groupby("classID").head(1).sort_values("classID")
fig, axes = plt.subplots(2, 5, figsize=(16, 5.5), sharey=True, constrained_layout=True)
for ax, (i, r) in zip(axes.flat, first.iterrows()):
    im = ax.imshow(batch_frames(allset, [i], n_frames)[0], origin="lower", aspect="auto", vmin=-100, vmax=20,
                   extent=[0, n_frames * features.hop_length / features.sample_rate, 0, features.n_mels], cmap="magma")
    ax.set_title(f"{r['class']}\n{r['slice_file_name']}", fontsize=9)
    ax.set_xlabel("time (s)")
for ax in axes[:, 0]: ax.set_ylabel("mel band")
fig.colorbar(im, ax=axes, label="power (dB)", shrink=0.8)
fig.suptitle(f"Cached log-mel features, one training clip per class "
             f"({features.n_mels} bands, {features.sample_rate} Hz)")
plt.show()

# %% [markdown]
# ## How much faster than decoding every epoch?
#
# `benchmark` (notebook 02b) times, on the same clips: the cached extraction (decode + resample +
# log-mel on every core, written to a fresh cache), reading them back from the cache, and the
# starting notebook's way, decoding and transforming every clip in `__getitem__`, one at a time.
# The same figures come from `urbansound-nb bench --dataset D --max-items N`.

# %%
#| slow
from urbansound_nb.bench import benchmark
bench = benchmark(params.dataset, max_items=bench_items, workers=workers, fp=features, seed=params.seed)

# %% [markdown]
# The cached extraction runs once per feature setting; after that an epoch's data costs the
# `epoch_data_seconds` above instead of a full decode of every clip. Notebook 04 compares that
# with the model's own compute.

# %%
#| slow
write_results(params.run_dir, "02_preprocessing", {"features": dict(
    feature_key=features.key, **asdict(features), n_frames=n_frames, clips=len(allset), cache_dir=str(cache.dir),
    first_pass=stats, second_pass=stats2, benchmark=bench)}, dataset=params.dataset,
              **data.clip_counts())

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
# The starting notebook decoded and transformed every clip again on every epoch. Here **decode -> mono -> resample ->
# log-mel** runs **once per clip and feature setting**, cached on disk; **pad or crop to the clip length** happens
# when a batch is built, so training can still take a *random* crop of a long clip each epoch and evaluation the
# *centre*.

# %%
#| export
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio
from torch import nn

from urbansound_nb.audio import decode_audio
from urbansound_nb.params import LOG_MEL

# %%
from urbansound_nb.audio import first_decodable, is_synthetic
from urbansound_nb.cache import cache_logmels
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
# One frozen object holds every setting that changes the numbers; its `key` names the cache folder, so changing any
# setting (or `FEATURE_VERSION`) starts a new cache. **22.05 kHz** keeps everything up to 11 kHz and is most clips'
# rate; a **1024-sample window (46 ms) with a 512 hop** gives 173 frames for 4 s; **64 mel bands**, as the starting
# notebook.

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
# A small `nn.Module`: mel power spectrogram, then decibels (`AmplitudeToDB`) floored at -100 dB, on a batch of
# waveforms on any device. Other front ends (chapter 05's) plug into the cache the same way: parameters with a `key`,
# `frames`, `pad_value` and `front_end()`. A clip shorter than what it must fill is repeated, never padded with
# silence (`repeat_frames`, for frames and samples alike).

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
# ## MFCC statistics, from the log-mels
#
# Chapter 03's features: the mean and standard deviation over time of the MFCCs and their deltas (40 coefficients with
# deltas: 160 numbers), a matrix product on the cached log-mels (the DCT of the bands), over a clip's real frames
# only, since padding would leak its duration. `mfcc_statistics` works on a batch of tensors (notebook 04a),
# `mfcc_stats` on a `LogMelSet`.

# %%
#| export
def mfcc_from_logmel(logmel: torch.Tensor, n_mfcc: int = 40, dct: torch.Tensor | None = None) -> torch.Tensor:
    "MFCCs [..., n_mfcc, frames] from log-mels in dB [..., n_mels, frames] (orthonormal DCT-II, or `dct` given)."
    dct = torchaudio.functional.create_dct(n_mfcc, logmel.shape[-2], norm="ortho") if dct is None else dct
    return (logmel.transpose(-1, -2) @ dct).transpose(-1, -2)

def mfcc_deltas(x: torch.Tensor) -> torch.Tensor:
    "torchaudio's `compute_deltas` (5 frames, edges repeated) on the last axis, in plain ops an ONNX graph takes."
    padded = torch.cat([x[..., :1], x[..., :1], x, x[..., -1:], x[..., -1:]], -1)
    at = lambda k: padded[..., 2 + k:padded.shape[-1] - 2 + k]
    return (at(1) - at(-1) + 2 * (at(2) - at(-2))) / 10

def mfcc_statistics(logmel: torch.Tensor, n_mfcc: int = 40, deltas: bool = True, lengths=None, dct=None):
    "Per-clip mean and std over time of MFCCs (and deltas) [B, 2*n_mfcc*(1+deltas)], over each clip's `lengths`."
    mfcc = mfcc_from_logmel(logmel, n_mfcc, dct)
    feats = [mfcc, mfcc_deltas(mfcc)] if deltas else [mfcc]
    if lengths is None: mask = torch.ones_like(mfcc[:, :1])
    else: mask = (torch.arange(mfcc.shape[-1])[None, :] < lengths[:, None])[:, None, :].to(mfcc.dtype)
    n, stats = mask.sum(-1).clamp_min(1), []
    for f in feats:
        mean = (f * mask).sum(-1) / n
        stats += [mean, (((f - mean[..., None]) ** 2) * mask).sum(-1).div(n).sqrt()]
    return torch.cat(stats, 1)

@torch.no_grad()
def mfcc_stats(ls, n_mfcc: int = 40, deltas: bool = True, batch: int = 256) -> np.ndarray:
    "`mfcc_statistics` of every clip of a `LogMelSet` over its unpadded frames: [clips, 2*n_mfcc*(1+deltas)]."
    return torch.cat([mfcc_statistics(ls.data[s:s + batch].float(), n_mfcc, deltas, ls.lengths[s:s + batch])
                      for s in range(0, len(ls.data), batch)]).numpy()

# %%
from types import SimpleNamespace
mfcc_reference = torchaudio.transforms.MFCC(22050, n_mfcc=20, melkwargs=dict(n_fft=1024, hop_length=512, n_mels=64))
test_close(mfcc_from_logmel(LogMel(FeatureParams())(wave), 20), mfcc_reference(wave), eps=1e-2)   # torchaudio's MFCC
toy = SimpleNamespace(data=torch.randn(2, 8, 10).half(), lengths=torch.tensor([3, 10]))
s = mfcc_stats(toy, n_mfcc=4, deltas=True)
test_eq(s.shape, (2, 16))
test_close(s[0, :4], mfcc_from_logmel(toy.data[0:1, :, :3].float(), 4)[0].mean(-1).numpy(), eps=1e-4)  # padding ignored
test_close(s[1], mfcc_statistics(toy.data[1:].float(), 4).numpy()[0], eps=1e-5)   # a whole clip: no lengths needed
test_close(mfcc_deltas(toy.data.float()), torchaudio.functional.compute_deltas(toy.data.float()), eps=1e-3)

# %% [markdown]
# ## One clip, from bytes to waveform
#
# Decoding is `core.decode_audio`; resampling torchaudio's windowed sinc, one resampler kept per source rate.

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
row, samples, rate = first_decodable(split.train)     # a damaged clip is passed over here, and named below
w = resample(torch.from_numpy(samples), rate, features.sample_rate)
print(row["slice_file_name"], row["class"], tuple(w.shape),
      f"{len(w)/features.sample_rate:.2f} s at {features.sample_rate} Hz")

# %% [markdown]
# ## Pad or crop, and "duration cheating"
#
# **4 s** is UrbanSound8K's longest clip. A longer input is cropped: a **random** window in training, the **centre**
# at evaluation. A shorter clip is **repeated**, not padded with silence: the classes' lengths differ widely (most gun
# shots under 1 s, most air conditioners exactly 4 s), so trailing silence alone would predict the class, and a model
# that learns it has learnt the dataset's editing, not the sound. Chapter 07 measures accuracy by duration. The cache
# keeps each clip at its own length; `batch_frames` (notebook 02b) crops or repeats for every model and for `predict`.

# %% [markdown]
# ## The feature cache
#
# Log-mels are kept on disk, keyed by the clip's content (notebook 02a says how, and what happens to a damaged shard
# or an undecodable clip). This run's features (a second run finds them all cached):

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
# `LogMelSet` (notebook 02b) holds the clips' frames as one padded float16 tensor and builds batches by indexing: the
# whole data path of an epoch, with no decoding and no worker processes.

# %%
from urbansound_nb.batches import band_stats, batch_frames, decoded_logmels, study_data
ds, keys, allset, skipped = decoded_logmels(ds, cache, keys, params.strict_audio)   # the clips that decoded
meta, split = metadata_frame(ds), fold_split(ds, **params.split)
n_frames = features.frames(params.clip_seconds)
x = batch_frames(allset, range(min(64, len(allset))), n_frames)
print(f"cached: {tuple(allset.data.shape)} float16 = {allset.data.numel()*2/2**20:.1f} MiB in memory")
print(f"a batch: {tuple(x.shape)}, {x.min():.1f} .. {x.max():.1f} dB, mean {x.mean():.1f} dB")
print(f"clip lengths: {allset.lengths.min().item()} .. {allset.lengths.max().item()} frames; "
      f"{(allset.lengths < n_frames).float().mean():.0%} of clips are padded")

# %% [markdown]
# Models see log-mels standardised per band with the **training folds'** statistics (padding excluded): the other
# folds' would leak into the model.

# %%
train_idx = np.flatnonzero(np.isin(meta["fold"].values, split.train_folds))
mean, std = band_stats(allset, train_idx)
test_eq(mean.shape, (features.n_mels,))
print(f"train-fold band means {mean.min():.1f} .. {mean.max():.1f} dB, stds {std.min():.1f} .. {std.max():.1f} dB")

# %% [markdown]
# Every modelling chapter loads the dataset, splits it, reads the cached log-mels and finds each role's clips:
# `study_data` does that:

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
# One training clip per class, as the model sees it:

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
# `benchmark` (notebook 10a; `urbansound-nb bench`) times the cached extraction, reading it back, and the starting
# notebook's decoding of every clip in `__getitem__`:

# %%
#| slow
from urbansound_nb.bench import benchmark
bench = benchmark(params.dataset, max_items=bench_items, workers=workers, fp=features, seed=params.seed)

# %% [markdown]
# After one extraction per setting, an epoch's data costs `epoch_data_seconds`; notebook 04 compares that with the
# model's compute.

# %%
#| slow
write_results(params.run_dir, "02_preprocessing", {"features": dict(
    feature_key=features.key, **asdict(features), n_frames=n_frames, clips=len(allset), cache_dir=str(cache.dir),
    first_pass=stats, second_pass=stats2, benchmark=bench)}, dataset=params.dataset,
              **data.clip_counts())

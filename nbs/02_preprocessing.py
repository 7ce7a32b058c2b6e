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
# > Decode, resample, log-mel: each clip once per feature setting, cached on disk, so that training reads arrays and never audio.

# %% [markdown]
# The starting notebook decoded and transformed every clip again on every epoch: with 30
# epochs, 97% of its audio work was repeated work. Here the pipeline is
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

import hashlib, io, json, os, time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from urbansound_nb.core import (atomic_write_bytes, audio_bytes, audio_file, decode_audio, fold_split, load_urbansound,
                                metadata_frame, pick_device, save_json)

# %%
from urbansound_nb.core import as_int, is_synthetic, validate_params, write_results

# %% tags=["parameters"]
dataset = None          # hub id, local folder or "synthetic"; None: $URBANSOUND_DATASET, else the hub id
train_folds = None
val_fold = None
test_fold = None
sample_rate = 22050
clip_seconds = 4.0
seed = 0
max_items = None
epochs = 30             # unused here; shared by every notebook
run_dir = "../runs/notebook"
cache_dir = "../cache"
n_mels = 64             # mel bands
n_fft = 1024            # STFT window, samples (46 ms at 22.05 kHz)
hop_length = 512        # STFT hop, samples (23 ms at 22.05 kHz)
workers = None          # extraction threads; None: every core
bench_items = 256       # clips for the on-the-fly comparison below

# %%
#| hide
if os.environ.get("IN_TEST"):
    import tempfile; dataset, run_dir, cache_dir, bench_items = "synthetic", tempfile.mkdtemp(), tempfile.mkdtemp(), 32

# %%
params = validate_params(dataset, train_folds, val_fold, test_fold, sample_rate, clip_seconds, seed, max_items,
                         epochs, run_dir, cache_dir)
workers = None if workers is None else as_int("workers", workers, 1)
bench_items = as_int("bench_items", bench_items, 1)
ds = load_urbansound(params.dataset, params.max_items, params.seed)
split = fold_split(ds, params.train_folds, params.val_fold, params.test_fold)
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
    sample_rate: int = 22050
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 512
    f_min: float = 0.0
    f_max: float | None = None
    def __post_init__(self):
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0: raise ValueError(f"feature parameter {name!r} must be a positive integer, got {v!r}")
        if self.hop_length > self.n_fft: raise ValueError(f"feature parameter 'hop_length' ({self.hop_length}) exceeds 'n_fft' ({self.n_fft})")
        if self.n_mels > self.n_fft // 2 + 1: raise ValueError(f"feature parameter 'n_mels' ({self.n_mels}) exceeds the {self.n_fft//2+1} STFT bins")
    @property
    def key(self) -> str:
        spec = json.dumps(dict(asdict(self), version=FEATURE_VERSION), sort_keys=True)
        return "logmel-" + hashlib.sha1(spec.encode()).hexdigest()[:12]
    def frames(self, seconds: float) -> int:
        "Frames of a clip of `seconds` (centred STFT: one frame per hop, plus one)."
        return int(round(seconds * self.sample_rate)) // self.hop_length + 1

# %%
from fastcore.test import test_eq, test_ne, test_fail, test_close
fp = FeatureParams(sample_rate=params.sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
test_ne(fp.key, FeatureParams(sample_rate=params.sample_rate, n_mels=n_mels + 1, n_fft=n_fft, hop_length=hop_length).key)
test_fail(lambda: FeatureParams(n_mels=0), contains="'n_mels' must be a positive integer")
print(fp, fp.key, f"{fp.frames(params.clip_seconds)} frames per {params.clip_seconds:g} s clip")

# %% [markdown]
# ## The log-mel front end
#
# A small `nn.Module`: mel power spectrogram, then decibels with a floor at -100 dB (power
# 1e-10). It takes a batch of waveforms `[batch, samples]` on any device, so the same module
# runs on the CPU here and on a GPU when there is one.

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
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(self.mel(wave).clamp_min(10 ** (DB_FLOOR / 10)))

# %%
front = LogMel(fp)
wave = torch.randn(2, int(params.clip_seconds * fp.sample_rate)) * 0.1
lm = front(wave)
test_eq(lm.shape, (2, fp.n_mels, fp.frames(params.clip_seconds)))
test_eq(front(torch.zeros(1, 4096)).max().item(), DB_FLOOR)  # silence sits exactly at the floor
if torch.cuda.is_available(): test_close(LogMel(fp).cuda()(wave.cuda()).cpu(), lm, eps=1e-2)
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
w = load_waveform(audio_bytes(row["audio"]), fp.sample_rate, row["slice_file_name"])
print(row["slice_file_name"], row["class"], tuple(w.shape), f"{len(w)/fp.sample_rate:.2f} s at {fp.sample_rate} Hz")

# %% [markdown]
# ## Pad or crop, and "duration cheating"
#
# Models need a fixed input length; **4 s** is the longest clip in UrbanSound8K, so nothing is
# lost by cropping. Shorter clips are padded with **zeros** (silence). Longer inputs (other
# datasets, `clip_seconds < 4`, or a user's file) are cropped: a **random** window in training,
# so every epoch sees a different part, and the **centre** at evaluation, so a score never
# depends on luck.
#
# Zero padding has a known trap, *duration cheating*: in UrbanSound8K the classes have very
# different clip lengths (most gun shots and many dog barks and car horns are under 1 s, most
# air conditioners exactly 4 s), so the amount of trailing silence alone predicts the class
# fairly well. A model that learns that has learnt the dataset's editing, not the sound. It is
# the reason some pipelines loop short clips instead; notebook 05 measures accuracy by clip
# duration to see whether short clips are won by their silence. (The offline copy used while
# developing, `urbansound8k-mini`, had already been looped to 4 s before we got it, so on it
# the trap is closed by construction.)
#
# `fix_length` works on the last axis, so it serves waveforms and log-mel frames alike. On
# frames, padding with the dB floor is exactly what zero padding of the waveform would give.

# %%
#| export
def fix_length(x: torch.Tensor, n: int, mode: str = "center", pad_value: float = 0.0, generator=None) -> torch.Tensor:
    "Crop (mode 'center', 'random' or 'start') or pad at the end with `pad_value` the last axis of `x` to `n`."
    if mode not in ("center", "random", "start"): raise ValueError(f"mode must be 'center', 'random' or 'start', got {mode!r}")
    length = x.shape[-1]
    if length > n:
        extra = length - n
        off = extra // 2 if mode == "center" else 0 if mode == "start" else int(torch.randint(extra + 1, (1,), generator=generator))
        return x[..., off:off + n]
    if length < n: return torch.nn.functional.pad(x, (0, n - length), value=pad_value)
    return x

# %%
t = torch.arange(10.)
test_eq(fix_length(t, 4), torch.tensor([3., 4., 5., 6.]))
test_eq(fix_length(t, 12)[-2:], torch.zeros(2))
test_eq(fix_length(t, 4, "start"), torch.arange(4.))
crops = {tuple(fix_length(t, 4, "random").tolist()) for _ in range(50)}
assert len(crops) > 3, "random crops vary"

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

# %%
#| export
def clip_key(data: bytes) -> str:
    "Content hash of a clip's encoded bytes."
    return hashlib.blake2b(data, digest_size=12).hexdigest()

def _clip_batches(ds, batch_size=256):
    "(names, bytes) of `ds` in order, in batches, without decoding."
    for batch in ds.select_columns(["audio", "slice_file_name"]).iter(batch_size=batch_size):
        names = batch["slice_file_name"]
        yield names, [audio_bytes(a, n) for a, n in zip(batch["audio"], names)]

# %%
#| export
class FeatureCache:
    "Log-mel frames on disk, one folder per `FeatureParams`, sharded, resumable."
    def __init__(self, cache_dir, fp: FeatureParams):
        self.fp, self.dir = fp, Path(cache_dir).expanduser()/fp.key
        self.dir.mkdir(parents=True, exist_ok=True)
        save_json(dict(asdict(fp), version=FEATURE_VERSION), self.dir/"params.json")
        self.index: dict = {}
        for f in sorted(self.dir.glob("shard-*.json")):
            for k, off, n in json.loads(f.read_text())["clips"]: self.index[k] = (f.with_suffix(".npy").name, off, n)
        self._open: dict = {}

    def __contains__(self, key): return key in self.index
    def __len__(self): return len(self.index)

    def get(self, key) -> np.ndarray:
        "Frames [frames, n_mels] (float16, memory-mapped) of one clip."
        shard, off, n = self.index[key]
        if shard not in self._open: self._open[shard] = np.load(self.dir/shard, mmap_mode="r")
        return self._open[shard][off:off + n]

# %%
#| export
@torch.no_grad()
def _clip_logmel(data: bytes, name: str, front: LogMel, device) -> np.ndarray:
    "One clip's log-mel frames [frames, n_mels] as float16."
    wave = load_waveform(data, front.fp.sample_rate, name).to(device)
    return front(wave).T.to(torch.float16).cpu().numpy()

def _write_shard(cache: FeatureCache, keys: list, frames: list):
    "One shard: the frames first, then (atomically) the index that makes them visible."
    name = "shard-" + hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
    buf = io.BytesIO(); np.save(buf, np.concatenate(frames) if frames else np.zeros((0, cache.fp.n_mels), np.float16))
    atomic_write_bytes(cache.dir/f"{name}.npy", buf.getvalue())
    offs = np.cumsum([0] + [len(f) for f in frames[:-1]]).tolist()
    atomic_write_bytes(cache.dir/f"{name}.json", json.dumps({"clips": [[k, o, len(f)] for k, o, f in zip(keys, offs, frames)]}).encode())
    for k, o, f in zip(keys, offs, frames): cache.index[k] = (f"{name}.npy", o, len(f))

# %% [markdown]
# Finding a clip's key means reading and hashing its bytes, and every notebook does it to look
# its features up. For the official layout, whose clips are files, that reads the whole release
# in each notebook: on a full-size stand-in (5.3 GB, see the README), 13 s with the files in the
# page cache and 27 s from this machine's disk. `FileKeys` remembers each file's key in
# `cache_dir/file_keys.json`, under its path, with the four things git's index compares to call
# a file unchanged: size, modification time, status-change time and inode. An unchanged file is
# not read again, and the look-up takes 0.2 s (0.5 s from disk).
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
    "Content keys of audio files remembered by path, size, modification and status-change times and inode, in `cache_dir/file_keys.json`."
    fresh_seconds = 2.0  # a file changed this recently is hashed but not remembered

    def __init__(self, cache_dir):
        self.path = Path(cache_dir).expanduser()/"file_keys.json"
        try: self.entries = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError): self.entries = {}  # a damaged memo costs a rehash, nothing else
        if not isinstance(self.entries, dict): self.entries = {}
        self.hashed, self.changed = 0, False

    def key(self, audio: dict, name: str = "clip") -> str:
        "A clip's content key: remembered when its file is unchanged, else hashed from its bytes."
        path = audio_file(audio)
        try: st = os.stat(path) if path else None
        except OSError: st = None  # reading it below raises the error that names the clip
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] if st else None
        known = self.entries.get(path) if sig else None
        if isinstance(known, list) and known[:-1] == sig: return known[-1]
        k = clip_key(audio_bytes(audio, name)); self.hashed += 1
        if sig and time.time_ns() - st.st_ctime_ns > self.fresh_seconds * 1e9: self.entries[path] = [*sig, k]; self.changed = True
        return k

    def save(self):
        if self.changed: save_json(self.entries, self.path); self.changed = False

# %% [markdown]
# A file is read once; a second look-up, or a new `FileKeys` on the same folder, answers
# from the memo until the file changes:

# %%
import tempfile
from urbansound_nb.core import encode_audio
with tempfile.TemporaryDirectory() as d:
    wav = Path(d)/"a.wav"; wav.write_bytes(encode_audio(np.zeros(800, np.float32), 8000))
    fk = FileKeys(d); k = fk.key(dict(bytes=None, path=str(wav))); test_eq(fk.entries, {})  # just written: not remembered yet
    fk.fresh_seconds = 0; test_eq(fk.key(dict(bytes=None, path=str(wav))), k); test_eq(fk.hashed, 2)
    test_eq(k, clip_key(wav.read_bytes())); fk.key(dict(bytes=None, path=str(wav))); test_eq(fk.hashed, 2)  # remembered
    fk.save(); fk2 = FileKeys(d); test_eq(fk2.key(dict(bytes=None, path=str(wav))), k); test_eq(fk2.hashed, 0)
    before = wav.stat(); time.sleep(0.05)                                   # past the clock tick of file times
    wav.write_bytes(encode_audio(np.ones(800, np.float32) / 4, 8000))       # other audio, same size, old modification time
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns)); test_eq(wav.stat().st_size, before.st_size)
    assert fk2.key(dict(bytes=None, path=str(wav))) != k and fk2.hashed == 1  # noticed all the same: hashed afresh
    test_eq(fk2.key(dict(bytes=wav.read_bytes(), path=None)), clip_key(wav.read_bytes()))  # bytes are always hashed
    (Path(d)/"file_keys.json").write_text("{not json"); test_eq(FileKeys(d).entries, {})  # a damaged memo is ignored
    test_fail(lambda: fk2.key(dict(bytes=None, path=str(Path(d)/"gone.wav")), "gone.wav"), contains="gone.wav")

# %%
#| export
def _hash_clips(ds, cache: FeatureCache, file_keys: FileKeys) -> tuple[list, dict]:
    "Every clip's key in order, and {key: row} for the clips not yet in `cache` (their rows, not their bytes)."
    keys, todo = [], {}
    try:
        for batch in ds.select_columns(["audio", "slice_file_name"]).iter(batch_size=256):
            for audio, name in zip(batch["audio"], batch["slice_file_name"]):
                k = file_keys.key(audio, name)
                if k not in cache and k not in todo: todo[k] = len(keys)
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
    def work(ks, names, datas): return ks, [_clip_logmel(d, n, front, device) for n, d in zip(names, datas)]
    def collect(keep: int):  # oldest chunk first; a full shard is written at once
        nonlocal pending
        while len(inflight) > keep:
            ks, frames = inflight.popleft().result()
            pending[0].extend(ks); pending[1].extend(frames); bar.update(len(ks))
            if len(pending[0]) >= shard_size: _write_shard(cache, *pending); pending = ([], [])
    try:
        with ThreadPoolExecutor(workers) as ex:
            for i, (names, datas) in enumerate(_clip_batches(ds.select(list(todo.values())), 32)):
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
    c = FeatureCache(d, fp); ks, todo = _hash_clips(tiny, c, FileKeys(d))
    test_eq(len(ks), 13); test_eq(ks[12], ks[0]); test_eq(list(todo.values()), list(range(12)))  # the copy is not computed again
    _extract_missing(c, tiny, todo, LogMel(fp), "cpu", 2, 256, tqdm(disable=True))
    test_eq(len(c), 12); test_eq(_hash_clips(tiny, c, FileKeys(d))[1], {})  # all cached now

# %%
#| export
def cache_logmels(ds, fp: FeatureParams, cache_dir, workers: int | None = None, device=None,
                  shard_size: int = 256, progress: bool = True) -> tuple[FeatureCache, list[str], dict]:
    "Make sure every clip of `ds` is in the cache; return the cache, the clips' keys in order, and statistics."
    t0 = time.time(); cache, file_keys = FeatureCache(cache_dir, fp), FileKeys(cache_dir)
    keys, todo = _hash_clips(ds, cache, file_keys); hashed = time.time()
    device = torch.device(device) if device else pick_device()
    front, workers, threads = LogMel(fp).to(device), workers or os.cpu_count() or 1, torch.get_num_threads()
    bar = tqdm(total=len(todo), desc=f"log-mel {fp.key}", unit="clip", disable=not progress or not todo, mininterval=2)
    torch.set_num_threads(1)  # one core per worker thread: the threads are the parallelism
    try:
        if todo: _extract_missing(cache, ds, todo, front, device, workers, shard_size, bar)
    finally: torch.set_num_threads(threads); bar.close()
    stats = dict(clips=len(keys), computed=len(todo), reused=len(keys) - len(todo), hashed=file_keys.hashed, hash_seconds=round(hashed - t0, 3),
                 extract_seconds=round(time.time() - hashed, 3), workers=workers, device=str(device))
    return cache, keys, stats

# %% [markdown]
# Computing the features of this run's dataset (a second run finds them all in the cache):

# %%
cache, keys, stats = cache_logmels(ds, fp, params.cache_dir, workers=workers)
stats

# %%
cache2, keys2, stats2 = cache_logmels(ds, fp, params.cache_dir, workers=workers)
test_eq(keys2, keys); test_eq(stats2["computed"], 0)
print(f"second pass: {stats2['reused']} clips reused, {stats2['hash_seconds']:.2f} s to hash and look them up")

# %% [markdown]
# ## From the cache to batches
#
# `LogMelSet` holds the frames of a list of clips in memory as one padded float16 tensor
# (8,732 clips of 173 frames x 64 bands take 190 MB) plus their lengths, and builds batches
# by indexing: a random crop per clip in training, the centre at evaluation. This is the whole
# data path of a training epoch: no decoding, no worker processes.

# %%
#| export
class LogMelSet:
    "Log-mel frames of clips in a fixed order, padded into one tensor [clips, n_mels, max_frames]."
    def __init__(self, frames: list, labels=None, fp: FeatureParams | None = None):
        self.fp, n_mels = fp, frames[0].shape[1]
        self.lengths = torch.tensor([len(f) for f in frames])
        self.data = torch.full((len(frames), n_mels, int(self.lengths.max())), DB_FLOOR, dtype=torch.float16)
        for i, f in enumerate(frames): self.data[i, :, :len(f)] = torch.from_numpy(np.array(f, dtype=np.float16)).T  # a copy: the cache is read-only
        self.labels = None if labels is None else torch.as_tensor(np.array(labels), dtype=torch.long)  # a copy: pandas arrays may be read-only
    def __len__(self): return len(self.data)

    @classmethod
    def from_cache(cls, cache: FeatureCache, keys: list, labels=None):
        return cls([cache.get(k) for k in keys], labels, cache.fp)

# %%
#| export
def batch_frames(ls: LogMelSet, idx, n_frames: int, mode: str = "center", generator=None) -> torch.Tensor:
    "Frames [len(idx), n_mels, n_frames] (float32) of clips `idx`: random or centre crop, floor padding."
    idx = torch.as_tensor(idx, dtype=torch.long)
    lengths, data = ls.lengths[idx], ls.data[idx]
    if data.shape[-1] < n_frames: data = torch.nn.functional.pad(data, (0, n_frames - data.shape[-1]), value=DB_FLOOR)
    extra = (lengths - n_frames).clamp_min(0)
    if mode == "random": off = (torch.rand(len(idx), generator=generator) * (extra + 1)).long().clamp_max(extra)
    elif mode == "center": off = extra // 2
    else: raise ValueError(f"mode must be 'center' or 'random', got {mode!r}")
    cols = off[:, None] + torch.arange(n_frames)[None, :]                          # [B, n_frames]
    # frames past a clip's end already hold the floor (LogMelSet pads with it), so a gather is all it takes
    return data.gather(2, cols[:, None, :].expand(-1, data.shape[1], -1)).float()

# %%
toy = LogMelSet([np.full((n, 3), float(n), np.float16) for n in (2, 5, 9)], labels=[0, 1, 2])
b = batch_frames(toy, [0, 1, 2], 5)
test_eq(b.shape, (3, 3, 5))
test_eq(b[0, 0].tolist(), [2, 2, DB_FLOOR, DB_FLOOR, DB_FLOOR])   # short clip: floor padding
test_eq(b[1, 0].tolist(), [5.] * 5)
toy.data[2, 0, :] = torch.arange(9).half()
test_eq(batch_frames(toy, [2], 5)[0, 0].tolist(), [2., 3., 4., 5., 6.])   # centre crop
assert len({tuple(batch_frames(toy, [2], 5, "random")[0, 0].tolist()) for _ in range(40)}) > 2

# %% [markdown]
# The cached set of this run, with shapes and ranges:

# %%
meta = metadata_frame(ds)
allset = LogMelSet.from_cache(cache, keys, meta["classID"].values)
n_frames = fp.frames(params.clip_seconds)
x = batch_frames(allset, range(min(64, len(allset))), n_frames)
print(f"cached: {tuple(allset.data.shape)} float16 = {allset.data.numel()*2/2**20:.1f} MiB in memory")
print(f"a batch: {tuple(x.shape)}, {x.min():.1f} .. {x.max():.1f} dB, mean {x.mean():.1f} dB")
print(f"clip lengths: {allset.lengths.min().item()} .. {allset.lengths.max().item()} frames; "
      f"{(allset.lengths < n_frames).float().mean():.0%} of clips are padded")

# %% [markdown]
# ## Input normalisation
#
# Models see log-mels standardised per mel band with the **training folds'** mean and standard
# deviation (padding frames excluded). Statistics from the validation or test folds would leak
# information about them into the model.

# %%
#| export
def band_stats(ls: LogMelSet, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
    "Per-band mean and std [n_mels] over the real (unpadded) frames of clips `idx`."
    idx = torch.arange(len(ls)) if idx is None else torch.as_tensor(idx)
    total, sq, count = 0., 0., 0
    for chunk in idx.split(512):
        d, L = ls.data[chunk].float(), ls.lengths[chunk]
        mask = (torch.arange(d.shape[-1])[None, :] < L[:, None])[:, None, :]
        total = total + (d * mask).sum((0, 2)); sq = sq + (d.square() * mask).sum((0, 2)); count += int(mask.sum())
    mean = total / count
    return mean, (sq / count - mean.square()).clamp_min(1e-6).sqrt()

# %%
train_idx = np.flatnonzero(np.isin(meta["fold"].values, split.train_folds))
mean, std = band_stats(allset, train_idx)
test_eq(mean.shape, (fp.n_mels,))
print(f"train-fold band means {mean.min():.1f} .. {mean.max():.1f} dB, stds {std.min():.1f} .. {std.max():.1f} dB")

# %% [markdown]
# ## Everything a modelling notebook needs, in one call
#
# Notebooks 03-07 all start the same way: load the dataset, split it by fold, compute (or read)
# the cached log-mels, and find which clips are in the training, validation and test folds.
# `study_data` does exactly that, so the protocol (and the fold bookkeeping) lives in one place.

# %%
#| export
@dataclass
class StudyData:
    "One run's data: the dataset, its fold split, per-clip metadata, the cached log-mels and the fold indices."
    ds: object; split: object; meta: object; fp: FeatureParams; logmels: LogMelSet
    clip_seconds: float; n_frames: int; train: np.ndarray; val: np.ndarray; test: np.ndarray; cache_stats: dict
    # not an __init__ argument, so dataclasses.replace (another split of the same clips) starts without it
    _band_stats: tuple | None = field(default=None, init=False, repr=False, compare=False)
    def band_stats(self):
        "Per-band mean and std of the training folds only (no leak), computed once per StudyData."
        if self._band_stats is None: self._band_stats = band_stats(self.logmels, self.train)
        return self._band_stats

def study_data(params, fp: FeatureParams | None = None, progress: bool = True) -> StudyData:
    "Load `params.dataset`, split it by fold and read (or compute) its log-mels with `fp` (default: 64 bands)."
    ds = load_urbansound(params.dataset, params.max_items, params.seed)
    split, meta = fold_split(ds, params.train_folds, params.val_fold, params.test_fold), metadata_frame(ds)
    fp = fp or FeatureParams(sample_rate=params.sample_rate)
    cache, keys, stats = cache_logmels(ds, fp, params.cache_dir, progress=progress)
    fold = meta["fold"].values
    tr, va, te = (np.flatnonzero(np.isin(fold, f)) for f in (split.train_folds, [split.val_fold], [split.test_fold]))
    return StudyData(ds, split, meta, fp, LogMelSet.from_cache(cache, keys, meta["classID"].values),
                     params.clip_seconds, fp.frames(params.clip_seconds), tr, va, te, stats)

# %%
data = study_data(params, fp)
test_eq(data.cache_stats["computed"], 0)               # everything came from the cache filled above
test_eq(data.train, train_idx); test_eq(len(data.val), len(split.val)); test_eq(len(data.test), len(split.test))
test_close(data.band_stats()[0], mean)
assert data.band_stats() is data.band_stats()           # computed once
from dataclasses import replace
other = replace(data, train=data.val)                   # another split starts afresh: its own statistics
assert not torch.equal(other.band_stats()[0], data.band_stats()[0])
print(f"train {len(data.train)}, validation {len(data.val)}, test {len(data.test)} clips; inputs {fp.n_mels} x {data.n_frames}")

# %% [markdown]
# ## MFCCs from the same cache
#
# MFCCs are the discrete cosine transform of the log-mel bands; computing them from the cached
# log-mels costs a matrix product instead of a second pass over the audio. The baselines
# (notebook 03) summarise them per clip.

# %%
#| export
def mfcc_from_logmel(logmel: torch.Tensor, n_mfcc: int = 40) -> torch.Tensor:
    "MFCCs [..., n_mfcc, frames] from log-mels in dB [..., n_mels, frames] (orthonormal DCT-II)."
    dct = torchaudio.functional.create_dct(n_mfcc, logmel.shape[-2], norm="ortho")  # [n_mels, n_mfcc]
    return (logmel.transpose(-1, -2) @ dct).transpose(-1, -2)

# %%
ref = torchaudio.transforms.MFCC(fp.sample_rate, n_mfcc=20, melkwargs=dict(n_fft=fp.n_fft, hop_length=fp.hop_length, n_mels=fp.n_mels))
test_close(mfcc_from_logmel(front(wave), 20), ref(wave), eps=1e-2)  # torchaudio's MFCC, without the second pass

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
                   extent=[0, n_frames * fp.hop_length / fp.sample_rate, 0, fp.n_mels], cmap="magma")
    ax.set_title(f"{r['class']}\n{r['slice_file_name']}", fontsize=9); ax.set_xlabel("time (s)")
for ax in axes[:, 0]: ax.set_ylabel("mel band")
fig.colorbar(im, ax=axes, label="power (dB)", shrink=0.8)
fig.suptitle(f"Cached log-mel features, one training clip per class ({fp.n_mels} bands, {fp.sample_rate} Hz)")
plt.show()

# %% [markdown]
# ## How much faster than decoding every epoch?
#
# `benchmark` times, on the same clips: the cached extraction (decode + resample + log-mel on
# every core, written to a fresh cache), reading them back from the cache, and the starting
# notebook's way, decoding and transforming every clip in `__getitem__`, one at a time. The same
# figures come from `urbansound-nb bench --dataset D --max-items N`, whose last line is JSON.

# %%
#| export
def _on_the_fly(ds, fp: FeatureParams, n_frames: int) -> float:
    "Clips/s of decoding every item inside the training loop, as the starting notebook did."
    front, t0, n = LogMel(fp), time.time(), 0
    with torch.no_grad():
        for names, datas in _clip_batches(ds, 64):
            for name, d in zip(names, datas):
                fix_length(front(fix_length(load_waveform(d, fp.sample_rate, name), n_frames * fp.hop_length)), n_frames); n += 1
    return n / (time.time() - t0)

# %%
#| export
def benchmark(dataset=None, max_items: int = 512, workers: int | None = None, sample_rate: int = 22050,
              fp: FeatureParams | None = None, model: nn.Module | None = None, batch_size: int = 32, seed: int = 0) -> dict:
    "Print throughput figures of the feature pipeline on `max_items` clips of `dataset`; the last line is JSON."
    import tempfile
    ds = load_urbansound(dataset, max_items, seed); fp = fp or FeatureParams(sample_rate=sample_rate)
    n_frames, res = fp.frames(4.0), dict(dataset=str(dataset), clips=len(ds), cores=os.cpu_count(), feature_key=fp.key)
    with tempfile.TemporaryDirectory() as d:
        t = time.time(); cache, keys, st = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        res.update(cached_extract_clips_per_s=len(ds) / (time.time() - t), workers=st["workers"])
        t = time.time(); cache, keys, _ = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        ls = LogMelSet.from_cache(cache, keys, np.zeros(len(keys)))
        res["cache_reload_clips_per_s"] = len(ds) / (time.time() - t)
    otf = ds.select(range(min(len(ds), 256)))
    res["on_the_fly_clips_per_s"] = _on_the_fly(otf, fp, n_frames)
    res.update(epoch_data_path(ls, n_frames, batch_size, model))
    # per epoch, the cached path costs batch building only; the starting notebook's path decodes everything again
    res["epoch_speedup_cached_vs_on_the_fly"] = len(ls) / res["epoch_data_seconds"] / res["on_the_fly_clips_per_s"]
    for k, v in res.items(): print(f"{k:>34}: {v:.4g}" if isinstance(v, float) else f"{k:>34}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return res

# %%
#| export
def epoch_data_path(ls: LogMelSet, n_frames: int, batch_size: int = 32, model: nn.Module | None = None) -> dict:
    "Seconds per epoch spent building batches from the cache, and (with `model`) in the model's training step."
    perm, t = torch.randperm(len(ls)), time.time()
    batches = [batch_frames(ls, perm[i:i + batch_size], n_frames, "random") for i in range(0, len(ls), batch_size)]
    out = dict(epoch_data_seconds=time.time() - t)
    if model is not None:
        opt, t = torch.optim.SGD(model.parameters(), lr=1e-3), time.time()
        for xb in batches:
            loss = model(xb).logsumexp(1).mean(); opt.zero_grad(); loss.backward(); opt.step()
        out["epoch_model_seconds"] = time.time() - t
        out["data_path_overhead"] = out["epoch_data_seconds"] / out["epoch_model_seconds"]
    return out

# %%
#| slow
bench = benchmark(params.dataset, max_items=bench_items, workers=workers, fp=fp, seed=params.seed)

# %% [markdown]
# The cached extraction runs once per feature setting; after that an epoch's data costs the
# `epoch_data_seconds` above instead of a full decode of every clip. Notebook 04 compares that
# with the model's own compute.

# %%
#| slow
write_results(params.run_dir, "02_preprocessing", {"features": dict(
    feature_key=fp.key, **asdict(fp), n_frames=n_frames, clips=len(allset), cache_dir=str(cache.dir),
    first_pass=stats, second_pass=stats2, benchmark=bench)}, dataset=params.dataset)

# %%
#| default_exp cache

# %% [markdown]
# # The feature cache: log-mels computed once, kept on disk, resumable
#
# > Every clip's features keyed by its content and the feature parameters, sharded, checked as opened.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from urbansound_nb.audio import AudioDecodeError, audio_bytes, audio_file
from urbansound_nb.core import atomic_write_bytes, pick_device, save_json
from urbansound_nb.features import FEATURE_VERSION, FeatureParams, LogMel, load_waveform

# %%
import tempfile
from fastcore.test import test_eq, test_fail
from urbansound_nb.data import load_urbansound
features = FeatureParams()       # the study's front end, for the examples

# %% [markdown]
# ## The feature cache
#
# Each clip is keyed by a hash of its bytes, so the cache is keyed by **(feature parameters, clip content)**: the same
# audio in another copy, subset or order hits the same entry, and other audio under the same name never does. On disk,
# `cache_dir/<feature key>/` holds shards: `shard-*.npy`, up to 256 clips' log-mels as one float16 array (nothing that
# matters is lost at 0.03 dB), and `shard-*.json`, the index, written last and atomically, so an interrupted
# extraction leaves only complete shards and the next call computes the missing clips.
#
# A shard whose index cannot be read or whose frames are truncated is named in a warning, removed and computed again
# (a read-only cache, as Dask workers open it, names it and says to delete it). An undecodable clip's key and reason
# go into `undecodable.json`, so it is named again without being decoded again.

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
# Finding a clip's key means reading and hashing its bytes, in every chapter: for the official layout, the whole
# release (about 6 GB). `FileKeys` remembers each file's key in `cache_dir/file_keys.json` with the four things git's
# index compares: size, modification time, status-change time and inode. An unchanged file is not read again; an
# edited, replaced or moved one changes at least the status-change time (even `cp -p`), which no tool can set back. As
# in git, a file changed within two seconds is hashed but not remembered, since a second change within one clock tick
# would not show. Clips held as bytes are always hashed; deleting `file_keys.json` costs one rehash.

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
# A file is read once; a second look-up, or a new `FileKeys`, answers from the memo until the file changes:

# %%
from urbansound_nb.audio import encode_audio
with tempfile.TemporaryDirectory() as d:
    wav = Path(d)/"a.wav"
    wav.write_bytes(encode_audio(np.zeros(800, np.float32), 8000))
    fk = FileKeys(d)
    k = fk.key(dict(bytes=None, path=str(wav)))
    test_eq((fk.entries, k), ({}, clip_key(wav.read_bytes())))          # just written: not remembered yet
    fk.fresh_seconds = 0
    fk.key(dict(bytes=None, path=str(wav)))
    fk.save()
    fk2 = FileKeys(d)
    test_eq((fk2.key(dict(bytes=None, path=str(wav))), fk2.hashed), (k, 0))            # remembered: not read
    before = wav.stat()
    time.sleep(0.05)                                                     # past the clock tick of file times
    wav.write_bytes(encode_audio(np.ones(800, np.float32) / 4, 8000))    # other audio of the same size...
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns))           # ...and the old modification time
    assert fk2.key(dict(bytes=None, path=str(wav))) != k and fk2.hashed == 1   # noticed all the same
    (Path(d)/"file_keys.json").write_text("{not json")
    test_eq(FileKeys(d).entries, {})                                     # a damaged memo is ignored

# %%
#| export
def _clip_keys(ds, file_keys: FileKeys):
    "(key, None) of every clip in order, or (a stand-in key, why not) for a file that cannot be read."
    try:
        for batch in ds.select_columns(["audio", "slice_file_name"]).iter(batch_size=256):
            for audio, name in zip(batch["audio"], batch["slice_file_name"]):
                try: yield file_keys.key(audio, name), None
                except (AudioDecodeError, OSError) as e:  # missing or unreadable: skipped and named, like bad audio
                    yield f"unreadable:{audio_file(audio) or name}", f"{name}: {e}"
    finally: file_keys.save()  # the files hashed before an unreadable one stay remembered

def _hash_clips(ds, cache: FeatureCache, file_keys: FileKeys) -> tuple[list, dict]:
    "Every clip's key in order, and {key: row} for the clips not yet in `cache` (their rows, not their bytes)."
    keys, todo = [], {}
    for k, unreadable in _clip_keys(ds, file_keys):
        if unreadable: cache.unreadable[k] = unreadable
        if k not in cache and k not in todo and not cache.skip_reason(k): todo[k] = len(keys)
        keys.append(k)
    return keys, todo

def content_keys(ds, fp, cache_dir) -> tuple[list, list]:
    "Every clip's key, computing no feature, and the positions of clips known to have none (unreadable, undecodable)."
    known = _json_or_empty(Path(cache_dir).expanduser()/fp.key/UNDECODABLE)
    pairs = list(_clip_keys(ds, FileKeys(cache_dir)))
    return [k for k, _ in pairs], [i for i, (k, why) in enumerate(pairs) if why or k in known]

# %% [markdown]
# Extraction reads each uncached clip twice (to hash it, then to compute it), holding only a few chunks of 32 clips in
# memory, collected in order so that a shard does not depend on which thread finished first.

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

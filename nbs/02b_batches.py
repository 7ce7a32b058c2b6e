# %%
#| default_exp batches

# %% [markdown]
# # From the feature cache to batches
#
# > The cached log-mels in memory, batches cropped from them, band statistics, and `study_data`.

# %%
#| export
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from urbansound_nb.cache import FeatureCache, cache_logmels
from urbansound_nb.data import fold_split, load_urbansound, metadata_frame, report_skipped, skipped_clip
from urbansound_nb.features import DB_FLOOR, FeatureParams, study_features

# %%
from fastcore.test import test_eq, test_close

# %% [markdown]
# `LogMelSet` holds a list of clips' frames as one padded float16 tensor (8,732 clips x 173 frames x 64 bands: 190 MB)
# and builds batches by indexing: a random crop per clip in training, the centre at evaluation. A clip shorter than
# the input is **repeated**, not padded with silence, as EfficientAT's authors advise: a short clip's prediction then
# does not depend on the silence around it. Training, embeddings, scoring and `predict` all build inputs this way.

# %%
#| export
class LogMelSet:
    "Log-mel frames of clips in a fixed order, padded into one tensor [clips, n_mels, max_frames]."
    def __init__(self, frames: list, labels=None, fp: FeatureParams | None = None):
        self.fp, n_mels = fp, frames[0].shape[1]
        self.pad_value = DB_FLOOR if fp is None else fp.pad_value   # the features of silence
        self.lengths = torch.tensor([len(f) for f in frames])
        self.data = torch.full((len(frames), n_mels, int(self.lengths.max())), self.pad_value, dtype=torch.float16)
        # a copy: the cache is read-only
        for i, f in enumerate(frames): self.data[i, :, :len(f)] = torch.from_numpy(np.array(f, dtype=np.float16)).T
        # a copy: pandas arrays may be read-only
        self.labels = None if labels is None else torch.as_tensor(np.array(labels), dtype=torch.long)
    def __len__(self): return len(self.data)

    @classmethod
    def from_cache(cls, cache: FeatureCache, keys: list, labels=None):
        return cls([cache.get(k) for k in keys], labels, cache.fp)

PADDING = "repeat"   # how a clip shorter than the input is filled; part of every cache key of model inputs

def batch_frames(ls: LogMelSet, idx, n_frames: int, mode: str = "center", generator=None) -> torch.Tensor:
    "Frames [len(idx), n_mels, n_frames] (float32) of clips `idx`: random or centre crop; a short clip repeated."
    idx = torch.as_tensor(idx, dtype=torch.long)
    lengths, data = ls.lengths[idx], ls.data[idx]
    extra = (lengths - n_frames).clamp_min(0)
    if mode == "random": off = (torch.rand(len(idx), generator=generator) * (extra + 1)).long().clamp_max(extra)
    elif mode == "center": off = extra // 2
    else: raise ValueError(f"mode must be 'center' or 'random', got {mode!r}")
    # a clip shorter than the input is repeated until it fills it (PADDING): the index wraps round its length
    cols = (off[:, None] + torch.arange(n_frames)[None, :]) % lengths.clamp_min(1)[:, None]       # [B, n_frames]
    return data.gather(2, cols[:, None, :].expand(-1, data.shape[1], -1)).float()

# %%
toy = LogMelSet([np.full((n, 3), float(n), np.float16) for n in (2, 5, 9)], labels=[0, 1, 2])
b = batch_frames(toy, [0, 1, 2], 5)
test_eq(b.shape, (3, 3, 5))
test_eq(b[0, 0].tolist(), [2.] * 5)                               # short clip: repeated, never padded
test_eq(batch_frames(LogMelSet([np.array([[7.], [8.]], np.float16)]), [0], 5)[0, 0].tolist(), [7., 8., 7., 8., 7.])
test_eq(b[1, 0].tolist(), [5.] * 5)
toy.data[2, 0, :] = torch.arange(9).half()
test_eq(batch_frames(toy, [2], 5)[0, 0].tolist(), [2., 3., 4., 5., 6.])   # centre crop
assert len({tuple(batch_frames(toy, [2], 5, "random")[0, 0].tolist()) for _ in range(40)}) > 2

# %% [markdown]
# ## Input normalisation
#
# Per mel band, with the training folds' statistics over real frames only.

# %%
#| export
def band_stats(ls: LogMelSet, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
    "Per-band mean and std [n_mels] over the real (unpadded) frames of clips `idx`."
    idx = torch.arange(len(ls)) if idx is None else torch.as_tensor(idx)
    total, sq, count = 0., 0., 0
    for chunk in idx.split(512):
        d, L = ls.data[chunk].float(), ls.lengths[chunk]
        mask = (torch.arange(d.shape[-1])[None, :] < L[:, None])[:, None, :]
        total = total + (d * mask).sum((0, 2))
        sq = sq + (d.square() * mask).sum((0, 2))
        count += int(mask.sum())
    mean = total / count
    return mean, (sq / count - mean.square()).clamp_min(1e-6).sqrt()

# %%
m, s = band_stats(toy)
test_close(m,
           torch.tensor([np.mean([2, 2] + [5] * 5 + list(range(9)))]
                        + [np.mean([2, 2] + [5] * 5 + [9] * 9)] * 2).float(),
                      eps=1e-3)

# %% [markdown]
# ## Everything a modelling notebook needs, in one call
#
# `study_data` loads the dataset, splits it by fold, reads (or computes) the cached log-mels and finds each role's
# clips, so the fold bookkeeping lives in one place. `decoded_logmels` is the one way from a dataset and its keys to
# log-mels: it leaves undecodable clips out, names them (or, with `strict_audio`, stops), and returns the dataset
# without them.

# %% [markdown]
# What identifies a run's clips apart from their features is small: each clip's content key, label, fold and
# recording. `ClipIndex` holds that: the store keys a training by the clips it reads (notebook 04e), and `run --plan`
# builds one from the dataset alone, before any feature exists.

# %%
#| export
@dataclass(frozen=True)
class ClipIndex:
    "Each clip's content key, label, fold and recording (fsID), in the dataset's order, and the class names."
    keys: tuple
    labels: tuple
    folds: tuple
    recordings: tuple
    classes: tuple

    def indices(self, folds) -> np.ndarray:
        "The clips of `folds` (a fold or several), in order."
        return np.flatnonzero(np.isin(np.asarray(self.folds), np.atleast_1d(folds)))

    def frame(self):
        "The metadata a recording subset needs (`recording_subset`): classID and fsID of every clip."
        import pandas as pd
        return pd.DataFrame(dict(classID=self.labels, fsID=self.recordings, fold=self.folds))

    @classmethod
    def of(cls, keys, meta, classes):
        "The index of clips with content `keys` and metadata rows `meta` (classID, fold, fsID)."
        as_ints = lambda column: tuple(int(v) for v in meta[column])
        return cls(tuple(keys), as_ints("classID"), as_ints("fold"), as_ints("fsID"), tuple(classes))

@dataclass
class StudyData:
    "One run's data: the dataset, its fold split, per-clip metadata, the cached log-mels and the fold indices."
    ds: object
    split: object
    meta: object
    fp: FeatureParams
    logmels: LogMelSet
    clip_seconds: float
    n_frames: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cache_stats: dict
    keys: list | None = None  # each clip's content key in the feature cache
    skipped: list = field(default_factory=list)  # the clips left out: they cannot be read or decoded
    # not an __init__ argument, so dataclasses.replace (another split of the same clips) starts without it
    _band_stats: tuple | None = field(default=None, init=False, repr=False, compare=False)
    def band_stats(self):
        "Per-band mean and std of the training folds only (no leak), computed once per StudyData."
        if self._band_stats is None: self._band_stats = band_stats(self.logmels, self.train)
        return self._band_stats
    def clip_counts(self) -> dict:
        "The clips the chapter's figures rest on and those left out, for its results file."
        return dict(clips_used=len(self.meta), clips_skipped=self.skipped)
    @property
    def clips(self) -> ClipIndex:
        "What identifies this data's clips (keys, labels, folds, recordings, classes)."
        return ClipIndex.of(self.keys, self.meta, self.split.classes)

def decodable(ds, cache: FeatureCache, keys: list, strict: bool = False) -> tuple[object, list, list]:
    "`ds` and `keys` without the clips the cache could not decode, and those clips' records (reported here)."
    bad = [i for i, k in enumerate(keys) if cache.skip_reason(k)]
    if not bad: return ds, keys, []
    rows = ds.select(bad).select_columns(["slice_file_name", "fold", "class"]).to_list()
    skipped = [skipped_clip(r, cache.skip_reason(keys[i])) for i, r in zip(bad, rows)]
    report_skipped(skipped, len(ds), strict)
    keep = sorted(set(range(len(ds))) - set(bad))
    return ds.select(keep), [keys[i] for i in keep], skipped

def decoded_logmels(ds, cache: FeatureCache, keys: list, strict: bool = False) -> tuple[object, list, LogMelSet, list]:
    "The clips that decoded, as (dataset, keys, their log-mels labelled by `classID`), and the records of the others."
    ds, keys, skipped = decodable(ds, cache, keys, strict)
    labels = ds["classID"] if "classID" in ds.column_names else None
    return ds, keys, LogMelSet.from_cache(cache, keys, labels), skipped

def study_data(params, fp: FeatureParams | None = None, progress: bool = True) -> StudyData:
    "Load `params.dataset`, split it by fold, read (or compute) its log-mels with `fp` (default: the run's front end)."
    ds = load_urbansound(params.dataset, params.max_items, params.seed)
    fold_split(ds, params.train_folds, params.val_fold, params.test_fold)  # a split error before hours of features
    fp = fp or study_features(params)
    cache, keys, stats = cache_logmels(ds, fp, params.cache_dir, progress=progress)
    ds, keys, logmels, skipped = decoded_logmels(ds, cache, keys, params.strict_audio)
    split, meta = fold_split(ds, params.train_folds, params.val_fold, params.test_fold), metadata_frame(ds)
    fold = meta["fold"].values
    tr, va, te = (np.flatnonzero(np.isin(fold, f)) for f in (split.train_folds, [split.val_fold], [split.test_fold]))
    return StudyData(ds, split, meta, fp, logmels, params.clip_seconds, fp.frames(params.clip_seconds), tr, va, te,
                     stats, keys, skipped)


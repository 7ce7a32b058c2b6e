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
#| default_exp bench

# %% [markdown]
# # Benchmark: the cached data path against decoding every epoch
#
# > Cached feature extraction and reading the cache back, against decoding every clip on every epoch.

# %%
#| export
from __future__ import annotations

import json
import os
import tempfile
import time

import torch
from torch import nn

from urbansound_nb.batches import LogMelSet, batch_frames, decoded_logmels
from urbansound_nb.cache import cache_logmels, clip_batches
from urbansound_nb.data import load_urbansound
from urbansound_nb.features import FeatureParams, LogMel, load_waveform
from urbansound_nb.params import BATCH_SIZE, LOG_MEL

# %% [markdown]
# `benchmark` times, on the same clips: the cached extraction (decode + resample + log-mel on
# every core, written to a fresh cache), reading them back from the cache, and the starting
# notebook's way, decoding and transforming every clip in `__getitem__`, one at a time. The
# same figures come from `urbansound-nb bench --dataset D --max-items N`, whose last line is JSON.

# %%
#| export
def _on_the_fly(ds, fp: FeatureParams, n_frames: int) -> float:
    "Clips/s of decoding every item inside the training loop, as the starting notebook did."
    front, t0, n = LogMel(fp), time.time(), 0
    with torch.no_grad():
        for names, datas in clip_batches(ds, 64):
            for name, d in zip(names, datas):
                frames = front(load_waveform(d, fp.sample_rate, name)).T.numpy()
                batch_frames(LogMelSet([frames]), [0], n_frames)                # cropped or repeated, as in training
                n += 1
    return n / (time.time() - t0)

# %%
#| export
def benchmark(dataset=None, max_items: int = 512, workers: int | None = None, sample_rate: int = LOG_MEL["sample_rate"],
              fp: FeatureParams | None = None, model: nn.Module | None = None, batch_size: int = BATCH_SIZE,
              seed: int = 0) -> dict:
    "Print throughput figures of the feature pipeline on `max_items` clips of `dataset`; the last line is JSON."
    ds = load_urbansound(dataset, max_items, seed)
    fp = fp or FeatureParams(sample_rate=sample_rate)
    n_frames, res = fp.frames(4.0), dict(dataset=str(dataset), clips=len(ds), cores=os.cpu_count(), feature_key=fp.key)
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        cache, keys, st = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        res.update(logmel_front_end_clips_per_s=len(ds) / (time.time() - t), workers=st["workers"])
        t = time.time()
        cache, keys, _ = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        ds, keys, ls, _ = decoded_logmels(ds, cache, keys)        # a clip that does not decode is left out, named
        res["cache_reload_clips_per_s"] = len(ds) / (time.time() - t)
    otf = ds.select(range(min(len(ds), 256)))
    res["on_the_fly_clips_per_s"] = _on_the_fly(otf, fp, n_frames)
    res.update(epoch_data_path(ls, n_frames, batch_size, model))
    # per epoch, the cached path costs batch building only; the starting notebook's path decodes everything again
    res["epoch_speedup_cached_vs_on_the_fly"] = len(ls) / res["epoch_data_seconds"] / res["on_the_fly_clips_per_s"]
    print(f"the log-mel front end (decode, resample, log-mel, into a fresh cache; {res['workers']} workers): "
          f"{res['logmel_front_end_clips_per_s']:.1f} clips/s")
    for k, v in res.items(): print(f"{k:>34}: {v:.4g}" if isinstance(v, float) else f"{k:>34}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return res

# %%
#| export
def epoch_data_path(ls: LogMelSet, n_frames: int, batch_size: int = BATCH_SIZE, model: nn.Module | None = None) -> dict:
    "Seconds per epoch spent building batches from the cache, and (with `model`) in the model's training step."
    perm, t = torch.randperm(len(ls)), time.time()
    batches = [batch_frames(ls, perm[i:i + batch_size], n_frames, "random") for i in range(0, len(ls), batch_size)]
    out = dict(epoch_data_seconds=time.time() - t)
    if model is not None:
        opt, t = torch.optim.SGD(model.parameters(), lr=1e-3), time.time()
        for xb in batches:
            loss = model(xb).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["epoch_model_seconds"] = time.time() - t
        out["data_path_overhead"] = out["epoch_data_seconds"] / out["epoch_model_seconds"]
    return out

# %%
from fastcore.test import test_eq
res = benchmark("synthetic", max_items=24, workers=2, fp=FeatureParams(n_mels=32, n_fft=512, hop_length=256))
test_eq(res["clips"], 24)
assert res["epoch_speedup_cached_vs_on_the_fly"] > 0

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
#| default_exp pretrained

# %% [markdown]
# # A network pretrained on AudioSet: weights, front end and embeddings
#
# > EfficientAT's weights fetched, checked and cached; its own 32 kHz front end, cached like any log-mel; embeddings.

# %% [markdown]
# Chapter 05 transfers EfficientAT's MobileNetV3 (notebook 04a), trained on AudioSet, to
# UrbanSound8K. This notebook holds what that needs:
#
# * **the weights**: downloaded from the official release, checked against their sha256 and
#   cached under the cache directory (torch's own `download_url_to_file`), or read from a local
#   file (`weights=` or `$URBANSOUND_PRETRAINED`), and ported to torchvision's layout;
# * **the front end** the network was trained with (32 kHz, pre-emphasis, a 1024-point STFT of
#   800-sample windows, 128 Kaldi mel bands, a log and a fixed scaling), as parameters that the
#   feature cache of chapter 02 keys and stores like its own log-mels;
# * **embeddings**: the penultimate layer of every clip, computed once and cached.

# %%
#| export
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from urbansound_nb.batches import PADDING, LogMelSet, batch_frames
from urbansound_nb.core import atomic_write_bytes, pick_device
from urbansound_nb.data import unreachable
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import EfficientAT
from urbansound_nb.params import INFERENCE_BATCH

# %%
from fastcore.test import test_eq, test_fail, test_close

# %% [markdown]
# ## The weights
#
# The release holds several widths; `mn04_as` is the default, the others are one name away. The
# sha256 of `mn04_as` is the official one; for the wider ones none is recorded here, so the first
# download is trusted and its sha256 is kept beside the cached file, and every later use checks
# against that.

# %%
#| export
RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1"
PRETRAINED = {  # name -> (file of the release, width, sha256 of the official file or None where not recorded)
    "mn04_as": ("mn04_as_mAP_432.pt", 0.4, "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    "mn10_as": ("mn10_as_mAP_471.pt", 1.0, None),
    "mn20_as": ("mn20_as_mAP_478.pt", 2.0, None),
}
WEIGHTS_ENV = "URBANSOUND_PRETRAINED"  # a weights file, or a folder that holds the release's files

class WeightsError(RuntimeError):
    "Pretrained weights that cannot be had or are not the expected ones; the message names the file and what to do."

def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""): h.update(block)
    return h.hexdigest()

# %% [markdown]
# The file is a plain state dict in EfficientAT's own layout. Two renames make it torchvision's:
# the squeeze-excitation layers lose their `conc_se_layers.0` level and become 1x1 convolutions.
# Anything else (not a state dict, another architecture's weights) is an error naming the file.

# %%
#| export
def port_state(state: dict) -> dict:
    "EfficientAT's state dict in torchvision's layout: SE layers renamed and reshaped to 1x1 convolutions."
    out = {}
    for k, v in state.items():
        k = k.replace(".conc_se_layers.0.", ".")
        if (".fc1." in k or ".fc2." in k) and k.endswith("weight") and v.ndim == 2: v = v[:, :, None, None]
        out[k] = v
    return out

def load_weights(path, width: float) -> dict:
    "The ported state dict of a weights file, checked to fit EfficientAT at `width`; else a `WeightsError` saying why."
    try: state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = port_state(state)
    try: EfficientAT(width, n_classes=527).net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise WeightsError(f"{path}: these are not EfficientAT weights of width {width} ({first[:200]})") from None
    return state

# %%
_random = EfficientAT(0.4, 527)
_official = {k.replace(".fc1.", ".conc_se_layers.0.fc1.").replace(".fc2.", ".conc_se_layers.0.fc2."):
             v[:, :, 0, 0] if (".fc1." in k or ".fc2." in k) and k.endswith("weight") else v
             for k, v in _random.net.state_dict().items()}        # what the release's layout looks like
with tempfile.TemporaryDirectory() as d:
    torch.save(_official, Path(d)/"mn04.pt")
    test_eq(len(load_weights(Path(d)/"mn04.pt", 0.4)), len(_random.net.state_dict()))
    test_fail(lambda: load_weights(Path(d)/"mn04.pt", 1.0), contains="not EfficientAT weights of width 1.0")
    (Path(d)/"junk.pt").write_bytes(b"junk")
    test_fail(lambda: load_weights(Path(d)/"junk.pt", 0.4), contains="junk.pt: not a readable")
    torch.save({"model": [1, 2]}, Path(d)/"dict.pt")
    test_fail(lambda: load_weights(Path(d)/"dict.pt", 0.4), contains="not a state dict")

# %% [markdown]
# Where the file comes from: a local file (the `weights` parameter, or `$URBANSOUND_PRETRAINED`)
# is used as it is, after its checksum; otherwise the cached download, checked again on every use,
# so that a damaged file is fetched anew; otherwise a download. Offline, the download fails within
# seconds with the URL and the way to point at a local file, and nothing is cached.

# %%
#| export
def _check_sha(path: Path, expected: str | None, what: str):
    if expected and sha256_file(path) != expected:
        raise WeightsError(f"{path}: its sha256 is not that of {what} ({expected[:12]}...); "
                           "it is another or a damaged file")

def _download(url: str, dest: Path, sha: str | None):
    "Fetch `url` into `dest` with torch's downloader, checking `sha`; nothing is left behind on failure."
    why = unreachable(url)
    help = (f"point at a local copy with the parameter weights=/path/to/{dest.name} "
            f"or ${WEIGHTS_ENV}=/path/to/{dest.name}")
    if why: raise WeightsError(f"cannot download {url}: {why}; {help}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try: torch.hub.download_url_to_file(url, str(dest), hash_prefix=sha, progress=True)
    except RuntimeError as e:
        raise WeightsError(f"{url}: the download is not the official file ({e}); {help}") from None
    except Exception as e: raise WeightsError(f"cannot download {url} ({type(e).__name__}: {e}); {help}") from None

# %%
#| export
def weights_file(name: str = "mn04_as", weights=None, cache_dir="../cache") -> Path:
    "The checked weights file of EfficientAT `name`: local (`weights`, $URBANSOUND_PRETRAINED), cached, or downloaded."
    if name not in PRETRAINED:
        raise WeightsError(f"unknown pretrained network {name!r}; choose from {sorted(PRETRAINED)}")
    file, _, sha = PRETRAINED[name]
    local = weights or os.environ.get(WEIGHTS_ENV)
    if local:
        path = Path(local).expanduser()
        path = path/file if path.is_dir() else path
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file (from {'weights' if weights else WEIGHTS_ENV})")
        _check_sha(path, sha, f"the official {file}")
        return path
    cached = Path(cache_dir).expanduser()/"pretrained"/file
    recorded = cached.with_suffix(".sha256")
    expected = sha or (recorded.read_text().strip() if recorded.exists() else None)
    if cached.exists():
        if not expected or sha256_file(cached) == expected: return cached
        print(f"{cached}: damaged (its sha256 differs from {expected[:12]}...); fetching it again")
        cached.unlink()
    _download(f"{RELEASE_URL}/{file}", cached, sha)
    if not sha: atomic_write_bytes(recorded, sha256_file(cached).encode())  # first download, trusted from now on
    return cached

def pretrained_network(name: str = "mn04_as", weights=None, cache_dir="../cache") -> EfficientAT:
    "EfficientAT `name` with its AudioSet weights (527 outputs), in eval mode; `weights='random'`: untrained (tests)."
    if name not in PRETRAINED:
        raise WeightsError(f"unknown pretrained network {name!r}; choose from {sorted(PRETRAINED)}")
    width = PRETRAINED[name][1]
    model = EfficientAT(width, n_classes=527)
    if weights == "random": model.weights_path, model.weights_sha = None, "random"
    else:
        path = weights_file(name, weights, cache_dir)
        model.net.load_state_dict(load_weights(path, width))
        model.weights_path, model.weights_sha = str(path), sha256_file(path)
    return model.eval()

# %%
test_eq(pretrained_network(weights="random").weights_sha, "random")   # an untrained network, for tests
with tempfile.TemporaryDirectory() as d:
    test_fail(lambda: weights_file("mn99"), contains="unknown pretrained network 'mn99'")
    test_fail(lambda: weights_file(weights=Path(d)/"none.pt"), contains="none.pt: no such weights file")
    torch.save(_official, Path(d)/"other.pt")
    test_fail(lambda: weights_file(weights=Path(d)/"other.pt"), contains="its sha256 is not that of the official")
    if unreachable(RELEASE_URL):   # offline (as here): a clear error within seconds, and nothing cached
        t0 = time.time()
        test_fail(lambda: weights_file(cache_dir=d), contains=f"cannot download {RELEASE_URL}/mn04_as_mAP_432.pt")
        assert time.time() - t0 < 30 and not (Path(d)/"pretrained").exists()

# %% [markdown]
# ## The network's own front end
#
# EfficientAT was trained on its own log-mels, so it must see exactly those: mono audio at
# 32 kHz, pre-emphasis `x[t] - 0.97 x[t-1]` (the first sample kept), an STFT of 1024 points over 800-sample Hann windows
# (not periodic) every 320 samples, centred, its power; 128 Kaldi-style mel bands from 0 to
# 15 kHz; `log(mel + 1e-5)`; then `(x + 4.5) / 5`. `EfficientATFeatures` holds these parameters
# with the same interface as chapter 02's `FeatureParams`, so the feature cache computes them
# once per clip, keyed by them, on a GPU where there is one, and a checkpoint carries them.

# %%
#| export
@dataclass(frozen=True)
class EfficientATFeatures:
    "The front end EfficientAT was trained with; a drop-in for `FeatureParams` in the feature cache."
    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    f_min: float = 0.0
    f_max: float = 15000.0
    preemphasis: float = 0.97
    kind: str = "efficientat"
    @property
    def key(self) -> str:
        return "eat-" + hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
    def frames(self, seconds: float) -> int:
        "Frames of a clip of `seconds` (centred STFT: one frame per hop, plus one)."
        return int(round(seconds * self.sample_rate)) // self.hop_length + 1
    @property
    def pad_value(self) -> float: return (math.log(1e-5) + 4.5) / 5  # the features of silence
    def front_end(self) -> nn.Module: return EfficientATFrontEnd(self)

def feature_params(d: dict):
    "Feature parameters from a checkpoint's dict: EfficientAT's front end or chapter 02's log-mel."
    return EfficientATFeatures(**d) if d.get("kind") == "efficientat" else FeatureParams(**d)

# %%
#| export
class EfficientATFrontEnd(nn.Module):
    "Waveforms [..., samples] at 32 kHz -> EfficientAT's scaled log-mels [..., 128, frames]."
    def __init__(self, fp: EfficientATFeatures = EfficientATFeatures()):
        super().__init__()
        self.fp = fp
        self.register_buffer("window", torch.hann_window(fp.win_length, periodic=False), persistent=False)
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(fp.n_mels, fp.n_fft, float(fp.sample_rate), fp.f_min,
                                                             fp.f_max, 100.0, -500.0, 1.0)
        self.register_buffer("banks", nn.functional.pad(banks, (0, 1)), persistent=False)  # [n_mels, n_fft // 2 + 1]
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # pre-emphasis that keeps the first sample (and so the clip's length); the reference port does the same
        x = torch.cat([wave[..., :1], wave[..., 1:] - self.fp.preemphasis * wave[..., :-1]], -1)
        spec = torch.stft(x, self.fp.n_fft, hop_length=self.fp.hop_length, win_length=self.fp.win_length,
                          window=self.window, center=True, return_complex=True)
        mel = self.banks @ spec.abs().square()
        return ((mel + 1e-5).log() + 4.5) / 5

# %%
eat_features = EfficientATFeatures()
front = eat_features.front_end()
test_eq(front(torch.randn(32000 * 4) * 0.1).shape, (128, eat_features.frames(4.0)))
test_close(front(torch.zeros(2, 8000)), torch.full((2, 128, eat_features.frames(0.25)), eat_features.pad_value))
test_eq(type(feature_params(asdict(eat_features))), EfficientATFeatures)
test_eq(type(feature_params(asdict(FeatureParams()))), FeatureParams)
print(eat_features.key, f"{eat_features.frames(4.0)} frames per 4 s clip")

# %% [markdown]
# ## What AudioSet hears
#
# The network's own head names 527 AudioSet classes. Their names come from AudioSet's
# `class_labels_indices.csv`, read beside a local weights file, or from the cache, or downloaded
# once from AudioSet's site; without it the classes are shown by index.

# %%
#| export
LABELS_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"

def audioset_labels(weights_path=None, cache_dir="../cache") -> list[str]:
    "The 527 AudioSet class names in the order of the network's outputs (or 'class N' where none can be had)."
    import csv
    candidates = [Path(cache_dir).expanduser()/"pretrained"/"audioset_class_labels_indices.csv"]
    if weights_path: candidates.insert(0, Path(weights_path).parent/"audioset_class_labels_indices.csv")
    found = next((p for p in candidates if p.is_file()), None)
    if found is None and not unreachable(LABELS_URL):
        try:
            torch.hub.download_url_to_file(LABELS_URL, str(candidates[-1]), progress=False)
            found = candidates[-1]
        except Exception: found = None
    if found is None: return [f"class {i}" for i in range(527)]
    rows = list(csv.DictReader(found.open()))
    return [r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"]))]

@torch.no_grad()
def audioset_top(network: EfficientAT, x: torch.Tensor, labels, k: int = 3) -> list[list[tuple[str, float]]]:
    "The top-k AudioSet labels and their probabilities (sigmoid of the network's head) of each input [B, 128, T]."
    probs = network.eval()(x).sigmoid()
    return [[(labels[int(i)], round(float(p[i]), 3)) for i in p.argsort(descending=True)[:k]] for p in probs]

# %% [markdown]
# ## Embeddings, computed once
#
# A clip's embedding is the network's penultimate layer on its centre crop (a shorter clip
# repeated to fill it, notebook 02a), 512 numbers at width 0.4, and the pooled blocks' outputs when
# the network reads them (`pooled_blocks`, notebook 04a). They are cached beside the clip's features,
# keyed by the clip's content and the weights' sha256, so a rerun reads them back in a second,
# and a clip added later is the only one computed.

# %%
#| export
@torch.no_grad()
def embed_clips(network: EfficientAT, ls: LogMelSet, idx, n_frames: int, batch_size: int = INFERENCE_BATCH, device=None,
                progress: bool = True) -> np.ndarray:
    "Penultimate-layer embeddings [len(idx), dim] of clips `idx` (centre crops of `n_frames`)."
    device = device or pick_device()
    network = network.to(device).eval()
    idx = np.asarray(idx)
    out = []
    batches = tqdm(range(0, len(idx), batch_size), desc="embeddings", unit="batch", disable=not progress, mininterval=5)
    for start in batches:
        out.append(network.embed(batch_frames(ls, idx[start:start + batch_size], n_frames).to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

def _stored_embeddings(path: Path) -> dict:
    "The embeddings stored at `path` ({keys, vectors}); {} when absent, or damaged (named, then computed again)."
    if not path.exists(): return {}
    try:
        with np.load(path) as z: known = dict(keys=z["keys"], vectors=z["vectors"])  # no pickles: allow_pickle=False
        if known["vectors"].ndim != 2 or len(known["keys"]) != len(known["vectors"]): raise ValueError("shapes differ")
        return known
    except Exception as e:
        warnings.warn(f"damaged embeddings cache {path} ({type(e).__name__}: {e}): computed again")
        return {}

def cached_embeddings(network: EfficientAT, data, cache_dir, batch_size: int = INFERENCE_BATCH,
                      progress: bool = True) -> tuple[np.ndarray, dict]:
    "Embeddings of every clip of `data` (a `StudyData` with clip keys), computed once per clip and weights file."
    pooled = "".join(f"-b{b}" for b in getattr(network, "pooled_blocks", ()))    # a body reading pooled blocks too
    path = Path(cache_dir).expanduser()/data.fp.key/f"embeddings-{network.weights_sha[:12]}-{PADDING}{pooled}.npz"
    known = _stored_embeddings(path)
    keys, known_keys = list(data.keys), dict(zip(known.get("keys", []), range(len(known.get("keys", [])))))
    todo = [i for i, k in enumerate(keys) if k not in known_keys]
    t0 = time.time()
    fresh = embed_clips(network, data.logmels, todo, data.n_frames, batch_size, progress=progress) if todo else None
    seconds = time.time() - t0
    dim = fresh.shape[1] if fresh is not None else known["vectors"].shape[1]
    out = np.zeros((len(keys), dim), np.float32)
    for i, k in enumerate(keys):
        if k in known_keys: out[i] = known["vectors"][known_keys[k]]
    if todo:
        out[todo] = fresh
        all_keys = list(known_keys) + [keys[i] for i in todo]
        vectors = np.concatenate([known["vectors"], fresh]) if known_keys else fresh
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(all_keys), vectors=vectors)
        atomic_write_bytes(path, buf.getvalue())
    return out, dict(computed=len(todo), reused=len(keys) - len(todo), seconds=round(seconds, 2),
                     clips_per_second=round(len(todo) / seconds, 1) if todo and seconds > 0 else None)

# %%
with tempfile.TemporaryDirectory() as d:     # a damaged store is named and computed again, never a cryptic error
    (Path(d)/"embeddings.npz").write_bytes(b"PK\x03\x04 cut short")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        test_eq(_stored_embeddings(Path(d)/"embeddings.npz"), {})
    assert "damaged embeddings cache" in str(said[0].message) and "embeddings.npz" in str(said[0].message)

# %% [markdown]
# ## Throughput
#
# `benchmark_pretrained` times the two costs a run pays once per clip: the front end (decode,
# resample to 32 kHz, the log-mel, written to a fresh cache) and the embedding. Throughput does
# not depend on the weights' values, so it uses a randomly initialised network of the same
# width and needs no download. `urbansound-nb bench` prints these figures after chapter 02's;
# the last line is JSON.

# %%
#| export
def benchmark_pretrained(dataset=None, max_items: int = 256, network: str = "mn04_as", workers: int | None = None,
                         batch_size: int = INFERENCE_BATCH, seed: int = 0) -> dict:
    "Clips per second of EfficientAT's front end (into a fresh cache) and of its embeddings, on this machine's CPU."
    from urbansound_nb.batches import decoded_logmels
    from urbansound_nb.cache import cache_logmels
    from urbansound_nb.data import load_urbansound
    ds, fp = load_urbansound(dataset, max_items, seed), EfficientATFeatures()
    res = dict(dataset=str(dataset), clips=len(ds), network=network, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        cache, keys, _ = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        res["front_end_clips_per_s"] = len(ds) / (time.time() - t)
        ls = decoded_logmels(ds, cache, keys)[2]               # a clip that does not decode is left out, named
    net = EfficientAT(PRETRAINED[network][1], n_classes=527)
    t = time.time()
    embed_clips(net, ls, np.arange(len(ls)), fp.frames(4.0), batch_size, device="cpu", progress=False)
    res["embedding_clips_per_s"] = len(ls) / (time.time() - t)
    both = 1 / res["front_end_clips_per_s"] + 1 / res["embedding_clips_per_s"]
    res["front_end_and_embedding_clips_per_s"] = 1 / both
    print(f"the pretrained front end (decode, resample to 32 kHz, its log-mel, into a fresh cache): "
          f"{res['front_end_clips_per_s']:.1f} clips/s; with the embeddings "
          f"{res['front_end_and_embedding_clips_per_s']:.1f}")
    for k, v in res.items(): print(f"{k:>36}: {v:.4g}" if isinstance(v, float) else f"{k:>36}: {v}")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))
    return res

# %%
_bench = benchmark_pretrained("synthetic", max_items=16, batch_size=8)
assert _bench["front_end_clips_per_s"] > 0 and _bench["embedding_clips_per_s"] > 0

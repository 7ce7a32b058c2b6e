# %%
#| default_exp pretrained

# %% [markdown]
# # A network pretrained on AudioSet: weights, front end and embeddings
#
# > EfficientAT's weights fetched, checked and cached; its own 32 kHz front end, cached like any log-mel; embeddings.

# %% [markdown]
# What chapter 05 needs to transfer EfficientAT's MobileNetV3 (notebook 04a): **the weights**, downloaded with torch's
# `download_url_to_file`, checked against their sha256 and cached, or read from a local file (`weights=` or
# `$URBANSOUND_PRETRAINED`), ported to torchvision's layout; **the front end** it was trained with, as parameters the
# feature cache keys and stores like chapter 02's; **the body**, the network reading its penultimate layer and three
# pooled blocks without AudioSet's head; and **embeddings**, computed once and cached.

# %%
#| export
from __future__ import annotations

import hashlib
import io
import json
import math
import os
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
import tempfile
from fastcore.test import test_eq, test_fail, test_close

# %% [markdown]
# ## The weights
#
# `mn04_as` is the default; other widths are one name away. Its sha256 is the official one; for the others the first
# download is trusted and its sha256 kept beside it, and every later use checks against that.

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
# The file is a plain state dict in EfficientAT's layout; two renames make it torchvision's. Anything else is an error
# naming the file.

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
# A local file is used as it is, after its checksum; otherwise the cached download, checked on every use (a damaged
# one is fetched anew); otherwise a download. Offline it fails within seconds, naming the URL and how to point at a
# local file, and nothing is cached.

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
    with torch.random.fork_rng():   # 'random' is one network, whatever the caller's random state: its sha says so
        torch.manual_seed(0)
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
# EfficientAT must see its own log-mels: mono at 32 kHz, pre-emphasis `x[t] - 0.97 x[t-1]`, a centred 1024-point STFT
# of 800-sample Hann windows (not periodic) every 320 samples, its power, 128 Kaldi-style mel bands from 0 to 15 kHz,
# `log(mel + 1e-5)`, then `(x + 4.5) / 5`. `EfficientATFeatures` has `FeatureParams`' interface, so the cache computes
# them once per clip (on a GPU where there is one) and a checkpoint carries them.

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
# The names of the 527 classes come from `class_labels_indices.csv` beside a local weights file, the cache, or one
# download; without it, indices.

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
# ## The body the transfers build on
#
# Each transfer reads the penultimate layer and the mean and maximum of blocks 10, 13 and 16 (`POOLED_BLOCKS`; 1,472
# numbers), which keep textures and short events the last layer averages away (0.6 points to the probe over every fold
# of mini: explanations). The last layer reads them too (notebook 04a), so a probe still folds into one network.
# `transfer_body` is the network in that form; `network_config` a 10-class network's configuration on it.

# %%
#| export
POOLED_BLOCKS = (10, 13, 16)   # intermediate blocks whose pooled outputs the transfers read beside the last layer

def body_state(network: EfficientAT) -> dict:
    "Every weight of `network` but its last layer's (AudioSet's head), to start a 10-class network from."
    return {k: v for k, v in network.state_dict().items() if not k.startswith("net.classifier.5.")}

def transfer_body(network: EfficientAT, pooled_blocks=POOLED_BLOCKS) -> EfficientAT:
    "The pretrained `network` as the body the transfers build on: its weights, reading `pooled_blocks` too."
    body = EfficientAT(network.width, n_classes=network.net.classifier[5].out_features, pooled_blocks=pooled_blocks)
    body.load_state_dict(body_state(network), strict=False)          # its last layer is a stand-in: never used
    body.weights_path = getattr(network, "weights_path", None)          # where it came from, for the records
    body.weights_sha = getattr(network, "weights_sha", "random")
    return body.eval()

def network_config(body: EfficientAT, n_classes: int) -> dict:
    "The configuration of a 10-class network on `body` (as a checkpoint records it)."
    return dict(width=body.width, n_classes=n_classes, **({"pooled_blocks": list(body.pooled_blocks)}
                                                          if body.pooled_blocks else {}))

# %%
_body = transfer_body(pretrained_network(weights="random"))
test_eq((network_config(_body, 10), _body.embedding_dim),
        (dict(width=0.4, n_classes=10, pooled_blocks=[10, 13, 16]), 1472))

# %% [markdown]
# ## Embeddings, computed once
#
# A clip's embedding (its centre crop, a shorter clip repeated) is cached beside its features, keyed by its content
# and the weights' sha256: a rerun reads them back in a second.

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

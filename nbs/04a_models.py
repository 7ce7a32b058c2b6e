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
#| default_exp models

# %% [markdown]
# # Models: SmallAudioCNN, UrbanResNet and seed ensembles
#
# > The starting notebook's CNN, a residual CNN for two CPU cores, seed ensembles, and EfficientAT's MobileNetV3.

# %% [markdown]
# Every model takes log-mels in dB, `[batch, n_mels, frames]`, of any length, and returns class
# logits. Chapter 04 trains them (with notebook 04c's loop) and compares them.

# %%
#| export
from __future__ import annotations

import io
import pickle
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large

from urbansound_nb.core import atomic_write_bytes
from urbansound_nb.features import FeatureParams

# %%
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# ## Input standardisation inside the model
#
# Every model starts with a fixed layer that standardises each mel band with the training
# folds' statistics (notebook 02's `band_stats`). Keeping them inside the model means a saved
# checkpoint carries them, so prediction on new files needs no dataset.

# %%
#| export
class Standardize(nn.Module):
    "Per-band standardisation with fixed statistics: [B, n_mels, T] -> same shape."
    def __init__(self, n_mels: int, mean=None, std=None):
        super().__init__()
        as_buffer = lambda v, default: default if v is None else torch.as_tensor(v, dtype=torch.float32).clone()
        self.register_buffer("mean", as_buffer(mean, torch.zeros(n_mels)))
        self.register_buffer("std", as_buffer(std, torch.ones(n_mels)))
    def forward(self, x): return (x - self.mean[:, None]) / self.std[:, None]

# %% [markdown]
# ## The reference: SmallAudioCNN

# %%
#| export
def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    "3x3 convolution, batch norm, ReLU, 2x2 max pooling."
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))

class SmallAudioCNN(nn.Module):
    "The starting notebook's model: three conv blocks, global average pooling, a linear classifier."
    def __init__(self, n_classes: int = 10, n_mels: int = 64, channels=(16, 32, 64), mean=None, std=None):
        super().__init__()
        self.norm = Standardize(n_mels, mean, std)
        self.features = nn.Sequential(conv_block(1, channels[0]), conv_block(channels[0], channels[1]),
                                      conv_block(channels[1], channels[2]))
        self.head = nn.Linear(channels[2], n_classes)
    def forward(self, x):  # x: [B, n_mels, T] log-mel in dB
        return self.head(self.features(self.norm(x)[:, None]).mean((2, 3)))

# %%
m = SmallAudioCNN()
test_eq(m(torch.randn(2, 64, 173)).shape, (2, 10))
print(f"SmallAudioCNN: {sum(p.numel() for p in m.parameters()):,} parameters")

# %% [markdown]
# ## The stronger model: UrbanResNet
#
# Design choices, each for a reason:
#
# * **downsample early** (a stride-2 5x5 stem, then 2x2 pooling): the first layers at full
#   resolution dominate the cost on a CPU, and 64x173 inputs carry more time detail than
#   10 classes need;
# * **residual blocks** train reliably at this depth without tuning;
# * **pool frequency by averaging, then time by mean and max**: sound events are short or
#   long, and max over time keeps a brief event (a gun shot, a bark) from being averaged away;
# * **dropout before the classifier** and weight decay, because a few thousand clips are
#   easy to memorise.

# %%
#| export
class ResBlock(nn.Module):
    "Two 3x3 convolutions with batch norm and a (projected) shortcut."
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                                                      nn.BatchNorm2d(c_out))
    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.skip(x))

# %%
#| export
class UrbanResNet(nn.Module):
    "A residual CNN for log-mels: strided stem, three residual stages, frequency-mean then time mean+max pooling."
    def __init__(self, n_classes: int = 10, n_mels: int = 64, widths=(32, 64, 128, 256), dropout: float = 0.3,
                 mean=None, std=None):
        super().__init__()
        self.norm = Standardize(n_mels, mean, std)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stage1, self.stage2 = ResBlock(widths[0], widths[1]), ResBlock(widths[1], widths[2])
        self.stage3 = ResBlock(widths[2], widths[3])
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * widths[3], n_classes))
    def forward(self, x):
        x = F.max_pool2d(self.stem(self.norm(x)[:, None]), 2)
        x = F.max_pool2d(self.stage1(x), 2)
        x = F.max_pool2d(self.stage2(x), (2, 1))  # keep time resolution for the last stage
        x = self.stage3(x).mean(2)                # average over frequency: [B, C, T]
        return self.head(torch.cat([x.mean(-1), x.amax(-1)], 1))

# %% [markdown]
# ## Several seeds, one model
#
# Two trainings of one recipe that differ only in their seed disagree on many clips of a
# recording neither has seen. Averaging their class probabilities keeps what they agree on, at
# the cost of one more training. Chapter 04 trains UrbanResNet this way (`resnet_seeds`, two by
# default) and reports the members' validation accuracy beside the average's; the trials that
# chose the number of members and their length are on the explanations page.
#
# `SeedEnsemble` holds such members and returns the log of their mean probability, so
# everything that takes a model's logits (softmax, argmax, cross-entropy, multi-crop scoring,
# `predict`) takes it unchanged, and its checkpoint is a checkpoint like any other.

# %%
#| export
class SeedEnsemble(nn.Module):
    "Models trained with different seeds, averaged: log of their mean class probabilities."
    def __init__(self, members: list):  # members: [{"model": name, "config": {...}}, ...]
        super().__init__()
        if not members: raise ValueError("a SeedEnsemble needs at least one member")
        self.members = nn.ModuleList([build_model(m["model"], **m["config"]) for m in members])
    def forward(self, x):
        return torch.stack([m(x).softmax(-1) for m in self.members]).mean(0).log()

# %% [markdown]
# ## A network pretrained on AudioSet: EfficientAT's MobileNetV3
#
# EfficientAT (Schmid, Koutini and Widmer, ICASSP 2023) trained MobileNetV3s on AudioSet's 527
# classes by knowledge distillation from a transformer ensemble; `mn04_as`, at width 0.4 with
# about 1 M parameters, matches the mAP of PANNs' CNN14 (80 M). Its weights fit torchvision's
# `MobileNetV3` with two changes: one input channel (a log-mel, not an RGB image), and a
# classifier whose two linear layers sit at indices 2 and 5 (torchvision pools and flattens
# before the classifier, so indices 0 and 1 are identities). Its input is its own 128-band
# log-mel at 32 kHz (notebook 05a), `[batch, 128, frames]` like every model here; `embed` gives
# the penultimate layer, whose width is 512 at width 0.4 (1280 x width in general).
#
# Two options serve chapter 05. `pooled_blocks` widens the embedding with the mean and maximum
# over time and frequency of some intermediate blocks' outputs (textures and short events that the
# last layer averages away), and the last layer reads all of it, so a probe on those features is
# still one network that `predict`, fine-tuning and a checkpoint carry. `freeze_blocks(k)` holds
# the first `k` blocks fixed while the rest fine-tunes: no gradients there (the backward pass through
# the high-resolution early blocks is most of a step's cost on a CPU) and their batch norms keep
# AudioSet's statistics.

# %%
#| export
class EfficientAT(nn.Module):
    "EfficientAT's MobileNetV3 on torchvision's: one input channel, `n_classes` outputs; [B, n_mels, T] -> logits."
    def __init__(self, width: float = 0.4, n_classes: int = 527, dropout: float = 0.2, pooled_blocks=()):
        super().__init__()
        # torchvision's public builder: width_mult goes to the layer configuration, the rest to MobileNetV3
        net = mobilenet_v3_large(weights=None, width_mult=width, num_classes=n_classes, dropout=dropout)
        stem = net.features[0][0]
        net.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        net.classifier = nn.Sequential(nn.Identity(), nn.Identity(), *net.classifier)
        self.net, self.width, self.pooled_blocks = net, width, tuple(int(b) for b in pooled_blocks)
        if self.pooled_blocks:   # the head reads the penultimate layer and the pooled blocks: a wider last layer
            net.classifier[5] = nn.Linear(self.embedding_dim, n_classes)
        self.frozen_blocks = 0

    @property
    def embedding_dim(self) -> int:
        "Width of `embed`: the penultimate layer, plus the mean and max of each pooled block's channels."
        blocks = self.net.features
        return self.net.classifier[2].out_features + sum(2 * blocks[b].out_channels for b in self.pooled_blocks)

    def embed(self, x) -> torch.Tensor:
        "The penultimate layer [B, 1280 x width] (pooled features, linear, Hardswish), then each pooled block's."
        h, pooled = x[:, None], []
        for i, block in enumerate(self.net.features):
            h = block(h)
            if i in self.pooled_blocks: pooled += [h.mean((2, 3)), h.amax((2, 3))]
        h = self.net.classifier[3](self.net.classifier[2](self.net.avgpool(h).flatten(1)))
        return torch.cat([h, *pooled], 1) if pooled else h

    def forward(self, x): return self.net.classifier[5](self.net.classifier[4](self.embed(x)))

    def param_groups(self, lr: float, body_scale: float) -> list[dict]:
        "Optimizer groups: the last layer (the head) at `lr`, everything else (the body) at `lr * body_scale`."
        head = list(self.net.classifier[5].parameters())
        ids = {id(p) for p in head}
        body = [p for p in self.parameters() if id(p) not in ids]
        return [dict(params=body, lr=lr * body_scale), dict(params=head, lr=lr)]

    def freeze_blocks(self, k: int):
        "Hold the first `k` feature blocks fixed: no gradients, and their batch norms keep their statistics."
        self.frozen_blocks = int(k)
        for p in self.net.features[:k].parameters(): p.requires_grad_(False)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_blocks: self.net.features[:self.frozen_blocks].eval()
        return self

# %%
eat = EfficientAT(n_classes=10).eval()
x_demo = torch.randn(2, 128, 401)
test_eq(eat(x_demo).shape, (2, 10))
test_eq(eat.embed(x_demo).shape, (2, 512))
test_eq(len(eat.param_groups(1e-3, 0.1)[1]["params"]), 2)                  # the head: weight and bias
test_close(eat(x_demo), eat.net(x_demo[:, None]))                           # torchvision's own forward, unchanged
pooled = EfficientAT(n_classes=10, pooled_blocks=(10, 13, 16)).eval()
test_eq(pooled.embed(x_demo).shape, (2, pooled.embedding_dim))             # 512 + 2 x (32 + 64 + 384)
test_eq((pooled.embedding_dim, pooled(x_demo).shape), (1472, (2, 10)))
pooled.freeze_blocks(4).train()
assert not pooled.net.features[3].training and pooled.net.features[4].training
assert not any(p.requires_grad for p in pooled.net.features[:4].parameters())
print(f"EfficientAT mn04: {sum(p.numel() for p in eat.parameters()):,} parameters")

# %%
#| export
MODELS = {"small_cnn": SmallAudioCNN, "resnet": UrbanResNet, "ensemble": SeedEnsemble, "efficientat": EfficientAT}

def build_model(name: str, **config) -> nn.Module:
    "A model by name ('small_cnn', 'resnet', 'ensemble' or 'efficientat') with its configuration."
    if name not in MODELS: raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**config)

def n_parameters(model: nn.Module) -> int: return sum(p.numel() for p in model.parameters())

# %%
r = build_model("resnet", n_classes=10, n_mels=64)
test_eq(r(torch.randn(2, 64, 173)).shape, (2, 10))
test_eq(r.eval()(torch.randn(1, 64, 40)).shape, (1, 10))   # any input length works
test_fail(lambda: build_model("vgg"), contains="unknown model 'vgg'")
print(f"UrbanResNet: {n_parameters(r):,} parameters")

# %%
e = build_model("ensemble", members=[dict(model="small_cnn", config=dict(n_classes=3, n_mels=16))] * 2).eval()
x_demo = torch.randn(4, 16, 40)
test_close(e(x_demo).exp(), torch.stack([m(x_demo).softmax(-1) for m in e.members]).mean(0))   # the mean probability
test_close(e(x_demo).exp().sum(-1), torch.ones(4))
test_eq(n_parameters(e), 2 * n_parameters(e.members[0]))
test_fail(lambda: SeedEnsemble([]), contains="at least one member")

# %% [markdown]
# ## Checkpoints: a saved model
#
# A checkpoint carries everything `predict` needs: the model's name and configuration, its
# weights, the feature parameters, the class names and the clip length. Anything else given as
# a checkpoint gets an error that names the file and what is wrong with it.
#
# A checkpoint is untrusted input: `predict` is pointed at files from anywhere. PyTorch's full
# unpickler runs whatever code a crafted file names, so every checkpoint is read with
# `weights_only=True`, which rebuilds tensors and plain Python values (dicts, lists, tuples,
# strings, numbers) and refuses anything else. What the study saves beside the tensors is
# therefore kept to those plain types: `plain` turns NumPy scalars and arrays, paths and
# dataclasses into them before `save_checkpoint` writes the file (atomically).

# %%
#| export
def plain(obj):
    "`obj` with NumPy scalars and arrays, paths and dataclasses turned into plain Python values; tensors kept."
    if isinstance(obj, np.generic): return obj.item()   # first: np.float64 is also a float
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)): return obj
    if isinstance(obj, dict): return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)): return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray): return obj.tolist()
    if isinstance(obj, Path): return str(obj)
    if hasattr(obj, "__dataclass_fields__"): return plain(asdict(obj))
    raise TypeError(f"a checkpoint holds tensors and plain values only, not {type(obj).__name__}")

def save_checkpoint(obj: dict, path):
    "Write `obj` (tensors and plain values, see `plain`) to `path` atomically, loadable with `weights_only=True`."
    buf = io.BytesIO()
    torch.save(plain(obj), buf)
    atomic_write_bytes(path, buf.getvalue())

def checkpoint_dict(model, name: str, config: dict, fp: FeatureParams, classes, clip_seconds: float, **info) -> dict:
    "Everything predict needs: model name and config, weights, feature parameters, class names, clip length."
    return dict(model=name, config=config, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                feature_params=asdict(fp), classes=list(classes), clip_seconds=float(clip_seconds), **info)

class CheckpointError(ValueError):
    "A file that is not a usable checkpoint of this study."

CHECKPOINT_KEYS = ("model", "config", "state_dict", "feature_params", "classes", "clip_seconds")

def read_checkpoint(path, device="cpu") -> dict:
    "A saved dict of tensors and plain values, read without running any code from it; else a `CheckpointError`."
    try: return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError: raise CheckpointError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        # weights_only names the object it refused to build: a crafted file, or one of another program
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused: raise CheckpointError(f"{path}: refused, it asks to build {refused.group(1)[:120]}; "
                                          "a checkpoint holds only tensors and plain values") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None

def load_checkpoint(path, device="cpu"):
    "A saved model (in eval mode) and its checkpoint dict; a `CheckpointError` naming the file if it is not one."
    ck = read_checkpoint(path, device)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:  # e.g. a `.last.pt` training state, or a bare state dict
        raise CheckpointError(f"{path}: not a model checkpoint of this study (missing {', '.join(missing)}); "
                              "use models/<name>.pt of a run")
    try:
        model = build_model(ck["model"], **ck["config"])
        model.load_state_dict(ck["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its model {ck['model']!r} ({e})") from None
    return model.to(device).eval(), ck

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    _config = dict(n_classes=2, n_mels=16)
    save_checkpoint(checkpoint_dict(build_model("small_cnn", **_config), "small_cnn", _config, FeatureParams(n_mels=16),
                                    ["a", "b"], 1.0, seed=np.int64(3)), Path(d)/"m.pt")
    _model, _ck = load_checkpoint(Path(d)/"m.pt")
    test_eq((_ck["classes"], _ck["seed"], type(_model).__name__), (["a", "b"], 3, "SmallAudioCNN"))
    torch.save({"state_dict": {}}, Path(d)/"bare.pt")
    test_fail(lambda: load_checkpoint(Path(d)/"bare.pt"), contains="not a model checkpoint of this study")

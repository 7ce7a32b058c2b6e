# %%
#| default_exp models

# %% [markdown]
# # Models: SmallAudioCNN, UrbanResNet and seed ensembles
#
# > The starting notebook's CNN, a residual CNN for two CPU cores, seed ensembles, and EfficientAT's MobileNetV3.

# %% [markdown]
# Every model takes log-mels in dB, `[batch, n_mels, frames]`, of any length, and returns class logits. Chapter 04
# trains them (with notebook 04c's loop) and compares them.

# %%
#| export
from __future__ import annotations

import io
import os
import pickle
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchvision.models import mobilenet_v3_large

from urbansound_nb.core import atomic_write_bytes, plain
from urbansound_nb.features import FeatureParams, mfcc_statistics

# %%
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# ## Input standardisation inside the model
#
# Every model starts with a fixed layer that standardises each mel band with the training folds' statistics (notebook
# 02's `band_stats`). Keeping them inside the model means a saved checkpoint carries them, so prediction on new files
# needs no dataset.

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
# **Downsample early** (a stride-2 5x5 stem, then 2x2 pooling: full-resolution layers dominate a CPU's cost, and
# 64x173 inputs carry more time detail than 10 classes need); **residual blocks**, which train reliably at this depth;
# **pool frequency by averaging, then time by mean and max**, so that a brief event (a gun shot, a bark) is not
# averaged away; **dropout** and weight decay, because a few thousand clips are easy to memorise.

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
# Two trainings that differ only in their seed disagree on many unseen clips; averaging their probabilities keeps what
# they agree on. `SeedEnsemble` holds such members and returns the log of their mean probability, so everything that
# takes logits (softmax, cross-entropy, multi-crop scoring, `predict`) takes it unchanged. Every ensemble of the study
# is averaged by `SeedEnsemble.average` and checkpointed by `ensemble_checkpoint`; the trials that chose the number of
# members are on the explanations page.

# %%
#| export
class SeedEnsemble(nn.Module):
    "Models trained with different seeds, averaged: log of their mean class probabilities."
    def __init__(self, members: list):  # members: [{"model": name, "config": {...}}, ...]
        super().__init__()
        if not members: raise ValueError("a SeedEnsemble needs at least one member")
        self.members = nn.ModuleList([build_model(m["model"], **m["config"]) for m in members])

    @staticmethod
    def average(probabilities) -> torch.Tensor:
        "The ensemble's class probabilities from its members' [members, ..., classes]: their mean."
        return torch.as_tensor(probabilities).mean(0)

    def forward(self, x): return self.average(torch.stack([m(x).softmax(-1) for m in self.members])).log()

# %% [markdown]
# ## A network pretrained on AudioSet: EfficientAT's MobileNetV3
#
# EfficientAT (Schmid, Koutini and Widmer, ICASSP 2023) trained MobileNetV3s on AudioSet by knowledge distillation;
# `mn04_as` (width 0.4, about 1 M parameters) matches the mAP of PANNs' CNN14 (80 M). Its weights fit torchvision's
# `MobileNetV3` with one input channel and a classifier whose linear layers sit at indices 2 and 5. Its input is its
# own 128-band log-mel at 32 kHz (notebook 05a); `embed` gives the penultimate layer (1280 x width wide).
#
# `pooled_blocks` widens the embedding with the mean and maximum of some intermediate blocks' outputs (textures and
# short events the last layer averages away), and the last layer reads all of it, so a probe on those features is
# still one network. `freeze_blocks(k)` holds the first `k` blocks fixed while the rest fine-tunes: no gradients there
# (most of a CPU step's cost) and their batch norms keep AudioSet's statistics.

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

# %% [markdown]
# ## A classical model as a network: MFCC statistics and a fitted head
#
# `MFCCClassifier` is chapter 03's scikit-learn model as a network, so that a checkpoint, `predict` and the ONNX file
# serve it like any other: the MFCC statistics of its input, standardised as the fitted `StandardScaler` does, then
# the fitted head: the logistic regression's coefficients (chance: the class priors as a bias), or the SVM's support
# vectors with scikit-learn's one-vs-one votes turned into its `decision_function`. `MFCCClassifier.fitted` reads them
# off a fitted pipeline; classes it never saw score far below the others.

# %%
#| export
class MFCCClassifier(nn.Module):
    "MFCC statistics of log-mels [B, n_mels, T], standardised, then a fitted linear or RBF-SVM head: class scores."
    def __init__(self, n_classes: int = 10, n_mels: int = 64, n_mfcc: int = 40, deltas: bool = True, present=None,
                 kernel: str = "linear", n_support: int = 0, gamma: float = 1.0):
        super().__init__()
        dim, present = 2 * n_mfcc * (1 + bool(deltas)), list(range(n_classes)) if present is None else list(present)
        self.n_mfcc, self.deltas, self.kernel, self.gamma, k = n_mfcc, bool(deltas), kernel, float(gamma), len(present)
        self.register_buffer("dct", torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho"))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        # scores of the fitted classes placed among all classes; an absent class far below
        self.register_buffer("place", torch.eye(n_classes)[present])
        self.register_buffer("absent", (1 - self.place.sum(0)) * -1e4)
        if kernel == "linear":
            self.register_buffer("weight", torch.zeros(k, dim))
            self.register_buffer("bias", torch.zeros(k))
        elif kernel == "rbf":
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            self.register_buffer("support", torch.zeros(n_support, dim))
            self.register_buffer("coef", torch.zeros(n_support, len(pairs)))    # each support vector's weight per pair
            self.register_buffer("intercept", torch.zeros(len(pairs)))
            self.register_buffer("first", torch.eye(k)[[i for i, _ in pairs]])   # [pairs, k]: each pair's classes
            self.register_buffer("second", torch.eye(k)[[j for _, j in pairs]])
        else: raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")

    def forward(self, x):
        z = (mfcc_statistics(x, self.n_mfcc, self.deltas, dct=self.dct) - self.mean) / self.scale
        if self.kernel == "linear": scores = z @ self.weight.T + self.bias
        else:
            dec = torch.exp(-self.gamma * torch.cdist(z, self.support).square()) @ self.coef + self.intercept
            votes = (dec >= 0).to(z.dtype) @ self.first + (dec < 0).to(z.dtype) @ self.second
            confidence = dec @ self.first - dec @ self.second   # scikit-learn's `_ovr_decision_function`
            scores = votes + confidence / (3 * (confidence.abs() + 1))
        return scores @ self.place + self.absent

    @classmethod
    def fitted(cls, pipeline, n_classes: int, n_mels: int, n_mfcc: int, deltas: bool) -> tuple[dict, MFCCClassifier]:
        "(configuration, network) of a fitted scikit-learn pipeline: StandardScaler, then a linear model, SVC or dummy."
        scaler, model = pipeline.steps[0][1], pipeline.steps[-1][1]
        present, f32 = [int(c) for c in model.classes_], lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        svm = hasattr(model, "support_vectors_")
        if not (svm or hasattr(model, "class_prior_") or hasattr(model, "coef_")):
            raise ValueError(f"{type(model).__name__} has no network form (a linear model, an SVC or a dummy has)")
        config = dict(n_classes=n_classes, n_mels=n_mels, n_mfcc=n_mfcc, deltas=deltas, present=present,
                      kernel="rbf" if svm else "linear", n_support=len(model.support_vectors_) if svm else 0,
                      gamma=float(model._gamma) if svm else 1.0)
        net, state = cls(**config), dict(mean=f32(scaler.mean_), scale=f32(scaler.scale_))
        if hasattr(model, "class_prior_"):        # chance: the training folds' class shares, as a bias
            state.update(weight=torch.zeros_like(net.weight), bias=f32(np.log(np.maximum(model.class_prior_, 1e-12))))
        elif svm: state.update(support=f32(model.support_vectors_), coef=f32(_pair_coefficients(model, len(present))),
                               intercept=f32(model.intercept_))
        else:
            w, b = linear_rows(model)
            state.update(weight=f32(w), bias=f32(b))
        net.load_state_dict({**net.state_dict(), **state})
        return config, net.eval()

def linear_rows(model) -> tuple[np.ndarray, np.ndarray]:
    "A fitted linear classifier's weights and biases, one row a class (scikit-learn keeps one row for two classes)."
    if len(model.coef_) > 1: return model.coef_, model.intercept_
    return np.vstack([0 * model.coef_, model.coef_]), np.r_[0, model.intercept_]

def _pair_coefficients(svm, k: int) -> np.ndarray:
    "[support vectors, pairs]: libsvm's pair (i, j) weighs class i's vectors by row j-1 of `dual_coef_`, j's by row i."
    start, columns = np.cumsum([0, *svm.n_support_]), []
    for i in range(k):
        for j in range(i + 1, k):
            column = np.zeros(len(svm.support_vectors_))
            column[start[i]:start[i + 1]] = svm.dual_coef_[j - 1, start[i]:start[i + 1]]
            column[start[j]:start[j + 1]] = svm.dual_coef_[i, start[j]:start[j + 1]]
            columns.append(column)
    return np.stack(columns, 1) if columns else np.zeros((len(svm.support_vectors_), 0))

# %%
_m = MFCCClassifier(n_classes=3, n_mels=16, n_mfcc=4, deltas=False, present=[0, 2], kernel="rbf", n_support=5).eval()
test_eq(_m(torch.randn(2, 16, 40)).shape, (2, 3))
assert (_m(torch.randn(2, 16, 40))[:, 1] < -1e3).all()                     # class 1 was never fitted: far below
test_eq(MFCCClassifier(n_classes=3, n_mels=16, n_mfcc=4)(torch.randn(1, 16, 7)).shape, (1, 3))

# %%
#| export
MODELS = {"small_cnn": SmallAudioCNN, "resnet": UrbanResNet, "ensemble": SeedEnsemble, "efficientat": EfficientAT,
          "mfcc": MFCCClassifier}
PLUGINS_ENV = "URBANSOUND_MODELS"   # modules (names or .py files, comma-separated) that register more models

def register_network(name: str, cls) -> type:
    "Make network `cls` buildable (and loadable from checkpoints) as `name`; another class under that name is an error."
    if MODELS.get(name, cls) is not cls: raise ValueError(f"a network {name!r} is already registered")
    MODELS[name] = cls
    return cls

def load_plugins() -> list[str]:
    "Import the modules of `$URBANSOUND_MODELS` and of the `urbansound_nb.models` entry points: the models they add."
    import importlib
    import importlib.util
    from importlib.metadata import entry_points
    loaded = []
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        name = f"urbansound_plugin_{Path(spec).stem}" if spec.endswith(".py") else spec
        if name in sys.modules: continue
        if spec.endswith(".py"):
            if not Path(spec).is_file(): raise ValueError(f"${PLUGINS_ENV}: {spec}: no such file")
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else: importlib.import_module(spec)
        loaded.append(spec)
    for point in entry_points(group="urbansound_nb.models"):
        point.load()
        loaded.append(point.value)
    return loaded

def build_model(name: str, **config) -> nn.Module:
    "A network by name ('small_cnn', 'resnet', 'ensemble', 'efficientat', 'mfcc' or a registered one), configured."
    if name not in MODELS: load_plugins()       # a checkpoint of a model that a plugin defines
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
# A checkpoint carries what `predict` needs: the model's name, configuration and weights, the feature parameters, the
# class names and the clip length. It is untrusted input, and PyTorch's full unpickler runs whatever code a crafted
# file names, so every checkpoint is read with `weights_only=True` (tensors and plain values only) and what the study
# saves beside the tensors is made plain first (`plain`, notebook 00). Anything else gets an error naming the file and
# the problem. An ensemble's checkpoint joins its members' (`ensemble_checkpoint`).

# %%
#| export
def save_checkpoint(obj: dict, path):
    "Write `obj` (tensors and plain values, see `plain`) to `path` atomically, loadable with `weights_only=True`."
    buf = io.BytesIO()
    torch.save(plain(obj, keep_tensors=True), buf)
    atomic_write_bytes(path, buf.getvalue())

def checkpoint_dict(model, name: str, config: dict, fp: FeatureParams, classes, clip_seconds: float, **info) -> dict:
    "Everything predict needs: model name and config, weights, feature parameters, class names, clip length."
    return dict(model=name, config=config, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                feature_params=asdict(fp), classes=list(classes), clip_seconds=float(clip_seconds), **info)

def ensemble_checkpoint(members: list[dict], **info) -> dict:
    "The checkpoint of a `SeedEnsemble` of checkpointed `members` (same front end and classes), with `info`."
    config = dict(members=[dict(model=m["model"], config=m["config"]) for m in members])
    state = {f"members.{i}.{k}": v for i, m in enumerate(members) for k, v in m["state_dict"].items()}
    shared = {k: members[0][k] for k in ("feature_params", "classes", "clip_seconds")}
    return dict(model="ensemble", config=config, state_dict=state, **shared, **info)

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

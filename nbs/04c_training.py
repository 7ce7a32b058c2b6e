# %%
#| default_exp train

# %% [markdown]
# # Training: the loop, checkpoints and resume
#
# > One loop for every model: recipes, validation-fold selection, early stopping, checkpoints and resume.

# %% [markdown]
# One loop serves every model and experiment of chapters 04, 05, 08 and 09. Batches come from the cached `LogMelSet`
# (random crop in training, centre at evaluation); the recipe's augmentation and an optional `augment(x, y,
# generator)` hook transform them; **mixup**, **label smoothing** and optional **class weights** shape the loss. After
# every epoch the validation fold is scored; in the training's cell of the store (notebook 04e) the best epoch is kept
# as `model.pt` and the last (with optimizer, schedule and random state) as `model.last.pt`, from which an interrupted
# run resumes; a refit keeps its last epoch. Training stops after `patience` epochs without a better validation
# accuracy (under an annealing schedule, only once the rate is below a quarter of its peak).

# %%
#| export
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from tqdm import tqdm

from urbansound_nb.audio import window_starts
from urbansound_nb.augment import AUGMENTATIONS, mixup
from urbansound_nb.batches import LogMelSet, StudyData, batch_frames
from urbansound_nb.core import pick_device, seed_everything
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import build_model, checkpoint_dict, read_checkpoint, save_checkpoint
from urbansound_nb.params import BATCH_SIZE, INFERENCE_BATCH, StudyParams

# %%
import tempfile
from urbansound_nb.models import load_checkpoint
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# ## Recipes
#
# `RECIPES` holds the study's three `TrainConfig`s: the starting notebook's for SmallAudioCNN (Adam at 1e-3, nothing
# else); a modern one for UrbanResNet (AdamW, one-cycle schedule, label smoothing, mixup at α = 0.2 and notebook 04b's
# recording variation); and EfficientAT's own fine-tuning for the pretrained network (a warm-up to a low peak, ramped
# down linearly, mixup, its batch norms and first blocks optionally held: `freeze_bn`, `frozen_blocks`).

# %%
#| export
@dataclass
class TrainConfig:
    "How a model is trained."
    epochs: int = StudyParams.epochs   # chapters pass the run's own
    batch_size: int = BATCH_SIZE
    optimizer: str = "adamw"           # 'adamw' or 'adam'
    lr: float = 3e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"         # 'onecycle', 'warmup_linear' (warm-up, then a linear ramp down) or 'constant'
    warmup: float = 0.2                # share of the steps spent warming up ('onecycle', 'warmup_linear')
    final_lr: float = 0.01             # 'warmup_linear': the rate at the last step, as a share of `lr`
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0           # 0: no mixup
    augmentation: str = "none"         # a name from AUGMENTATIONS, applied to every training batch
    patience: int | None = 10          # None: no early stopping
    seed: int = 0
    body_lr_scale: float = 1.0         # for models with `param_groups` (a pretrained body): its share of `lr`
    freeze_bn: bool = False            # batch norms keep their statistics (pretrained ones: AudioSet's) in training
    frozen_blocks: int = 0             # for models with `freeze_blocks` (a pretrained body): the first blocks held
    stop_after: int | None = None      # end after this many epochs of the `epochs`-long schedule (a refit)

@dataclass
class TrainOptions:
    "What a training may take besides its recipe: the model's configuration, a batch hook, weights, a name, a record."
    config: dict | None = None         # the model's configuration (`fit`: `model_config` of the data when None)
    augment: object = None             # a batch hook (x, y, generator) -> x, after the recipe's augmentation
    class_weights: object = None       # per-class loss weights (`balanced_class_weights`)
    init_state: dict | None = None     # weights to start from (a pretrained body), loaded before any step
    info: dict | None = None           # recorded in the checkpoints (the folds); another value starts afresh

RECIPES = {  # the starting notebook's recipe for its model, and the modern one
    "small_cnn": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", label_smoothing=0.0,
                      mixup_alpha=0.0, patience=None),
    "resnet": dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, schedule="onecycle", label_smoothing=0.1,
                   mixup_alpha=0.2, augmentation="recording_variation", patience=10),
    # fine-tuning a pretrained network from its probe (chapter 05), after EfficientAT's ex_esc50.py: a low rate warmed
    # up then ramped down, waveform-like augmentation and mixup, no decay; AudioSet's batch-norm statistics and the
    # first 13 blocks held (on mini the steadiest curves of the variants tried, and 2.6x cheaper: docs/explanations)
    "efficientat": dict(optimizer="adamw", lr=1e-4, weight_decay=0.0, schedule="warmup_linear", warmup=1 / 6,
                        final_lr=0.01, label_smoothing=0.0, mixup_alpha=0.3, augmentation="roll_gain_mask",
                        patience=None, body_lr_scale=1.0, freeze_bn=True, frozen_blocks=13),
}

def warmup_linear(cfg: TrainConfig, steps: int):
    "The rate's share at each step: a linear warm-up over `cfg.warmup` of the steps, then down to `cfg.final_lr`."
    warm = max(1, round(cfg.warmup * steps))
    return lambda step: ((step + 1) / warm if step < warm else
                         1 - (1 - cfg.final_lr) * min(1.0, (step + 1 - warm) / max(steps - warm, 1)))

def _optimizer(model, cfg: TrainConfig, steps: int):
    if cfg.optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {cfg.optimizer!r}")
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    grouped = hasattr(model, "param_groups") and cfg.body_lr_scale != 1.0
    opt = kind(model.param_groups(cfg.lr, cfg.body_lr_scale) if grouped else model.parameters(), lr=cfg.lr,
               weight_decay=cfg.weight_decay)
    max_lr = [g["lr"] for g in opt.param_groups] if grouped else cfg.lr
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=max(steps, 1), pct_start=cfg.warmup)
    elif cfg.schedule == "warmup_linear": sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(cfg, steps))
    elif cfg.schedule == "constant": sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else: raise ValueError(f"schedule must be 'onecycle', 'warmup_linear' or 'constant', got {cfg.schedule!r}")
    return opt, sched

# %%
_lam = warmup_linear(TrainConfig(warmup=0.1, final_lr=0.01), 100)
test_close([_lam(0), _lam(9), _lam(10), _lam(99)], [0.1, 1.0, 1 - 0.99 / 90, 0.01])    # up in 10 steps, down to 1%

# %% [markdown]
# Class weights are scikit-learn's "balanced" ones, scaled to average 1 over the classes present (an absent class: 0).

# %%
#| export
def balanced_class_weights(labels, n_classes: int) -> np.ndarray:
    "Inverse-frequency class weights (scikit-learn's 'balanced'), averaging 1 over the classes present."
    labels = np.asarray(labels)
    present = np.unique(labels)
    w = np.zeros(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return w / w[present].mean()

# %%
test_close(balanced_class_weights([0, 0, 0, 1], 3), np.array([0.5, 1.5, 0.0]))

# %% [markdown]
# ## Scoring: centre crops or every window
#
# Clips longer than the input are scored by averaging half-overlapping windows (`multicrop`): no change on
# UrbanSound8K's 4 s clips, but it matters for other lengths and for `predict` on long files.

# %%
#| export
@torch.no_grad()
def predict_logits(model, ls: LogMelSet, idx, n_frames: int, *, multicrop: bool = False,
                   batch_size: int = INFERENCE_BATCH, device=None) -> torch.Tensor:
    "Logits [len(idx), classes] from centre crops, or (multicrop) the mean softmax over half-overlapping windows."
    device = device or next(model.parameters()).device
    model.eval()
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    out = []
    for chunk in idx.split(batch_size):
        if not multicrop or int(ls.lengths[chunk].max()) <= n_frames:
            out.append(model(batch_frames(ls, chunk, n_frames).to(device)).float().cpu())
            continue
        for i in chunk.tolist():  # long clips: every window, probabilities averaged (returned as log-probabilities)
            length = int(ls.lengths[i])
            x = ls.data[i, :, :max(length, n_frames)].float()
            wins = torch.stack([x[:, s:s + n_frames] for s in window_starts(length, n_frames)])
            out.append(model(wins.to(device)).float().softmax(-1).mean(0, keepdim=True).log().cpu())
    return torch.cat(out)

# %%
test_eq(window_starts(11, 4), [0, 2, 4, 6, 7])        # notebook 00b's windows, here over frames

# %% [markdown]
# ## Early stopping under a one-cycle schedule
#
# Near the schedule's peak, validation accuracy follows the noise of a high rate, and most of the gain comes while it
# anneals; so patience ends a one-cycle run only once the rate is below a quarter of its peak.

# %%
#| export
def stop_early(cfg: TrainConfig, epoch: int, best_epoch: int, lr: float) -> bool:
    "After `epoch` (from 1): `patience` epochs without a better validation accuracy and, under one-cycle, a low rate."
    if not cfg.patience or epoch - best_epoch < cfg.patience: return False
    return cfg.schedule == "constant" or lr < cfg.lr / 4

# %%
test_eq(stop_early(TrainConfig(patience=10, schedule="constant"), 14, 4, 3e-3), True)
test_eq(stop_early(TrainConfig(patience=10), 14, 4, 2e-3), False)     # one-cycle, learning rate still high: go on
test_eq(stop_early(TrainConfig(patience=10), 30, 4, 1e-4), True)
test_eq(stop_early(TrainConfig(patience=10), 30, 25, 1e-4), False)    # improved recently
test_eq(stop_early(TrainConfig(patience=None), 30, 4, 1e-4), False)

# %% [markdown]
# ## Random state, for resuming
#
# An interrupted training resumes where it stopped and, on the CPU, repeats the uninterrupted run exactly: the last
# state keeps the batch generator's and torch's random state (and a GPU's, restored only on a device of the same
# kind).

# %%
#| export
def device_rng_state(device):
    "(device kind, RNG state) of a GPU `device`, whose generator dropout draws from there; None on the CPU."
    kind = torch.device(device).type
    if kind == "cuda": return kind, torch.cuda.get_rng_state(device)
    if kind == "mps": return kind, torch.mps.get_rng_state()
    return None

def set_device_rng_state(saved, device) -> bool:
    "Restore `device_rng_state`'s result on `device` if it was saved on a device of the same kind; whether it was."
    kind = torch.device(device).type
    if not saved or saved[0] != kind: return False
    if kind == "cuda": torch.cuda.set_rng_state(saved[1], device)
    else: torch.mps.set_rng_state(saved[1])
    return True

# %%
test_eq(device_rng_state("cpu"), None)
test_eq(set_device_rng_state(None, "cpu"), False)
test_eq(set_device_rng_state(("cuda", torch.zeros(16, dtype=torch.uint8)), "cpu"), False)   # not applied on the CPU

# %% [markdown]
# ## The loop
#
# `train_model` trains one model (`name`, `config`) on `data`'s training clips with a `TrainConfig`, choosing its
# epoch on the validation clips; one epoch is `_train_epoch`, the state that resumes a run `_resume_state`.

# %%
#| export
@dataclass
class EpochTools:
    "What an epoch of training uses besides the model and the data: optimiser, schedule, RNG, hooks, weights, device."
    opt: object
    sched: object
    gen: torch.Generator
    hooks: list
    weight: torch.Tensor | None
    device: object

def training_mode(model, cfg: TrainConfig):
    "`model` in training mode, but for the batch norms `cfg.freeze_bn` holds (they keep their statistics)."
    model.train()
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm): m.eval()
    return model

def _train_epoch(model, data: StudyData, train_idx, cfg: TrainConfig, tools: EpochTools) -> dict:
    "One epoch over `train_idx` in shuffled batches: loss, accuracy and the seconds spent building batches."
    opt, sched, gen, hooks, weight, device = (tools.opt, tools.sched, tools.gen, tools.hooks, tools.weight,
                                              tools.device)
    training_mode(model, cfg)
    y_all, t0, t_data, tot, correct, n = data.logmels.labels, time.time(), 0.0, 0.0, 0.0, 0
    for b in train_idx[torch.randperm(len(train_idx), generator=gen)].split(cfg.batch_size):
        td = time.time()
        x, y = batch_frames(data.logmels, b, data.n_frames, "random", generator=gen), y_all[b]
        for hook in hooks: x = hook(x, y, gen)
        x, y = x.to(device), y.to(device)
        t_data += time.time() - td
        xm, ya, yb, lam = mixup(x, y, cfg.mixup_alpha, gen) if cfg.mixup_alpha > 0 else (x, y, y, 1.0)
        out = model(xm)
        loss = lam * F.cross_entropy(out, ya, weight=weight, label_smoothing=cfg.label_smoothing)
        if lam < 1:
            loss = loss + (1 - lam) * F.cross_entropy(out, yb, weight=weight, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot += loss.item() * len(b)
        n += len(b)
        correct += (lam * (out.argmax(1) == ya).float() + (1 - lam) * (out.argmax(1) == yb).float()).sum().item()
    return dict(train_loss=tot / n, train_accuracy=correct / n, data_seconds=t_data, train_seconds=time.time() - t0)

def _save_state(last: Path, model, tools: EpochTools, record: dict):
    "The training's state after an epoch (weights, optimiser, schedule, every RNG, its record), to resume from."
    save_checkpoint(dict(state_dict=model.state_dict(), optimizer=tools.opt.state_dict(),
                         scheduler=tools.sched.state_dict(), generator=tools.gen.get_state(),
                         torch_rng=torch.get_rng_state(), device_rng=device_rng_state(tools.device), **record), last)

def _resume_state(last: Path, best_path: Path, cfg: TrainConfig, config: dict, n_train: int, info):
    "The saved state of the same training (recipe, model, training-set size, folds), or None to start afresh."
    if not (last and last.exists() and best_path.exists()): return None  # the last state alone cannot finish it
    st = read_checkpoint(last)  # on the CPU: RNG states must stay CPU tensors
    # a state saved before folds were recorded has no 'info'
    same = st["train_config"] == asdict(cfg) and st["config"] == config and st["n_train"] == n_train
    return st if same and st.get("info", info) == info else None

def _new_training(name: str, config: dict, cfg: TrainConfig, options: TrainOptions, device):
    "A fresh training's model (on `device`, from `options.init_state` if given), its batch hooks and generator, seeded."
    seed_everything(cfg.seed)
    if cfg.augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {cfg.augmentation!r}; choose from {sorted(AUGMENTATIONS)}")
    hooks = [h for h in (AUGMENTATIONS[cfg.augmentation], options.augment) if h is not None]
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(name, **config)
    if options.init_state is not None: model.load_state_dict(options.init_state, strict=False)
    if cfg.frozen_blocks: model.freeze_blocks(cfg.frozen_blocks)
    # channels-last convolutions: measurably faster training on 2 CPU cores
    return model.to(device, memory_format=torch.channels_last), hooks, gen

def _restore(st: dict, model, tools: EpochTools) -> tuple[list, dict, int]:
    "Put a saved state back (weights, optimiser, schedule, every RNG): the history, best epoch and next epoch."
    model.load_state_dict(st["state_dict"])
    tools.opt.load_state_dict(st["optimizer"])
    tools.sched.load_state_dict(st["scheduler"])
    tools.gen.set_state(st["generator"])
    torch.set_rng_state(st["torch_rng"])
    set_device_rng_state(st.get("device_rng"), tools.device)
    return st["history"], st["best"], st["epoch"] + 1

def _validate(model, data: StudyData, device) -> tuple[float | None, float | None]:
    "Validation loss and accuracy after an epoch; (None, None) for a refit, which has no validation clips."
    if len(data.val) == 0: return None, None
    yv = data.logmels.labels[torch.as_tensor(np.asarray(data.val))]
    logits = predict_logits(model, data.logmels, data.val, data.n_frames, device=device)
    return F.cross_entropy(logits, yv).item(), (logits.argmax(1) == yv).float().mean().item()

_acc = lambda v: "-" if v is None else f"{v:.3f}"

def train_model(name: str, config: dict, data: StudyData, cfg: TrainConfig, *, cell=None,
                options: TrainOptions | None = None, device=None, progress: bool = True):
    "Train `name` on `data.train`, its epoch chosen on `data.val` (none: the last): (model, history); resumes in cell."
    device, options = device or pick_device(), options or TrainOptions()
    info, class_weights = options.info, options.class_weights
    model, hooks, gen = _new_training(name, config, cfg, options, device)
    train_idx = torch.as_tensor(np.asarray(data.train))
    opt, sched = _optimizer(model, cfg, cfg.epochs * math.ceil(len(train_idx) / cfg.batch_size))
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    hist, best, start = [], dict(val_accuracy=-1.0, epoch=-1), 0
    best_path, last = (Path(cell)/"model.pt", Path(cell)/"model.last.pt") if cell else (None, None)
    if st := _resume_state(last, best_path, cfg, config, len(train_idx), info):
        hist, best, start = _restore(st, model, EpochTools(opt, sched, gen, hooks, weight, device))
        if progress: print(f"resuming {name} after epoch {start} (best validation accuracy so far "
                           f"{_acc(best['val_accuracy'])})")
    best_state = (copy.deepcopy(model.state_dict()) if start == 0 else
                  read_checkpoint(best_path, device)["state_dict"])
    end = min(cfg.stop_after or cfg.epochs, cfg.epochs)
    bar = tqdm(range(start, end), desc=name, unit="epoch", disable=not progress or start >= end, mininterval=5)
    for epoch in bar:
        t0 = time.time()
        row = _train_epoch(model, data, train_idx, cfg, EpochTools(opt, sched, gen, hooks, weight, device))
        val_loss, val_acc = _validate(model, data, device)
        hist.append(dict(epoch=epoch + 1, train_loss=row["train_loss"], train_accuracy=row["train_accuracy"],
                         val_loss=val_loss, val_accuracy=val_acc, lr=opt.param_groups[0]["lr"],
                         seconds=time.time() - t0, data_seconds=row["data_seconds"],
                         train_seconds=row["train_seconds"]))
        if val_acc is None or val_acc > best["val_accuracy"]:     # a refit keeps its last epoch
            best = dict(val_accuracy=val_acc, val_loss=val_loss, epoch=epoch + 1)
            best_state = copy.deepcopy(model.state_dict())
            if cell:
                save_checkpoint(checkpoint_dict(model, name, config, data.fp, data.split.classes, data.clip_seconds,
                                                epoch=epoch + 1, val_accuracy=val_acc, train_config=asdict(cfg),
                                                **(info or {})), best_path)
        if cell: _save_state(last, model, EpochTools(opt, sched, gen, hooks, weight, device),
                                dict(history=hist, best=best, epoch=epoch, train_config=asdict(cfg), config=config,
                                     n_train=len(train_idx), info=info))
        bar.set_postfix(val=_acc(val_acc), best=f"{_acc(best['val_accuracy'])}@{best['epoch']}")
        if progress and not bar.disable and (epoch + 1) % 5 == 0:
            print(f"  {name} epoch {epoch+1}: loss {row['train_loss']:.3f}, val acc {_acc(val_acc)} "
                  f"(best {_acc(best['val_accuracy'])} @ {best['epoch']})", flush=True)
        if stop_early(cfg, epoch + 1, best["epoch"], opt.param_groups[0]["lr"]): break
    model.load_state_dict(best_state)
    return model.eval(), dict(history=hist, best=best, stopped_epoch=hist[-1]["epoch"] if hist else 0)

# %% [markdown]
# A smoke test: training runs, writes both checkpoints, and a second call resumes instead of starting again.

# %%
#| exporti
def tiny_data(n_mels: int = 16) -> StudyData:
    "24 random two-class clips of 40 frames in folds 1-3 (16, 4, 4), each its own recording: train 1, val and test 2+3."
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(24)]
    clips = LogMelSet([rng.standard_normal((40, n_mels)).astype(np.float16) + (i % 2) * 3 for i in range(24)],
                      labels=labels)
    meta = pd.DataFrame(dict(fold=[1] * 16 + [2] * 4 + [3] * 4, classID=labels, fsID=range(24)))
    return StudyData(None, SimpleNamespace(classes=["a", "b"]), meta, FeatureParams(n_mels=n_mels), clips, 1.0, 32,
                     np.arange(16), np.arange(16, 24), np.arange(16, 24), {}, [f"clip{i}" for i in range(24)])

# %%
small = tiny_data()
small_config = dict(n_classes=2, n_mels=16)
cfg2, cfg3 = TrainConfig(epochs=2, batch_size=8, patience=None), TrainConfig(epochs=3, batch_size=8, patience=None)
with tempfile.TemporaryDirectory() as d:
    train = lambda cfg, info=None: train_model("small_cnn", small_config, small, cfg, cell=d, progress=False,
                                               options=TrainOptions(info=info))
    train(cfg2)
    assert (Path(d)/"model.pt").exists() and (Path(d)/"model.last.pt").exists()
    test_eq(len(train(cfg3)[1]["history"]), 3)   # a different config starts afresh
    test_eq(len(train(cfg3)[1]["history"]), 3)   # same config: resumed after epoch 3, nothing left to do
    other_folds = dict(folds=dict(train=[2]))
    test_eq(len(train(cfg3, info=other_folds)[1]["history"]), 3)               # other folds: trained afresh
    assert read_checkpoint(Path(d)/"model.pt")["folds"] == dict(train=[2])
    (Path(d)/"model.pt").unlink()                                           # best deleted, last kept: trained afresh
    test_eq(len(train(cfg3, info=other_folds)[1]["history"]), 3)
    loaded, ck = load_checkpoint(Path(d)/"model.pt")
    test_eq(predict_logits(loaded, small.logmels, range(2), 10, multicrop=True).shape, (2, 2))   # 10-frame windows
    test_eq((ck["classes"], predict_logits(loaded, small.logmels, range(4), 32).shape), (["a", "b"], (4, 2)))

# %% [markdown]
# A refit has no validation clips: it trains `stop_after` epochs of an `epochs`-long schedule and keeps the last. Held
# batch norms keep their statistics.

# %%
from dataclasses import replace as _with
refit_data = _with(small, val=np.arange(0))
_cfg = TrainConfig(epochs=3, batch_size=8, patience=None, stop_after=2, freeze_bn=True, schedule="warmup_linear")
refit_model, refit_history = train_model("small_cnn", small_config, refit_data, _cfg, progress=False)
test_eq([r["epoch"] for r in refit_history["history"]], [1, 2])
test_eq((refit_history["best"]["epoch"], refit_history["best"]["val_accuracy"]), (2, None))
test_eq(refit_model.features[0][1].running_mean, torch.zeros(16))          # the batch norm's statistics, held

# %% [markdown]
# An interruption costs nothing but time: stopped after its second epoch and resumed, a training ends with the same
# history and weights as one run straight through, with every random draw of the recipe in play.

# %%
class _Interrupt(Exception): pass

def _train_small_resnet(d, stop_after_batches=None):
    "UrbanResNet at a tiny width with its full recipe; raises _Interrupt after `stop_after_batches` training batches."
    calls = [0]
    def hook(x, y, gen):
        calls[0] += 1
        if stop_after_batches is not None and calls[0] > stop_after_batches: raise _Interrupt
        return x
    cfg = TrainConfig(epochs=4, batch_size=8, **RECIPES["resnet"])
    return train_model("resnet", dict(n_classes=2, n_mels=16, widths=(4, 8, 8, 8)), small, cfg, cell=d,
                       options=TrainOptions(augment=hook), progress=False)

with tempfile.TemporaryDirectory() as straight, tempfile.TemporaryDirectory() as interrupted:
    m_straight, h_straight = _train_small_resnet(straight)
    test_fail(lambda: _train_small_resnet(interrupted, stop_after_batches=5), exc=_Interrupt)   # in epoch 3
    test_eq(read_checkpoint(Path(interrupted)/"model.last.pt")["epoch"], 1)     # epochs 1 and 2 saved
    m_resumed, h_resumed = _train_small_resnet(interrupted)
    test_eq(h_resumed["history"][-1]["epoch"], 4)
    losses = lambda h: [(r["train_loss"], r["val_loss"]) for r in h["history"]]
    test_eq(losses(h_resumed), losses(h_straight))
    for k, v in m_straight.state_dict().items(): test_eq(m_resumed.state_dict()[k], v)

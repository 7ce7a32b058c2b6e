# %%
#| default_exp augment

# %% [markdown]
# # Augmentations on cached log-mels
#
# > Every augmentation of the study: recording variation, SpecAugment-lite masks, shift and gain, and mixup.

# %% [markdown]
# Each works on a batch of log-mels in dB on any device and draws from the training loop's generator, so a seed fixes
# everything (`torchaudio.transforms`' masks draw from torch's global generator, which a resumable loop must replace).

# %%
#| export
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from urbansound_nb.features import DB_FLOOR

# %%
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close

# %% [markdown]
# ## Augmentation that imitates other recordings
#
# A fold holds a hundred-odd field recordings, so what a model must generalise across is the recording; the cheapest
# way to show it more is to vary the ones it has: **time stretch** (x0.8 to x1.25), **band shift** (up to 1/16 of the
# bands, roughly a few semitones), **random equalisation** (a smooth curve, up to +-6 dB at the edges: another
# microphone, distance or wall) and **gain** (+-6 dB). Without them UrbanResNet over-fits one training fold after
# about ten epochs; variations tried and not taken are on the explanations page.

# %%
#| export
def time_stretch(x: torch.Tensor, generator=None, max_factor: float = 1.25) -> torch.Tensor:
    "Stretch a batch [B, bands, frames] in time by one random factor in [1/max_factor, max_factor], keeping its length."
    T = x.shape[-1]
    r = math.exp((float(torch.rand(1, generator=generator)) * 2 - 1) * math.log(max_factor))
    x = F.interpolate(x, size=max(2, round(T * r)), mode="linear", align_corners=False)
    # a shrunk clip ends in silence
    return x[..., :T] if x.shape[-1] >= T else F.pad(x, (0, T - x.shape[-1]), value=DB_FLOOR)

def band_shift(x: torch.Tensor, generator=None, max_shift: int | None = None) -> torch.Tensor:
    "Shift each clip's bands up or down by up to `max_shift` (default: 1/16 of the bands), repeating the edge band."
    B, n, T = x.shape
    k = max_shift if max_shift is not None else max(1, n // 16)
    s = torch.randint(-k, k + 1, (B,), generator=generator)
    rows = (torch.arange(n)[None] - s[:, None]).clamp(0, n - 1)
    return x.gather(1, rows[:, :, None].expand(-1, -1, T))

def random_eq(x: torch.Tensor, generator=None, max_db=(6.0, 4.0, 3.0)) -> torch.Tensor:
    "Add a random smooth curve over the bands to each clip: tilt, bow and wiggle (Chebyshev polynomials), `max_db` dB."
    B, n, _ = x.shape
    f = torch.linspace(-1, 1, n)
    c = (torch.rand(B, 3, generator=generator) * 2 - 1) * torch.tensor(max_db)
    curve = c[:, :1] * f + c[:, 1:2] * (2 * f**2 - 1) + c[:, 2:] * (4 * f**3 - 3 * f)
    return x + curve[:, :, None]

def recording_variation(x: torch.Tensor, y=None, generator=None, max_gain_db: float = 6.0) -> torch.Tensor:
    "The augmentation of the UrbanResNet recipe: time stretch, band shift, random equalisation and gain."
    x = random_eq(band_shift(time_stretch(x, generator), generator), generator)
    return x + ((torch.rand(len(x), generator=generator) * 2 - 1) * max_gain_db)[:, None, None]

# %%
g = torch.Generator().manual_seed(0)
batch = torch.randn(4, 32, 100)
test_eq(time_stretch(batch, g).shape, batch.shape)
test_eq(recording_variation(batch, generator=g).shape, batch.shape)
test_close(time_stretch(batch, g, max_factor=1.0), batch)                              # factor 1: unchanged
test_eq(band_shift(batch, g, max_shift=0), batch)
# rows move by 2 at most, in order
shifted = band_shift(torch.arange(32.)[None, :, None].expand(4, 32, 5), g, max_shift=2)
assert ((shifted[:, :, 0] - torch.arange(32.)).abs() <= 2).all() and (shifted[:, 1:, 0] >= shifted[:, :-1, 0]).all()
# one curve per clip
eq = random_eq(batch, g) - batch
test_close(eq[:, :, 0], eq[:, :, -1])
assert eq.abs().max() <= 13
fig, axes = plt.subplots(1, 2, figsize=(12, 3), constrained_layout=True)
demo = torch.linspace(-60, -20, 64)[None, :, None].expand(1, 64, 173) + 10 * torch.sin(torch.arange(173.) / 9)
for ax, img, t in zip(axes, (demo[0], recording_variation(demo, generator=g)[0]), ("original", "recording_variation")):
    im = ax.imshow(img, origin="lower", aspect="auto", cmap="magma")
    ax.set(title=f"A synthetic log-mel: {t}", xlabel="frame", ylabel="mel band")
fig.colorbar(im, ax=axes, label="power (dB)")
plt.show()

# %% [markdown]
# ## Masks, shifts and gains
#
# Chapter 08 tests these: SpecAugment-lite masks (the starting notebook's attempt), a circular time shift with a gain.

# %%
#| export
def spec_augment_lite(x: torch.Tensor, y=None, generator=None, n_masks: int = 2, max_bands: int = 8,
                      max_frames: int = 20) -> torch.Tensor:
    "SpecAugment-lite: `n_masks` frequency and time masks per clip, filled with the clip's mean level."
    x = x.clone()
    B, F_, T = x.shape
    fill = x.mean((1, 2))
    r = lambda hi: torch.randint(0, max(hi, 1), (B,), generator=generator)
    for _ in range(n_masks):
        fw, tw = r(max_bands + 1), r(max_frames + 1)
        f0 = (torch.rand(B, generator=generator) * (F_ - fw + 1)).long()
        t0 = (torch.rand(B, generator=generator) * (T - tw + 1)).long()
        fmask = (torch.arange(F_)[None] >= f0[:, None]) & (torch.arange(F_)[None] < (f0 + fw)[:, None])
        tmask = (torch.arange(T)[None] >= t0[:, None]) & (torch.arange(T)[None] < (t0 + tw)[:, None])
        x = torch.where(fmask[:, :, None] | tmask[:, None, :], fill[:, None, None], x)
    return x

def shift_gain(x: torch.Tensor, y=None, generator=None, max_gain_db: float = 6.0) -> torch.Tensor:
    "A random circular time shift per clip and a random gain of +-`max_gain_db` dB (a shift of the log-mel levels)."
    B, F_, T = x.shape
    shift = torch.randint(0, T, (B,), generator=generator)
    cols = (torch.arange(T)[None] - shift[:, None]) % T
    gain = (torch.rand(B, generator=generator) * 2 - 1) * max_gain_db
    return x.gather(2, cols[:, None, :].expand(-1, F_, -1)) + gain[:, None, None]


# %%
g = torch.Generator().manual_seed(0)
batch = torch.randn(4, 16, 50)
masked = spec_augment_lite(batch, generator=g)
test_eq(masked.shape, batch.shape)
assert (masked != batch).any() and (masked == batch).float().mean() > 0.3
s = shift_gain(batch, generator=torch.Generator().manual_seed(1))
test_close(torch.sort(s[0, 0] - s[0, 0].mean()).values, torch.sort(batch[0, 0] - batch[0, 0].mean()).values, eps=1e-4)

# %% [markdown]
# ## Mixup
#
# Mixup blends pairs of clips and their labels with a Beta-drawn weight; the loop applies it to the loss. Fine-tuning
# (chapter 05) takes EfficientAT's own augmentations on the cached log-mels (`roll_gain_mask`): a circular roll, a
# gain of up to +-12 dB and two frequency masks.

# %%
#| export
def mixup(x, y, alpha: float, generator=None):
    "Blend each clip with another of the batch: (mixed x, y, y of the partner, weight of y)."
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(len(x), generator=generator)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam

def shift_freqmask(x: torch.Tensor, y=None, generator=None) -> torch.Tensor:
    "For fine-tuning a pretrained network: a circular time shift and two frequency masks (no gain: inputs are scaled)."
    B, F_, T = x.shape
    cols = (torch.arange(T)[None] - torch.randint(0, T, (B,), generator=generator)[:, None]) % T
    return spec_augment_lite(x.gather(2, cols[:, None, :].expand(-1, F_, -1)), generator=generator,
                             max_bands=max(1, F_ // 8), max_frames=0)

PRETRAINED_UNITS_PER_DB = math.log(10) / 50   # EfficientAT's input is (ln(power) + 4.5) / 5 (notebook 05a)

def roll_gain_mask(x: torch.Tensor, y=None, generator=None, max_gain_db: float = 12.0) -> torch.Tensor:
    "EfficientAT's fine-tuning augmentation on its log-mels: a time roll, a gain of +-`max_gain_db`, two band masks."
    gain = (torch.rand(len(x), generator=generator) * 2 - 1) * max_gain_db * PRETRAINED_UNITS_PER_DB
    return shift_freqmask(x, generator=generator) + gain[:, None, None]

# recipe augmentations by name, as a TrainConfig names them; the others are hooks chapter 08 passes to `fit`
AUGMENTATIONS = {"none": None, "recording_variation": recording_variation, "shift_freqmask": shift_freqmask,
                 "roll_gain_mask": roll_gain_mask}

# %%
test_eq(shift_freqmask(torch.randn(3, 128, 40), generator=torch.Generator().manual_seed(0)).shape, (3, 128, 40))
_rolled = roll_gain_mask(torch.zeros(64, 128, 40), generator=torch.Generator().manual_seed(0))
assert _rolled.abs().max() <= 12 * PRETRAINED_UNITS_PER_DB + 1e-6 and _rolled.std() > 0.1   # a gain per clip, +-12 dB
mixed, ya, yb, lam = mixup(torch.ones(4, 2, 3), torch.arange(4), 0.2, torch.Generator().manual_seed(0))
test_close(mixed, torch.ones(4, 2, 3))
assert 0 <= lam <= 1 and sorted(yb.tolist()) == [0, 1, 2, 3]

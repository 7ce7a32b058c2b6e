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
#| default_exp augment

# %% [markdown]
# # Does augmentation help? A controlled experiment
#
# > Same split, model, epochs, batch size and schedule; only the augmentation changes, each condition over several seeds, compared pair by pair with no augmentation.

# %% [markdown]
# The starting notebook tried a "SpecAugment-lite" (random frequency and time masks) once, saw
# accuracy drop, and concluded it hurt. One run per condition cannot say that: two runs of the
# same recipe with different seeds differ by several points on a fold of a few hundred clips.
# Here every condition is trained with the same seeds, so each seed gives a *paired*
# difference against "none", and the conclusion rests on all of them:
#
# | condition | what changes |
# |---|---|
# | `none` | nothing: the baseline recipe |
# | `specaugment_lite` | two frequency masks (up to 8 bands) and two time masks (up to 20 frames) per clip |
# | `shift_gain` | a random circular time shift and a random gain of +-6 dB |
# | `mixup` | mixup of clip pairs (alpha 0.2) |
# | `class_weights` | the loss weighted by inverse class frequency (the starting notebook computed these weights but never used them) |
# | `recording_variation` | notebook 04's augmentation: time stretch, band shift, random equalisation and gain |
#
# `mixup` and `recording_variation` are not in the default list of conditions, so that the
# default run stays within its time budget; add them with
# `-p conditions "[none, mixup, recording_variation]"`. (On the mini data, mixup measured
# +0.4 points over three seeds, p = 0.83: no consistent difference for this small CNN.)

# %%
#| export
from __future__ import annotations

import json, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from scipy import stats as sstats

from urbansound_nb.baselines import result_entry
from urbansound_nb.core import save_json
from urbansound_nb.features import StudyData
from urbansound_nb.train import fit, predict_logits

# %%
import os
import matplotlib.pyplot as plt
from IPython.display import Markdown
from urbansound_nb.core import as_int, as_name, as_names, is_synthetic, validate_params, write_results, make_run_dir
from urbansound_nb.features import study_data
from urbansound_nb.train import RECIPES

# %% tags=["parameters"]
dataset = None          # hub id, local folder or "synthetic"; None: $URBANSOUND_DATASET, else the hub id
train_folds = None
val_fold = None
test_fold = None
sample_rate = 22050
clip_seconds = 4.0
seed = 0
max_items = None
epochs = 8              # per training run; every condition and seed trains exactly this long
run_dir = "../runs/notebook"
cache_dir = "../cache"
seeds = 3               # seeds per condition (seed, seed+1, ...)
model = "small_cnn"     # the model every condition trains
conditions = ["none", "specaugment_lite", "shift_gain", "class_weights"]

# %%
#| hide
if os.environ.get("IN_TEST"):
    import tempfile; dataset, run_dir, cache_dir, epochs, seeds = "synthetic", tempfile.mkdtemp(), tempfile.mkdtemp(), 1, 2
    conditions = [*conditions, "mixup", "recording_variation"]

# %% [markdown]
# ## The augmentations
#
# Each works on a batch of log-mels in dB, `[batch, bands, frames]`, on any device, with the
# training loop's random generator so that a seed fixes everything.

# %%
#| export
def spec_augment_lite(x: torch.Tensor, y=None, generator=None, n_masks: int = 2, max_bands: int = 8, max_frames: int = 20) -> torch.Tensor:
    "SpecAugment-lite: `n_masks` frequency and time masks per clip, filled with the clip's mean level."
    x = x.clone(); B, F_, T = x.shape; fill = x.mean((1, 2))
    r = lambda hi: torch.randint(0, max(hi, 1), (B,), generator=generator)
    for _ in range(n_masks):
        fw, tw = r(max_bands + 1), r(max_frames + 1)
        f0, t0 = (torch.rand(B, generator=generator) * (F_ - fw + 1)).long(), (torch.rand(B, generator=generator) * (T - tw + 1)).long()
        fmask = (torch.arange(F_)[None] >= f0[:, None]) & (torch.arange(F_)[None] < (f0 + fw)[:, None])
        tmask = (torch.arange(T)[None] >= t0[:, None]) & (torch.arange(T)[None] < (t0 + tw)[:, None])
        x = torch.where(fmask[:, :, None] | tmask[:, None, :], fill[:, None, None], x)
    return x

# %%
#| export
def shift_gain(x: torch.Tensor, y=None, generator=None, max_gain_db: float = 6.0) -> torch.Tensor:
    "A random circular time shift per clip and a random gain of +-`max_gain_db` dB (a shift of the log-mel levels)."
    B, F_, T = x.shape
    shift = torch.randint(0, T, (B,), generator=generator)
    cols = (torch.arange(T)[None] - shift[:, None]) % T
    gain = (torch.rand(B, generator=generator) * 2 - 1) * max_gain_db
    return x.gather(2, cols[:, None, :].expand(-1, F_, -1)) + gain[:, None, None]

def inverse_frequency_weights(labels, n_classes: int) -> np.ndarray:
    "Class weights proportional to 1 / class frequency, averaging 1."
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return w / w[counts > 0].mean()

# %%
from fastcore.test import test_eq, test_ne, test_close
g = torch.Generator().manual_seed(0); xb = torch.randn(4, 16, 50)
a = spec_augment_lite(xb, generator=g)
test_eq(a.shape, xb.shape); assert (a != xb).any() and (a == xb).float().mean() > 0.3
s = shift_gain(xb, generator=torch.Generator().manual_seed(1))
test_close(torch.sort(s[0, 0] - s[0, 0].mean()).values, torch.sort(xb[0, 0] - xb[0, 0].mean()).values, eps=1e-4)  # same frames, shifted
test_close(inverse_frequency_weights([0, 0, 0, 1], 2), np.array([0.5, 1.5]))

# %%
#| export
CONDITIONS = {  # name -> (augment hook, TrainConfig overrides, use class weights)
    "none": (None, {}, False),
    "specaugment_lite": (spec_augment_lite, {}, False),
    "shift_gain": (shift_gain, {}, False),
    "mixup": (None, {"mixup_alpha": 0.2}, False),
    "class_weights": (None, {}, True),
    "recording_variation": (None, {"augmentation": "recording_variation"}, False),  # notebook 04's recipe augmentation
}
# every condition starts from this recipe, whatever the model's own recipe adds (its augmentation, say)
BASE_RECIPE = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, schedule="onecycle", label_smoothing=0.0, mixup_alpha=0.0,
                   patience=None, augmentation="none")

# %% [markdown]
# ## One training run per (condition, seed), resumable
#
# Every finished run is recorded at once in `results/06_augmentation.runs.json`; an interrupted
# experiment picks up where it stopped.

# %%
#| export
def run_experiment(conditions, seeds, data: StudyData, model: str, epochs: int, record_path=None, batch_size: int = 32) -> pd.DataFrame:
    "Train `model` on `data` once per condition and seed; returns one row per run (validation and test accuracy)."
    done = json.loads(Path(record_path).read_text()) if record_path and Path(record_path).exists() else {}
    y, tr, va, te, classes = data.logmels.labels.numpy(), data.train, data.val, data.test, data.split.classes
    for cond in conditions:
        if cond not in CONDITIONS: raise ValueError(f"unknown condition {cond!r}; choose from {sorted(CONDITIONS)}")
        augment, overrides, weighted = CONDITIONS[cond]
        for s in seeds:
            key = f"{cond}/seed{s}/{model}/{epochs}"
            if key in done: continue
            t0 = time.time(); w = inverse_frequency_weights(y[tr], len(classes)) if weighted else None
            m, h = fit(model, data, epochs, s, None, augment, w, progress=False, batch_size=batch_size, **{**BASE_RECIPE, **overrides})
            pv, pt = (predict_logits(m, data.logmels, idx, data.n_frames).argmax(1).numpy() for idx in (va, te))
            done[key] = dict(condition=cond, seed=s, **result_entry(y[va], pv, y[te], pt, classes, len(tr), time.time() - t0, best_epoch=h["best"]["epoch"]))
            if record_path: save_json(done, record_path)
            print(f"  {cond:17s} seed {s}: validation {done[key]['val_accuracy']:.3f}, test {done[key]['test_accuracy']:.3f} ({time.time()-t0:.0f} s)", flush=True)
    keys = [f"{c}/seed{s}/{model}/{epochs}" for c in conditions for s in seeds]
    return pd.DataFrame([done[k] for k in keys])

# %% [markdown]
# ## The experiment

# %%
params = validate_params(dataset, train_folds, val_fold, test_fold, sample_rate, clip_seconds, seed, max_items,
                         epochs, run_dir, cache_dir)
conditions = as_names('conditions', conditions, CONDITIONS)   # a list, also when plain papermill passes it as a string
model = as_name("model", model, RECIPES)
run_path = make_run_dir(params.run_dir)
data = study_data(params)
ds, split, tr, va, te = data.ds, data.split, data.train, data.val, data.test
seed_list = list(range(params.seed, params.seed + as_int("seeds", seeds, 1)))
print(f"{model}, {params.epochs} epochs, seeds {seed_list}, {len(conditions)} conditions: {len(conditions) * len(seed_list)} runs",
      "(SYNTHETIC data)" if is_synthetic(ds) else "")

# %%
runs = run_experiment(conditions, seed_list, data, model, params.epochs, run_path/"results"/"06_augmentation.runs.json")
runs[["condition", "seed", "val_accuracy", "test_accuracy", "best_epoch", "seconds"]].round(3)

# %% [markdown]
# ## Results: mean +- standard deviation over seeds

# %%
#| export
def summarise(runs: pd.DataFrame, baseline: str = "none", by: str = "condition", pair: str = "seed") -> pd.DataFrame:
    "Per `by` value: mean and std of validation and test accuracy, and the test difference to `baseline`, paired on `pair`."
    g = runs.groupby(by, sort=False)
    out = pd.DataFrame({"val_mean": g["val_accuracy"].mean(), "val_std": g["val_accuracy"].std(ddof=1),
                        "test_mean": g["test_accuracy"].mean(), "test_std": g["test_accuracy"].std(ddof=1), f"{pair}s": g.size()})
    base = runs[runs[by] == baseline].set_index(pair)
    for c in out.index:
        this = runs[runs[by] == c].set_index(pair)
        d, dv = this["test_accuracy"] - base["test_accuracy"], this["val_accuracy"] - base["val_accuracy"]
        out.loc[c, "test_diff_mean"], out.loc[c, "test_diff_std"] = d.mean(), d.std(ddof=1)
        out.loc[c, "val_diff_mean"] = dv.mean()
        out.loc[c, f"{pair}s_better"] = int((d > 0).sum())
        out.loc[c, "paired_t_p"] = sstats.ttest_rel(this["test_accuracy"].loc[base.index], base["test_accuracy"]).pvalue if c != baseline and len(d.dropna()) > 1 and d.std() > 0 else np.nan
    return out

# %% [markdown]
# The same comparison serves notebook 07, where models are paired on test folds instead of conditions on seeds:

# %%
toy = pd.DataFrame(dict(model=["a", "a", "b", "b"], test_fold=[1, 2, 1, 2], val_accuracy=[.5, .6, .4, .5], test_accuracy=[.5, .7, .4, .5]))
toy_summary = summarise(toy, baseline="b", by="model", pair="test_fold")
test_close(toy_summary.loc["a", "test_diff_mean"], 0.15); test_eq(toy_summary.loc["a", "test_folds_better"], 2); test_eq(toy_summary.loc["b", "test_folds"], 2)

# %%
summary = summarise(runs)
summary.round(3)

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
xs = np.arange(len(summary))
a1.bar(xs - 0.2, summary["val_mean"], 0.4, yerr=summary["val_std"], capsize=3, label="validation", color="tab:gray")
a1.bar(xs + 0.2, summary["test_mean"], 0.4, yerr=summary["test_std"], capsize=3, label="test", color="tab:blue")
a1.set_xticks(xs, summary.index, rotation=20); a1.set(title=f"Accuracy per condition (mean +- std, {len(seed_list)} seeds)", xlabel="condition", ylabel="accuracy"); a1.legend()
for c, color in zip(summary.index, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
    d = runs[runs["condition"] == c].set_index("seed")["test_accuracy"] - runs[runs["condition"] == "none"].set_index("seed")["test_accuracy"]
    a2.scatter([c] * len(d), 100 * d, color=color); a2.plot([c], [100 * d.mean()], "k_", ms=20)
a2.axhline(0, color="black", lw=0.8); a2.tick_params(axis="x", rotation=20)
a2.set(title="Paired test difference to 'none' (one dot per seed, bar: mean)", xlabel="condition", ylabel="accuracy difference (points)")
plt.show()

# %% [markdown]
# ## Conclusion from this run

# %%
spec = summary.loc["specaugment_lite"] if "specaugment_lite" in summary.index else None
lines = []
for c, r in summary.drop(index="none", errors="ignore").iterrows():
    direction = "helped" if r["test_diff_mean"] > 0 else "hurt"
    if r["seeds_better"] not in (0, r["seeds"]): verdict = "made no consistent difference"
    elif r["paired_t_p"] < 0.05: verdict = direction
    else: verdict = f"{direction} on every seed, which with {int(r['seeds'])} seeds is suggestive, not established"
    lines.append(f"- **{c}**: test accuracy {100 * r['test_diff_mean']:+.1f} points on average against 'none' "
                 f"(better on {int(r['seeds_better'])} of {int(r['seeds'])} seeds, paired t-test p = {r['paired_t_p']:.2f}); it {verdict}.")
if spec is not None:
    agree = spec["test_diff_mean"] < 0
    lines.append(f"\nThe starting notebook found that SpecAugment-lite lowered accuracy. This run {'agrees' if agree else 'does not agree'}: "
                 f"{100 * spec['test_diff_mean']:+.1f} points on the test fold, {100 * spec['val_diff_mean']:+.1f} on validation. "
                 + ("With this few seeds and a difference within the seed-to-seed spread, neither direction is established."
                    if not (spec["seeds_better"] in (0, spec["seeds"]) and abs(spec["test_diff_mean"]) > spec["test_diff_std"]) else
                    f"The direction held on every seed and exceeds the seed-to-seed spread of the differences (paired t-test p = {spec['paired_t_p']:.2f})."))
lines.append(f"\n(Seeds: {len(seed_list)}, {params.epochs} epochs per run, model {model}; more seeds narrow these estimates.)")
Markdown("\n".join(lines))

# %%
entries = {c: dict(val_accuracy=r["val_mean"], val_accuracy_std=r["val_std"], test_accuracy=r["test_mean"], test_accuracy_std=r["test_std"],
                   macro_f1=float(runs[runs["condition"] == c]["macro_f1"].mean()),
                   per_class_accuracy=runs[runs["condition"] == c]["per_class_accuracy"].apply(pd.Series).mean().to_dict(),
                   n_train=len(tr), n_val=len(va), n_test=len(te), seconds=float(runs[runs["condition"] == c]["seconds"].sum()),
                   seeds=int(r["seeds"]), test_diff_vs_none=r["test_diff_mean"], paired_t_p=r["paired_t_p"],
                   per_seed=runs[runs["condition"] == c][["seed", "val_accuracy", "test_accuracy"]].to_dict("records"))
           for c, r in summary.iterrows()}
write_results(run_path, "06_augmentation", entries, dataset=params.dataset, model=model, epochs=params.epochs, seeds=seed_list,
              conclusion=lines, split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold))

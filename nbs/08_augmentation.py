# %%
#| default_exp experiment

# %% [markdown]
# # Does augmentation help? A controlled experiment
#
# > Only the augmentation changes; each condition over several seeds, paired against no augmentation.

# %% [markdown]
# The starting notebook tried "SpecAugment-lite" once, saw accuracy drop, and concluded it hurt. Two seeds of one
# recipe differ by several points on a fold of a few hundred clips, so here every condition trains with the same
# seeds, and each seed gives a *paired* difference against "none":
#
# | condition | what changes |
# |---|---|
# | `none` | nothing: the baseline recipe |
# | `specaugment_lite` | two frequency masks (up to 8 bands) and two time masks (up to 20 frames) per clip |
# | `shift_gain` | a random circular time shift and a random gain of +-6 dB |
# | `mixup` | mixup of clip pairs (alpha 0.2) |
# | `class_weights` | the loss weighted by inverse class frequency (the starting notebook computed, never used them) |
# | `recording_variation` | UrbanResNet's augmentation (04b): time stretch, band shift, random equalisation, gain |
#
# `mixup` and `recording_variation` are left out of the default list for time: `-p conditions "[none, mixup]"`.

# %%
#| export
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from urbansound_nb.augment import shift_gain, spec_augment_lite
from urbansound_nb.batches import StudyData
from urbansound_nb.grid import Placement, run_grid
from urbansound_nb.metrics import result_entry
from urbansound_nb.params import BATCH_SIZE
from urbansound_nb.registry import Inputs, get_model
from urbansound_nb.store import Training, TrainingStore
from urbansound_nb.train import TrainConfig, balanced_class_weights, predict_logits

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import study_data
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.grid import grid_client, parse_scheduler
from urbansound_nb.metrics import summarise, verdict
from urbansound_nb.params import as_int, as_name, as_names, study_params, use_test_values
from urbansound_nb.registry import list_models
from urbansound_nb.store import study_store

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
conditions = ["none", "specaugment_lite", "shift_gain", "class_weights"]
seeds = 3               # seeds per condition (seed, seed+1, ...)
model = "small_cnn"     # the model every condition trains
grid_epochs = 8         # per training run; every condition and seed trains exactly this long
# (scheduler and cell_threads are shared: fix cell_threads for the same figures from every scheduler, notebook 04d)

# %% [markdown]
# ## The conditions
#
# Notebook 04b's augmentations and 04c's balanced class weights, each from the same recipe.

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
BASE_RECIPE = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, schedule="onecycle", label_smoothing=0.0,
                   mixup_alpha=0.0,
                   patience=None, augmentation="none")

# %% [markdown]
# ## One training run per (condition, seed), resumable, here or on a cluster
#
# Each (condition, seed) is a grid cell (notebook 04d) whose training is a cell of the store (04e), so an interrupted
# experiment resumes on any `scheduler`; `plan_trainings` lists them for `run --plan`.

# %%
#| export
def condition_training(data, condition: str, seed: int, model: str, epochs: int, batch_size: int = BATCH_SIZE):
    "The training of one (condition, seed): `model`'s network from the base recipe, with the condition's change."
    augment, overrides, weighted = CONDITIONS[condition]
    entry, labels = get_model(model), np.asarray(data.clips.labels)
    weights = balanced_class_weights(labels[data.train], len(data.clips.classes)) if weighted else None
    cfg = TrainConfig(epochs=epochs, seed=seed, batch_size=batch_size, **{**BASE_RECIPE, **overrides})
    return Training(entry.network, entry.config(Inputs(data)), cfg, tuple(map(int, data.train)),
                    tuple(map(int, data.val)), standardize=entry.standardize, augment=augment,
                    class_weights=None if weights is None else tuple(weights))

def train_condition(data: StudyData, condition: str, seed: int, model: str, epochs: int,
                    batch_size: int = BATCH_SIZE, store: str | None = None) -> dict:
    "Train `model` on `data` with one condition and seed (a training of the store at `store`); its figures."
    y, va, te, t0 = data.logmels.labels.numpy(), data.val, data.test, time.time()
    trainings = TrainingStore(store)
    m, h = trainings.train(condition_training(data, condition, seed, model, epochs, batch_size), data, progress=False)
    pv, pt = (predict_logits(m, data.logmels, idx, data.n_frames).argmax(1).numpy() for idx in (va, te))
    return dict(condition=condition, seed=seed, trainings=trainings.used,
                **result_entry(y[va], pv, y[te], pt, data.split.classes, len(data.train), time.time() - t0,
                               best_epoch=h["best"]["epoch"]))

def plan_trainings(params, view, split: dict, conditions, seeds: int, model: str, grid_epochs: int) -> list:
    "The trainings of the conditions x seeds on `split` (train_folds, val_fold) of a `DataView`, for a plan."
    from types import SimpleNamespace
    data = SimpleNamespace(clips=view.clips, fp=view.fp, n_frames=view.n_frames,
                           train=view.clips.indices(split["train_folds"]), val=view.clips.indices(split["val_fold"]))
    return [condition_training(data, c, s, model, grid_epochs, params.batch_size) for c in conditions
            for s in range(params.seed, params.seed + seeds)]

def run_experiment(conditions, seeds, data: StudyData, model: str, epochs: int, place: Placement | None = None,
                   **cell_options) -> pd.DataFrame:
    "Train `model` on `data` once per condition and seed (`train_condition`, with `cell_options`); one row per run."
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown: raise ValueError(f"unknown condition {unknown[0]!r}; choose from {sorted(CONDITIONS)}")
    cells = {f"{c}/seed{s}/{model}/{epochs}": dict(condition=c, seed=s, model=model, epochs=epochs, **cell_options)
             for c in conditions for s in seeds}
    describe = lambda key, r: (f"  {r['condition']:17s} seed {r['seed']}: validation {r['val_accuracy']:.3f}, "
                               f"test {r['test_accuracy']:.3f} ({r['seconds']:.0f} s)")
    done = run_grid(train_condition, cells, shared=dict(data=data), place=place, describe=describe,
                    desc="08 conditions x seeds")
    return pd.DataFrame(list(done.values()))

# %% tags=["checks"]
use_test_values(globals(), grid_epochs=1, seeds=2, conditions=[*conditions, "mixup", "recording_variation"])
params = study_params(globals())
model = as_name("model", model, [m for m in list_models() if hasattr(get_model(m), "network")])
seed_list = list(range(params.seed, params.seed + as_int("seeds", seeds, 1)))
grid_epochs = as_int("grid_epochs", grid_epochs, 1, 10000)
parse_scheduler(params.scheduler)     # a bad scheduler fails here, before any work
conditions = as_names("conditions", conditions, CONDITIONS)

# %% [markdown]
# ## The experiment

# %%
conditions = as_names("conditions", conditions, CONDITIONS)   # a list, also when plain papermill passes a string
run_path = make_run_dir(params.run_dir)
data = study_data(params)
split = data.split
print(f"{model}, {grid_epochs} epochs, seeds {seed_list}, {len(conditions)} conditions: "
      f"{len(conditions) * len(seed_list)} runs", "(SYNTHETIC data)" if is_synthetic(data.ds) else "")

# %%
store = study_store(params)       # each run is a cell of the study's store of trainings (notebook 04e)
with grid_client(params.scheduler, paths=[params.cache_dir]) as client:     # None: here, one run after another
    runs = run_experiment(conditions, seed_list, data, model, grid_epochs, batch_size=params.batch_size,
                          store=str(store.root), place=Placement(client, params.cache_dir, params.cell_threads))
store.used += [t for ts in runs["trainings"] for t in ts]
print(store.summary())
runs[["condition", "seed", "val_accuracy", "test_accuracy", "best_epoch", "seconds"]].round(3)

# %% [markdown]
# ## Results: mean +- standard deviation over seeds

# %% [markdown]
# `summarise` (notebook 03a) pairs each condition with "none" on the seeds, on validation and on test:

# %%
summary = summarise(runs)
summary.round(3)

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
xs = np.arange(len(summary))
a1.bar(xs - 0.2, summary["val_mean"], 0.4, yerr=summary["val_std"], capsize=3, label="validation", color="tab:gray")
a1.bar(xs + 0.2, summary["test_mean"], 0.4, yerr=summary["test_std"], capsize=3, label="test", color="tab:blue")
a1.set_xticks(xs, summary.index, rotation=20)
a1.set(title=f"Accuracy per condition (mean +- std, {len(seed_list)} seeds)", xlabel="condition", ylabel="accuracy")
a1.legend()
for c, color in zip(summary.index, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
    test_of = lambda cond: runs[runs["condition"] == cond].set_index("seed")["test_accuracy"]
    d = test_of(c) - test_of("none")
    a2.scatter([c] * len(d), 100 * d, color=color)
    a2.plot([c], [100 * d.mean()], "k_", ms=20)
a2.axhline(0, color="black", lw=0.8)
a2.tick_params(axis="x", rotation=20)
a2.set(title="Paired test difference to 'none' (one dot per seed, bar: mean)", xlabel="condition",
       ylabel="accuracy difference (points)")
plt.show()

# %% [markdown]
# ## Conclusion from this run
#
# A condition helped or hurt only when validation and test agree (`verdict`, notebook 03a).

# %%
lines = []
for c, r in summary.drop(index="none", errors="ignore").iterrows():
    lines.append(f"- **{c}**: {100 * r['val_diff_mean']:+.1f} points on validation and "
                 f"{100 * r['test_diff_mean']:+.1f} on "
                 f"test against 'none' (better on {int(r['seeds_better_val'])} and {int(r['seeds_better'])} of "
                 f"{int(r['seeds'])} seeds; paired t-test p = {r['paired_t_p_val']:.2f} and {r['paired_t_p']:.2f}); "
                 f"it {verdict(r)}.")
if "specaugment_lite" in summary.index:
    spec = summary.loc["specaugment_lite"]
    lines.append(f"\nThe starting notebook found that SpecAugment-lite lowered accuracy. Here: {verdict(spec)}.")
lines.append(f"\n(Seeds: {len(seed_list)}, {grid_epochs} epochs per run, model {model}; "
             "more seeds narrow these estimates.)")
Markdown("\n".join(lines))

# %%
def _condition_entry(c, r) -> dict:
    "The results entry of condition `c` (a row of `summary`): means over seeds, and each seed's figures."
    own = runs[runs["condition"] == c]
    return dict(val_accuracy=r["val_mean"], val_accuracy_std=r["val_std"], test_accuracy=r["test_mean"],
                test_accuracy_std=r["test_std"], macro_f1=float(own["macro_f1"].mean()),
                per_class_accuracy=own["per_class_accuracy"].apply(pd.Series).mean().to_dict(),
                n_train=len(data.train), n_val=len(data.val), n_test=len(data.test),
                seconds=float(own["seconds"].sum()),
                seeds=int(r["seeds"]), test_diff_vs_none=r["test_diff_mean"], val_diff_vs_none=r["val_diff_mean"],
                paired_t_p=r["paired_t_p"], paired_t_p_val=r["paired_t_p_val"], verdict=verdict(r),
                per_seed=own[["seed", "val_accuracy", "test_accuracy"]].to_dict("records"))

write_results(run_path, "08_augmentation", {c: _condition_entry(c, r) for c, r in summary.iterrows()},
              dataset=params.dataset, model=model, epochs=grid_epochs, seeds=seed_list, conclusion=lines,
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold),
              trainings=store.used, **data.clip_counts())

# %%
#| default_exp crossval

# %% [markdown]
# # Cross-validation over the official folds
#
# > Every fold present is the test fold once, with its own validation fold: the mean and spread over folds.

# %% [markdown]
# Single-fold accuracies of one model spread over ten points or more, so the dataset's authors ask for
# cross-validation over the predefined folds: for each fold *k* present, test on *k*, validate on the fold before it
# (cyclically), train on the others. That is the study's own arrangement, so its split is this chapter's cell for the
# last fold, fitted once for both (notebook 04e). On the full dataset this is the official 10-fold figure.
#
# Every model of the registry (`-p models` narrows them) is fitted on every fold exactly as its family chapter fits
# it: the same entry and shared parameters (`n_mfcc`, `epochs`, `patience`, `train_fraction`, ...), its settings
# chosen on the fold's own rotations, through the same grid and store; this chapter knows nothing of a model but its
# name. The last sections compare each model fold by fold with the reference (the starting notebook's SmallAudioCNN).

# %%
#| export
from __future__ import annotations

from urbansound_nb.registry import cv_tasks, grid_cells, study_models

# %%
from dataclasses import replace
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from fastcore.test import test_eq, test_fail
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.grid import parse_scheduler
from urbansound_nb.metrics import summarise
from urbansound_nb.params import as_folds, as_name, study_params, use_test_values
from urbansound_nb.registry import fit_grid, fold_entry, list_models, present_folds

# %% tags=["parameters"]
# the shared parameters (dataset, models, seed, max_items, ...) are notebook 00a's; set any of them here to override
reference = "small_cnn" # with several models, the others are compared with this one fold by fold
folds = None            # folds to test; None: every fold present

# %% [markdown]
# ## The plan

# %%
#| export
def cv_plan(present, folds=None) -> list[dict]:
    "For each fold to test: its validation fold (the one before it, cyclically) and training folds (all others)."
    present = sorted(set(int(f) for f in present))
    folds = present if folds is None else sorted(int(f) for f in folds)
    missing = [f for f in folds if f not in present]
    if missing: raise ValueError(f"fold(s) {missing} not in the dataset, which has folds {present}")
    if len(present) < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (train, validation, test); "
                         f"the dataset has {present}")
    before = lambda k: present[(present.index(k) - 1) % len(present)]
    return [dict(test_fold=k, val_fold=before(k), train_folds=[f for f in present if f not in (k, before(k))])
            for k in folds]

# %%
test_eq(cv_plan([1, 2, 3]), [dict(test_fold=1, val_fold=3, train_folds=[2]),
                             dict(test_fold=2, val_fold=1, train_folds=[3]),
                             dict(test_fold=3, val_fold=2, train_folds=[1])])     # the study's split: train 1, val 2
test_eq(len(cv_plan(range(1, 11))), 10)
test_eq(cv_plan(range(1, 11))[9], dict(test_fold=10, val_fold=9, train_folds=list(range(1, 9))))
test_fail(lambda: cv_plan([1, 2]), contains="at least 3 folds")

# %% [markdown]
# Each (fold, model) is a grid cell (notebook 04d), here or on a cluster; one the store holds is read back.
# `plan_cells` gives them unfitted, for `run --plan`.

# %%
#| export
def plan_cells(params, present, folds=None) -> dict:
    "The grid's cells of cross-validating the run's models over `folds` (None: every fold present)."
    return grid_cells(t for ts in cv_tasks(params, study_models(params), cv_plan(present, folds)).values() for t in ts)

# %% tags=["checks"]
use_test_values(globals(), epochs=1, resnet_epochs=1, folds=[1, 2, 3], weights="random", finetune_epochs=1,
                models=["logreg", "small_cnn", "probe", "probe_finetune"])
# every fold takes every role
params = replace(study_params(globals()), train_folds=None, val_fold=None, test_fold=None)
parse_scheduler(params.scheduler)     # a bad scheduler fails here, before any work
folds = None if folds is None else as_folds("folds", folds)
models = study_models(params)
reference = as_name("reference", reference, list_models())

# %% [markdown]
# ## Running it

# %%
run_path = make_run_dir(params.run_dir)
plan = cv_plan(present_folds(params), folds)
tasks = cv_tasks(params, models, plan)
records, inputs, trainings = fit_grid(params, grid_cells(t for ts in tasks.values() for t in ts), "09 folds x models")
cv = pd.DataFrame([dict(model=m, test_fold=t.test_fold, val_fold=t.val_fold, train_folds=list(t.train_folds),
                        **fold_entry(t, records[t.key], inputs)) for m, ts in tasks.items() for t in ts])
reused = sum(t["status"] == "reused" for t in trainings)
print(f"{len(plan)} folds x {len(models)} models; trainings: {len(trainings) - reused} trained, {reused} read back")
model_list = models
cv[["model", "test_fold", "val_fold", "train_folds", "n_train", "n_test", "val_accuracy", "test_accuracy", "macro_f1",
    "best_epoch", "seconds"]].round(3)

# %%
compared = len(model_list) > 1 and reference in model_list
# per model: mean and std over folds and, when compared, the differences to the reference paired on test folds
by_model = summarise(cv, baseline=reference if compared else model_list[0], by="model", pair="test_fold")
per_fold = cv.pivot(index="test_fold", columns="model", values="test_accuracy")[model_list]
fold_diffs = per_fold.sub(per_fold[reference], axis=0) if compared else None
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
ax = per_fold.plot.bar(figsize=(12, 4.5), rot=0, color=colors[:len(model_list)], width=0.8)
for m, color in zip(model_list, colors):
    ax.axhline(by_model.loc[m, "test_mean"], color=color, ls="--", lw=1,
               label=f"{m} mean {by_model.loc[m, 'test_mean']:.3f} (std {by_model.loc[m, 'test_std']:.3f})")
ax.set(title=f"Test accuracy per fold ({len(plan)}-fold cross-validation)", xlabel="test fold", ylabel="accuracy",
       ylim=(0, 1))
ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.show()
table = per_fold.T.assign(mean=per_fold.mean(), sd=per_fold.std(ddof=1))
table.map("{:.1%}".format).rename_axis("model \\ test fold", axis=1)

# %%
per_class = {m: pd.DataFrame(g["per_class_accuracy"].tolist()).mean().sort_values()
             for m, g in cv.groupby("model", sort=False)}

def _cv_sentence(m) -> str:
    mean, std, classes = by_model.loc[m, "test_mean"], by_model.loc[m, "test_std"], per_class[m]
    return (f"**{len(plan)}-fold cross-validation of {m}: {mean:.1%} +- {std:.1%}** (mean +- standard deviation "
            f"over test folds; range {per_fold[m].min():.1%} to {per_fold[m].max():.1%}). Hardest class on average: "
            f"{classes.index[0]} ({classes.iloc[0]:.0%}); easiest: {classes.index[-1]} ({classes.iloc[-1]:.0%}).")

caveat = "" if len(plan) == 10 else (f" These are {len(plan)} folds, not the official ten: "
                                     "compare with published 10-fold figures only loosely.")
Markdown(" ".join(_cv_sentence(m) for m in model_list) + caveat)

# %% [markdown]
# ## Model against model, fold by fold
#
# Folds differ far more than models do, so each model is compared with the reference by its paired differences on the
# same test folds; with few folds the t-test has little power, and how many folds each model wins says as much.

# %%
if compared:
    lines = []
    for m in (m for m in model_list if m != reference):
        r = by_model.loc[m]
        per_fold_text = ", ".join(f"{f}: {100 * v:+.1f}" for f, v in fold_diffs[m].items())
        p_text = f", paired t-test p = {r['paired_t_p']:.2f}." if not np.isnan(r["paired_t_p"]) else "."
        lines.append(f"- **{m} - {reference}: {100 * r['test_diff_mean']:+.1f} points** on average over "
                     f"{len(plan)} test folds (per fold: {per_fold_text}); "
                     f"better on {int(r['test_folds_better'])} of {len(plan)} folds"
                     + p_text)
    display(by_model.round(3))
    display(Markdown("\n".join(lines)))
else:
    print(f"no paired comparison: it needs several models, {reference!r} among them (models = {model_list})")

# %%
summary = dict(folds=len(plan), models={m: dict(mean_test_accuracy=by_model.loc[m, "test_mean"],
                                                std_test_accuracy=by_model.loc[m, "test_std"],
                                                mean_macro_f1=float(cv[cv["model"] == m]["macro_f1"].mean()))
                                        for m in model_list})
if compared:
    summary["differences"] = {m: dict(reference=reference,
                                      mean_test_difference=float(by_model.loc[m, "test_diff_mean"]),
                                      folds_better=int(by_model.loc[m, "test_folds_better"]),
                                      paired_t_p=float(by_model.loc[m, "paired_t_p"]),
                                      per_fold={f"fold{f}": float(v) for f, v in fold_diffs[m].items()})
                              for m in model_list if m != reference}
FOLD_FIGURES = ("val_accuracy", "test_accuracy", "macro_f1", "per_class_accuracy", "n_train", "n_val", "n_test",
                "seconds", "val_fold", "train_folds", "best_epoch", "params", "n_features")
write_results(run_path, "09_cross_validation",
              {f"{r.model}/fold{int(r.test_fold)}": {k: r[k] for k in FOLD_FIGURES} for _, r in cv.iterrows()},
              dataset=params.dataset, models=model_list, summary=summary, trainings=trainings,
              **inputs[next(iter(inputs))].data.clip_counts())

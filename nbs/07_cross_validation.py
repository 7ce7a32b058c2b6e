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
#| default_exp crossval

# %% [markdown]
# # Cross-validation over the official folds
#
# > The figure UrbanSound8K results are reported with: every fold present is the test fold once, with its own validation fold, and the mean and spread over folds.

# %% [markdown]
# One test fold is one draw: folds differ in recording conditions and class mix, and single-fold
# accuracies of the same model spread over ten points or more. The dataset's authors therefore
# ask for cross-validation over the predefined folds. For each fold *k* present: test on *k*,
# choose the epoch on the next fold (cyclically), train on all the others. Features come from
# the cache, computed once for all folds; each fold's result is recorded as soon as it is done,
# so an interrupted run resumes. On the full dataset this is the official 10-fold figure; on a
# subset with fewer folds it is the same protocol over the folds there are.

# %%
#| export
from __future__ import annotations

import json, time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from urbansound_nb.core import save_json
from urbansound_nb.baselines import result_entry
from urbansound_nb.features import StudyData
from urbansound_nb.train import fit, predict_logits

# %%
import os
import matplotlib.pyplot as plt
from IPython.display import Markdown
from urbansound_nb.core import is_synthetic, validate_params, write_results, make_run_dir
from urbansound_nb.features import study_data

# %% tags=["parameters"]
dataset = None          # hub id, local folder or "synthetic"; None: $URBANSOUND_DATASET, else the hub id
train_folds = None      # unused: every fold takes every role in turn
val_fold = None         # unused
test_fold = None        # unused
sample_rate = 22050
clip_seconds = 4.0
seed = 0
max_items = None
epochs = 12             # per fold (early stopping may end sooner)
run_dir = "../runs/notebook"
cache_dir = "../cache"
model = "resnet"        # 'resnet' or 'small_cnn', trained with its recipe from notebook 04
folds = None            # folds to cross-validate; None: every fold present

# %%
#| hide
if os.environ.get("IN_TEST"):
    import tempfile; dataset, run_dir, cache_dir, epochs, folds = "synthetic", tempfile.mkdtemp(), tempfile.mkdtemp(), 1, [1, 2, 3]

# %% [markdown]
# ## The plan

# %%
#| export
def cv_plan(present, folds=None) -> list[dict]:
    "For each fold to test: its validation fold (the next present fold, cyclically) and training folds (all others)."
    present = sorted(set(int(f) for f in present))
    folds = present if folds is None else sorted(int(f) for f in folds)
    missing = [f for f in folds if f not in present]
    if missing: raise ValueError(f"fold(s) {missing} not in the dataset, which has folds {present}")
    if len(present) < 3: raise ValueError(f"cross-validation needs at least 3 folds (train, validation, test); the dataset has {present}")
    return [dict(test_fold=k, val_fold=present[(present.index(k) + 1) % len(present)],
                 train_folds=[f for f in present if f not in (k, present[(present.index(k) + 1) % len(present)])]) for k in folds]

# %%
from fastcore.test import test_eq, test_fail
test_eq(cv_plan([1, 2, 3]), [dict(test_fold=1, val_fold=2, train_folds=[3]), dict(test_fold=2, val_fold=3, train_folds=[1]),
                              dict(test_fold=3, val_fold=1, train_folds=[2])])
test_eq(len(cv_plan(range(1, 11))), 10); test_eq(cv_plan(range(1, 11))[9], dict(test_fold=10, val_fold=1, train_folds=list(range(2, 10))))
test_fail(lambda: cv_plan([1, 2]), contains="at least 3 folds")

# %%
#| export
def cross_validate(plan, data: StudyData, model: str, epochs: int, seed: int = 0, record_path=None) -> pd.DataFrame:
    "Train and test `model` once per entry of `plan`; each fold's result is saved to `record_path` as it finishes."
    done = json.loads(Path(record_path).read_text()) if record_path and Path(record_path).exists() else {}
    y, fold_of = data.logmels.labels.numpy(), data.meta["fold"].values
    for p in plan:
        key = f"fold{p['test_fold']}/{model}/{epochs}/seed{seed}"
        if key in done: continue
        tr, va, te = (np.flatnonzero(np.isin(fold_of, f)) for f in (p["train_folds"], [p["val_fold"]], [p["test_fold"]]))
        # this split's folds; fit takes its band statistics from these training folds only
        t0, split_data = time.time(), replace(data, train=tr, val=va, test=te)
        m, h = fit(model, split_data, epochs, seed, progress=False)
        pv, pt = (predict_logits(m, data.logmels, idx, data.n_frames, multicrop=True).argmax(1).numpy() for idx in (va, te))
        done[key] = dict(**p, **result_entry(y[va], pv, y[te], pt, data.split.classes, len(tr), time.time() - t0, best_epoch=h["best"]["epoch"]))
        if record_path: save_json(done, record_path)
        print(f"  test fold {p['test_fold']:2d} (validation {p['val_fold']}): test accuracy {done[key]['test_accuracy']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return pd.DataFrame([done[f"fold{p['test_fold']}/{model}/{epochs}/seed{seed}"] for p in plan])

# %% [markdown]
# ## Running it

# %%
params = validate_params(dataset, None, None, None, sample_rate, clip_seconds, seed, max_items, epochs, run_dir, cache_dir)
run_path = make_run_dir(params.run_dir)
data = study_data(params)   # the default split is unused here: cv_plan gives every fold its turn
ds, meta, stats = data.ds, data.meta, data.cache_stats
plan = cv_plan(meta["fold"].unique(), folds)
print(f"{model}, {params.epochs} epochs per fold, {len(plan)} folds", "(SYNTHETIC data)" if is_synthetic(ds) else "",
      f"| features: {stats['computed']} computed, {stats['reused']} from the cache")
pd.DataFrame(plan)

# %%
cv = cross_validate(plan, data, model, params.epochs, params.seed, run_path/"results"/"07_cross_validation.folds.json")
cv[["test_fold", "val_fold", "train_folds", "n_train", "n_test", "val_accuracy", "test_accuracy", "macro_f1", "best_epoch", "seconds"]].round(3)

# %%
mean_acc, std_acc = cv["test_accuracy"].mean(), cv["test_accuracy"].std(ddof=1)
ax = cv.plot.bar(x="test_fold", y="test_accuracy", figsize=(9, 4), legend=False, color="tab:blue", rot=0)
ax.axhline(mean_acc, color="black", ls="--", lw=1, label=f"mean {mean_acc:.3f}")
ax.axhspan(mean_acc - std_acc, mean_acc + std_acc, color="gray", alpha=0.2, label=f"+- 1 std ({std_acc:.3f})")
ax.set(title=f"{model}: test accuracy per fold ({len(cv)}-fold cross-validation)", xlabel="test fold", ylabel="accuracy", ylim=(0, 1)); ax.legend()
plt.show()

# %%
per_class = pd.DataFrame(cv["per_class_accuracy"].tolist()).mean().sort_values()
Markdown(f"**{len(cv)}-fold cross-validation of {model}: {mean_acc:.1%} +- {std_acc:.1%}** (mean +- standard deviation over test folds; "
         f"range {cv['test_accuracy'].min():.1%} to {cv['test_accuracy'].max():.1%}). "
         f"Hardest class on average: {per_class.index[0]} ({per_class.iloc[0]:.0%}); easiest: {per_class.index[-1]} ({per_class.iloc[-1]:.0%})."
         + ("" if len(cv) == 10 else f" These are {len(cv)} folds, not the official ten: compare with published 10-fold figures only loosely."))

# %%
write_results(run_path, "07_cross_validation", {f"fold{int(r.test_fold)}": {k: r[k] for k in
              ("val_accuracy", "test_accuracy", "macro_f1", "per_class_accuracy", "n_train", "n_val", "n_test", "seconds", "val_fold", "train_folds", "best_epoch")}
              for _, r in cv.iterrows()}, dataset=params.dataset, model=model, epochs=params.epochs,
              summary=dict(folds=len(cv), mean_test_accuracy=mean_acc, std_test_accuracy=std_acc, mean_macro_f1=float(cv["macro_f1"].mean())))

# %%
#| default_exp baselines

# %% [markdown]
# # Baselines: chance, MFCC statistics and classical models
#
# > The floor every network must clear: chance, and MFCC statistics with logistic regression or an RBF SVM.

# %% [markdown]
# The starting notebook fitted a logistic regression to MFCC means and deviations of at most 2,000 clips. Here: every
# training clip, `n_mfcc` MFCCs (40) with `deltas`, statistics over real frames only (notebook 02), settings chosen on
# validation rotated over the non-test folds (notebook 03b), the test fold scored once per model; an RBF SVM on the
# same features, and the majority class as the floor. They are entries of the registry (notebook 05b); this chapter
# fits the run's models of the families **chance** and **engineered features** (`-p models` narrows them).

# %%
#| export
FAMILIES = ("chance", "engineered features")   # the families this chapter presents

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from fastcore.test import test_eq
from sklearn.metrics import classification_report
from urbansound_nb.audio import is_synthetic
from urbansound_nb.core import make_run_dir, seed_everything, write_results
from urbansound_nb.metrics import confusion_pair
from urbansound_nb.params import study_params, use_test_values
from urbansound_nb.registry import family_fits, study_models

# %% tags=["parameters"]
# the shared parameters are notebook 00a's: the models (`models`), the features (`n_mfcc`, `deltas`), the folds,
# `seed`, `max_items`, `train_fraction`, ...; set any of them here to override

# %% tags=["checks"]
use_test_values(globals())
params = study_params(globals())
models = study_models(params, FAMILIES)

# %% [markdown]
# ## The fits
#
# Each model on each rotation of the non-test folds (the study's split first), as cells of one grid, each fit kept in
# the store (notebook 04e) so a rerun reads it back. Only the study's split scores the test fold.

# %%
seed_everything(params.seed)
run_path = make_run_dir(params.run_dir)
fits = family_fits(params, FAMILIES, run_path, desc="03 models x rotations")
data = fits.data(models[0])
print(f"{len(data.ds):,} clips", "(SYNTHETIC)" if is_synthetic(data.ds) else "",
      f"| features: {data.cache_stats['computed']} computed, {data.cache_stats['reused']} from the cache")
rotations = [dict(train_folds=list(t.train_folds), val_fold=t.val_fold) for t in fits.tasks[models[0]]]
pd.DataFrame(rotations).assign(n_train=[fits.records[t.key]["n_train"] for t in fits.tasks[models[0]]],
                               n_val=[fits.records[t.key]["n_val"] for t in fits.tasks[models[0]]])

# %% [markdown]
# ## Settings chosen on validation
#
# Each setting was fitted on every rotation and scored on its validation fold; the best mean (`val_mean`) won.

# %%
for name in models:
    grid = pd.DataFrame(fits.record(name)["validation_grid"])
    if len(grid) > 1: print(f"{name}: chosen {fits.record(name)['settings']}\n{grid.round(4).to_string()}\n")

# %% [markdown]
# ## Results
#
# `val_mean` (spread `val_sd`) chose each model's setting; `val_accuracy` is the study's own validation fold; test
# accuracy was computed once per model.

# %%
results = fits.results
summary = pd.DataFrame(results).T[["val_accuracy", "val_mean", "val_sd", "test_accuracy", "macro_f1", "n_train",
                                   "seconds"]]
split = data.split
ax = summary[["val_mean", "test_accuracy"]].astype(float).plot.bar(figsize=(8, 4), rot=0,
                                                                   color=["tab:gray", "tab:blue"])
ax.set(title=f"Baselines: train folds {split.train_folds}, validation {split.val_fold}, test {split.test_fold}",
       xlabel="model", ylabel="accuracy", ylim=(0, 1))
plt.show()
summary

# %%
best_name = max(models, key=lambda k: results[k]["val_mean"])
labels, test_idx = data.logmels.labels.numpy(), fits.tasks[best_name][0].indices(data.clips)[2]
pred_te = np.asarray(fits.record(best_name)["test_proba"]).argmax(1)
test_eq(float((pred_te == labels[test_idx]).mean()), results[best_name]["test_accuracy"])
print(f"Test-fold report of the model with the best mean validation accuracy: {best_name}\n")
print(classification_report(labels[test_idx], pred_te, labels=range(len(split.classes)), target_names=split.classes,
                            zero_division=0))

# %%
confusion_pair(labels[test_idx], pred_te, split.classes, f"{best_name}, test fold {split.test_fold}")
plt.show()

# %%
pd.DataFrame({k: results[k]["per_class_accuracy"] for k in models}).round(3).rename_axis("class")

# %%
said = lambda m: f"{results[m]['description']} {results[m]['test_accuracy']:.1%}"
lines = [f"On test fold {split.test_fold}: " + ", ".join(said(m) for m in models) + "."]
if {"logreg", "svm_rbf"} <= set(models):
    gain = results["svm_rbf"]["test_accuracy"] - results["logreg"]["test_accuracy"]
    lines.append(f"The SVM scores {100 * gain:+.1f} points against logistic regression on the same features.")
print(" ".join(lines))

# %%
write_results(run_path, "03_baselines", results, dataset=params.dataset, best_model=best_name, families=FAMILIES,
              features=dict(n_mfcc=params.n_mfcc, deltas=params.deltas,
                            n_features=fits.record(models[-1]).get("n_features")),
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold),
              rotations=rotations, trainings=fits.trainings, **data.clip_counts())

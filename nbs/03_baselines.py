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
#| default_exp baselines

# %% [markdown]
# # Baselines: chance, MFCC statistics and classical models
#
# > The floor every network must clear: chance, and MFCC statistics with logistic regression or an RBF SVM.

# %% [markdown]
# The starting notebook's classical baseline summarised each clip by the mean and standard
# deviation of its MFCCs and fitted a logistic regression, on at most 2,000 training clips.
# Here the same idea is done without shortcuts: every clip of the training folds, 40 MFCCs with
# their deltas, statistics over the clip's real frames only (padding would leak its duration),
# and hyper-parameters chosen on the validation fold. The test fold is scored once per model,
# after the choice. A stronger classical model, an RBF support-vector machine, uses the same
# features.
#
# The evaluation helpers (accuracy, macro F1, per-class accuracy, confusion matrices, the
# results entry) are notebook 03a's.

# %%
#| export
from __future__ import annotations

import numpy as np
import torch
import torchaudio
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from urbansound_nb.batches import LogMelSet
from urbansound_nb.metrics import result_entry

# %%
import matplotlib.pyplot as plt
import pandas as pd
from fastcore.test import test_eq, test_close
from sklearn.metrics import classification_report
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import study_data
from urbansound_nb.core import seed_everything, write_results
from urbansound_nb.features import FeatureParams
from urbansound_nb.metrics import confusion_pair
from urbansound_nb.params import as_bool, as_int, study_params, use_test_values
from urbansound_nb.selection import rotated_estimate, rotation_indices, select_on_validation, validation_rotations

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
n_mfcc = 40             # MFCC coefficients
deltas = True           # add statistics of the MFCC deltas

# %% [markdown]
# ## The data and its cached features
#
# Log-mels come from the cache of notebook 02 (computed now if this is the first run with
# these parameters); MFCCs are derived from them.

# %% tags=["checks"]
use_test_values(globals())
params = study_params(globals())
# the cepstrum of n_mels bands has at most n_mels coefficients
n_mfcc = as_int("n_mfcc", n_mfcc, 1, params.n_mels)
deltas = as_bool("deltas", deltas)

# %%
seed_everything(params.seed)
data = study_data(params)    # the front end of the run's parameters (n_mels, n_fft, hop_length)
ds, split, meta, features, allset, stats = data.ds, data.split, data.meta, data.fp, data.logmels, data.cache_stats
print(f"{len(ds):,} clips", "(SYNTHETIC)" if is_synthetic(ds) else "",
      f"| features: {stats['computed']} computed, {stats['reused']} from the cache")
print(f"train folds {split.train_folds} ({len(split.train)} clips), "
      f"validation fold {split.val_fold} ({len(split.val)}), "
      f"test fold {split.test_fold} ({len(split.test)})")

# %% [markdown]
# ## MFCCs from the cached log-mels
#
# MFCCs are the discrete cosine transform of the log-mel bands; computing them from the cached
# log-mels costs a matrix product instead of a second pass over the audio.

# %%
#| export
def mfcc_from_logmel(logmel: torch.Tensor, n_mfcc: int = 40) -> torch.Tensor:
    "MFCCs [..., n_mfcc, frames] from log-mels in dB [..., n_mels, frames] (orthonormal DCT-II)."
    dct = torchaudio.functional.create_dct(n_mfcc, logmel.shape[-2], norm="ortho")  # [n_mels, n_mfcc]
    return (logmel.transpose(-1, -2) @ dct).transpose(-1, -2)

# %%
from urbansound_nb.features import LogMel
wave = torch.randn(2, 22050) * 0.1
mfcc_reference = torchaudio.transforms.MFCC(22050, n_mfcc=20, melkwargs=dict(n_fft=1024, hop_length=512, n_mels=64))
# torchaudio's MFCC, without the second pass
test_close(mfcc_from_logmel(LogMel(FeatureParams())(wave), 20), mfcc_reference(wave), eps=1e-2)

# %% [markdown]
# ## MFCC statistics
#
# Per clip: the mean and standard deviation over time of each MFCC (and of its delta, the
# local slope), computed over the clip's real frames. With 40 coefficients and deltas that is
# 160 numbers per clip.

# %%
#| export
@torch.no_grad()
def mfcc_stats(ls: LogMelSet, n_mfcc: int = 40, deltas: bool = True, batch: int = 256) -> np.ndarray:
    "Per-clip mean and std of MFCCs (and deltas) over each clip's unpadded frames: [clips, 2*n_mfcc*(1+deltas)]."
    out = []
    for start in range(0, len(ls), batch):
        d, L = ls.data[start:start + batch].float(), ls.lengths[start:start + batch]
        mfcc = mfcc_from_logmel(d, n_mfcc)
        feats = [mfcc, torchaudio.functional.compute_deltas(mfcc)] if deltas else [mfcc]
        mask = (torch.arange(d.shape[-1])[None, :] < L[:, None])[:, None, :].float()
        n, stats = mask.sum(-1).clamp_min(1), []
        for f in feats:
            mean = (f * mask).sum(-1) / n
            stats += [mean, (((f - mean[..., None]) ** 2) * mask).sum(-1).div(n).sqrt()]
        out.append(torch.cat(stats, 1))
    return torch.cat(out).numpy()

# %%
toy = LogMelSet([np.random.randn(n, 8).astype(np.float16) for n in (3, 10)])
s = mfcc_stats(toy, n_mfcc=4, deltas=True)
test_eq(s.shape, (2, 16))
test_close(s[0, :4], mfcc_from_logmel(toy.data[0:1, :, :3].float(), 4)[0].mean(-1).numpy(), eps=1e-4)  # padding ignored

# %%
X = mfcc_stats(allset, n_mfcc, deltas)
train_idx, val_idx, test_idx = data.train, data.val, data.test
labels = meta["classID"].values
print(f"features: {X.shape[1]} per clip; train {len(train_idx)}, validation {len(val_idx)}, test {len(test_idx)}")
# every choice below is made on validation rotated over the non-test folds (notebook 03b), the study's split first
rotations = validation_rotations(split.train_folds, split.val_fold, params.selection_folds)
splits = rotation_indices(meta["fold"].values, rotations)
pd.DataFrame(rotations).assign(n_train=[len(t) for t, _ in splits], n_val=[len(v) for _, v in splits])

# %% [markdown]
# ## Chance baselines
#
# scikit-learn's `DummyClassifier` gives the floor: always the training folds' most frequent
# class, and guesses drawn in proportion to the training classes.

# %%
#| export
def chance_entries(y, tr, va, te, classes, seed: int = 0) -> dict:
    "Results entries of the majority class and of stratified random guessing, fitted on the training labels."
    out = {}
    for name, strategy in (("majority", "most_frequent"), ("random", "stratified")):
        dummy = DummyClassifier(strategy=strategy, random_state=seed).fit(np.zeros((len(tr), 1)), y[tr])
        guess = lambda idx: dummy.predict(np.zeros((len(idx), 1)))
        note = (f"always {classes[int(dummy.classes_[dummy.class_prior_.argmax()])]}" if strategy == "most_frequent"
                else "guesses drawn from the training class frequencies")
        out[name] = result_entry(y[va], guess(va), y[te], guess(te), classes, len(tr), 0.0, note=note)
    return out

# %%
_y = np.array([0, 0, 0, 1, 1, 2])
_chance = chance_entries(_y, np.arange(6), np.arange(6), np.arange(3), ["a", "b", "c"])
test_eq(_chance["majority"]["test_accuracy"], 1.0)
test_eq(_chance["majority"]["note"], "always a")

# %%
results = chance_entries(labels, train_idx, val_idx, test_idx, split.classes, params.seed)
for name in results:   # the same guess, fitted and scored on every rotation
    accuracies = [chance_entries(labels, t, v, test_idx, split.classes, params.seed)[name]["val_accuracy"]
                  for t, v in splits]
    results[name].update(rotated_estimate(accuracies, [len(v) for _, v in splits]))
pd.DataFrame(results).T[["val_accuracy", "val_mean", "test_accuracy", "macro_f1"]]

# %% [markdown]
# ## Model selection on validation data
#
# Each model's setting is chosen by `select_on_validation` (notebook 03b): one model per
# candidate setting is fitted on each rotation's training folds and scored on its validation
# fold; the setting with the best mean wins, and only the model fitted on the study's own split
# scores the test fold, once.

# %%
#| export
def logistic_regression(C: float = 1.0):
    "MFCC statistics -> standard scaling -> multinomial logistic regression."
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))

def rbf_svm(C: float = 10.0, gamma="scale"):
    "MFCC statistics -> standard scaling -> RBF support-vector machine."
    return make_pipeline(StandardScaler(), SVC(C=C, gamma=gamma))

LOGREG_GRID = [dict(C=c) for c in (0.01, 0.1, 1.0, 10.0)]   # the settings chosen among on validation

def svm_grid(n_features: int) -> list[dict]:
    "The SVM's settings: C, and gamma around scikit-learn's 'scale' for standardised features (1 / n_features)."
    return [dict(C=c, gamma=g / n_features) for c in (1.0, 10.0, 100.0) for g in (0.25, 1.0, 4.0)]

# %%
results["logreg"], (logreg, *_) = select_on_validation(logistic_regression, LOGREG_GRID, X, labels, splits, test_idx,
                                                  split.classes)
pd.DataFrame(results["logreg"]["validation_grid"])

# %%
results["svm_rbf"], (svm, *_) = select_on_validation(rbf_svm, svm_grid(X.shape[1]), X, labels, splits, test_idx,
                                               split.classes)
pd.DataFrame(results["svm_rbf"]["validation_grid"]).round(4)

# %% [markdown]
# ## Results
#
# Validation accuracy, averaged over the rotations (`val_mean`, spread `val_sd`), chose each model's setting;
# `val_accuracy` is the study's own validation fold. Test accuracy was computed once per model.

# %%
summary = pd.DataFrame(results).T[["val_accuracy", "val_mean", "val_sd", "test_accuracy", "macro_f1", "n_train",
                                   "seconds"]]
summary

# %%
ax = summary[["val_accuracy", "test_accuracy"]].plot.bar(figsize=(8, 4), rot=0, color=["tab:gray", "tab:blue"])
ax.set(title=f"Baselines: train folds {split.train_folds}, validation {split.val_fold}, test {split.test_fold}",
       xlabel="model", ylabel="accuracy")
ax.set_ylim(0, 1)
plt.show()

# %%
best_name = max(("logreg", "svm_rbf"), key=lambda k: results[k]["val_mean"])
best_model = {"logreg": logreg, "svm_rbf": svm}[best_name]
pred_te = best_model.predict(X[test_idx])
print(f"Test-fold report of the model with the best mean validation accuracy: {best_name}\n")
print(classification_report(labels[test_idx], pred_te, labels=range(len(split.classes)), target_names=split.classes,
                            zero_division=0))

# %%
confusion_pair(labels[test_idx], pred_te, split.classes, f"{best_name}, test fold {split.test_fold}")
plt.show()

# %%
pd.DataFrame({k: results[k]["per_class_accuracy"] for k in ("logreg", "svm_rbf")}).round(3).rename_axis("class")

# %%
lr_acc, svm_acc = results["logreg"]["test_accuracy"], results["svm_rbf"]["test_accuracy"]
print(f"On test fold {split.test_fold}: logistic regression {lr_acc:.1%}, RBF SVM {svm_acc:.1%} "
      f"({(svm_acc - lr_acc) * 100:+.1f} points); majority class {results['majority']['test_accuracy']:.1%}.")

# %%
write_results(params.run_dir, "03_baselines", results, dataset=params.dataset, best_model=best_name,
              features=dict(feature_key=features.key, n_mfcc=n_mfcc, deltas=deltas, n_features=int(X.shape[1])),
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold),
              rotations=rotations, **data.clip_counts())

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
# > The floor every network must clear: majority and random guesses, MFCC statistics with logistic regression, and an RBF SVM, chosen on the validation fold and tested once.

# %% [markdown]
# The starting notebook's classical baseline summarised each clip by the mean and standard
# deviation of its MFCCs and fitted a logistic regression, on at most 2,000 training clips.
# Here the same idea is done without shortcuts: every clip of the training folds, 40 MFCCs with
# their deltas, statistics over the clip's real frames only (padding would leak its duration),
# and hyper-parameters chosen on the validation fold. The test fold is scored once per model,
# after the choice. A stronger classical model, an RBF support-vector machine, uses the same
# features.
#
# The evaluation helpers defined first (metrics, per-class accuracy, confusion matrices, the
# results entry) are used by every later notebook.

# %%
#| export
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from urbansound_nb.features import LogMelSet, mfcc_from_logmel

# %%
import os
import pandas as pd
from sklearn.metrics import classification_report
from urbansound_nb.core import as_bool, as_int, is_synthetic, seed_everything, validate_params, write_results
from urbansound_nb.features import FeatureParams, study_data

# %% tags=["parameters"]
dataset = None          # hub id, local folder or "synthetic"; None: $URBANSOUND_DATASET, else the hub id
train_folds = None
val_fold = None
test_fold = None
sample_rate = 22050
clip_seconds = 4.0
seed = 0
max_items = None
epochs = 30             # unused here; shared by every notebook
run_dir = "../runs/notebook"
cache_dir = "../cache"
n_mels = 64
n_fft = 1024
hop_length = 512
n_mfcc = 40             # MFCC coefficients
deltas = True           # add statistics of the MFCC deltas

# %%
#| hide
if os.environ.get("IN_TEST"):
    import tempfile; dataset, run_dir, cache_dir = "synthetic", tempfile.mkdtemp(), tempfile.mkdtemp()

# %% [markdown]
# ## Evaluation helpers

# %%
#| export
def per_class_accuracy(y_true, y_pred, classes) -> dict:
    "Recall of each class (the share of its clips predicted right), by class name."
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {c: float((y_pred[y_true == i] == i).mean()) if (y_true == i).any() else float("nan") for i, c in enumerate(classes)}

def evaluate(y_true, y_pred, classes) -> dict:
    "Accuracy, macro F1 and per-class accuracy of predictions."
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return dict(accuracy=float((y_true == y_pred).mean()),
                macro_f1=float(f1_score(y_true, y_pred, labels=range(len(classes)), average="macro", zero_division=0)),
                per_class_accuracy=per_class_accuracy(y_true, y_pred, classes))

# %%
#| export
def result_entry(val_true, val_pred, test_true, test_pred, classes, n_train: int, seconds: float, **extra) -> dict:
    "One entry of a results JSON: validation and test accuracy, test macro F1 and per-class accuracy, sizes, time."
    val, test = evaluate(val_true, val_pred, classes), evaluate(test_true, test_pred, classes)
    return dict(val_accuracy=val["accuracy"], test_accuracy=test["accuracy"], macro_f1=test["macro_f1"],
                val_macro_f1=val["macro_f1"], per_class_accuracy=test["per_class_accuracy"],
                n_train=int(n_train), n_val=len(val_true), n_test=len(test_true), seconds=round(float(seconds), 2), **extra)

# %%
from fastcore.test import test_eq, test_close
e = evaluate([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
test_eq(e["accuracy"], 0.75); test_eq(e["per_class_accuracy"], {"a": 0.5, "b": 1.0})
r = result_entry([0, 1], [0, 1], [0, 1], [1, 1], ["a", "b"], 10, 1.234)
test_eq((r["val_accuracy"], r["test_accuracy"], r["n_test"], r["seconds"]), (1.0, 0.5, 2, 1.23))

# %%
#| export
def plot_confusion(y_true, y_pred, classes, title: str = "", normalize: bool = False, ax=None):
    "A labelled confusion matrix: counts, or rows normalised to the share of each true class."
    cm = confusion_matrix(y_true, y_pred, labels=range(len(classes))).astype(float)
    if normalize: cm = cm / cm.sum(1, keepdims=True).clip(min=1)
    if ax is None: _, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]: ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{cm[i, j]:.0f}", ha="center", va="center",
                                 fontsize=7, color="white" if cm[i, j] > (0.5 if normalize else cm.max() / 2) else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right"); ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or ("Confusion matrix" + (" (row-normalised)" if normalize else " (clips)")))
    plt.colorbar(im, ax=ax, label="share of the true class" if normalize else "clips", shrink=0.8)
    return ax

# %%
#| export
def confusion_pair(y_true, y_pred, classes, title: str):
    "Counts and row-normalised confusion matrices side by side."
    fig, axes = plt.subplots(1, 2, figsize=(16, 6.5), constrained_layout=True)
    plot_confusion(y_true, y_pred, classes, f"{title}: clips", ax=axes[0])
    plot_confusion(y_true, y_pred, classes, f"{title}: share of each true class", normalize=True, ax=axes[1])
    return fig

# %% [markdown]
# ## The data and its cached features
#
# Log-mels come from the cache of notebook 02 (computed now if this is the first run with
# these parameters); MFCCs are derived from them.

# %%
params = validate_params(dataset, train_folds, val_fold, test_fold, sample_rate, clip_seconds, seed, max_items,
                         epochs, run_dir, cache_dir)
n_mfcc = as_int("n_mfcc", n_mfcc, 1, as_int("n_mels", n_mels, 1))   # the cepstrum of n_mels bands has at most n_mels coefficients
deltas = as_bool("deltas", deltas)
seed_everything(params.seed)
data = study_data(params, FeatureParams(sample_rate=params.sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length))
ds, split, meta, fp, allset, stats = data.ds, data.split, data.meta, data.fp, data.logmels, data.cache_stats
print(f"{len(ds):,} clips", "(SYNTHETIC)" if is_synthetic(ds) else "", f"| features: {stats['computed']} computed, {stats['reused']} from the cache")
print(f"train folds {split.train_folds} ({len(split.train)} clips), validation fold {split.val_fold} ({len(split.val)}), test fold {split.test_fold} ({len(split.test)})")

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
tr, va, te = data.train, data.val, data.test
y = meta["classID"].values
print(f"features: {X.shape[1]} per clip; train {len(tr)}, validation {len(va)}, test {len(te)}")

# %% [markdown]
# ## Chance baselines

# %%
results = {}
rng = np.random.default_rng(params.seed)
majority = np.bincount(y[tr], minlength=len(split.classes)).argmax()
p_train = np.bincount(y[tr], minlength=len(split.classes)) / len(tr)
results["majority"] = result_entry(y[va], np.full(len(va), majority), y[te], np.full(len(te), majority), split.classes, len(tr), 0.0,
                                   note=f"always {split.classes[majority]}")
results["random"] = result_entry(y[va], rng.choice(len(p_train), len(va), p=p_train), y[te], rng.choice(len(p_train), len(te), p=p_train),
                                 split.classes, len(tr), 0.0, note="guesses drawn from the training class frequencies")
pd.DataFrame(results).T[["val_accuracy", "test_accuracy", "macro_f1"]]

# %% [markdown]
# ## Model selection on the validation fold
#
# `select_on_validation` fits one model per candidate setting on the training folds, scores
# each on the validation fold, keeps the best, and only then scores the test fold, once.

# %%
#| export
def select_on_validation(make_model, grid: list[dict], X, y, tr, va, te, classes) -> tuple[dict, object]:
    "Fit `make_model(**g)` for each g in `grid` on `tr`, choose by accuracy on `va`, then score `te` once."
    t0, scores, best = time.time(), [], None
    for g in grid:
        m = make_model(**g).fit(X[tr], y[tr])
        acc = float((m.predict(X[va]) == y[va]).mean()); scores.append(dict(**g, val_accuracy=acc))
        if best is None or acc > best[0]: best = (acc, g, m)
    _, g, model = best
    entry = result_entry(y[va], model.predict(X[va]), y[te], model.predict(X[te]), classes, len(tr), time.time() - t0,
                         chosen=g, validation_grid=scores)
    return entry, model

# %%
#| export
def logistic_regression(C: float = 1.0):
    "MFCC statistics -> standard scaling -> multinomial logistic regression."
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))

def rbf_svm(C: float = 10.0, gamma="scale"):
    "MFCC statistics -> standard scaling -> RBF support-vector machine."
    return make_pipeline(StandardScaler(), SVC(C=C, gamma=gamma))

# %%
results["logreg"], logreg = select_on_validation(logistic_regression, [dict(C=c) for c in (0.01, 0.1, 1.0, 10.0)],
                                                  X, y, tr, va, te, split.classes)
pd.DataFrame(results["logreg"]["validation_grid"])

# %%
n_feat = X.shape[1]
svm_grid = [dict(C=c, gamma=g / n_feat) for c in (1.0, 10.0, 100.0) for g in (0.25, 1.0, 4.0)]
results["svm_rbf"], svm = select_on_validation(rbf_svm, svm_grid, X, y, tr, va, te, split.classes)
pd.DataFrame(results["svm_rbf"]["validation_grid"]).round(4)

# %% [markdown]
# ## Results
#
# Validation accuracy chose each model's setting; test accuracy was computed once per model.

# %%
summary = pd.DataFrame(results).T[["val_accuracy", "test_accuracy", "macro_f1", "n_train", "seconds"]]
summary

# %%
ax = summary[["val_accuracy", "test_accuracy"]].plot.bar(figsize=(8, 4), rot=0, color=["tab:gray", "tab:blue"])
ax.set(title=f"Baselines: train folds {split.train_folds}, validation {split.val_fold}, test {split.test_fold}",
       xlabel="model", ylabel="accuracy"); ax.set_ylim(0, 1); plt.show()

# %%
best_name = max(("logreg", "svm_rbf"), key=lambda k: results[k]["val_accuracy"])
best_model = {"logreg": logreg, "svm_rbf": svm}[best_name]
pred_te = best_model.predict(X[te])
print(f"Test-fold report of the model with the best validation accuracy: {best_name}\n")
print(classification_report(y[te], pred_te, labels=range(len(split.classes)), target_names=split.classes, zero_division=0))

# %%
confusion_pair(y[te], pred_te, split.classes, f"{best_name}, test fold {split.test_fold}"); plt.show()

# %%
pd.DataFrame({k: results[k]["per_class_accuracy"] for k in ("logreg", "svm_rbf")}).round(3).rename_axis("class")

# %%
lr_acc, svm_acc = results["logreg"]["test_accuracy"], results["svm_rbf"]["test_accuracy"]
print(f"On test fold {split.test_fold}: logistic regression {lr_acc:.1%}, RBF SVM {svm_acc:.1%} "
      f"({(svm_acc - lr_acc) * 100:+.1f} points); majority class {results['majority']['test_accuracy']:.1%}.")

# %%
write_results(params.run_dir, "03_baselines", results, dataset=params.dataset, best_model=best_name,
              features=dict(feature_key=fp.key, n_mfcc=n_mfcc, deltas=deltas, n_features=int(X.shape[1])),
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold))

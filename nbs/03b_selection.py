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
#| default_exp selection

# %% [markdown]
# # Selection: validation rotated over the non-test folds, and a rule for ties
#
# > Every choice made on validation averaged over rotations of the validation fold, and ties settled by a stated rule.

# %% [markdown]
# One validation fold is one draw. On UrbanSound8K a fold holds 800-990 clips cut from a few
# dozen recordings, so two models a point or two apart swap places from one fold to the next,
# and a study that lets one fold decide can hand on the weaker model. So every choice the study
# makes (a regularisation, an epoch count, a model, a family, whether an ensemble wins) is made
# on an estimate **rotated over the non-test folds**: the study's own split first, then another
# non-test fold as validation with the rest as training, and so on for `selection_folds`
# rotations, and the validation accuracies are averaged. The test fold is never among them.
#
# Differences inside the estimate's noise are then settled by a rule stated before any model
# is trained (`SELECTION_RULE`, below), not by whichever model the noise favoured.

# %%
#| export
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from urbansound_nb.metrics import result_entry

# %%
from fastcore.test import test_eq, test_close
from sklearn.linear_model import LogisticRegression

# %% [markdown]
# ## The rotations
#
# `validation_rotations` keeps the study's split as the first rotation: its models are the ones
# saved, tested once and handed to `predict`. Each further rotation validates on another
# non-test fold (the training folds from the last backwards) and trains on the remaining
# non-test folds. With two non-test folds (the mini data: train 1, validate 2) the second
# rotation trains on 2 and validates on 1.

# %%
#| export
def validation_rotations(train_folds, val_fold: int, selection_folds: int = 2) -> list[dict]:
    "The study's split, then up to `selection_folds - 1` more: another non-test fold validates, the others train."
    if selection_folds < 1: raise ValueError(f"selection_folds must be at least 1, got {selection_folds}")
    non_test = sorted({*map(int, train_folds), int(val_fold)})
    others = [f for f in reversed(non_test) if f != val_fold]
    vals = [val_fold, *others][:selection_folds]
    return [dict(train_folds=[f for f in non_test if f != v], val_fold=v) for v in vals]

def rotation_indices(fold_of, rotations: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    "(training, validation) clip indices of each rotation, from each clip's fold."
    fold_of = np.asarray(fold_of)
    return [(np.flatnonzero(np.isin(fold_of, r["train_folds"])), np.flatnonzero(fold_of == r["val_fold"]))
            for r in rotations]

# %%
test_eq(validation_rotations([1], 2), [dict(train_folds=[1], val_fold=2), dict(train_folds=[2], val_fold=1)])
test_eq(validation_rotations([1], 2, 1), [dict(train_folds=[1], val_fold=2)])
test_eq(validation_rotations(range(1, 9), 9, 3)[1:], [dict(train_folds=[1, 2, 3, 4, 5, 6, 7, 9], val_fold=8),
                                                      dict(train_folds=[1, 2, 3, 4, 5, 6, 8, 9], val_fold=7)])
test_eq(len(validation_rotations([1, 2], 3, 10)), 3)          # no more rotations than non-test folds
test_eq([len(i) for i in rotation_indices([1, 1, 2, 3], validation_rotations([1], 2))[1]], [1, 2])

# %% [markdown]
# ## The rotated estimate
#
# A candidate's estimate is the mean of its validation accuracies over the rotations, with
# their standard deviation (the spread from fold to fold) and the number of validation clips
# behind it.

# %%
#| export
def rotated_estimate(accuracies, n_val) -> dict:
    "Mean and standard deviation of per-rotation validation `accuracies`, and the clips (`n_val` each) behind them."
    acc = [float(a) for a in accuracies]
    return dict(val_mean=float(np.mean(acc)), val_sd=float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                val_rotations=acc, n_val_total=int(np.sum(n_val)))

# %%
test_eq(rotated_estimate([0.5, 0.7], [10, 20])["n_val_total"], 30)
test_close(rotated_estimate([0.5, 0.7], [10, 20])["val_sd"], 0.1414, eps=1e-3)
test_eq(rotated_estimate([0.5], [10])["val_sd"], None)

# %% [markdown]
# ## Choosing a setting on the rotations
#
# `select_on_validation` fits one model per setting of a grid on each rotation's training
# clips and scores it on that rotation's validation clips; the setting with the best mean wins.
# Its models come back, one per rotation: the first (the study's split) is the one kept, and only
# it scores the test fold, once; the others serve the rotated estimates of what is built on them
# (chapter 05 fine-tunes from each rotation's probe). Chapter 03 uses it for its baselines,
# chapter 05 for the probe.

# %%
#| export
def select_on_validation(make_model, grid: list[dict], X, y, splits, te, classes) -> tuple[dict, list]:
    "Fit `make_model(**g)` for each g on every (train, val) of `splits`; choose g by mean accuracy; test once."
    t0, scores, fitted = time.time(), [], []
    for g in grid:
        models = [make_model(**g).fit(X[tr], y[tr]) for tr, _ in splits]
        accs = [float((m.predict(X[va]) == y[va]).mean()) for m, (_, va) in zip(models, splits)]
        scores.append(dict(**g, val_accuracy=accs[0], val_mean=float(np.mean(accs))))
        fitted.append((models, accs))
    best = int(np.argmax([s["val_mean"] for s in scores]))
    (models, accs), (tr, va) = fitted[best], splits[0]
    entry = result_entry(y[va], models[0].predict(X[va]), y[te], models[0].predict(X[te]), classes, len(tr),
                         time.time() - t0, chosen=grid[best], validation_grid=scores,
                         **rotated_estimate(accs, [len(v) for _, v in splits]))
    return entry, models

# %%
_rng = np.random.default_rng(0)
_X, _y = _rng.normal(size=(90, 4)), np.repeat([0, 1, 2], 30)
_X[:, 0] += _y * 2
_splits = [(np.arange(0, 60), np.arange(60, 75)), (np.arange(15, 75), np.arange(0, 15))]
_entry, _model = select_on_validation(lambda C: LogisticRegression(C=C), [dict(C=1e-4), dict(C=1.0)], _X, _y, _splits,
                                      np.arange(75, 90), ["a", "b", "c"])
test_eq(_entry["chosen"], dict(C=1.0))
test_eq(len(_entry["val_rotations"]), 2)
test_eq(_entry["n_val_total"], 30)
test_eq(len(_model), 2)                      # the chosen setting's model of each rotation, the study's first

# %% [markdown]
# ## The rule for ties
#
# The rule is the one-standard-error rule of model selection (Breiman et al. 1984; Hastie,
# Tibshirani and Friedman, *The Elements of Statistical Learning*, 7.10), with one addition for
# ensembles. The margin is the binomial standard error of the best mean over all the validation
# clips behind it: about 1.1 points with 1,800 clips, 2.4 with 400.

# %%
#| export
SELECTION_RULE = ("Each candidate is scored by its validation accuracy averaged over the rotations. Candidates "
                  "within one standard error of the best mean (binomial, over all the validation clips behind it) "
                  "are tied with it. Among tied candidates an ensemble wins, since averaging equally good models "
                  "lowers the variance that one validation estimate cannot see; failing that, the tied candidate "
                  "with the fewest parameters (then the higher mean).")

def choose_model(candidates: pd.DataFrame) -> tuple[str, pd.DataFrame, str]:
    "The candidate `SELECTION_RULE` picks (columns val_mean, n_val_total, parameters, ensemble); the table; why."
    table = candidates.copy()
    best = table["val_mean"].astype(float).idxmax()
    p, n = float(table.loc[best, "val_mean"]), int(table.loc[best, "n_val_total"])
    margin = math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))
    table["behind_best"] = p - table["val_mean"].astype(float)
    table["tied"] = table["behind_best"] <= margin + 1e-12
    tied = table[table["tied"]]
    ensembles = tied[tied["ensemble"].astype(bool)]
    if len(ensembles):
        chosen = ensembles["val_mean"].astype(float).idxmax()
        why = "it is an ensemble, and among the tied candidates an ensemble wins"
    else:
        simplest = tied.assign(_p=tied["parameters"].fillna(0).astype(float), _m=-tied["val_mean"].astype(float))
        chosen = simplest.sort_values(["_p", "_m"]).index[0]
        why = "it has the fewest parameters of the tied candidates" if len(tied) > 1 else "no other candidate is tied"
    others = [m for m in tied.index if m != best]
    reason = (f"The best mean is {best}'s, {p:.1%} over {n} validation clips; one standard error is "
              f"{margin:.1%}. Tied with it: {', '.join(others) if others else 'none'}. "
              f"Chosen: {chosen}, because {why}.")
    return chosen, table, reason

# %%
_c = pd.DataFrame(dict(val_mean=[0.695, 0.674, 0.685, 0.50], n_val_total=[387] * 4, parameters=[1e6, 1e6, 2e6, None],
                       ensemble=[False, False, True, False]), index=["finetune", "probe", "pair", "logreg"])
_chosen, _table, _why = choose_model(_c)
test_eq(_chosen, "pair")
test_eq(_table["tied"].tolist(), [True, True, True, False])
assert "Tied with it: probe, pair. Chosen: pair" in _why, _why
print(_why)
test_eq(choose_model(_c.drop(index="pair"))[0], "finetune")       # equal sizes: the higher mean
test_eq(choose_model(_c.assign(val_mean=[0.9, 0.5, 0.5, 0.89], n_val_total=10_000))[0], "finetune")
test_eq(choose_model(_c.assign(val_mean=[0.9, 0.5, 0.5, 0.895], n_val_total=1000))[0], "logreg")   # simpler, tied

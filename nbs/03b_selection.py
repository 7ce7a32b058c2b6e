# %%
#| default_exp selection

# %% [markdown]
# # Selection: validation rotated over the non-test folds, and a rule for ties
#
# > Every choice made on validation averaged over rotations of the validation fold, and ties settled by a stated rule.

# %% [markdown]
# A UrbanSound8K fold is 800-990 clips from a few dozen recordings, so models a point or two apart swap places from
# fold to fold. Every choice of the study (a regularisation, an epoch count, a model, whether an ensemble wins) is
# made on validation **rotated over the non-test folds** (`selection_folds` rotations, averaged), never the test fold,
# and differences inside its noise are settled by a rule stated before any model trains (`SELECTION_RULE`).

# %%
#| export
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# %%
from fastcore.test import test_eq
from sklearn.linear_model import LogisticRegression

# %% [markdown]
# ## The rotations
#
# The study's split is the first rotation: its models are saved, tested once and served. Each further one validates on
# another non-test fold (from the last backwards) and trains on the rest; on mini, train 1 / validate 2, then the
# reverse.

# %%
#| export
def validation_rotations(train_folds, val_fold: int, selection_folds: int = 2) -> list[dict]:
    "The study's split, then up to `selection_folds - 1` more: another non-test fold validates, the others train."
    if selection_folds < 1: raise ValueError(f"selection_folds must be at least 1, got {selection_folds}")
    non_test = sorted({*map(int, train_folds), int(val_fold)})
    others = [f for f in reversed(non_test) if f != val_fold]
    vals = [val_fold, *others][:selection_folds]
    return [dict(train_folds=[f for f in non_test if f != v], val_fold=v) for v in vals]

# %%
test_eq(validation_rotations([1], 2), [dict(train_folds=[1], val_fold=2), dict(train_folds=[2], val_fold=1)])
validation_rotations(range(1, 9), 9, 3)

# %% [markdown]
# ## The rotated estimate
#
# The mean of the validation accuracies over the rotations, their standard deviation and the clips behind them.

# %%
#| export
def rotated_estimate(accuracies, n_val) -> dict:
    "Mean and standard deviation of per-rotation validation `accuracies`, and the clips (`n_val` each) behind them."
    acc = [float(a) for a in accuracies]
    return dict(val_mean=float(np.mean(acc)), val_sd=float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                val_rotations=acc, n_val_total=int(np.sum(n_val)))

# %%
rotated_estimate([0.5, 0.7], [10, 20])

# %% [markdown]
# ## Choosing a setting on the rotations
#
# `choose_setting` fits a grid's settings on each rotation and scores them on its validation clips; the best mean
# wins, and its model of each rotation comes back.

# %%
#| export
def choose_setting(make_model, grid: list[dict], X, y, splits) -> tuple[dict, list[dict], list]:
    "Fit `make_model(**g)` for each g on every (train, val) of `splits`: the best mean's g, the table, its models."
    scores, fitted = [], []
    for g in grid:
        models = [make_model(**g).fit(X[tr], y[tr]) for tr, _ in splits]
        accs = [float((m.predict(X[va]) == y[va]).mean()) for m, (_, va) in zip(models, splits)]
        scores.append(dict(**g, val_accuracy=accs[0], val_mean=float(np.mean(accs))))
        fitted.append(models)
    best = int(np.argmax([s["val_mean"] for s in scores]))
    return grid[best], scores, fitted[best]

# %%
_rng = np.random.default_rng(0)
_X, _y = _rng.normal(size=(90, 4)), np.repeat([0, 1, 2], 30)
_X[:, 0] += _y * 2
_splits = [(np.arange(0, 60), np.arange(60, 75)), (np.arange(15, 75), np.arange(0, 15))]
_setting, _table, _models = choose_setting(lambda C: LogisticRegression(C=C), [dict(C=1e-4), dict(C=1.0)], _X, _y,
                                           _splits)
test_eq((_setting, len(_table), len(_models)), (dict(C=1.0), 2, 2))   # the chosen setting's model of each rotation
assert _table[1]["val_mean"] > _table[0]["val_mean"]

# %% [markdown]
# ## The rule for ties
#
# The rule is the one-standard-error rule of model selection (Breiman et al. 1984; Hastie, Tibshirani and Friedman,
# *The Elements of Statistical Learning*, 7.10), with one addition for ensembles. The margin is the binomial standard
# error of the best mean over all the validation clips behind it: about 1.1 points with 1,800 clips, 2.4 with 400.

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
test_eq((_chosen, _table["tied"].tolist()), ("pair", [True, True, True, False]))
print(_why)


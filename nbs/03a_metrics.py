# %%
#| default_exp metrics

# %% [markdown]
# # Metrics: evaluation, confusion and paired comparisons
#
# > Accuracy, F1 and per-class accuracy; confusion matrices; comparisons paired on seeds or folds, and verdicts.

# %% [markdown]
# Every chapter scores through these helpers (scikit-learn's metrics), so every results file has the same fields and
# the site can gather them.

# %%
#| export
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sstats
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, f1_score, recall_score


def evaluate(y_true, y_pred, classes) -> dict:
    "Accuracy, macro F1 and per-class accuracy (each class's recall; NaN for a class with no clips) of predictions."
    labels = list(range(len(classes)))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    return dict(accuracy=float(accuracy_score(y_true, y_pred)),
                macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
                per_class_accuracy={c: float(r) for c, r in zip(classes, recall)})

def result_entry(val_true, val_pred, test_true, test_pred, classes, n_train: int, seconds: float, **extra) -> dict:
    "One entry of a results JSON: validation and test accuracy, test macro F1 and per-class accuracy, sizes, time."
    val, test = evaluate(val_true, val_pred, classes), evaluate(test_true, test_pred, classes)
    return dict(val_accuracy=val["accuracy"], test_accuracy=test["accuracy"], macro_f1=test["macro_f1"],
                val_macro_f1=val["macro_f1"], per_class_accuracy=test["per_class_accuracy"],
                n_train=int(n_train), n_val=len(val_true), n_test=len(test_true), seconds=round(float(seconds), 2),
                            **extra)

# %%
from fastcore.test import test_eq
e = evaluate([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c"])
test_eq((e["accuracy"], e["per_class_accuracy"]["a"]), (0.75, 0.5))
e

# %% [markdown]
# ## Confusion matrices
#
# Counts, and rows normalised to each true class (which classes are lost, whatever their size): scikit-learn's
# `ConfusionMatrixDisplay`.

# %%
#| export
def confusion_pair(y_true, y_pred, classes, title: str):
    "Counts and row-normalised confusion matrices side by side."
    fig, axes = plt.subplots(1, 2, figsize=(16, 6.5), constrained_layout=True)
    for ax, normalize, what, fmt in ((axes[0], None, "clips", "d"), (axes[1], "true", "share of each true class",
                                                                     ".2f")):
        ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=range(len(classes)), display_labels=classes,
                                                normalize=normalize, values_format=fmt, cmap="Blues", ax=ax,
                                                xticks_rotation=60, colorbar=True)
        ax.set(title=f"{title}: {what}", xlabel="predicted class", ylabel="true class")
    return fig

# %%
confusion_pair([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"], "A toy example")
plt.show()

# %% [markdown]
# ## Comparisons paired on seeds or folds
#
# Seeds and folds move both conditions by more than most differences between them, so they are compared pair by pair:
# `summarise` gives each condition's mean and spread and its paired differences to a baseline, with a paired t-test.

# %%
#| export
def _paired_p(this: pd.Series, base: pd.Series) -> float:
    "Paired t-test p-value of `this` against `base` (NaN with fewer than two pairs or no spread)."
    d = (this - base).dropna()
    if len(d) < 2 or d.std() == 0: return np.nan
    return float(sstats.ttest_rel(this.loc[d.index], base.loc[d.index]).pvalue)

def summarise(runs: pd.DataFrame, baseline: str = "none", by: str = "condition", pair: str = "seed") -> pd.DataFrame:
    "Per `by` value: mean and std of validation and test accuracy, and differences to `baseline` paired on `pair`."
    g = runs.groupby(by, sort=False)
    out = pd.DataFrame({"val_mean": g["val_accuracy"].mean(), "val_std": g["val_accuracy"].std(ddof=1),
                        "test_mean": g["test_accuracy"].mean(), "test_std": g["test_accuracy"].std(ddof=1),
                        f"{pair}s": g.size()})
    base = runs[runs[by] == baseline].set_index(pair)
    for c in out.index:
        this = runs[runs[by] == c].set_index(pair)
        d, dv = this["test_accuracy"] - base["test_accuracy"], this["val_accuracy"] - base["val_accuracy"]
        out.loc[c, "test_diff_mean"], out.loc[c, "test_diff_std"] = d.mean(), d.std(ddof=1)
        out.loc[c, "val_diff_mean"] = dv.mean()
        out.loc[c, f"{pair}s_better"] = int((d > 0).sum())
        out.loc[c, f"{pair}s_better_val"] = int((dv > 0).sum())
        is_base = c == baseline
        out.loc[c, "paired_t_p"] = np.nan if is_base else _paired_p(this["test_accuracy"], base["test_accuracy"])
        out.loc[c, "paired_t_p_val"] = np.nan if is_base else _paired_p(this["val_accuracy"], base["val_accuracy"])
    return out

# %%
toy = pd.DataFrame(dict(model=["a", "a", "b", "b"], test_fold=[1, 2, 1, 2], val_accuracy=[.5, .6, .4, .5],
                        test_accuracy=[.5, .7, .4, .5]))
toy_summary = summarise(toy, baseline="b", by="model", pair="test_fold")
test_eq(toy_summary.loc["a", "test_folds_better"], 2)
toy_summary

# %% [markdown]
# ## A verdict that rests on both folds
#
# The test fold alone does not decide. `verdict` says *helped* or *hurt* only when validation and test agree in
# direction on every pair and one of them is significant (p < 0.05); agreement without significance is *suggestive*;
# opposite directions give no verdict, and say so; anything else made no consistent difference.

# %%
#| export
def verdict(row: pd.Series, pair: str = "seed") -> str:
    "What a `summarise` row says against its baseline, weighing the validation and the test differences."
    n, up_test, up_val = int(row[f"{pair}s"]), int(row[f"{pair}s_better"]), int(row[f"{pair}s_better_val"])
    test_dir, val_dir = np.sign(row["test_diff_mean"]), np.sign(row["val_diff_mean"])
    if test_dir == 0 and val_dir == 0: return "made no difference"   # the baseline itself, or exact ties
    if test_dir != val_dir:
        return (f"gave no verdict: validation and test disagree ({100 * row['val_diff_mean']:+.1f} and "
                f"{100 * row['test_diff_mean']:+.1f} points)")
    consistent = up_test in (0, n) and up_val in (0, n) and (up_test == 0) == (up_val == 0)
    if not consistent: return "made no consistent difference"
    direction = "helped" if test_dir > 0 else "hurt"
    if min(row["paired_t_p"], row["paired_t_p_val"]) < 0.05: return direction
    return f"{direction} on every {pair} on both folds, which with {n} {pair}s is suggestive, not established"

# %%
_row = lambda tv, tt, bv, bt, p=0.5: pd.Series(dict(seeds=3, seeds_better=bt, seeds_better_val=bv, val_diff_mean=tv,
                                                    test_diff_mean=tt, paired_t_p=p, paired_t_p_val=p))
test_eq(verdict(_row(-0.036, 0.015, 0, 2)), "gave no verdict: validation and test disagree (-3.6 and +1.5 points)")
test_eq(verdict(_row(0.02, 0.03, 3, 3, p=0.01)), "helped")


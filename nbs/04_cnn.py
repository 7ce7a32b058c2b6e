# %%
#| default_exp cnn

# %% [markdown]
# # CNNs on cached log-mels
#
# > The starting notebook's CNN against a residual CNN with a modern recipe: chosen on validation, tested once.

# %% [markdown]
# The family **from scratch**, as the registry (notebook 05b) defines it:
#
# * **small_cnn**, the starting notebook's SmallAudioCNN with its recipe (Adam at 1e-3, no augmentation, `epochs`),
#   one flaw fixed: its epoch is chosen on the validation fold, not on the *test* fold (the luckiest of 30 test
#   scores);
# * **urbanresnet**, a residual CNN sized for two CPU cores (notebook 04a) with AdamW, a one-cycle schedule, label
#   smoothing, mixup, recording variation (notebook 04b) and early stopping (`patience`), for `resnet_epochs`;
# * **resnet**, `resnet_seeds` such trainings averaged, whose first member is urbanresnet itself.
#
# Each trains through the store (notebook 04e) on each rotation of the non-test folds, reading chapter 02's features,
# never audio; the test fold is scored once. With `train_fraction` below 1, every model trains on that share of each
# class's recordings: a learning curve, one command per point. Variants tried and not taken are on the explanations
# page.

# %%
#| export
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

FAMILIES = ("from scratch",)   # the family this chapter presents

# %%
import pandas as pd
from IPython.display import Markdown
from fastcore.test import test_eq
from urbansound_nb.audio import is_synthetic
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.metrics import confusion_pair
from urbansound_nb.params import study_params, use_test_values
from urbansound_nb.registry import family_fits, study_models

# %% tags=["parameters"]
# the shared parameters are notebook 00a's: the models, `epochs`, `resnet_epochs`, `resnet_seeds`, `patience`,
# `batch_size`, `multicrop`, `train_fraction`, the folds, `seed`, ...; set any of them here to override

# %% tags=["checks"]
use_test_values(globals(), epochs=2, resnet_epochs=2)
params = study_params(globals())
models = study_models(params, FAMILIES)

# %% [markdown]
# ## Training every model on every rotation
#
# Same folds, features and batch size; each model with its recipe, on every rotation (notebook 03b), the mean over
# rotations being what the study chooses by. Every training is a cell of one grid (`-p scheduler` puts them on a
# cluster) and of the store: one that another chapter or run already made is read back, and the chapter says so.

# %%
run_path = make_run_dir(params.run_dir)
fits = family_fits(params, FAMILIES, run_path, desc="04 trainings")
data, results = fits.data(models[0]), fits.results
split, rotations = data.split, [dict(train_folds=list(t.train_folds), val_fold=t.val_fold)
                                for t in fits.tasks[models[0]]]
print(f"{len(data.ds):,} clips", "(SYNTHETIC)" if is_synthetic(data.ds) else "",
      f"| input {data.fp.n_mels} x {data.n_frames} | train {results[models[0]]['n_train']} "
      f"({params.train_fraction:.0%} of the training recordings), validation {results[models[0]]['n_val']}, "
      f"test {results[models[0]]['n_test']}")
pd.DataFrame(fits.trainings)

# %% [markdown]
# ## Learning curves
#
# Training figures are on augmented, mixed batches, so only the gap and the trends compare with validation; an
# ensemble shows its members.

# %%
#| export
def trainings(records: dict) -> list[tuple[str, list, int]]:
    "(label, epoch history, chosen epoch) of each training behind fit records by model: an ensemble gives its members'."
    out = []
    for name, r in records.items():
        if r.get("members"): out += [(f"{name} seed {m['seed']}", m["history"], m["best_epoch"]) for m in r["members"]]
        elif r.get("history"): out.append((name, r["history"], r["best_epoch"]))
    return out

def plot_history(records: dict, title: str = "Learning curves"):
    "Loss and accuracy per epoch, training vs validation, one colour per training."
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
    for (name, history, best), color in zip(trainings(records), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        epochs = [r["epoch"] for r in history]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in history], "--", color=color, label=f"{name} train")
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "-", color=color, label=f"{name} validation")
        ax_acc.axvline(best, color=color, lw=0.8, ls=":")
    ax_loss.set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title=f"{title}: accuracy (dotted: chosen epoch)", xlabel="epoch", ylabel="accuracy")
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)
    return fig

def selection_flattery(record: dict) -> tuple[float, float]:
    "Mean validation accuracy of the chosen epochs of a model's trainings, and of their last five epochs."
    runs = trainings({"model": record})
    chosen = float(np.mean([h[best - 1]["val_accuracy"] for _, h, best in runs]))
    return chosen, float(np.mean([np.mean([r["val_accuracy"] for r in h[-5:]]) for _, h, _ in runs]))

# %%
_h = [dict(epoch=1, val_accuracy=0.5), dict(epoch=2, val_accuracy=0.7)]
_ens = dict(members=[dict(seed=0, history=_h, best_epoch=2), dict(seed=1, history=_h, best_epoch=1)])
test_eq([(label, best) for label, _, best in trainings({"a": dict(history=_h, best_epoch=2), "b": _ens})],
        [("a", 2), ("b seed 0", 2), ("b seed 1", 1)])
test_eq(selection_flattery(dict(history=_h, best_epoch=2)), (0.7, 0.6))
own = {n: fits.record(n) for n in models if n != "urbanresnet"}   # urbanresnet is resnet's first member
plot_history(own, f"CNNs, train folds {split.train_folds}, validation fold {split.val_fold}")
plt.show()

# %% [markdown]
# ## The test fold, once
#
# Each model's chosen epoch scores validation and test (`multicrop`). The time is the trainings' wall time here; the
# data path's share is the time spent building batches against the time in the model.

# %%
def data_path_share(record: dict) -> float:
    rows = [r for _, h, _ in trainings({"m": record}) for r in h]
    return sum(r["data_seconds"] for r in rows) / max(sum(r["train_seconds"] - r["data_seconds"] for r in rows), 1e-9)

table = pd.DataFrame(results).T[["val_accuracy", "val_mean", "val_sd", "test_accuracy", "macro_f1", "epochs",
                                 "best_epoch", "parameters", "seconds"]]
table.assign(data_path_share=[f"{data_path_share(fits.record(n)):.1%}" for n in table.index])

# %% [markdown]
# ## What this run says

# %%
best_name = max(models, key=lambda k: results[k]["val_mean"])
small, resnet = (results.get(m, {}).get("test_accuracy") for m in ("small_cnn", "resnet"))
lines = [f"The model with the best validation accuracy is **{best_name}** ({results[best_name]['val_mean']:.1%} "
         f"averaged over validation folds {', '.join(str(r['val_fold']) for r in rotations)})."]
if small is not None and resnet is not None:
    lines.append(f"On test fold {split.test_fold}, UrbanResNet's seeds averaged score {resnet:.1%} against "
                 f"SmallAudioCNN's {small:.1%}: {100 * (resnet - small):+.1f} points.")
if {"urbanresnet", "resnet"} <= set(models):
    lines.append(f"Averaging {params.resnet_seeds} seeds moves the rotated validation mean from "
                 f"{results['urbanresnet']['val_mean']:.1%} (one seed) to {results['resnet']['val_mean']:.1%}.")
for name, record in own.items():   # how much choosing the best of many noisy epochs flatters the validation figure
    chosen, tail = selection_flattery(record)
    lines.append(f"{name}'s chosen epochs scored {chosen:.1%} on validation, its last five epochs {tail:.1%} on "
                 f"average: picking the best epoch flatters validation by {100 * (chosen - tail):.1f} points, a bias "
                 "the test fold, scored once, does not share.")
test_idx = fits.tasks[best_name][0].indices(data.clips)[2]
lines.append(f"The test fold holds {len(test_idx)} clips from {data.meta.iloc[test_idx]['fsID'].nunique()} "
             "recordings; a difference of a few points on it is within what one seed or one fold moves. Chapter 06 "
             "sets every family side by side, and chapter 09 compares them fold by fold.")
Markdown(" ".join(lines))

# %%
labels = data.logmels.labels.numpy()
confusion_pair(labels[test_idx], np.asarray(fits.record(best_name)["test_proba"]).argmax(1), split.classes,
               f"{best_name}, test fold {split.test_fold}")
plt.show()

# %%
write_results(run_path, "04_cnn", results, dataset=params.dataset, best_model=best_name, families=FAMILIES,
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold,
                         train_fraction=params.train_fraction), rotations=rotations,
              features=dict(feature_key=data.fp.key, n_frames=data.n_frames), trainings=fits.trainings,
              **data.clip_counts())

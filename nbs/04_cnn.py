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
#| default_exp cnn

# %% [markdown]
# # CNNs on cached log-mels
#
# > The starting notebook's CNN against a residual CNN with a modern recipe: chosen on validation, tested once.

# %% [markdown]
# Two models (notebook 04a), one protocol:
#
# * **SmallAudioCNN**, the starting notebook's model (three conv blocks with batch norm, ReLU
#   and pooling, global average pooling, one linear layer), trained with its recipe: Adam at a
#   constant 1e-3, no augmentation. One flaw is fixed: the starting notebook kept the epoch
#   with the best *test* accuracy, which reports the luckiest of 30 test scores; here the
#   epoch is chosen on the validation fold.
# * **UrbanResNet**, a residual CNN sized for two CPU cores (a strided stem, three residual
#   stages, frequency-mean then time mean + max pooling, dropout), trained with AdamW, a
#   one-cycle schedule, label smoothing, mixup, the augmentation that imitates other recordings
#   (notebook 04b) and early stopping on the validation fold. It is trained `resnet_seeds`
#   times with different seeds and the members are averaged.
#
# Both read the feature cache of chapter 02 and never touch audio. The training loop, with its
# resume, is notebook 04c's (checkpoints 04a's). The test fold is scored once, with the checkpoint
# that the validation fold chose. Changes to these models and recipes that were tried and not
# taken are listed, with how to reproduce each, on the explanations page.

# %%
#| export
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# %%
import time
import pandas as pd
from dataclasses import replace
from IPython.display import Markdown
from fastcore.test import test_eq
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import study_data
from urbansound_nb.core import make_run_dir, read_results, write_results
from urbansound_nb.data import recording_subset
from urbansound_nb.metrics import confusion_pair, result_entry
from urbansound_nb.models import n_parameters
from urbansound_nb.params import as_bool, as_fraction, as_int, as_names, study_params, use_test_values
from urbansound_nb.selection import rotated_estimate, rotation_indices, validation_rotations
from urbansound_nb.store import ResNetPlan, fit_study_model, study_store
from urbansound_nb.train import RECIPES, predict_logits

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
cnn_models = ["small_cnn", "resnet"]   # the CNNs to train and compare (`epochs`, `batch_size` are shared)
patience = 10           # epochs without a better validation accuracy before stopping (UrbanResNet)
multicrop = True        # sliding-window scoring of clips longer than the model's input
train_fraction = 1.0    # train on this share of each class's training recordings (whole recordings)

# %% tags=["checks"]
use_test_values(globals(), epochs=2)
params = study_params(globals())
cnn_models = as_names("cnn_models", cnn_models, RECIPES)   # a list, also when plain papermill passes a string
train_fraction = as_fraction("train_fraction", train_fraction)
multicrop = as_bool("multicrop", multicrop)
patience = as_int("patience", patience, 1)

# %% [markdown]
# ## This run's data
#
# With `train_fraction` below 1, the models train on that share of each class's training
# recordings (whole recordings, `recording_subset`): a learning curve, one command per point.

# %%
run_path = make_run_dir(params.run_dir)
data = study_data(params)                    # the front end of the run's parameters, cached by chapter 02
data = replace(data, train=recording_subset(data.meta, data.train, train_fraction, params.seed, "train_fraction"))
split = data.split
share = f" ({train_fraction:.0%} of the training recordings)" if train_fraction < 1 else ""
print(f"{len(data.ds):,} clips", "(SYNTHETIC)" if is_synthetic(data.ds) else "", f"| train {len(data.train)}{share}",
      f"| validation {len(data.val)}, test {len(data.test)} | input {data.fp.n_mels} x {data.n_frames}")
print(f"features: {data.cache_stats['computed']} computed, {data.cache_stats['reused']} from the cache")

# %% [markdown]
# ## Training both models
#
# Same split, same features, same batch size and epoch budget; each model with its recipe. Every
# training is a cell of the study's store (notebook 04e): one that another chapter or an earlier
# run already made, with the same clips, recipe and seed, is read back instead of trained again,
# and the chapter says which.

# %%
store = study_store(params)   # every training is a cell of the study's store: one another chapter made is reused

def train(name, split_data, out_dir=None, resnet_seeds=params.resnet_seeds):
    "`name` trained as this chapter trains it, on `split_data`'s training clips; the run's checkpoints in `out_dir`."
    return fit_study_model(name, split_data, epochs=params.epochs, seed=params.seed, out_dir=out_dir,
                           resnet=ResNetPlan(resnet_seeds, params.resnet_epochs), batch_size=params.batch_size,
                           patience=RECIPES[name]["patience"] and patience, store=store)

trained, histories, results = {}, {}, {}
for name in cnn_models:
    t0 = time.time()
    model, history = train(name, data, run_path/"models")
    trained[name], histories[name] = model, history
    members = history["best"].get("member_val_accuracy")
    members = f" (members {', '.join(f'{v:.3f}' for v in members)})" if members else ""
    print(f"{name}: validation accuracy {history['best']['val_accuracy']:.3f}{members}, chosen epoch "
          f"{history['best']['epoch']}, {history['stopped_epoch']} epochs trained, {time.time() - t0:.0f} s")

# %% [markdown]
# ## Validation rotated over the non-test folds
#
# One validation fold cannot separate models a few points apart (notebook 03b), so each model is
# trained again, exactly as above, for each further rotation (another non-test fold validates,
# the others train) and scored on that rotation's validation fold. The mean over rotations is
# what the study chooses by. These trainings serve only the estimate: they stay in the store of
# trainings (notebook 04e; an interrupted run resumes) and they never see the test fold. An
# estimate needs no pair, so UrbanResNet trains `rotation_seeds` members here (one by default:
# its first seed, a fifth of the chapter's time saved). Its mean over rotations then mixes the pair
# on the study's split with one member on the others, and is conservative by about what the
# second member adds (explanations).

# %%
rotations = validation_rotations(split.train_folds, split.val_fold, params.selection_folds)
rotation_splits = rotation_indices(data.meta["fold"].values, rotations)
labels = data.logmels.labels.numpy()
rotation_accuracy = {name: [] for name in cnn_models}
for k, (tr, va) in enumerate(rotation_splits[1:], start=1):
    subset = recording_subset(data.meta, tr, train_fraction, params.seed, "train_fraction")
    rotated = replace(data, train=subset, val=va)
    for name in cnn_models:
        model, _ = train(name, rotated, resnet_seeds=params.rotation_seeds)
        pred = predict_logits(model, data.logmels, va, data.n_frames, multicrop=multicrop).argmax(1).numpy()
        rotation_accuracy[name].append(float((pred == labels[va]).mean()))
        n_members = params.rotation_seeds
        members = f", {n_members} member{'s' if n_members > 1 else ''}" if name == "resnet" else ""
        print(f"{name}, rotation {k} (train {rotations[k]['train_folds']}, validate {rotations[k]['val_fold']}"
              f"{members}): validation accuracy {rotation_accuracy[name][-1]:.3f}")
if len(rotations) == 1: print("one validation fold only (selection_folds = 1, or a single non-test fold): no rotation")
print(store.summary())
pd.DataFrame(store.used)

# %% [markdown]
# ## Learning curves
#
# Training loss and accuracy are measured on the (augmented, mixed) training batches, so they
# are not directly comparable with validation; the gap and the trends are what matter.

# %%
#| export
def trainings(histories: dict) -> list[tuple[str, dict]]:
    "(label, history) of each training behind `histories` (model name -> history): an ensemble gives one per member."
    out = []
    for name, h in histories.items():
        if "members" in h: out += [(f"{name} seed {seed}", member) for seed, member in h["members"].items()]
        else: out.append((name, h))
    return out

def plot_history(histories: dict, title: str = "Learning curves"):
    "Loss and accuracy per epoch, training vs validation, one colour per training."
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
    for (name, h), color in zip(trainings(histories), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        epochs = [r["epoch"] for r in h["history"]]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in h["history"]], "--", color=color, label=f"{name} train")
            ax.plot(epochs, [r[f"val_{key}"] for r in h["history"]], "-", color=color, label=f"{name} validation")
        ax_acc.axvline(h["best"]["epoch"], color=color, lw=0.8, ls=":")
    ax_loss.set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title=f"{title}: accuracy (dotted: chosen epoch)", xlabel="epoch", ylabel="accuracy")
    ax_loss.legend()
    ax_acc.legend()
    return fig

def selection_flattery(history: dict) -> tuple[float, float]:
    "Mean validation accuracy of the chosen epochs of a model's trainings, and of their last five epochs."
    runs = [run for _, run in trainings({"model": history})]
    chosen = float(np.mean([run["best"]["val_accuracy"] for run in runs]))
    return chosen, float(np.mean([np.mean([r["val_accuracy"] for r in run["history"][-5:]]) for run in runs]))

# %%
_h = dict(history=[dict(epoch=1, val_accuracy=0.5)], best=dict(val_accuracy=0.5, epoch=1))
test_eq(trainings({"a": _h, "b": dict(members={0: "h0", 1: "h1"})}), [("a", _h), ("b seed 0", "h0"),
                                                                      ("b seed 1", "h1")])
test_eq(selection_flattery(_h), (0.5, 0.5))
plot_history(histories, "CNNs")
plt.show()

# %% [markdown]
# ## The test fold, once
#
# Each model's chosen checkpoint scores the validation and test folds, with `multicrop` scoring
# of clips longer than the model's input.

# %%
test_predictions = {}
for name, model in trained.items():
    predict = lambda idx: predict_logits(model, data.logmels, idx, data.n_frames, multicrop=multicrop).argmax(1).numpy()
    val_pred, test_pred = predict(data.val), predict(data.test)
    h = histories[name]
    test_predictions[name] = test_pred
    data_s, train_s = (sum(r[k] for r in h["history"]) for k in ("data_seconds", "train_seconds"))
    results[name] = result_entry(labels[data.val], val_pred, labels[data.test], test_pred, split.classes,
                                 len(data.train), sum(r["seconds"] for r in h["history"]),
                                 epochs=h["stopped_epoch"], best_epoch=h["best"]["epoch"],
                                 parameters=n_parameters(model),
                                 seeds=sorted(h["members"]) if "members" in h else [params.seed],
                                 checkpoint=f"models/{name}.pt", recipe=RECIPES[name],
                                 data_path_share=data_s / max(train_s - data_s, 1e-9))
    results[name].update(rotated_estimate([results[name]["val_accuracy"], *rotation_accuracy[name]],
                                          [len(va) for _, va in rotation_splits]))
columns = ["val_accuracy", "val_mean", "val_sd", "test_accuracy", "macro_f1", "epochs", "best_epoch", "parameters",
           "seconds"]
pd.DataFrame(results).T[columns]

# %% [markdown]
# How much the cached data path adds to an epoch: the time spent building batches from the
# cache, as a share of the time spent in the model (forward, backward, optimiser step).

# %%
pd.DataFrame({n: dict(data_path_share=f"{r['data_path_share']:.1%}",
                      seconds_per_epoch=round(r["seconds"] / max(r["epochs"], 1), 1)) for n, r in results.items()}).T

# %%
best_name = max(results, key=lambda k: results[k]["val_mean"])
ran_03 = (run_path/"results"/"03_baselines.json").exists()
reference = read_results(run_path, "03_baselines")["entries"] if ran_03 else {}
rows = {k: reference[k] for k in ("logreg", "svm_rbf") if k in reference} | results
figures = ("val_accuracy", "test_accuracy", "macro_f1")
comparison = pd.DataFrame({k: {m: v[m] for m in figures} for k, v in rows.items()}).T
ax = comparison[["val_accuracy", "test_accuracy"]].plot.bar(figsize=(8, 4), rot=0, color=["tab:gray", "tab:blue"])
ax.set(title=f"Test fold {split.test_fold}: baselines (chapter 03) and CNNs", xlabel="model", ylabel="accuracy",
       ylim=(0, 1))
plt.show()
comparison.round(3)

# %% [markdown]
# ## What this run says

# %%
small, resnet = (results.get(m, {}).get("test_accuracy") for m in ("small_cnn", "resnet"))
lines = [f"The model with the best validation accuracy is **{best_name}** "
         f"({results[best_name]['val_mean']:.1%} averaged over validation folds "
         f"{', '.join(str(r['val_fold']) for r in rotations)})."]
if small is not None and resnet is not None:
    lines.append(f"On test fold {split.test_fold}, UrbanResNet scores {resnet:.1%} "
                 f"against SmallAudioCNN's {small:.1%}: "
                 f"{100 * (resnet - small):+.1f} points.")
if "logreg" in reference and resnet is not None:
    logreg = reference["logreg"]["test_accuracy"]
    lines.append(f"MFCC + logistic regression scored {logreg:.1%} on the same fold "
                 f"({100 * (resnet - logreg):+.1f} points for UrbanResNet).")
for name, h in histories.items():  # how much choosing the best of many noisy epochs flatters the validation figure
    chosen, tail = selection_flattery(h)
    lines.append(f"{name}'s chosen epochs scored {chosen:.1%} on validation, its last five epochs {tail:.1%} on "
                 f"average: picking the best epoch flatters validation by {100 * (chosen - tail):.1f} points, a bias "
                 "the test fold, scored once, does not share.")
n_recordings = data.meta.iloc[data.test]["fsID"].nunique()
lines.append(f"The test fold holds {len(data.test)} clips from {n_recordings} recordings; "
             "a difference of a few points on it is within what one seed or one fold moves. Chapter 08 compares the "
             "models fold by fold.")
Markdown(" ".join(lines))

# %%
confusion_pair(labels[data.test], test_predictions[best_name], split.classes,
               f"{best_name}, test fold {split.test_fold}")
plt.show()

# %%
write_results(run_path, "04_cnn", results, dataset=params.dataset, best_model=best_name,
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold,
                         train_fraction=train_fraction), rotations=rotations,
              features=dict(feature_key=data.fp.key, n_frames=data.n_frames),
              history={k: v["history"] for k, v in histories.items()}, trainings=store.used, **data.clip_counts())

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
# > Every fold present is the test fold once, with its own validation fold: the mean and spread over folds.

# %% [markdown]
# One test fold is one draw: folds differ in recording conditions and class mix, and single-fold
# accuracies of the same model spread over ten points or more. The dataset's authors therefore
# ask for cross-validation over the predefined folds. For each fold *k* present: test on *k*,
# choose the epoch on the fold before it (cyclically), train on all the others. That is the
# study's own arrangement (chapters 03-05 test on the last fold and validate on the one before),
# so the study's split is this chapter's cell for the last fold, trained once for both (the store
# of trainings, notebook 04e). Features come from the cache, computed once for all folds; each
# fold's result is recorded as soon as it is done, so an interrupted run resumes. On the full
# dataset this is the official 10-fold figure; on a subset with fewer folds it is the same
# protocol over the folds there are.
#
# Each model is trained exactly as its chapter trains it, with the same shared parameters, and
# by default every family is cross-validated: the MFCC baselines (logistic regression, RBF SVM),
# the two CNNs learned from scratch (SmallAudioCNN for `epochs`, UrbanResNet as `resnet_seeds`
# trainings of `resnet_epochs` averaged), and the pretrained network's transfers (the probe, the
# network fine-tuned from it for `finetune_epochs` epochs, and their pair). Settings (a baseline's
# C, the probe's C) are chosen on the fold's validation rotated over its non-test folds, as the
# study chooses them (notebook 03b). Features and embeddings come from the cache, so the baselines
# and the probe cost seconds per fold. `-p cv_models "[resnet, probe]"` narrows it. The last
# sections compare every model fold by fold with the reference (the starting notebook's
# SmallAudioCNN): a claim that one model beats another rests on that comparison, not on one test
# fold.

# %%
#| export
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from urbansound_nb.baselines import LOGREG_GRID, logistic_regression, mfcc_stats, rbf_svm, svm_grid
from urbansound_nb.batches import StudyData
from urbansound_nb.grid import Placement, run_grid
from urbansound_nb.metrics import result_entry
from urbansound_nb.models import EfficientAT
from urbansound_nb.params import BATCH_SIZE, StudyParams
from urbansound_nb.selection import rotation_indices, select_on_validation, validation_rotations
from urbansound_nb.store import ResNetPlan, TrainingStore, fit_study_model, split_folds
from urbansound_nb.train import predict_logits
from urbansound_nb.transfer import TRANSFERS, class_probabilities, fit_finetune, fit_probe

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from fastcore.test import test_eq, test_fail
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import study_data
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.grid import grid_client, parse_scheduler
from urbansound_nb.metrics import summarise
from urbansound_nb.params import as_folds, as_name, as_names, study_params, use_test_values
from urbansound_nb.store import study_store
from urbansound_nb.pretrained import PRETRAINED, EfficientATFeatures, cached_embeddings, pretrained_network
from urbansound_nb.transfer import transfer_body

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
# models to cross-validate, as their chapters train them: every family by default
cv_models = ["logreg", "svm_rbf", "small_cnn", "resnet", "probe", "finetune", "probe_finetune"]
reference = "small_cnn" # with several models, the others are compared with this one fold by fold
folds = None            # folds to cross-validate; None: every fold present
# (each model trains as its chapter trains it, with the shared epochs, resnet_seeds, resnet_epochs, finetune_epochs,
# network, weights, finetune_init and batch_size; scheduler and cell_threads place the cells)

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
# Each fold of the plan trains a model as its chapter does: the MFCC baselines as chapter 03
# fits them (their settings chosen on the fold's validation fold), the CNNs as chapter 04 trains
# them, and the transfers of chapter 05 from the same pretrained network, on its own features:
# the probe's regularisation is chosen on the fold's validation fold from the cached embeddings,
# fine-tuning starts afresh from the AudioSet weights (and, as in chapter 05, from that fold's
# probe as its head) on every fold, and the pair averages the two. The fine-tuning cell trains
# all three, since the pair needs both: the probe is fitted once a fold, not once for itself and
# again as the fine-tuning's head.

# %%
#| export
CV_MODELS = ("logreg", "svm_rbf", "small_cnn", "resnet", *TRANSFERS)
BASELINES = {"logreg": (logistic_regression, lambda n_features: LOGREG_GRID), "svm_rbf": (rbf_svm, svm_grid)}

@dataclass
class Transfer:
    "What the transfers need in every fold: the pretrained network, its features and its cached embeddings."
    network: EfficientAT
    data: StudyData
    embeddings: np.ndarray
    finetune_epochs: int = StudyParams.finetune_epochs
    finetune_init: str = StudyParams.finetune_init

@dataclass(frozen=True)
class FoldTraining:
    "How every fold trains: the model's epochs, seed, UrbanResNet's seeds, batches, rotations, the store's folder."
    epochs: int
    seed: int = 0
    resnet_seeds: int = 1
    batch_size: int = BATCH_SIZE
    selection_folds: int = StudyParams.selection_folds   # settings (C, gamma) chosen on this many rotations
    store: str | None = None                             # the store of trainings (notebook 04e); None: none kept

def _rotations(split_data: StudyData, training: FoldTraining) -> list:
    "The fold's (training, validation) splits, its own first, rotated as the study rotates them (notebook 03b)."
    folds = split_folds(split_data)
    rotations = validation_rotations(folds["train"], folds["val"][0], training.selection_folds)
    return rotation_indices(split_data.meta["fold"].values, rotations)

def _baseline_predictions(model: str, split_data: StudyData, training: FoldTraining):
    "An MFCC baseline of chapter 03 on one fold's split, its setting chosen on the rotations of its non-test folds."
    X, y = mfcc_stats(split_data.logmels), split_data.logmels.labels.numpy()
    make, grid = BASELINES[model]
    _, (fitted, *_) = select_on_validation(make, grid(X.shape[1]), X, y, _rotations(split_data, training),
                                           split_data.test, split_data.split.classes)
    return {model: (fitted.predict(X[split_data.val]), fitted.predict(X[split_data.test]), None)}

def _transfer_predictions(model: str, split_data: StudyData, training: FoldTraining, transfer: Transfer,
                          store: TrainingStore):
    "The probe alone, or with the network fine-tuned from it and the pair of the two: {model: (val, test, epoch)}."
    net = transfer.network
    _, (probe_model, *_) = fit_probe(net, transfer.embeddings, split_data, _rotations(split_data, training))
    # each network's class probabilities once per set (validation, test); the pair averages them
    probabilities = lambda m: [class_probabilities([m], split_data, idx) for idx in (split_data.val, split_data.test)]
    labels = lambda val, test: (val.argmax(1).numpy(), test.argmax(1).numpy())
    probe = probabilities(probe_model)
    out = {"probe": (*labels(*probe), None)}
    if model == "probe": return out
    head = probe_model if transfer.finetune_init == "probe" else None
    tuned, h = fit_finetune(net, split_data, epochs=transfer.finetune_epochs, seed=training.seed, head=head,
                            progress=False, batch_size=training.batch_size, store=store)
    finetuned, epoch = probabilities(tuned), h["best"]["epoch"]
    pair = [torch.stack([p, f]).mean(0) for p, f in zip(probe, finetuned)]    # as `class_probabilities` averages
    return {**out, "finetune": (*labels(*finetuned), epoch), "probe_finetune": (*labels(*pair), epoch)}

def _fold_predictions(model: str, split_data: StudyData, training: FoldTraining, transfer: Transfer | None,
                      store: TrainingStore) -> dict:
    "Train `model` on one fold's split: {model (and models trained with it): (val predictions, test ones, epoch)}."
    if model in TRANSFERS:
        if transfer is None: raise ValueError(f"{model!r} needs the pretrained network (`transfer`)")
        return _transfer_predictions(model, split_data, training, transfer, store)
    if model in BASELINES: return _baseline_predictions(model, split_data, training)
    m, h = fit_study_model(model, split_data, epochs=training.epochs, seed=training.seed, progress=False, store=store,
                           resnet=ResNetPlan(training.resnet_seeds, training.epochs), batch_size=training.batch_size)
    pv, pt = (predict_logits(m, split_data.logmels, idx, split_data.n_frames, multicrop=True).argmax(1).numpy()
              for idx in (split_data.val, split_data.test))
    return {model: (pv, pt, h["best"]["epoch"])}

# %% [markdown]
# Each (fold, model) is one cell of a grid (notebook 04d): `train_fold` trains and scores it,
# here or on a Dask cluster (`scheduler`), and this notebook records each result as it comes.
# A fine-tuning cell records the probe and the pair trained with it (`also`). Every network it
# trains is a cell of the store of trainings (notebook 04e), so a cell whose split is one the study
# already trained on (the last fold's) reads those trainings back; each result lists the
# trainings it used (`trainings`).

# %%
#| export
def train_fold(data: StudyData, transfer: Transfer | None, split: dict, model: str, training: FoldTraining) -> dict:
    "Train `model` as its chapter does on one fold's `split` of `data`; its validation and test figures."
    test_fold, val_fold, train_folds = split["test_fold"], split["val_fold"], split["train_folds"]
    if model in TRANSFERS and transfer is not None: data = transfer.data   # the pretrained network's own features
    y, fold_of = data.logmels.labels.numpy(), data.meta["fold"].values
    tr, va, te = (np.flatnonzero(np.isin(fold_of, f)) for f in (train_folds, [val_fold], [test_fold]))
    # this split's folds; fit takes its band statistics from these training folds only
    t0, split_data, store = time.time(), replace(data, train=tr, val=va, test=te), TrainingStore(training.store)
    predictions = _fold_predictions(model, split_data, training, transfer, store)
    entries = {name: dict(test_fold=test_fold, val_fold=val_fold, train_folds=list(train_folds),
                          **result_entry(y[va], pv, y[te], pt, data.split.classes, len(tr), time.time() - t0,
                                         best_epoch=epoch))
               for name, (pv, pt, epoch) in predictions.items()}
    return dict(entries.pop(model), also=entries, trainings=store.used)

def _fold_key(p: dict, model: str, training: FoldTraining, init: str) -> str:
    resnet_seeds = training.resnet_seeds
    suffix = f"x{resnet_seeds}" if model == "resnet" and resnet_seeds > 1 else f"-{init}" if model == "finetune" else ""
    return f"fold{p['test_fold']}/{model}/{training.epochs}/seed{training.seed}{suffix}"

def _cells(plan, models, training: dict, transfer: Transfer | None) -> dict:
    "The grid's cells, each model with its own `FoldTraining`; the fine-tuning cell also gives the probe and the pair."
    tuned = bool({"finetune", "probe_finetune"} & set(models))   # then the probe comes from the fine-tuning cell
    cells = {}
    for m in dict.fromkeys("finetune" if m == "probe_finetune" or (m == "probe" and tuned) else m for m in models):
        init = transfer.finetune_init if transfer is not None else "probe"
        for p in plan:
            split = dict(test_fold=p["test_fold"], val_fold=p["val_fold"], train_folds=p["train_folds"])
            cells[_fold_key(p, m, training[m], init)] = dict(split=split, model=m, training=training[m])
    return cells

def cross_validate(plan, data: StudyData, models, training: FoldTraining | dict, *, record_path=None,
                   transfer: Transfer | None = None, place: Placement | None = None) -> pd.DataFrame:
    "Train each of `models` as its chapter does and test it once per entry of `plan`, recording each fold as it ends."
    models = [models] if isinstance(models, str) else list(models)
    unknown = [m for m in models if m not in CV_MODELS]
    if unknown: raise ValueError(f"unknown model {unknown[0]!r}; choose from {sorted(CV_MODELS)}")
    training = training if isinstance(training, dict) else {m: training for m in (*models, "finetune")}
    cells = _cells(plan, models, training, transfer)
    describe = lambda key, r: (f"  {key.split('/')[1]}, test fold {r['test_fold']:2d} (validation {r['val_fold']}): "
                               f"test accuracy {r['test_accuracy']:.3f} ({r['seconds']:.0f} s)")
    done = run_grid(train_fold, cells, shared=dict(data=data, transfer=transfer), record_path=record_path,
                    place=place, describe=describe, desc="08 folds x models")
    rows = []
    for key, result in done.items():   # a cell's own model, then those trained with it (`also`), as asked for
        result = dict(result)
        also, trainings = result.pop("also", {}), result.pop("trainings", [])
        rows += [dict(model=name, trainings=trainings if name == cells[key]["model"] else [], **entry)
                 for name, entry in ((cells[key]["model"], result), *also.items()) if name in models]
    return pd.DataFrame(sorted(rows, key=lambda r: (models.index(r["model"]), r["test_fold"])))

# %%
_each = {m: FoldTraining(epochs=1) for m in ("probe", "finetune", "probe_finetune")}
cell_models = lambda models: [key.split("/")[1] for key in _cells(cv_plan([1, 2, 3]), models, _each, None)]
test_eq(cell_models(["probe", "probe_finetune"]), ["finetune"] * 3)   # the probe is fitted in the fine-tuning cell
test_eq(cell_models(["probe"]), ["probe"] * 3)                        # alone, it has cells of its own

# %% tags=["checks"]
use_test_values(globals(), epochs=1, folds=[1, 2, 3], cv_models=["logreg", "small_cnn", "probe", "probe_finetune"],
                weights="random", finetune_epochs=1)
# every fold takes every role
params = replace(study_params(globals()), train_folds=None, val_fold=None, test_fold=None)
network = as_name("network", params.network, PRETRAINED)
parse_scheduler(params.scheduler)     # a bad scheduler fails here, before any work
folds = None if folds is None else as_folds("folds", folds)
model_list = as_names("cv_models", cv_models, CV_MODELS)
reference = as_name("reference", reference, CV_MODELS)

# %% [markdown]
# ## Running it

# %%
run_path = make_run_dir(params.run_dir)
data = study_data(params)   # the default split is unused here: cv_plan gives every fold its turn
plan = cv_plan(data.meta["fold"].unique(), folds)
store = study_store(params)
fold_training = lambda epochs, seeds=1: FoldTraining(epochs, params.seed, seeds, params.batch_size,
                                                     params.selection_folds, str(store.root))
training = dict(logreg=fold_training(0), svm_rbf=fold_training(0), probe=fold_training(0),
                small_cnn=fold_training(params.epochs),
                resnet=fold_training(min(params.resnet_epochs, params.epochs), params.resnet_seeds),
                finetune=fold_training(params.finetune_epochs), probe_finetune=fold_training(params.finetune_epochs))
print(", ".join(f"{m} ({training[m].epochs} epochs" + (f", {training[m].resnet_seeds} seeds averaged)"
                                                       if m == "resnet" else ")") for m in model_list),
      f"| {len(plan)} folds", "(SYNTHETIC data)" if is_synthetic(data.ds) else "",
      f"| features: {data.cache_stats['computed']} computed, {data.cache_stats['reused']} from the cache")
transfer = None
if set(model_list) & set(TRANSFERS):   # the pretrained network's features and embeddings, once for every fold
    eat_data = study_data(params, EfficientATFeatures())
    body = transfer_body(pretrained_network(network, params.weights, params.cache_dir))   # as chapter 05 builds on it
    transfer = Transfer(body, eat_data, cached_embeddings(body, eat_data, params.cache_dir)[0], params.finetune_epochs,
                        params.finetune_init)
pd.DataFrame(plan)

# %%
record = run_path/"results"/"08_cross_validation.folds.json"
with grid_client(params.scheduler, paths=[params.cache_dir]) as client:     # None: here, one fold after another
    cv = cross_validate(plan, data, model_list, training, record_path=record, transfer=transfer,
                        place=Placement(client, params.cache_dir, params.cell_threads))
store.used += [t for ts in cv["trainings"] for t in ts]
print(store.summary())
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
# When several models are cross-validated, each is compared with the reference (by default the
# starting notebook's SmallAudioCNN) on the same test folds. Folds differ far more than models
# do, so the paired differences, not the two means, carry the comparison; with few folds the
# paired t-test has little power, and how many folds each model wins says as much.

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
                "seconds", "val_fold", "train_folds", "best_epoch")
write_results(run_path, "08_cross_validation",
              {f"{r.model}/fold{int(r.test_fold)}": {k: r[k] for k in FOLD_FIGURES} for _, r in cv.iterrows()},
              dataset=params.dataset, models=model_list, epochs=params.epochs, resnet_epochs=params.resnet_epochs,
              resnet_seeds=params.resnet_seeds, finetune_epochs=params.finetune_epochs, summary=summary,
              trainings=store.used, **data.clip_counts())

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
#| default_exp transfer

# %% [markdown]
# # Transfer: a network pretrained on AudioSet
#
# > EfficientAT's MobileNetV3, learned on two million AudioSet clips: a linear probe on its embeddings, and fine-tuned.

# %% [markdown]
# The chapters so far compare two families: engineered features (MFCC statistics with a linear
# model or an SVM, chapter 03) and CNNs learned from scratch on one or a few folds (chapter 04).
# The third family is what practitioners use today: a network trained on AudioSet (527 classes,
# two million clips), transferred. Here it is EfficientAT's `mn04_as` (notebook 05a), a
# MobileNetV3 of about 1 M parameters, used three ways:
#
# * **a probe**: the network is frozen; its penultimate layer and three intermediate blocks,
#   pooled, give each clip an embedding, and a standardised logistic regression, with its
#   regularisation chosen on validation, classifies them;
# * **fine-tuning**: the network, starting from the probe as its 10-class head, trained gently
#   with the study's own loop (notebooks 04c and 04e) after EfficientAT's own recipe;
# * **the pair**: the mean of the two's class probabilities.
#
# All three are saved as checkpoints that `urbansound-nb predict` uses unchanged: the network,
# its front end's parameters and the class names. Every estimate is rotated over the non-test
# folds (notebook 03b), and the chapter ends with the three families side by side on the same
# split and the study's choice among all of them, by a rule stated before the figures; the chosen
# model is then refit on every non-test fold and served.

# %%
#| export
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from urbansound_nb.batches import StudyData
from urbansound_nb.models import EfficientAT, build_model, checkpoint_dict
from urbansound_nb.selection import select_on_validation
from urbansound_nb.store import TrainingStore, fit, split_folds
from urbansound_nb.train import TrainOptions, predict_logits


# %%
import dataclasses
import time
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from fastcore.test import test_eq, test_close
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import batch_frames, study_data
from urbansound_nb.core import make_run_dir, read_results, write_results
from urbansound_nb.metrics import evaluate, result_entry
from urbansound_nb.models import n_parameters
from urbansound_nb.params import as_bool, as_name, study_params, use_test_values
from urbansound_nb.pretrained import (PRETRAINED, EfficientATFeatures, audioset_labels, audioset_top, cached_embeddings,
                                      pretrained_network)
from urbansound_nb.selection import (SELECTION_RULE, choose_model, rotated_estimate, rotation_indices,
                                     validation_rotations)
from urbansound_nb.models import save_checkpoint
from urbansound_nb.store import refit_data, study_store

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
# (network, weights, finetune_init, finetune_epochs and batch_size are shared: chapter 08 cross-validates the same
# network the same way)
refit = True            # train the chosen model again on every non-test fold, and serve that

# %% tags=["checks"]
use_test_values(globals(), weights="random", finetune_epochs=1)
params = study_params(globals())
network = as_name("network", params.network, PRETRAINED)
refit = as_bool("refit", refit)

# %% [markdown]
# ## The network and its features
#
# Every clip's input, the network's own 128-band log-mel at 32 kHz, is computed once and cached
# like chapter 02's features. (Under `nbdev-test`, `weights="random"` gives a randomly
# initialised network of the same architecture, so that the chapter runs without the weights.)

# %%
run_path = make_run_dir(params.run_dir)
t0 = time.time()
data = study_data(params, EfficientATFeatures())
feature_seconds = time.time() - t0
split, labels = data.split, data.logmels.labels.numpy()
net = pretrained_network(network, params.weights, params.cache_dir)
print(f"{len(data.ds):,} clips", "(SYNTHETIC)" if is_synthetic(data.ds) else "",
      f"| features: {data.cache_stats['computed']} computed, {data.cache_stats['reused']} from the cache "
      f"({feature_seconds:.0f} s) | input {data.fp.n_mels} x {data.n_frames}")
print(f"{network}: {n_parameters(net):,} parameters, weights {net.weights_path or 'random'}")

# %% [markdown]
# ## What AudioSet already hears
#
# Before any transfer, the network's own AudioSet head on one training clip of each class: a
# reader can check that it hears the sounds for what they are.

# %%
names = audioset_labels(net.weights_path, params.cache_dir)
first = data.meta.iloc[data.train].groupby("classID").head(1).sort_values("classID")
heard = audioset_top(net, batch_frames(data.logmels, list(first.index), data.n_frames), names)
pd.DataFrame({"class": first["class"].values, "clip": first["slice_file_name"].values,
              "AudioSet's top three": ["; ".join(f"{n} {p:.2f}" for n, p in top) for top in heard]})

# %% [markdown]
# ## A linear probe on frozen embeddings
#
# Each clip's embedding is the penultimate layer (notebook 05a) and, beside it, the mean and the
# maximum of three intermediate blocks' outputs (`POOLED_BLOCKS`: 10, 13 and 16; 1,472 numbers
# in all), computed once and cached. The intermediate blocks keep textures and short events that
# the last layer averages away; rotated over every fold of the mini data they added 0.6 points to
# the probe (1.5 on two rotations earlier), and since the network's last layer reads them too
# (notebook 04a), the probe still folds into one network. The probe is a standardised logistic
# regression. Its `C` is chosen on validation rotated over the non-test
# folds (notebook 03b): one probe per `C` on each rotation's training folds, the best mean wins,
# and the probe fitted on the study's own split scores the test fold once. The standardisation
# and the regression are both linear, so they fold into one linear layer on the network: the
# probe is saved as a network with a 10-class head, which `predict` runs like any checkpoint.

# %%
#| export
def body_state(network: EfficientAT) -> dict:
    "Every weight of `network` but its last layer's (AudioSet's head), to start a 10-class network from."
    return {k: v for k, v in network.state_dict().items() if not k.startswith("net.classifier.5.")}

POOLED_BLOCKS = (10, 13, 16)   # intermediate blocks whose pooled outputs the probe reads beside the penultimate layer

def transfer_body(network: EfficientAT, pooled_blocks=POOLED_BLOCKS) -> EfficientAT:
    "The pretrained `network` as the body the transfers build on: its weights, reading `pooled_blocks` too."
    body = EfficientAT(network.width, n_classes=network.net.classifier[5].out_features, pooled_blocks=pooled_blocks)
    body.load_state_dict(body_state(network), strict=False)          # its last layer is a stand-in: never used
    body.weights_path = getattr(network, "weights_path", None)          # where it came from, for the records
    body.weights_sha = getattr(network, "weights_sha", "random")
    return body.eval()

def network_config(body: EfficientAT, n_classes: int) -> dict:
    "The configuration of a 10-class network on `body` (as a checkpoint records it)."
    return dict(width=body.width, n_classes=n_classes, **({"pooled_blocks": list(body.pooled_blocks)}
                                                          if body.pooled_blocks else {}))

PROBE_C = (0.01, 0.03, 0.1, 0.3, 1.0)  # the probe's regularisations, chosen among on validation

def probe_pipeline(C: float = 1.0):
    "Standardised embeddings -> multinomial logistic regression."
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))

def probe_network(body: EfficientAT, probe, n_classes: int) -> EfficientAT:
    "`body` with its last layer replaced by a fitted `probe_pipeline`, standardisation folded in: one network."
    scaler, logreg = probe.named_steps["standardscaler"], probe.named_steps["logisticregression"]
    w = torch.as_tensor(logreg.coef_ / scaler.scale_, dtype=torch.float32)
    b = torch.as_tensor(logreg.intercept_ - (logreg.coef_ * scaler.mean_ / scaler.scale_).sum(1), dtype=torch.float32)
    model = EfficientAT(**network_config(body, n_classes))
    model.load_state_dict(body_state(body), strict=False)
    with torch.no_grad():
        model.net.classifier[5].weight.copy_(w)
        model.net.classifier[5].bias.copy_(b)
    return model.eval()

# %%
_X, _y = np.random.default_rng(0).normal(size=(40, 512)).astype(np.float32), np.arange(40) % 3
_probe = probe_pipeline().fit(_X, _y)
_folded = probe_network(EfficientAT(0.4, 527), _probe, 3).net.classifier[5]
test_close(_folded(torch.from_numpy(_X)).softmax(-1).detach().numpy(), _probe.predict_proba(_X), eps=1e-4)
_body = transfer_body(EfficientAT(0.4, 527))
_x = torch.randn(2, 128, 100)
_wide = probe_pipeline().fit(_body.embed(_x).detach().numpy().repeat(20, 0), np.arange(40) % 2)
_net = probe_network(_body, _wide, 2)                   # the probe on pooled blocks is still one network
test_eq(network_config(_body, 2)["pooled_blocks"], [10, 13, 16])
test_close(_net(_x).softmax(-1).detach().numpy(), _wide.predict_proba(_body.embed(_x).detach().numpy()), eps=1e-4)

# %% [markdown]
# `fit_probe` does all of it, for this chapter and for chapter 08's folds alike: the choice of
# `C` on the given (training, validation) splits, the test fold once, and the folded network of
# each split (the study's first). `transfer_checkpoint` saves one such network, or several averaged
# (an ensemble), as `predict` reads them.

# %%
#| export
def fit_probe(network: EfficientAT, embeddings: np.ndarray, data: StudyData, splits) -> tuple[dict, list]:
    "A probe on `embeddings`, its C chosen on `splits` (the first: `data`'s own), tested once: (entry, [network])."
    labels = data.logmels.labels.numpy()
    entry, probes = select_on_validation(probe_pipeline, [dict(C=c) for c in PROBE_C], embeddings, labels, splits,
                                         data.test, data.split.classes)
    return entry, [probe_network(network, probe, len(data.split.classes)) for probe in probes]

# %%
#| export
def transfer_checkpoint(members: list, data: StudyData, body: EfficientAT, **info) -> dict:
    "The checkpoint of one fine-tuned or probe network, or of several averaged (an ensemble), as `predict` reads it."
    config = network_config(body, len(data.split.classes))
    if len(members) == 1:
        return checkpoint_dict(members[0], "efficientat", config, data.fp, data.split.classes, data.clip_seconds,
                               folds=split_folds(data), **info)
    pair_config = dict(members=[dict(model="efficientat", config=config)] * len(members))
    pair = build_model("ensemble", **pair_config)
    for slot, member in zip(pair.members, members): slot.load_state_dict(member.state_dict())
    return checkpoint_dict(pair.eval(), "ensemble", pair_config, data.fp, data.split.classes, data.clip_seconds,
                           folds=split_folds(data), **info)

# %%
body = transfer_body(net)           # the pretrained network reading the pooled blocks too
embeddings, embedding_stats = cached_embeddings(body, data, params.cache_dir)
print(f"embeddings {embeddings.shape}: {embedding_stats}")
rotations = validation_rotations(split.train_folds, split.val_fold, params.selection_folds)
splits = rotation_indices(data.meta["fold"].values, rotations)
results = {}
results["probe"], probe_models = fit_probe(body, embeddings, data, splits)
probe_model = probe_models[0]
results["probe"].update(parameters=n_parameters(probe_model), checkpoint="models/probe.pt",
                        embedding_seconds=embedding_stats["seconds"],
                        embedding_clips_per_second=embedding_stats["clips_per_second"])
save_checkpoint(transfer_checkpoint([probe_model], data, body, network=network, weights_sha256=net.weights_sha,
                                    val_accuracy=results["probe"]["val_accuracy"]), run_path/"models"/"probe.pt")
# the folded network scores the validation clips as the probe does
folded_val = predict_logits(probe_model, data.logmels, data.val, data.n_frames).argmax(1).numpy()
test_close((folded_val == labels[data.val]).mean(), results["probe"]["val_accuracy"], eps=0.02)
pd.DataFrame(results["probe"]["validation_grid"])

# %% [markdown]
# ## Fine-tuning the whole network
#
# The network trains with the study's loop (`fit`, notebook 04e) and its `efficientat` recipe
# (notebook 04c). It starts from the AudioSet weights with the fitted probe as its 10-class head
# (`finetune_init = "probe"`: linear probing, then fine-tuning; Kumar et al., ICLR 2022), so no
# random head pulls the pretrained features about in the first steps. The recipe follows
# EfficientAT's own fine-tuning (its `ex_esc50.py`), scaled to the few epochs two CPU cores
# afford: a low peak rate reached by a linear warm-up and ramped down linearly to 1% of it, no
# weight decay, mixup of the log-mels, and a time roll, a gain of +-12 dB and two frequency masks
# per clip (`roll_gain_mask`, notebook 04b). Its batch norms keep AudioSet's statistics and its
# first 13 of its 17 feature blocks are held, so only the last four and the head move: on mini that gave the
# steadiest validation curves of the variants tried, at 2.6x less cost per epoch. The validation
# fold chooses the epoch. The trials behind it (rates, batch norms, frozen blocks, more epochs)
# are on the explanations page.
#
# The network is fine-tuned on every rotation, each from that rotation's own probe: the study's
# split first (its model is the one tested and saved), then the others, which serve only the
# rotated estimate. Each training is a cell of the store (notebook 04e): chapter 08 reads the
# study's split back instead of training it again.

# %%
#| export
def fit_finetune(network: EfficientAT, data: StudyData, *, epochs: int, seed: int = 0, head: EfficientAT | None = None,
                 out_dir=None, progress: bool = True, store: TrainingStore | None = None, **overrides):
    "Fine-tune `network` on `data` with the `efficientat` recipe, from `head`'s 10-class head if given, else a new one."
    start = head.state_dict() if head is not None else body_state(network)
    options = TrainOptions(config=network_config(network, len(data.split.classes)), init_state=start,
                           save_as="finetune")
    return fit("efficientat", data, epochs=epochs, seed=seed, out_dir=out_dir, progress=progress, options=options,
               store=store, **overrides)

def class_probabilities(models, data: StudyData, idx) -> torch.Tensor:
    "The mean of `models`' class probabilities on clips `idx` (every window of a clip longer than the input)."
    return torch.stack([predict_logits(m, data.logmels, idx, data.n_frames, multicrop=True).softmax(-1)
                        for m in models]).mean(0)

# %%
store = study_store(params)
predict = lambda models, idx: class_probabilities(models, data, idx).argmax(1).numpy()
head_of = lambda probe: probe if params.finetune_init == "probe" else None
finetuned, histories, rotation_accuracy = [], [], dict(finetune=[], probe_finetune=[])
for k, ((tr, va), rotated_probe) in enumerate(zip(splits, probe_models)):
    tuned, h = fit_finetune(body, dataclasses.replace(data, train=tr, val=va), epochs=params.finetune_epochs,
                            seed=params.seed, head=head_of(rotated_probe), store=store, batch_size=params.batch_size,
                            out_dir=run_path/"models" if k == 0 else None)
    finetuned.append(tuned)
    histories.append(h)
    for name, members in (("finetune", [tuned]), ("probe_finetune", [rotated_probe, tuned])):
        rotation_accuracy[name].append(float((predict(members, va) == labels[va]).mean()))
history, finetune_seconds = histories[0], sum(r["seconds"] for r in histories[0]["history"])
results["finetune"] = result_entry(labels[data.val], predict(finetuned[:1], data.val), labels[data.test],
                                   predict(finetuned[:1], data.test), split.classes, len(data.train), finetune_seconds,
                                   epochs=history["stopped_epoch"], best_epoch=history["best"]["epoch"],
                                   rotation_best_epochs=[h["best"]["epoch"] for h in histories],
                                   parameters=n_parameters(finetuned[0]), checkpoint="models/finetune.pt",
                                   init=params.finetune_init)
fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
for (r, h), color in zip(zip(rotations, histories), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
    epochs_run = [e["epoch"] for e in h["history"]]
    ax.plot(epochs_run, [e["val_accuracy"] for e in h["history"]], "-o", color=color,
            label=f"validation, fold {r['val_fold']} (trained on {'+'.join(map(str, r['train_folds']))})")
    ax.plot(epochs_run, [e["train_accuracy"] for e in h["history"]], "--", color=color, alpha=0.5)
ax.set(title=f"Fine-tuning {network}: accuracy per epoch (dashed: mixed training batches)", xlabel="epoch",
       ylabel="accuracy", ylim=(0, 1))
ax.legend(fontsize=8)
plt.show()
print(store.summary())

# %% [markdown]
# ## The probe and the fine-tuned network together
#
# The probe keeps AudioSet's features as they are; fine-tuning moves them towards these ten
# classes. Both read the same input, so they can be averaged like chapter 04's seeds
# (`SeedEnsemble`: the mean of their class probabilities), as one checkpoint. Whether the average
# is the study's model is decided, like everything else, on validation, rotated like the others.

# %%
pair = [probe_model, finetuned[0]]
results["probe_finetune"] = result_entry(labels[data.val], predict(pair, data.val), labels[data.test],
                                         predict(pair, data.test), split.classes, len(data.train),
                                         results["probe"]["seconds"] + finetune_seconds,
                                         parameters=sum(n_parameters(m) for m in pair),
                                         checkpoint="models/probe_finetune.pt")
save_checkpoint(transfer_checkpoint(pair, data, body, network=network,
                                    val_accuracy=results["probe_finetune"]["val_accuracy"]),
                run_path/"models"/"probe_finetune.pt")
for name, accuracies in rotation_accuracy.items():
    results[name].update(rotated_estimate(accuracies, [len(va) for _, va in splits]))
pd.DataFrame(results).T[["val_accuracy", "val_mean", "val_sd", "n_val_total", "test_accuracy", "macro_f1", "seconds"]]

# %% [markdown]
# ## Three families, one split, one choice
#
# Every model of the study on the same folds: chance (chapter 03's majority class), MFCC
# statistics with logistic regression and an RBF SVM (chapter 03), SmallAudioCNN and UrbanResNet
# (chapter 04), and the three transfers. Training time is this run's wall time on this machine
# (the transfers' includes no pretraining, which AudioSet paid for); parameters count the
# network's weights (none for chance, and the fitted coefficients are not counted for the
# classical models).
#
# The study's model is chosen among all of them by the rule of notebook 03b, stated here before
# the figures it is applied to, on validation accuracy averaged over the rotations. That model is
# what `best_model` names in the results, what chapter 06 analyses, and the checkpoint that
# `urbansound-nb predict` is pointed at (`best_checkpoint`).

# %%
#| export
FAMILIES = {"majority": "chance", "logreg": "engineered features", "svm_rbf": "engineered features",
            "small_cnn": "CNN from scratch", "resnet": "CNN from scratch",
            "probe": "pretrained, transferred", "finetune": "pretrained, transferred",
            "probe_finetune": "pretrained, transferred"}
ENSEMBLES = {"probe_finetune": ("probe", "finetune")}   # candidates that average other candidates
TRANSFERS = ("probe", "finetune", "probe_finetune")     # this chapter's candidates

def comparison_table(entries: dict) -> pd.DataFrame:
    "One row per model: family, validation (own fold, rotated mean and sd), test, F1, seconds, parameters."
    rows = {name: dict(family=FAMILIES.get(name, "?"), val_accuracy=e["val_accuracy"],
                       val_mean=e.get("val_mean", e["val_accuracy"]), val_sd=e.get("val_sd"),
                       n_val_total=e.get("n_val_total", e.get("n_val")), test_accuracy=e["test_accuracy"],
                       macro_f1=e["macro_f1"], seconds=e.get("seconds"), parameters=e.get("parameters"),
                       ensemble=name in ENSEMBLES, checkpoint=e.get("checkpoint"))
            for name, e in entries.items()}
    return pd.DataFrame(rows).T

# %%
_t = comparison_table({"probe": dict(val_accuracy=0.7, test_accuracy=0.6, macro_f1=0.5, n_val=10),
                       "probe_finetune": dict(val_accuracy=0.7, val_mean=0.72, val_sd=0.01, n_val_total=20,
                                              test_accuracy=0.6, macro_f1=0.5)})
test_eq(_t.loc["probe", "val_mean"], 0.7)
test_eq(_t["ensemble"].tolist(), [False, True])

# %%
def earlier_entries(notebook: str, names) -> dict:
    path = run_path/"results"/f"{notebook}.json"
    return {k: v for k, v in read_results(run_path, notebook)["entries"].items() if k in names} if path.exists() else {}
earlier = {**earlier_entries("03_baselines", ("majority", "logreg", "svm_rbf")),
           **earlier_entries("04_cnn", ("small_cnn", "resnet"))}
table = comparison_table({**earlier, **results})
best_model, table, reason = choose_model(table)
rotated_over = ", ".join(str(r["val_fold"]) for r in rotations)
only_one = "" if len(rotations) > 1 else " (only one: selection_folds is 1 or there is one non-test fold)"
display(Markdown(f"**The rule, fixed before this run.** {SELECTION_RULE}\n\n**Validation folds:** "
                 f"{rotated_over}{only_one}. {reason}"))
fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
x, width = np.arange(len(table)), 0.38
ax.bar(x - width / 2, table["val_mean"].astype(float), width, yerr=table["val_sd"].astype(float).fillna(0),
       color="tab:gray", capsize=3, label=f"validation, mean over folds {rotated_over} (bar: sd)")
ax.bar(x + width / 2, table["test_accuracy"].astype(float), width, color="tab:blue",
       label=f"test fold {split.test_fold}, once")
ax.set_xticks(x, [f"{m}\n(chosen)" if m == best_model else m for m in table.index], rotation=20)
ax.set(title="Every family: validation chooses, the test fold reports", xlabel="model", ylabel="accuracy",
       ylim=(0, 1.12))
ax.legend(loc="upper left", fontsize=8, ncols=2)
plt.show()
percent = lambda column: column.astype(float).map("{:.1%}".format)
spread = table.val_sd.astype(float).fillna(0).map(lambda sd: f" ± {100 * sd:.1f}")
pd.DataFrame({"family": table.family, f"validation, fold {split.val_fold}": percent(table.val_accuracy),
              "validation, mean ± sd": percent(table.val_mean) + spread,
              "tied": table.tied.map({True: "yes", False: ""}),
              f"test, fold {split.test_fold}": percent(table.test_accuracy),
              "macro F1": table.macro_f1.astype(float).round(3),
              "parameters": table.parameters.map(lambda n: f"{int(n):,}" if pd.notna(n) else "")})

# %% [markdown]
# ## The chosen model, refit on every non-test fold
#
# The rotations chose a model and its settings; the models behind those figures each saw only part
# of the non-test data. As scikit-learn's `GridSearchCV(refit=True)` does, the chosen model is then
# trained once more, with the chosen settings, on every non-test fold, training and validation
# folds together: the probe with the chosen `C`, and a network for the number of epochs the
# rotations chose (their best epochs' mean, on the same schedule, which it stops short of; a
# refit has no validation clips to choose by). The refit model is tested once, on the same test
# fold, saved as `models/<model>.refit.pt`, and it is what `best_checkpoint` names: `predict` and
# chapter 06 use it. The table above keeps every candidate's test figure from the study's split,
# so that candidates stay comparable. (`-p refit false` serves the study's split model instead.)

# %%
#| export
def refit_probe(network: EfficientAT, embeddings: np.ndarray, data: StudyData, setting: dict) -> EfficientAT:
    "The probe with the chosen `setting` fitted on `data`'s training clips (a refit's: every non-test fold), folded."
    labels = data.logmels.labels.numpy()
    probe = probe_pipeline(**setting).fit(embeddings[data.train], labels[data.train])
    return probe_network(network, probe, len(data.split.classes))

def refit_epochs(best_epochs) -> int:
    "The epochs a refit trains: the mean of the rotations' best epochs (of every member of an ensemble), rounded."
    flat = np.concatenate([np.atleast_1d(np.asarray(e, dtype=float)) for e in best_epochs])
    return max(1, int(round(float(flat.mean()))))

# %%
test_eq(refit_epochs([3, [2, 4], 5]), 4)
test_eq(refit_epochs([1]), 1)

# %%
every = refit_data(data)
refit_entry, best_checkpoint = None, table.loc[best_model, "checkpoint"] or None
if refit and best_model in TRANSFERS:
    t0 = time.time()
    refit_probe_model = refit_probe(body, embeddings, every, results["probe"]["chosen"])
    stop = None if best_model == "probe" else refit_epochs(results["finetune"]["rotation_best_epochs"])
    refit_tuned = None if stop is None else fit_finetune(
        body, every, epochs=params.finetune_epochs, seed=params.seed, head=head_of(refit_probe_model), store=store,
        batch_size=params.batch_size, stop_after=stop)[0]
    refit_models = dict(probe=[refit_probe_model], finetune=[refit_tuned],
                        probe_finetune=[refit_probe_model, refit_tuned])[best_model]
    best_checkpoint = f"models/{best_model}.refit.pt"
    save_checkpoint(transfer_checkpoint(refit_models, every, body, network=network, refit=True),
                    run_path/best_checkpoint)
    scores = evaluate(labels[data.test], predict(refit_models, data.test), split.classes)
    refit_entry = dict(model=best_model, checkpoint=best_checkpoint, train_folds=split_folds(every)["train"],
                       n_train=len(every.train), n_test=len(data.test), epochs=stop, seconds=round(time.time() - t0, 1),
                       test_accuracy=scores["accuracy"], macro_f1=scores["macro_f1"],
                       per_class_accuracy=scores["per_class_accuracy"])
    refit_line = (f"Refit: **{best_model}** trained again on folds {'+'.join(map(str, refit_entry['train_folds']))} "
                  f"({len(every.train):,} clips)" + (f", its network for {stop} epochs" if stop else "") +
                  f": {scores['accuracy']:.1%} on test fold {split.test_fold}, against "
                  f"{table.loc[best_model, 'test_accuracy']:.1%} for its model of the study's split. Saved as "
                  f"`{best_checkpoint}`, which `predict` and chapter 06 use.")
elif refit:
    refit_line = (f"{best_model} is not one of this chapter's transfers, so it is served as trained on the study's "
                  "split (chapter 05 refits the transfers only).")
else: refit_line = "No refit (`refit` is false): the study's split model is served."
Markdown(refit_line)

# %% [markdown]
# ## What this run says

# %%
best = table.loc[best_model]
lines = [f"Chosen on validation by the rule above, the study's model is **{best_model}** ({best['family']}): "
         f"{best['val_mean']:.1%} on validation (mean over folds {rotated_over}), {best['test_accuracy']:.1%} on test "
         f"fold {split.test_fold}, scored once."]
lines.append(refit_line)
lines.append(f"`urbansound-nb predict {params.run_dir}` classifies audio files with `{best_checkpoint}`." if
             best_checkpoint else "It is not a network, so no checkpoint serves `predict`; the study names it all "
             "the same, and chapter 06 analyses the best network.")
described = {"probe": "linear probe", "finetune": "fine-tuned network", "probe_finetune": "average of the two"}
for name, what in described.items():
    r = results[name]
    lines.append(f"The {what} scores {r['val_mean']:.1%} / {r['test_accuracy']:.1%} (validation mean / test) "
                 f"in {r['seconds']:.0f} s.")
scratch = [n for n in ("small_cnn", "resnet") if n in table.index]
if scratch:
    top = max(scratch, key=lambda n: table.loc[n, "val_mean"])
    gain = results["probe"]["test_accuracy"] - table.loc[top, "test_accuracy"]
    lines.append(f"Against the best CNN learned here from scratch ({top}, {table.loc[top, 'test_accuracy']:.1%} "
                 f"on test), the probe, which learns only a linear layer, gains {100 * gain:+.1f} points.")
Markdown(" ".join(lines))

# %%
write_results(run_path, "05_transfer", results, dataset=params.dataset, best_model=best_model,
              best_checkpoint=best_checkpoint, network=network, weights_sha256=net.weights_sha,
              selection=dict(rule=SELECTION_RULE, reason=reason, rotations=rotations),
              comparison=table.reset_index(names="model").to_dict("records"),
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold),
              features=dict(feature_key=data.fp.key, n_frames=data.n_frames, seconds=round(feature_seconds, 1)),
              embeddings=embedding_stats, history=history["history"], refit=refit_entry,
              rotation_histories=[h["history"] for h in histories], trainings=store.used, **data.clip_counts())

# %%
#| default_exp transfer

# %% [markdown]
# # Transfer: a network pretrained on AudioSet
#
# > EfficientAT's MobileNetV3, learned on two million AudioSet clips: a linear probe on its embeddings, and fine-tuned.

# %% [markdown]
# The third family is what practitioners use today: a network trained on AudioSet (527 classes, two million clips),
# transferred; here EfficientAT's `mn04_as` (notebook 05a), a MobileNetV3 of about 1 M parameters. The registry's
# family **pretrained** (notebook 05b) uses it four ways:
#
# * **probe**: the network frozen, its penultimate layer and three pooled intermediate blocks as each clip's
#   embedding, and a standardised logistic regression (`C` chosen on the rotations), folded into the network's last
#   layer;
# * **finetune**: the network, starting from the probe as its head, trained gently with the study's loop after
#   EfficientAT's own recipe (`efficientat`, notebook 04c);
# * **probe_finetune**: the mean of the two's probabilities;
# * **finetune_ensemble**: `finetune_seeds` fine-tunings, each from the same probe, averaged.
#
# Every estimate is rotated over the non-test folds; the choice among every family is the next chapter's.

# %%
import time
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from fastcore.test import test_close
from urbansound_nb.audio import is_synthetic
from urbansound_nb.batches import batch_frames
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.models import n_parameters
from urbansound_nb.params import as_name, study_params, use_test_values
from urbansound_nb.pretrained import PRETRAINED, audioset_labels, audioset_top, pretrained_network
from urbansound_nb.registry import family_fits, study_models
from urbansound_nb.train import predict_logits

# %%
#| export
FAMILIES = ("pretrained",)   # the family this chapter presents

# %% tags=["parameters"]
# the shared parameters are notebook 00a's: the models, the `network`, its `weights`, `finetune_epochs`,
# `finetune_seeds`, `finetune_init`, `batch_size`, the folds, `seed`, ...; set any of them here to override

# %% tags=["checks"]
use_test_values(globals(), weights="random", finetune_epochs=1, finetune_seeds=2)
params = study_params(globals())
network = as_name("network", params.network, PRETRAINED)
models = study_models(params, FAMILIES)

# %% [markdown]
# ## The fits
#
# The network's own 128-band log-mels at 32 kHz and its embeddings are computed once and cached (notebook 05a); each
# model is fitted on each rotation as cells of one grid, through the store. (Under `nbdev-test`, `weights="random"`
# gives a randomly initialised network.)

# %%
run_path = make_run_dir(params.run_dir)
t0 = time.time()
fits = family_fits(params, FAMILIES, run_path, desc="05 fits")
inputs = fits.inputs["efficientat"]
data, results, split = inputs.data, fits.results, inputs.data.split
print(f"{len(data.ds):,} clips", "(SYNTHETIC)" if is_synthetic(data.ds) else "",
      f"| features: {data.cache_stats['computed']} computed, {data.cache_stats['reused']} from the cache "
      f"| input {data.fp.n_mels} x {data.n_frames} | embeddings {inputs.embeddings.shape} | {time.time() - t0:.0f} s")
print(f"{network}: {n_parameters(inputs.body):,} parameters, weights {inputs.body.weights_path or 'random'}")
pd.DataFrame(fits.trainings)

# %% [markdown]
# ## What AudioSet already hears
#
# The network's own AudioSet head on one training clip of each class, before any transfer:

# %%
net = pretrained_network(network, params.weights, params.cache_dir)
names = audioset_labels(net.weights_path, params.cache_dir)
first = data.meta.iloc[data.train].groupby("classID").head(1).sort_values("classID")
heard = audioset_top(net, batch_frames(data.logmels, list(first.index), data.n_frames), names)
pd.DataFrame({"class": first["class"].values, "clip": first["slice_file_name"].values,
              "AudioSet's top three": ["; ".join(f"{n} {p:.2f}" for n, p in top) for top in heard]})

# %% [markdown]
# ## The probe
#
# One probe per `C` on each rotation; the best mean wins. Folded into the network's last layer, it scores the
# validation clips as the regression does:

# %%
if "probe" in models:
    display(pd.DataFrame(fits.record("probe")["validation_grid"]))
    from urbansound_nb.models import load_checkpoint
    folded, _ = load_checkpoint(run_path/"models"/"probe.pt")
    val_idx = fits.tasks["probe"][0].indices(data.clips)[1]
    folded_val = predict_logits(folded, data.logmels, val_idx, data.n_frames).argmax(1).numpy()
    test_close((folded_val == data.logmels.labels.numpy()[val_idx]).mean(), results["probe"]["val_accuracy"],
               eps=0.02)

# %% [markdown]
# ## Fine-tuning the whole network
#
# The network starts from the AudioSet weights with the rotation's own probe as its head (`finetune_init = "probe"`:
# linear probing, then fine-tuning; Kumar et al., ICLR 2022), so no random head pulls the features about. The recipe
# follows EfficientAT's `ex_esc50.py`, scaled to what two CPU cores afford: a linear warm-up to a low peak ramped down
# to 1% of it, no weight decay, mixup, and a time roll, a gain and two frequency masks per clip (notebook 04b). Its
# batch norms keep AudioSet's statistics and its first 13 of 17 blocks are held: on mini the steadiest validation
# curves of the variants tried, at 2.6x less cost per epoch (explanations). The validation fold chooses the epoch.

# %%
if "finetune" in models:
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    for k, color in zip(range(len(fits.tasks["finetune"])), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        record, task = fits.record("finetune", k), fits.tasks["finetune"][k]
        epochs_run = [e["epoch"] for e in record["history"]]
        ax.plot(epochs_run, [e["val_accuracy"] for e in record["history"]], "-o", color=color,
                label=f"validation, fold {task.val_fold} (trained on {'+'.join(map(str, task.train_folds))})")
        ax.plot(epochs_run, [e["train_accuracy"] for e in record["history"]], "--", color=color, alpha=0.5)
    ax.set(title=f"Fine-tuning {network}: accuracy per epoch (dashed: mixed training batches)", xlabel="epoch",
           ylabel="accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# ## Averages of networks
#
# The probe keeps AudioSet's features; fine-tuning moves them towards these classes, each seed its own way. They
# average like chapter 04's seeds; whether an average is the study's model is the next chapter's choice.

# %%
table = pd.DataFrame(results).T[["val_accuracy", "val_mean", "val_sd", "n_val_total", "test_accuracy", "macro_f1",
                                 "parameters", "seconds"]]
table

# %%
best_name = max(models, key=lambda k: results[k]["val_mean"])
lines = [f"{results[m]['description']}: {results[m]['val_mean']:.1%} / {results[m]['test_accuracy']:.1%} "
         f"(validation mean / test fold {split.test_fold})." for m in models]
lines.append(f"The best validation mean is {best_name}'s; chapter 06 weighs every family by its rule.")
Markdown(" ".join(lines))

# %%
write_results(run_path, "05_transfer", results, dataset=params.dataset, best_model=best_name, families=FAMILIES,
              network=network, weights_sha256=inputs.weights_sha,
              split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold),
              features=dict(feature_key=data.fp.key, n_frames=data.n_frames), trainings=fits.trainings,
              **data.clip_counts())

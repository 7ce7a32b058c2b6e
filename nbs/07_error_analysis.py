# %%
#| default_exp analysis

# %% [markdown]
# # Error analysis
#
# > Where the study's model goes wrong: confusions, confident mistakes, salience and duration.

# %% [markdown]
# The study's model, as chapter 06 chose and serves it, scored on the test fold and its errors taken apart;
# predictions are joined to clips by file name, never by position (notebook 06c classifies new files, as
# `urbansound-nb predict` does).

# %%
#| export
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from urbansound_nb.batches import LogMelSet, StudyData, batch_frames
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import CheckpointError
from urbansound_nb.store import split_folds

# %%
from types import SimpleNamespace
from IPython.display import Markdown, display
from fastcore.test import test_eq, test_fail
from sklearn.metrics import classification_report
from urbansound_nb.audio import decode_row, is_synthetic
from urbansound_nb.eda import ClipPlayer
from urbansound_nb.batches import study_data
from urbansound_nb.core import make_run_dir, read_choice, write_results
from urbansound_nb.metrics import confusion_pair, evaluate
from urbansound_nb.params import as_int, as_name, study_params, use_test_values
from urbansound_nb.pretrained import feature_params
from urbansound_nb.models import load_checkpoint
from urbansound_nb.registry import family_fits, list_models
from urbansound_nb.train import predict_logits

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
model_name = None       # None: the study's model (chapter 06's choice); else a model of the registry the run fitted
n_examples = 6          # clips in each of the "confident mistakes" and "doubtful successes" tables

# %% [markdown]
# ## The model and the test fold
#
# The study's model as chapter 06 serves it (`read_choice`), or, with `model_name`, that model as its family chapter
# fitted it on the study's split.

# %% [markdown]
# The checkpoint must come from this run's split: one from a reused run directory with other folds may have trained on
# the clips it is about to be tested on. A checkpoint records its folds, and a mismatch stops here.

# %%
#| export
def check_checkpoint_split(ck: dict, data: StudyData, path) -> None:
    "Refuse a checkpoint whose classes or folds differ from those of this run's `data`: its test would not be held out."
    classes = list(data.split.classes)
    if ck["classes"] != classes:
        raise CheckpointError(f"{path}: its classes {ck['classes']} differ from this dataset's {classes}")
    have, want = ck.get("folds"), split_folds(data)
    if have is None: raise CheckpointError(f"{path}: records no folds, so its test fold cannot be checked")
    seen, non_test = set(have["train"] + have["val"]), set(want["train"] + want["val"])
    if have["test"] == want["test"] and seen <= non_test: return     # this split, or a refit on its non-test folds
    seen = " It has seen this run's test fold." if set(want["test"]) & set(have["train"] + have["val"]) else ""
    raise CheckpointError(f"{path} was trained on folds {have['train']} and validated on {have['val']}, "
                          f"but this run trains on {want['train']}, validates on {want['val']} and tests on "
                          f"{want['test']}.{seen} Run chapter 04 "
                          "with the same folds and another run directory, or pass that run's directory here.")

# %%
_d = SimpleNamespace(split=SimpleNamespace(classes=["a", "b"]), meta=pd.DataFrame(dict(fold=[1, 1, 2, 3])),
                     train=[0, 1], val=[2], test=[3])
check_checkpoint_split(dict(classes=["a", "b"], folds=dict(train=[1], val=[2], test=[3])), _d, "m.pt")
check_checkpoint_split(dict(classes=["a", "b"], folds=dict(train=[1, 2], val=[], test=[3])), _d, "m.pt")   # a refit
test_fail(lambda: check_checkpoint_split(dict(classes=["a", "b"]), _d, "m.pt"), contains="records no folds")
_seen_test = dict(classes=["a", "b"], folds=dict(train=[3], val=[2], test=[1]))
test_fail(lambda: check_checkpoint_split(_seen_test, _d, "m.pt"),
          contains="It has seen this run's test fold")
test_fail(lambda: check_checkpoint_split(dict(classes=["b", "a"]), _d, "m.pt"), contains="m.pt: its classes")

# %% tags=["checks"]
stand_in = use_test_values(globals(), epochs=2, models=["small_cnn"], model_name="small_cnn")
params = study_params(globals())
model_name = None if model_name is None else as_name("model_name", model_name, list_models())
n_examples = as_int("n_examples", n_examples, 1)

# %%
run_path = make_run_dir(params.run_dir)
if stand_in: family_fits(params, ("from scratch",), run_path)     # nbdev-test runs this chapter alone
served = None if model_name else read_choice(run_path)             # chapter 06's choice, as it serves it
name, ckpt = (model_name, run_path/f"models/{model_name}.pt") if model_name else (served["model"],
                                                                                   run_path/served["checkpoint"])
print(f"analysed: {name}", "(as asked)" if model_name else f"(the study's model; refit: {served['refit']})")
model, checkpoint = load_checkpoint(ckpt)
# the checkpoint says which features its model reads (chapter 02's log-mels or the pretrained network's own)
data = study_data(params, feature_params(checkpoint["feature_params"]))
ds, split, meta, features, allset, n_frames = data.ds, data.split, data.meta, data.fp, data.logmels, data.n_frames
train_idx, val_idx, test_idx = data.train, data.val, data.test
print(f"using {ckpt}")
check_checkpoint_split(checkpoint, data, ckpt)
print(f"{name}: {checkpoint['model']} network", "(SYNTHETIC data)" if is_synthetic(ds) else "")

# %% [markdown]
# ## Predictions, joined by clip id

# %%
#| export
def prediction_table(probs: np.ndarray, clip_ids, labels, classes, k: int = 3) -> pd.DataFrame:
    "One row per clip: id, true and predicted class, confidence, and the top-k classes with probabilities."
    probs = np.asarray(probs)
    top = np.argsort(-probs, 1)[:, :k]
    df = pd.DataFrame({"slice_file_name": list(clip_ids), "true": [classes[i] for i in labels],
                       "predicted": [classes[i] for i in top[:, 0]],
                       "confidence": probs[np.arange(len(probs)), top[:, 0]]})
    df["correct"] = df["true"] == df["predicted"]
    df[f"top{k}"] = [", ".join(f"{classes[j]} {probs[i, j]:.2f}" for j in row) for i, row in enumerate(top)]
    return df

# %%
_t = prediction_table(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), ["a.wav", "b.wav"], [0, 1], ["x", "y", "z"])
test_eq(_t["predicted"].tolist(), ["x", "z"])
test_eq(_t["correct"].tolist(), [True, False])
test_eq(_t["top3"][0], "x 0.70, y 0.20, z 0.10")

# %%
probs = predict_logits(model, allset, test_idx, n_frames, multicrop=True).softmax(-1).numpy()
test_rows = meta.iloc[test_idx]
pred = prediction_table(probs, test_rows["slice_file_name"], test_rows["classID"].values, split.classes)
# join on the clip id: metadata (salience, durations, fold) comes from the dataset, not from row order
pred = pred.merge(meta.assign(duration=meta["end"] - meta["start"]), on="slice_file_name", validate="one_to_one")
assert (pred["class"] == pred["true"]).all()
acc = pred["correct"].mean()
print(f"test fold {split.test_fold}: {len(pred)} clips, accuracy {acc:.1%}")
print(classification_report(pred["true"], pred["predicted"], labels=split.classes, zero_division=0))

# %%
confusion_pair(pred["true"].map(split.classes.index), pred["predicted"].map(split.classes.index), split.classes,
               f"{name}, test fold {split.test_fold}")
plt.show()

# %% [markdown]
# ## The most confused pairs

# %%
#| export
def confused_pairs(pred: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    "The most frequent (true, predicted) mistakes, with their share of the true class's clips."
    wrong = pred[~pred["correct"]].groupby(["true", "predicted"]).size().rename("clips").reset_index()
    wrong["share_of_true_class"] = wrong["clips"] / wrong["true"].map(pred["true"].value_counts())
    return wrong.sort_values(["clips", "share_of_true_class"], ascending=False).head(top).reset_index(drop=True)

# %%
test_eq(confused_pairs(_t).iloc[0][["true", "predicted", "clips"]].tolist(), ["y", "z", 1])

# %%
pairs = confused_pairs(pred)
display(pairs.round(3))
if len(pairs):
    ax = pairs.iloc[::-1].plot.barh(x="true", y="clips", figsize=(8, 4.5), legend=False, color="tab:red")
    ax.set_yticks(range(len(pairs)), [f"{t} -> {p}" for t, p in zip(pairs["true"][::-1], pairs["predicted"][::-1])])
    ax.set(title=f"Most confused pairs, test fold {split.test_fold}", xlabel="clips", ylabel="true -> predicted")
    plt.show()

# %% [markdown]
# ## Confident mistakes and doubtful successes
#
# The most confident mistakes show what the model learnt wrongly (or a debatable label); the least confident successes
# where it is barely right.

# %%
#| export
def plot_spectrogram_grid(ls: LogMelSet, rows: pd.DataFrame, n_frames: int, title: str,
                          fp: FeatureParams | None = None):
    "Log-mels of the clips in `rows` (needs columns index, true, predicted, confidence), one panel each."
    n = len(rows)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False, constrained_layout=True)
    secs = n_frames * (fp.hop_length / fp.sample_rate if fp else 1)
    in_db = fp is None or isinstance(fp, FeatureParams)   # chapter 02's log-mels; else the pretrained network's scale
    for ax, (_, r) in zip(axes.flat, rows.iterrows()):
        im = ax.imshow(batch_frames(ls, [int(r["index"])], n_frames)[0], origin="lower", aspect="auto", cmap="magma",
                       vmin=-100 if in_db else None, vmax=20 if in_db else None, extent=[0, secs, 0, ls.data.shape[1]])
        ax.set_title(f"true {r['true']} / predicted {r['predicted']}\nconfidence {r['confidence']:.2f}", fontsize=9)
        ax.set(xlabel="time (s)" if fp else "frame", ylabel="mel band")
    for ax in axes.flat[n:]: ax.axis("off")
    fig.colorbar(im, ax=axes, label="power (dB)" if in_db else "scaled log power", shrink=0.8)
    fig.suptitle(title)
    return fig

# %%
pred["index"] = pred["slice_file_name"].map(dict(zip(meta["slice_file_name"], meta.index)))
show = ["slice_file_name", "true", "predicted", "confidence", "top3", "salience", "duration"]
wrong = pred[~pred["correct"]].nlargest(n_examples, "confidence")
right = pred[pred["correct"]].nsmallest(n_examples, "confidence")
print("Most confident mistakes")
display(wrong[show].round(3))
print("Least confident correct predictions")
display(right[show].round(3))

# %%
for rows, title in ((wrong, "Most confident mistakes"), (right, "Least confident correct predictions")):
    if len(rows):
        plot_spectrogram_grid(allset, rows, n_frames, f"{title}, test fold {split.test_fold}", features)
        plt.show()

# %%
for rows, title in ((wrong, "mistake"), (right, "doubtful success")):
    for _, r in rows.head(3).iterrows():
        x, rate = decode_row(ds[int(r["index"])])
        display(ClipPlayer(x, rate,
                           f"{title}: {r['slice_file_name']}, true {r['true']}, "
                           f"predicted {r['predicted']} ({r['confidence']:.2f})"))

# %% [markdown]
# ## Accuracy by salience and by duration
#
# Background clips bury the labelled sound. If the model won short clips by their silence ("duration cheating",
# notebook 02), short-clip accuracy would be suspiciously high for short-clip classes.

# %%
#| export
DURATION_BINS = [0, 1, 2, 3, 3.99, np.inf]
DURATION_LABELS = ["< 1 s", "1-2 s", "2-3 s", "3-4 s", "4 s"]

def accuracy_by(pred: pd.DataFrame, column: str) -> pd.DataFrame:
    "Clips and accuracy per value of `column`."
    g = pred.groupby(column, observed=True)["correct"]
    return pd.DataFrame({"clips": g.size(), "accuracy": g.mean()})

# %%
pred["salience_label"] = pred["salience"].map({1: "foreground", 2: "background"})
pred["duration_bin"] = pd.cut(pred["duration"], DURATION_BINS, labels=DURATION_LABELS, right=False)
by_sal, by_dur = accuracy_by(pred, "salience_label"), accuracy_by(pred, "duration_bin")
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
a1.bar(by_sal.index, by_sal["accuracy"], color="tab:orange")
a1.set(title="Accuracy by salience", xlabel="salience", ylabel="accuracy", ylim=(0, 1))
a2.bar(by_dur.index.astype(str), by_dur["accuracy"], color="tab:purple")
a2.set(title="Accuracy by clip duration (metadata)", xlabel="duration", ylabel="accuracy", ylim=(0, 1))
for ax, t in ((a1, by_sal), (a2, by_dur)):
    for i, (n, a) in enumerate(zip(t["clips"], t["accuracy"])): ax.text(i, a + 0.02, f"n={n}", ha="center", fontsize=8)
plt.show()
display(by_sal.round(3))
display(by_dur.round(3))

# %% [markdown]
# ## What the numbers say

# %%
per_class = pred.groupby("true")["correct"].mean().sort_values()
lines = [f"On test fold {split.test_fold}, {name} classifies {acc:.1%} of {len(pred)} clips correctly.",
         f"Its weakest classes are {per_class.index[0]} ({per_class.iloc[0]:.0%}) and "
         f"{per_class.index[1]} ({per_class.iloc[1]:.0%}); its strongest are {per_class.index[-1]} "
         f"({per_class.iloc[-1]:.0%}) and {per_class.index[-2]} ({per_class.iloc[-2]:.0%})."]
if len(pairs):
    p0 = pairs.iloc[0]
    lines.append(f"The most frequent confusion is {p0['true']} taken for {p0['predicted']} ({p0['clips']} clips, "
                 f"{p0['share_of_true_class']:.0%} of that class).")
if {"foreground", "background"} <= set(by_sal.index):
    gap = by_sal.loc["foreground", "accuracy"] - by_sal.loc["background", "accuracy"]
    fg, bg = by_sal.loc["foreground", "accuracy"], by_sal.loc["background", "accuracy"]
    lines.append(f"Foreground clips are {'easier' if gap > 0 else 'not easier'}: {fg:.0%} against {bg:.0%} "
                 f"for background clips ({100 * gap:+.0f} points).")
if len(by_dur) > 1:
    lo, hi = by_dur["accuracy"].idxmin(), by_dur["accuracy"].idxmax()
    lines.append(f"By duration, accuracy ranges from {by_dur.loc[lo, 'accuracy']:.0%} ({lo}, {by_dur.loc[lo, 'clips']} "
                 f"clips) to {by_dur.loc[hi, 'accuracy']:.0%} ({hi}, {by_dur.loc[hi, 'clips']} clips).")
median_confidence = pred.groupby("correct")["confidence"].median()
lines.append(f"Among the mistakes the median confidence is {median_confidence.get(False, np.nan):.2f}, against "
             f"{median_confidence.get(True, np.nan):.2f} for correct predictions." if (~pred["correct"]).any()
             else "There are no mistakes.")
Markdown("\n\n".join(lines))

# %%
true_ids, predicted_ids = (pred[c].map(split.classes.index) for c in ("true", "predicted"))
write_results(run_path, "07_error_analysis", {name: dict(
    **evaluate(true_ids, predicted_ids, split.classes),
    test_accuracy=float(acc), n_test=len(pred), confused_pairs=pairs.to_dict("records"),
    accuracy_by_salience=by_sal["accuracy"].to_dict(),
    accuracy_by_duration={str(k): v for k, v in by_dur["accuracy"].items()},
    checkpoint=str(ckpt.relative_to(run_path)))}, dataset=params.dataset, interpretation=lines,
    **data.clip_counts())

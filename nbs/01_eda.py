# %%
#| default_exp eda

# %% [markdown]
# # Exploring UrbanSound8K
#
# > What is in the data: classes, folds, imbalance, durations, formats, salience, and a clip of each class.

# %% [markdown]
# Before any model, the numbers a careful reader wants: clips per class and fold, the imbalance (and what a trivial
# classifier scores), durations, formats, and how often the sound is only in the background, all computed by this run.

# %%
#| export
from __future__ import annotations

import io
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from IPython.display import Audio
from tqdm import tqdm

from urbansound_nb.audio import AudioDecodeError, audio_bytes, audio_file, check_length, encode_audio
from urbansound_nb.data import skipped_clip

# %%
from IPython.display import display
from urbansound_nb.audio import decode_row, is_synthetic
from urbansound_nb.core import write_results
from urbansound_nb.data import fold_split, load_urbansound, metadata_frame, report_skipped, split_class_counts
from urbansound_nb.params import as_int, study_params, use_test_values

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, max_items, ...) are notebook 00a's; set any of them here to override
header_sample = None    # audio headers to read: None for every clip, or a number for a random sample

# %% tags=["checks"]
use_test_values(globals())
params = study_params(globals())
header_sample = None if header_sample is None else as_int("header_sample", header_sample, 1)

# %%
ds = load_urbansound(params.dataset, params.max_items, params.seed)
meta = metadata_frame(ds)
if is_synthetic(ds):
    print("NOTE: this run uses the SYNTHETIC stand-in, not UrbanSound8K; the numbers below describe it.")
print(f"{params.dataset}: {len(ds):,} clips, {meta['class'].nunique()} classes, "
      f"folds {sorted(meta['fold'].unique().tolist())}")

# %% [markdown]
# ## Classes and folds

# %%
#| export
def class_fold_table(meta: pd.DataFrame) -> pd.DataFrame:
    "Clips per class (rows) and fold (columns), with totals."
    return pd.crosstab(meta["class"], meta["fold"], margins=True, margins_name="total")

def imbalance_ratio(meta: pd.DataFrame) -> float:
    "Clips of the largest class over clips of the smallest."
    c = meta["class"].value_counts()
    return float(c.max() / c.min())

# %%
from fastcore.test import test_eq
_m = pd.DataFrame({"class": ["a", "a", "a", "b"], "fold": [1, 2, 2, 1]})
test_eq(imbalance_ratio(_m), 3.0)
test_eq(class_fold_table(_m).loc["total", "total"], 4)

# %%
table = class_fold_table(meta)
table

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
per_class = meta["class"].value_counts().sort_values()
ax1.barh(per_class.index, per_class.values, color="tab:blue")
ax1.set(title="Clips per class", xlabel="clips", ylabel="class")
per_fold = meta["fold"].value_counts().sort_index()
ax2.bar(per_fold.index.astype(str), per_fold.values, color="tab:green")
ax2.set(title="Clips per fold", xlabel="fold", ylabel="clips")
plt.show()
ratio = imbalance_ratio(meta)
print(f"imbalance: the largest class has {ratio:.1f}x the clips of the smallest "
      f"({per_class.idxmax()} {per_class.max()}, {per_class.idxmin()} {per_class.min()})")

# %% [markdown]
# ## The split this run uses, and what chance scores on it
#
# Always answering the training folds' commonest class, or guessing in their proportions, sets the floor; imbalance
# lifts it above 1/10.

# %%
#| export
def chance_accuracies(train_labels, eval_labels) -> dict:
    "Accuracy on `eval_labels` of the training majority class, and of guessing by training class frequency."
    train, ev = pd.Series(np.asarray(train_labels)), pd.Series(np.asarray(eval_labels))
    majority = train.value_counts().idxmax()
    p_train = train.value_counts(normalize=True)
    p_eval = ev.value_counts(normalize=True)
    return dict(majority_class=majority, majority_accuracy=float((ev == majority).mean()),
                random_guess_accuracy=float(sum(p_train.get(c, 0) * p for c, p in p_eval.items())),
                uniform_guess_accuracy=1 / max(len(p_train), 1))

# %%
test_eq(chance_accuracies([0, 0, 1], [0, 1])["majority_accuracy"], 0.5)
test_eq(round(chance_accuracies([0, 0, 1, 1], [0, 1])["random_guess_accuracy"], 6), 0.5)

# %%
split = fold_split(ds, **params.split)
print(f"train folds {split.train_folds}, validation fold {split.val_fold}, test fold {split.test_fold}")
split_counts = split_class_counts(split)
display(split_counts)
chance = {name: chance_accuracies(split.train["classID"], sub["classID"]) for name,
          sub in (("val", split.val), ("test", split.test))}
pd.DataFrame(chance).T.assign(majority_class=lambda d: [split.classes[int(c)] for c in d.majority_class])

# %% [markdown]
# ## Durations
#
# The metadata's start and end in the source recording should agree with the decoded length; both show how many clips
# are shorter than 4 s.

# %% [markdown]
# ## Listening in the notebook
#
# `ClipPlayer` embeds a clip as MP3 (about 20 KB per 4 s) with a caption, its text standing in where players are not
# rendered. It lives here, not in the audio layer, which stays free of torch and IPython for a deployed `predict`.

# %%
#| export
class ClipPlayer(Audio):
    "An `IPython.display.Audio` player embedded as compact MP3, with a caption and a plain-text stand-in."
    def __init__(self, samples: np.ndarray, rate: int, caption: str = ""):
        if rate > 48000:  # MP3 tops out at 48 kHz
            samples, rate = torchaudio.functional.resample(torch.from_numpy(samples), rate, 44100).numpy(), 44100
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        data = encode_audio(samples / peak * 0.9 if peak > 1 else samples, rate, "MP3", "MPEG_LAYER_III")
        super().__init__(data=data)
        self.mimetype, self.caption, self.seconds = "audio/mpeg", caption, len(samples) / rate
    def _repr_html_(self):
        return f'<div style="font-size:0.85em">{self.caption}</div>' + super()._repr_html_()
    def __repr__(self): return f"[audio: {self.caption} ({self.seconds:.2f} s)]"

# %%
p = ClipPlayer(np.sin(np.arange(8000) / 4).astype(np.float32) * 0.3, 8000, "a test tone")
assert 'audio/mpeg' in p._repr_html_() and "a test tone" in p._repr_html_()
test_eq(repr(p), "[audio: a test tone (1.00 s)]")

# %% [markdown]
# A clip held as a file (the official layout) has only its header read; one held as bytes is already in memory.

# %%
#| export
def audio_header(audio: dict, name: str = "clip"):
    "soundfile's header of one clip (`sf.info`): from its file if it has one, else from its bytes."
    path = audio_file(audio)
    source = path if path and os.path.isfile(path) else io.BytesIO(audio_bytes(audio, name))
    try: info = sf.info(source)
    except Exception as e: raise AudioDecodeError(f"{name}: soundfile cannot read its header ({e})") from None
    check_length(info.frames, info.samplerate, name)    # too short is known from the header; NaN only from samples
    return info

def audio_headers(ds, sample: int | None = None, seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    "Rate, channels, encoding and duration from each clip's header (all, or a random `sample`); the unreadable ones."
    everything = sample is None or sample >= len(ds)
    idx = np.arange(len(ds)) if everything else np.sort(np.random.default_rng(seed).choice(len(ds), sample, False))
    rows, kept, skipped = [], [], []
    sub = ds.select(idx.tolist()).select_columns(["audio", "slice_file_name", "class", "fold"])
    for batch in tqdm(sub.iter(batch_size=256), total=(len(idx) + 255) // 256, desc="audio headers", mininterval=2):
        for a, name, cls, fold in zip(batch["audio"], batch["slice_file_name"], batch["class"], batch["fold"]):
            at = len(rows) + len(skipped)
            try: info = audio_header(a, name)
            except AudioDecodeError as e:
                skipped.append(skipped_clip({"slice_file_name": name, "class": cls, "fold": fold}, str(e)))
                continue
            kept.append(idx[at])
            rows.append(dict(slice_file_name=name, **{"class": cls}, sample_rate=info.samplerate,
                             channels=info.channels,
                             format=info.format, subtype=info.subtype, decoded_seconds=info.frames / info.samplerate))
    return pd.DataFrame(rows, index=kept), skipped

# %%
import tempfile
from pathlib import Path
from urbansound_nb.audio import dataset_from_rows
with tempfile.TemporaryDirectory() as d:
    wav = Path(d)/"x.wav"
    wav.write_bytes(encode_audio(np.zeros(2205, np.float32), 22050))
    test_eq(audio_header(dict(bytes=None, path=str(wav))).frames, 2205)           # the file's header, not its audio
_rows = load_urbansound("synthetic", max_items=4).to_list()
_rows[2]["audio"] = dict(bytes=b"junk" * 9, path=None)
_h, _bad = audio_headers(dataset_from_rows(_rows))        # an unreadable header: left out and named, not fatal
test_eq((list(_h.index), [b["slice_file_name"] for b in _bad]), ([0, 1, 3], [_rows[2]["slice_file_name"]]))

# %%
headers, skipped = audio_headers(ds, header_sample, params.seed)
report_skipped(skipped, len(ds), params.strict_audio)
meta["metadata_seconds"] = meta["end"] - meta["start"]
durations = meta.join(headers[["decoded_seconds"]], how="inner")
print(f"headers read for {len(headers):,} of {len(ds):,} clips")
stats = durations.groupby("class")[["metadata_seconds", "decoded_seconds"]].describe()
stats.loc[:, (slice(None), ["mean", "min", "50%", "max"])].round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
bins = np.linspace(0, max(4.1, durations[["metadata_seconds", "decoded_seconds"]].max().max()), 42)
for ax, col, label in zip(axes, ["metadata_seconds", "decoded_seconds"], ["metadata (end - start)", "decoded audio"]):
    ax.hist(durations[col], bins=bins, color="tab:purple")
    ax.set(title=f"Clip durations from the {label}", xlabel="duration (s)", ylabel="clips", yscale="log")
plt.show()
short = (durations["metadata_seconds"] < 3.99).mean()
mismatch = (durations["metadata_seconds"] - durations["decoded_seconds"]).abs() > 0.05
print(f"{short:.0%} of clips are shorter than 4 s by their metadata; "
      f"{mismatch.mean():.0%} have a decoded length that differs from the metadata by more than 50 ms")

# %% [markdown]
# Where the two durations disagree, the audio was edited after the release (padded to 4 s, say): notebook 02 says why
# that matters ("duration cheating").

# %% [markdown]
# ## Formats: rates, channels and bit depths

# %%
fmt = headers.assign(encoding=headers["format"] + " " + headers["subtype"])
display(pd.concat({"sample rate (Hz)": fmt["sample_rate"].value_counts(), "channels": fmt["channels"].value_counts(),
                   "encoding": fmt["encoding"].value_counts()}).rename("clips").to_frame())

# %% [markdown]
# Every one of these decodes to float32 mono through `soundfile`, and notebook 02 resamples to one rate.

# %% [markdown]
# ## Salience
#
# Each clip is foreground (1: the sound dominates) or background (2); chapter 07 measures how much harder the latter
# are.

# %%
sal = pd.crosstab(meta["class"], meta["salience"].map({1: "foreground", 2: "background"}))
sal["background share"] = (sal.get("background", 0) / sal.sum(axis=1)).round(2)
sal

# %%
ax = sal[[c for c in ("foreground", "background") if c in sal]].plot.barh(stacked=True, figsize=(8, 4.5),
                                                                          color=["tab:orange", "tab:gray"])
ax.set(title="Salience per class", xlabel="clips", ylabel="class")
plt.show()

# %% [markdown]
# ## One clip of each class
#
# Waveform, log-mel spectrogram (torchaudio directly; notebook 02 builds the cached front end) and a player.

# %%
#| export
def plot_clip(samples: np.ndarray, rate: int, title: str, n_mels: int = 64, axes=None):
    "Waveform and log-mel spectrogram of one clip, with titles, axes and units."
    if axes is None: _, axes = plt.subplots(1, 2, figsize=(12, 3), constrained_layout=True)
    t = np.arange(len(samples)) / rate
    axes[0].plot(t, samples, lw=0.5)
    axes[0].set(title=f"{title}: waveform", xlabel="time (s)", ylabel="amplitude")
    mel_spectrogram = torchaudio.transforms.MelSpectrogram(rate, n_fft=1024, hop_length=256, n_mels=n_mels)
    mel = mel_spectrogram(torch.from_numpy(samples))
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=None)(mel)
    im = axes[1].imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
                        extent=[0, len(samples) / rate, 0, n_mels])
    axes[1].set(title=f"{title}: log-mel", xlabel="time (s)", ylabel="mel band")
    plt.colorbar(im, ax=axes[1], label="power (dB)")
    return axes

# %%
readable = meta.index.isin(headers.index) if header_sample is None else np.ones(len(meta), bool)
examples = meta[readable].groupby("class", sort=True).head(1).sort_values("classID")
for i, r in examples.iterrows():
    try: x, rate = decode_row(ds[int(i)])
    except AudioDecodeError as e:
        print(f"no example of {r['class']}: {e}")
        continue
    plot_clip(x, rate, f"{r['class']} ({r['slice_file_name']}, fold {r['fold']})")
    plt.show()
    display(ClipPlayer(x, rate, f"{r['class']}: {r['slice_file_name']}, {len(x)/rate:.2f} s at {rate} Hz"))

# %%
write_results(params.run_dir, "01_eda", {
    "dataset": dict(n_clips=len(ds), n_classes=int(meta["class"].nunique()), imbalance_ratio=ratio,
                    clips_per_class=meta["class"].value_counts().to_dict(),
                    clips_per_fold={int(k): int(v) for k, v in per_fold.items()},
                    share_shorter_than_4s=float(short), headers_read=len(headers),
                    sample_rates={int(k): int(v) for k, v in fmt["sample_rate"].value_counts().items()},
                    encodings=fmt["encoding"].value_counts().to_dict()),
    "chance": chance}, dataset=params.dataset, clips_used=len(ds) - len(skipped), clips_skipped=skipped,
        split=dict(train_folds=split.train_folds, val_fold=split.val_fold, test_fold=split.test_fold))

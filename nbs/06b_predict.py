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
#| default_exp predict

# %% [markdown]
# # Prediction: from a checkpoint to a classifier of audio files
#
# > A saved checkpoint classifies any audio file, at any rate, bit depth or length, with no dataset.

# %% [markdown]
# A checkpoint holds the model, its feature parameters, the class names and the clip length
# (notebook 04a), so it classifies any file soundfile reads, at any rate, bit depth or channel
# count. The file becomes windows of waveform as notebook 06a cuts them (one window up to one clip
# long, half-overlapping clips beyond, read block by block past `STREAM_SECONDS`); each window
# goes through `WaveformClassifier`, the front end and the network as one module, and the
# windows' probabilities are averaged (`per_window=True` also returns each window's). Empty,
# unreadable or silent files get an error entry instead of a guess, and never stop the other
# files. `urbansound-nb predict` (notebook 92) prints what `predict_files` returns.

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from urbansound_nb.core import read_results
from urbansound_nb.models import CheckpointError, load_checkpoint
from urbansound_nb.pretrained import feature_params
from urbansound_nb.windows import classify_files, file_windows, in_batches

# %%
#| export
def resolve_checkpoint(path) -> Path:
    "A checkpoint file as it is; a run directory: the checkpoint of the model its chapter 05 chose (`best_checkpoint`)."
    path = Path(path)
    if not path.is_dir(): return path
    results = path/"results"/"05_transfer.json"
    if not results.is_file():
        raise CheckpointError(f"{path}: a directory without results/05_transfer.json, which names the study's model; "
                              "give a run directory of the whole study, or a checkpoint file")
    try: chosen = read_results(path, "05_transfer").get("best_checkpoint")
    except (ValueError, AttributeError) as e: raise CheckpointError(f"{results}: not a results file ({e})") from None
    if not isinstance(chosen, str) or not chosen:
        raise CheckpointError(f"{results}: the study's model has no checkpoint; give one of {path/'models'}/*.pt")
    return path/chosen

# %% [markdown]
# ## Waveform in, probabilities out
#
# `WaveformClassifier` is what a checkpoint becomes for deployment: a batch of waveforms at the
# model's rate, its front end, the frames fitted to the model's input as training fits a clip
# (centre crop of a longer one, a shorter one repeated until it fills the input: `batch_frames`,
# notebook 02b), the network, and a softmax. Its index arithmetic is written with tensors, so
# that the same module exports to ONNX with any batch and length (notebook 06c).

# %%
#| export
class WaveformClassifier(nn.Module):
    "Waveforms [batch, samples] at the model's rate -> class probabilities [batch, classes]: front end, fit, network."
    def __init__(self, front: nn.Module, model: nn.Module, n_frames: int):
        super().__init__()
        self.front, self.model, self.n_frames = front, model, int(n_frames)

    def fit_frames(self, x: torch.Tensor) -> torch.Tensor:
        "Frames [batch, bands, T] -> [batch, bands, n_frames]: the centre of a longer input, a shorter one repeated."
        total = torch.full((1,), x.shape[-1], dtype=torch.long, device=x.device)
        offset = torch.clamp(total - self.n_frames, min=0) // 2
        return x.index_select(2, torch.remainder(offset + torch.arange(self.n_frames, device=x.device), total))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(self.fit_frames(self.front(wave))).softmax(-1)

# %%
from fastcore.test import test_eq
from urbansound_nb.batches import LogMelSet, batch_frames
_w = WaveformClassifier(nn.Identity(), nn.Flatten(), 5)
_x = torch.arange(12.).reshape(1, 1, 12)
test_eq(_w.fit_frames(_x), batch_frames(LogMelSet([_x[0].T.numpy()]), [0], 5))           # centre crop, as in training
_x = torch.arange(3.).reshape(1, 1, 3)
test_eq(_w.fit_frames(_x), batch_frames(LogMelSet([_x[0].T.numpy()]), [0], 5))           # repeated, as in training

# %%
#| export
class Predictor:
    "A saved checkpoint (or a run directory: the study's chosen model) ready to classify audio files."
    def __init__(self, checkpoint, device="cpu"):
        self.path = resolve_checkpoint(checkpoint)
        model, self.ck = load_checkpoint(self.path, device)
        self.fp, self.classes, self.device = feature_params(self.ck["feature_params"]), self.ck["classes"], device
        self.clip_seconds = float(self.ck["clip_seconds"])
        self.net = WaveformClassifier(self.fp.front_end(), model, self.fp.frames(self.clip_seconds)).to(device).eval()

    @torch.no_grad()
    def classify(self, windows) -> np.ndarray:
        "Class probabilities [windows, classes] of waveform windows, `INFERENCE_BATCH` at a time (bounded memory)."
        return in_batches(windows, lambda b: self.net(torch.from_numpy(b).to(self.device)).cpu().numpy())

    def file_probs(self, path) -> tuple[np.ndarray, list[float]]:
        "Class probabilities of each window of a file [windows, classes] and the windows' start times (s)."
        windows, starts = file_windows(path, self.fp.sample_rate, self.clip_seconds, self.fp.n_fft)
        return self.classify(windows), starts

# %%
#| export
def predict_files(checkpoint, files, top_k: int = 3, per_window: bool = False, predictor=None,
                  with_probs: bool = False) -> list[dict]:
    "Top-k classes of each file with a checkpoint (or `predictor`): `classify_files`' records; errors never stop."
    return classify_files(predictor or Predictor(checkpoint), files, top_k, per_window, with_probs)

# %% [markdown]
# A checkpoint of a randomly initialised SmallAudioCNN, written the way training writes one,
# classifies a short clip, a long one window by window, and reports the files it cannot use:

# %%
import os
import tempfile
from fastcore.test import test_eq, test_close, test_fail
from urbansound_nb.core import write_results
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import build_model, checkpoint_dict, save_checkpoint
classes = ["tone", "noise"]
fp = FeatureParams(sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)
config = dict(n_classes=2, n_mels=32)
model = build_model("small_cnn", **config)
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0), d/"model.pt")
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32)
    sf.write(d/"tone.wav", tone[:24000], 48000)
    sf.write(d/"long.flac", np.tile(tone, 3), 48000)
    (d/"empty.wav").write_bytes(b"")
    sf.write(d/"silent.wav", np.zeros(8000, np.float32), 8000)
    (d/"corrupt.wav").write_bytes(b"RIFF" + os.urandom(500))
    sf.write(d/"short.wav", tone[:480], 48000)
    sf.write(d/"one.wav", tone[:1], 48000)  # 10 ms and one sample
    names = ["tone.wav", "long.flac", "empty.wav", "silent.wav", "corrupt.wav", "absent.wav", "short.wav", "one.wav"]
    recs = predict_files(d/"model.pt", [d/n for n in names], top_k=2, per_window=True)
    for rec in recs: print(Path(rec["file"]).name, "->", rec["error"] or rec["predictions"])
    test_eq([r["error"] is None for r in recs], [True, True, False, False, False, False, False, False])
    assert "too short" in recs[-1]["error"] and "too short" in recs[-2]["error"]
    sf.write(d/"short.wav", tone[:1200], 48000)                      # 25 ms: repeated to fill the input, classified
    test_eq(predict_files(d/"model.pt", [d/"short.wav"])[0]["error"], None)
    test_eq(len(recs[1]["windows"]), 5)   # 3 s in half-overlapping 1 s windows, the last one ending with the file
    test_eq([w["start_seconds"] for w in recs[1]["windows"]], [0.0, 0.5, 1.0, 1.5, 2.0])
    assert "empty" in recs[2]["error"] and "silent" in recs[3]["error"] and "no such file" in recs[5]["error"]
    test_eq(round(sum(p["probability"] for p in recs[0]["predictions"]), 3), 1.0)
    # a run directory stands for the model its chapter 05 chose
    test_fail(lambda: resolve_checkpoint(d), contains="without results/05_transfer.json")
    write_results(d, "05_transfer", {}, best_model="small_cnn", best_checkpoint="model.pt")
    test_eq(resolve_checkpoint(d), d/"model.pt")
    test_eq(predict_files(d, [d/"tone.wav"]), predict_files(d/"model.pt", [d/"tone.wav"]))

# %% [markdown]
# A window is classified as a training clip is: its frames equal the cached features of the same
# samples (a clip of one window's length gives exactly the model's input), and streaming changes
# nothing but memory: a 70-second file, at a rate that needs resampling down and one that needs it
# up, read block by block, gives the probabilities of its windows cut from the whole file.

# %%
from urbansound_nb.windows import resample, window_starts
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0), d/"model.pt")
    pr, rng = Predictor(d/"model.pt"), np.random.default_rng(0)
    test_eq(pr.net.front(torch.zeros(1, 16000)).shape[-1], pr.net.n_frames)             # one clip: the model's input
    for rate in (44100, 8000):
        wave = (0.1 * rng.standard_normal((rate * 70, 2))).astype(np.float32)
        sf.write(d/"long.wav", wave, rate, subtype="FLOAT")
        whole = resample(wave.mean(1, dtype=np.float32), rate, fp.sample_rate)
        starts = window_starts(len(whole), fp.sample_rate)
        expected = pr.classify(whole[s:s + fp.sample_rate] for s in starts)
        streamed, streamed_starts = pr.file_probs(d/"long.wav")
        test_eq(streamed_starts, [s / fp.sample_rate for s in starts])
        test_close(streamed, expected, eps=1e-5)

# %% [markdown]
# ## Test files and a study-shaped model
#
# The benchmarks of notebook 06d measure both `predict` paths on long files and a model shaped
# like the study's usual choice (two EfficientAT mn04 networks averaged, randomly initialised:
# memory and speed do not depend on the weights' values); these make them, and `peak_memory`
# runs a command as a child process and reads its peak resident memory (the kernel's `ru_maxrss`).

# %%
#| export
def write_long_wav(path, minutes: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    "A 16-bit WAV of `minutes` of noise and a sweeping tone, written 10 s at a time (never whole in memory)."
    rng, n, step = np.random.default_rng(seed), int(minutes * 60 * rate), 10 * rate
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as out:
        for start in range(0, n, step):
            t = np.arange(start, min(start + step, n)) / rate
            tone = 0.3 * np.sin(2 * np.pi * (300 + 20 * t) * t)
            out.write((tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))).astype(np.float32))
    return Path(path)

def study_shaped_checkpoint(path, classes=None) -> Path:
    "A randomly initialised checkpoint shaped like the study's probe + fine-tuned pair (two EfficientAT mn04)."
    from urbansound_nb.models import build_model, checkpoint_dict, save_checkpoint
    from urbansound_nb.pretrained import EfficientATFeatures
    from urbansound_nb.transfer import POOLED_BLOCKS
    classes = list(classes) if classes is not None else [f"class {i}" for i in range(10)]
    member = dict(width=0.4, n_classes=len(classes), pooled_blocks=list(POOLED_BLOCKS))
    config = dict(members=[dict(model="efficientat", config=member)] * 2)
    save_checkpoint(checkpoint_dict(build_model("ensemble", **config), "ensemble", config, EfficientATFeatures(),
                                    classes, 4.0), path)
    return Path(path)

def peak_memory(code: str, args=()) -> tuple[int, float, int]:
    "Peak resident memory (bytes), wall time (s) and exit status of Python running `code` with `args`, as a child."
    import os
    import subprocess
    import sys
    import tempfile
    import time
    with tempfile.TemporaryDirectory() as d:
        # the child's own high-water mark (Linux), written as it exits: the kernel's ru_maxrss of a child starts from
        # the parent's at the fork, so a parent with torch imported would inflate every figure
        report = Path(d)/"hwm"
        watch = (f"import atexit\ndef _hwm():\n    try:\n        with open('/proc/self/status') as f:\n"
                 f"            kb = next(l for l in f if l.startswith('VmHWM')).split()[1]\n"
                 f"        open({str(report)!r}, 'w').write(kb)\n    except OSError: pass\natexit.register(_hwm)\n")
        t0 = time.time()
        child = subprocess.Popen([sys.executable, "-c", watch + code, *map(str, args)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.time() - t0
        peak = int(report.read_text()) * 1024 if report.exists() else usage.ru_maxrss * 1024
    return peak, seconds, os.waitstatus_to_exitcode(status)

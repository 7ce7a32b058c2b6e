# %%
#| default_exp predict

# %% [markdown]
# # Prediction: from a checkpoint to a classifier of audio files
#
# > A saved checkpoint classifies any audio file, at any rate, bit depth or length, with no dataset.

# %% [markdown]
# A checkpoint holds the model, its feature parameters, class names and clip length (notebook 04a), so it classifies
# any file soundfile reads. The file becomes windows as notebook 06b cuts them; each goes through
# `WaveformClassifier`, and the windows' probabilities are averaged (`per_window=True` returns each). Empty,
# unreadable or silent files get an error entry, never a guess, and never stop the others. `urbansound-nb predict`
# prints what `predict_files` returns.

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound_nb.calibration import check_calibration
from urbansound_nb.core import NoChoice, read_choice
from urbansound_nb.models import CheckpointError, load_checkpoint
from urbansound_nb.pretrained import feature_params
from urbansound_nb.windows import check_timeline_rule, classify_files, file_windows, in_batches


def resolve_checkpoint(path) -> Path:
    "A checkpoint file as it is; a run directory: the checkpoint that serves the model chapter 06 chose."
    path = Path(path)
    if not path.is_dir(): return path
    try: served = read_choice(path)
    except NoChoice as e: raise CheckpointError(str(e)) from None
    if not served.get("checkpoint"):
        raise CheckpointError(f"{path}: the study's model {served['model']} has no checkpoint; give one of "
                              f"{path/'models'}/*.pt")
    return path/served["checkpoint"]

# %% [markdown]
# ## Waveform in, probabilities out
#
# `WaveformClassifier` is a checkpoint for deployment: waveforms at the model's rate, its front end, the frames fitted
# to the input as training fits a clip (`batch_frames`, notebook 02b), the network and a softmax at the checkpoint's
# temperature (notebook 06a: 1 where it has none), written with tensor arithmetic so that it exports to ONNX with any
# batch and length (notebook 06d), calibration inside.

# %%
#| export
class WaveformClassifier(nn.Module):
    "Waveforms [batch, samples] at the model's rate -> class probabilities [batch, classes]: front end, fit, network."
    def __init__(self, front: nn.Module, model: nn.Module, n_frames: int, temperature: float = 1.0):
        super().__init__()
        self.front, self.model, self.n_frames = front, model, int(n_frames)
        # softmax(output / T): calibrated whether the network returns logits or an ensemble's log-probabilities
        self.register_buffer("temperature", torch.tensor(float(temperature)), persistent=False)

    def fit_frames(self, x: torch.Tensor) -> torch.Tensor:
        "Frames [batch, bands, T] -> [batch, bands, n_frames]: the centre of a longer input, a shorter one repeated."
        total = torch.full((1,), x.shape[-1], dtype=torch.long, device=x.device)
        offset = torch.clamp(total - self.n_frames, min=0) // 2
        return x.index_select(2, torch.remainder(offset + torch.arange(self.n_frames, device=x.device), total))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return (self.model(self.fit_frames(self.front(wave))) / self.temperature).softmax(-1)

# %%
import soundfile as sf
from fastcore.test import test_eq, test_close
from urbansound_nb.batches import LogMelSet, batch_frames
_w = WaveformClassifier(nn.Identity(), nn.Flatten(), 5)
_x = torch.arange(12.).reshape(1, 1, 12)
test_eq(_w.fit_frames(_x), batch_frames(LogMelSet([_x[0].T.numpy()]), [0], 5))           # centre crop, as in training
_x = torch.arange(3.).reshape(1, 1, 3)
test_eq(_w.fit_frames(_x), batch_frames(LogMelSet([_x[0].T.numpy()]), [0], 5))           # repeated, as in training
_logits = torch.tensor([[[2.0], [0.0]]])                                                  # two classes, one frame
_p = lambda t: WaveformClassifier(nn.Identity(), nn.Flatten(), 1, t)(_logits)
test_close(_p(2.0), _p(1.0).log().div(2).softmax(-1))                       # T = 2: calibration's softmax(log p / T)

# %%
#| export
class Predictor:
    "A saved checkpoint (or a run directory: the study's chosen model) ready to classify audio files."
    def __init__(self, checkpoint, device="cpu"):
        self.path = resolve_checkpoint(checkpoint)
        model, self.ck = load_checkpoint(self.path, device)
        self.fp, self.classes, self.device = feature_params(self.ck["feature_params"]), self.ck["classes"], device
        self.clip_seconds = float(self.ck["clip_seconds"])
        try:
            calibration = check_calibration(self.ck.get("calibration"), str(self.path))
            self.timeline_rule = check_timeline_rule(self.ck.get("timeline_rule"), f"{self.path}: timeline rule")
        except ValueError as e: raise CheckpointError(str(e)) from None
        self.temperature, self.rejection = calibration["temperature"], calibration["rejection"]
        self.net = WaveformClassifier(self.fp.front_end(), model, self.fp.frames(self.clip_seconds),
                                      self.temperature).to(device).eval()

    @torch.no_grad()
    def classify(self, windows) -> np.ndarray:
        "Class probabilities [windows, classes] of waveform windows, `INFERENCE_BATCH` at a time (bounded memory)."
        return in_batches(windows, lambda b: self.net(torch.from_numpy(b).to(self.device)).cpu().numpy())

    def file_probs(self, path) -> tuple[np.ndarray, list[float]]:
        "Class probabilities of each window of a file [windows, classes] and the windows' start times (s)."
        windows, starts = file_windows(path, self.fp.sample_rate, self.clip_seconds, self.fp.n_fft)
        return self.classify(windows), starts

def predict_files(checkpoint, files, top_k: int = 3, per_window: bool = False, predictor=None,
                  with_probs: bool = False) -> list[dict]:
    "Top-k classes of each file with a checkpoint (or `predictor`): `classify_files`' records; errors never stop."
    return classify_files(predictor or Predictor(checkpoint), files, top_k, per_window, with_probs)

# %% [markdown]
# A randomly initialised SmallAudioCNN's checkpoint classifies a short clip, a long one window by window, and reports
# the files it cannot use:

# %%
import os
import tempfile
from fastcore.test import test_eq, test_close, test_fail
from urbansound_nb.calibration import calibrated
from urbansound_nb.core import CHOICE, write_results
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
    sf.write(d/"short.wav", tone[:1200], 48000)                       # 25 ms: repeated to fill the input
    sf.write(d/"long.flac", np.tile(tone, 3), 48000)
    sf.write(d/"silent.wav", np.zeros(8000, np.float32), 8000)
    (d/"corrupt.wav").write_bytes(b"RIFF" + os.urandom(500))
    recs = predict_files(d/"model.pt", [d/n for n in ("short.wav", "long.flac", "silent.wav", "corrupt.wav")],
                         top_k=2, per_window=True)
    for rec in recs: print(Path(rec["file"]).name, "->", rec["error"] or rec["predictions"])
    test_eq([r["error"] is None for r in recs], [True, True, False, False])
    test_eq([w["start_seconds"] for w in recs[1]["windows"]], [0.0, 0.5, 1.0, 1.5, 2.0])   # the last ends with it
    test_fail(lambda: resolve_checkpoint(d), contains="no results/06_choice.json")   # a run stands for its choice
    write_results(d, CHOICE, {}, served=dict(model="small_cnn", checkpoint="model.pt"))
    test_eq(predict_files(d, [d/"short.wav"]), predict_files(d/"model.pt", [d/"short.wav"]))
    # a calibrated checkpoint: its temperature softens every probability, and under its threshold it says unknown
    plain = Predictor(d/"model.pt").file_probs(d/"long.flac")[0]
    rule = dict(score="max_probability", threshold=1.0)
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0,
                                    calibration=dict(temperature=4.0, rejection=rule)), d/"calibrated.pt")
    softer = Predictor(d/"calibrated.pt")
    test_close(softer.file_probs(d/"long.flac")[0], calibrated(plain, 4.0), eps=1e-5)
    test_eq(predict_files(None, [d/"long.flac"], predictor=softer)[0]["answer"], "unknown")
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0,
                                    calibration=dict(temperature="hot")), d/"crafted.pt")
    test_fail(lambda: Predictor(d/"crafted.pt"), contains="crafted.pt: temperature must be")

# %% [markdown]
# A window is classified as a training clip is: its frames equal the cached features of the same samples, and
# streaming changes only memory: a 70-second file, resampled down or up block by block, gives the windows of the whole
# file.

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

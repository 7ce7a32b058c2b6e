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
# (notebook 04c), so it classifies any file soundfile reads, at any rate, bit depth or channel
# count. A file longer than the clip length is cut into half-overlapping windows whose
# probabilities are averaged (`per_window=True` also returns each window's). Empty, unreadable
# or silent files get an error entry instead of a guess, and never stop the other files.
# `urbansound-nb predict` (notebook 92) prints what `predict_files` returns.

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from urbansound_nb.audio import AudioDecodeError, decode_audio
from urbansound_nb.core import read_results
from urbansound_nb.features import FeatureParams, repeat_frames, resample
from urbansound_nb.pretrained import feature_params
from urbansound_nb.train import CheckpointError, load_checkpoint, window_starts

# %%
#| export
SILENCE_PEAK = 1e-4  # a file whose samples never exceed this is treated as silence, not classified

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

class Predictor:
    "A saved checkpoint (or a run directory: the study's chosen model) ready to classify audio files."
    def __init__(self, checkpoint, device="cpu"):
        self.path = resolve_checkpoint(checkpoint)
        self.model, self.ck = load_checkpoint(self.path, device)
        self.fp, self.classes, self.device = feature_params(self.ck["feature_params"]), self.ck["classes"], device
        self.n_frames, self.front = self.fp.frames(self.ck["clip_seconds"]), self.fp.front_end().to(device)

    @torch.no_grad()
    def window_probs(self, data: bytes, name: str = "clip") -> tuple[np.ndarray, list[float]]:
        "Class probabilities of each window [windows, classes] and the windows' start times (s)."
        samples, rate = decode_audio(data, name)
        peak = float(np.abs(samples).max())
        if peak < SILENCE_PEAK:
            raise AudioDecodeError(f"{name}: the audio is silent (peak {peak:.1e}); nothing to classify")
        wave = resample(torch.from_numpy(samples), rate, self.fp.sample_rate).to(self.device)
        wave = repeat_frames(wave, max(len(wave), self.fp.n_fft))         # the STFT needs a window's worth
        logmel = self.front(wave)                                          # [n_mels, frames]
        starts = window_starts(logmel.shape[-1], self.n_frames)           # the windows multi-crop scoring uses
        windows = [repeat_frames(logmel[:, s:s + self.n_frames], self.n_frames) for s in starts]  # as in training
        probs = self.model(torch.stack(windows)).softmax(-1).cpu().numpy()
        return probs, [s * self.fp.hop_length / self.fp.sample_rate for s in starts]

# %%
#| export
def _top(probs, classes, k):
    return [{"class": classes[i], "probability": round(float(probs[i]), 4)} for i in np.argsort(-probs)[:k]]

def predict_files(checkpoint, files, top_k: int = 3, per_window: bool = False,
                  predictor: Predictor | None = None) -> list[dict]:
    "Top-k classes of each file: {'file', 'predictions', 'error'} (+ 'windows' with `per_window`); errors never stop."
    pr, out = predictor or Predictor(checkpoint), []
    for f in files:
        rec = {"file": str(f), "predictions": [], "error": None}
        try:
            p = Path(f)
            if not p.is_file(): raise AudioDecodeError(f"{f}: no such file")
            probs, starts = pr.window_probs(p.read_bytes(), str(f))
            rec["predictions"] = _top(probs.mean(0), pr.classes, top_k)
            if per_window:
                rec["windows"] = [{"start_seconds": round(s, 3), "predictions": _top(w, pr.classes, top_k)} for s,
                                  w in zip(starts, probs)]
        except (AudioDecodeError, OSError) as e: rec["error"] = str(e)
        except Exception as e:   # whatever else one file does, the others keep their results
            rec["error"], rec["predictions"] = f"{f}: cannot be classified ({type(e).__name__}: {e})", []
        out.append(rec)
    return out

# %% [markdown]
# A checkpoint of a randomly initialised SmallAudioCNN, written the way training writes one,
# classifies a short clip, a long one window by window, and reports the files it cannot use:

# %%
import os, tempfile
import soundfile as sf
from fastcore.test import test_eq
from urbansound_nb.models import build_model
from urbansound_nb.train import checkpoint_dict, save_checkpoint
classes = ["tone", "noise"]
with tempfile.TemporaryDirectory() as d:
    d, fp = Path(d), FeatureParams(sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)
    config = dict(n_classes=2, n_mels=32)
    model = build_model("small_cnn", **config)
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0), d/"model.pt")
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32)
    sf.write(d/"tone.wav", tone[:24000], 48000); sf.write(d/"long.flac", np.tile(tone, 3), 48000)
    (d/"empty.wav").write_bytes(b""); sf.write(d/"silent.wav", np.zeros(8000, np.float32), 8000)
    (d/"corrupt.wav").write_bytes(b"RIFF" + os.urandom(500))
    sf.write(d/"short.wav", tone[:480], 48000); sf.write(d/"one.wav", tone[:1], 48000)   # 10 ms and one sample
    names = ["tone.wav", "long.flac", "empty.wav", "silent.wav", "corrupt.wav", "absent.wav", "short.wav", "one.wav"]
    recs = predict_files(d/"model.pt", [d/n for n in names], top_k=2, per_window=True)
    for rec in recs: print(Path(rec["file"]).name, "->", rec["error"] or rec["predictions"])
    test_eq([r["error"] is None for r in recs], [True, True, False, False, False, False, False, False])
    assert "too short" in recs[-1]["error"] and "too short" in recs[-2]["error"]
    sf.write(d/"short.wav", tone[:1200], 48000)                      # 25 ms: repeated to fill the input, classified
    test_eq(predict_files(d/"model.pt", [d/"short.wav"])[0]["error"], None)
    test_eq(len(recs[1]["windows"]), 6)   # 3 s in half-overlapping 1 s windows, the last one ending with the file
    assert "empty" in recs[2]["error"] and "silent" in recs[3]["error"] and "no such file" in recs[5]["error"]
    test_eq(round(sum(p["probability"] for p in recs[0]["predictions"]), 3), 1.0)
    # a run directory stands for the model its chapter 05 chose
    from urbansound_nb.core import write_results
    from fastcore.test import test_fail
    test_fail(lambda: resolve_checkpoint(d), contains="without results/05_transfer.json")
    write_results(d, "05_transfer", {}, best_model="small_cnn", best_checkpoint="model.pt")
    test_eq(resolve_checkpoint(d), d/"model.pt")
    test_eq(predict_files(d, [d/"tone.wav"]), predict_files(d/"model.pt", [d/"tone.wav"]))

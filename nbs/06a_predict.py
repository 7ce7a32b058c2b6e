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
# count. A file longer than the clip length is cut into half-overlapping windows whose
# probabilities are averaged (`per_window=True` also returns each window's). Empty, unreadable
# or silent files get an error entry instead of a guess, and never stop the other files.
# `urbansound-nb predict` (notebook 92) prints what `predict_files` returns.

# %%
#| export
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import torch
from torch import nn

from urbansound_nb.audio import AudioDecodeError, decode_audio
from urbansound_nb.core import read_results
from urbansound_nb.features import repeat_frames, resample
from urbansound_nb.models import CheckpointError, load_checkpoint
from urbansound_nb.pretrained import feature_params
from urbansound_nb.train import window_starts

# %%
#| export
SILENCE_PEAK = 1e-4  # a file whose samples never exceed this is treated as silence, not classified
STREAM_SECONDS = 60.0  # a longer file is decoded, featurised and classified block by block, in bounded memory
BLOCK_FRAMES = 1024    # feature frames per block of a streamed file
WINDOW_BATCH = 16      # windows per forward pass of the model

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
# A long recording is not decoded whole: a 10-minute stereo file at 44.1 kHz is 200 MB of
# float32 samples before any feature or network activation. `stream_logmel` reads a file block
# by block (1,024 feature frames, about 24 s at 22.05 kHz), each with a margin of samples on
# either side that covers the STFT window and the resampling filter, so every frame equals the
# one the whole file would give; `stream_windows` cuts the classifier's half-overlapping windows
# from consecutive blocks and keeps only the frames later windows need. Memory then depends on
# the block, not on the file.

# %%
#| export
def stream_logmel(sound: sf.SoundFile, front: nn.Module, name: str = "clip", device="cpu",
                  block_frames: int = BLOCK_FRAMES) -> tuple[Iterator[torch.Tensor], int]:
    "A long file's feature frames in blocks [n_mels, frames], equal to the whole file's, and their total count."
    fp, orig = front.fp, sound.samplerate
    new, hop = fp.sample_rate, fp.hop_length
    n_target = math.ceil(sound.frames * new / orig)      # the resampled length, as torchaudio's Resample makes it
    total = n_target // hop + 1                           # frames of a centred STFT
    align = math.lcm(hop, new // math.gcd(orig, new))     # a block starting here is on the frame and the sample grids
    margin = fp.n_fft + 2 * hop                           # beyond a block's frames: STFT window, resampling filter
    def blocks():
        peak = 0.0
        for f0 in range(0, total, block_frames):
            f1 = min(f0 + block_frames, total)
            s0, s1 = max(0, f0 * hop - margin) // align * align, min(n_target, (f1 - 1) * hop + margin)
            a, b = s0 * orig // new, min(sound.frames, math.ceil(s1 * orig / new))
            x = read_samples(sound, a, b, name)
            peak = max(peak, float(np.abs(x).max()))
            frames = front(resample(torch.from_numpy(x), orig, new).to(device))
            yield frames[:, f0 - s0 // hop:f1 - s0 // hop]
        if peak < SILENCE_PEAK:
            raise AudioDecodeError(f"{name}: the audio is silent (peak {peak:.1e}); nothing to classify")
    return blocks(), total

def read_samples(sound: sf.SoundFile, start: int, stop: int, name: str = "clip") -> np.ndarray:
    "Samples `start:stop` of an open file as float32 mono, or an `AudioDecodeError` saying what is wrong."
    at = f"{start / sound.samplerate:.1f} s"
    sound.seek(start)
    try: x = sound.read(stop - start, dtype="float32", always_2d=True)
    except Exception as e: raise AudioDecodeError(f"{name}: cannot decode past {at} ({e})") from None
    if len(x) < stop - start:
        raise AudioDecodeError(f"{name}: ends at {(start + len(x)) / sound.samplerate:.1f} s, before the "
                               f"{sound.frames / sound.samplerate:.1f} s its header states")
    if not np.isfinite(x).all(): raise AudioDecodeError(f"{name}: NaN or infinite samples after {at}")
    return x.mean(1, dtype=np.float32)

def stream_windows(blocks: Iterable[torch.Tensor], starts: list[int], n_frames: int) -> Iterator[torch.Tensor]:
    "The windows of `n_frames` at `starts` cut from consecutive blocks of frames, holding only what later ones need."
    buf, buf_start, i = None, 0, 0
    for block in blocks:
        buf = block if buf is None else torch.cat([buf, block], -1)
        end = buf_start + buf.shape[-1]
        while i < len(starts) and starts[i] + n_frames <= end:
            yield buf[:, starts[i] - buf_start:starts[i] - buf_start + n_frames]
            i += 1
        drop = (starts[i] if i < len(starts) else end) - buf_start
        buf, buf_start = buf[:, drop:], buf_start + drop

# %%
#| export
class Predictor:
    "A saved checkpoint (or a run directory: the study's chosen model) ready to classify audio files."
    def __init__(self, checkpoint, device="cpu"):
        self.path = resolve_checkpoint(checkpoint)
        self.model, self.ck = load_checkpoint(self.path, device)
        self.fp, self.classes, self.device = feature_params(self.ck["feature_params"]), self.ck["classes"], device
        self.n_frames, self.front = self.fp.frames(self.ck["clip_seconds"]), self.fp.front_end().to(device)

    def start_seconds(self, starts) -> list[float]:
        "Window starts in feature frames as seconds into the file."
        return [s * self.fp.hop_length / self.fp.sample_rate for s in starts]

    @torch.no_grad()
    def classify(self, windows) -> np.ndarray:
        "Class probabilities [windows, classes] of log-mel windows, `WINDOW_BATCH` at a time (bounded memory)."
        batch, out = [], []
        for w in windows:
            batch.append(w)
            if len(batch) == WINDOW_BATCH:
                out.append(self.model(torch.stack(batch)).softmax(-1).cpu())
                batch = []
        if batch: out.append(self.model(torch.stack(batch)).softmax(-1).cpu())
        return torch.cat(out).numpy()

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
        windows = (repeat_frames(logmel[:, s:s + self.n_frames], self.n_frames) for s in starts)  # as in training
        return self.classify(windows), self.start_seconds(starts)

    def file_probs(self, path) -> tuple[np.ndarray, list[float]]:
        "`window_probs` of a file; one longer than `STREAM_SECONDS` is read and classified block by block."
        try: info = sf.info(str(path))
        except Exception: info = None      # not a file soundfile reads: decode_audio says why
        if info is None or info.frames < STREAM_SECONDS * info.samplerate:
            return self.window_probs(Path(path).read_bytes(), str(path))
        with sf.SoundFile(str(path)) as sound:
            blocks, total = stream_logmel(sound, self.front, str(path), self.device)
            starts = window_starts(total, self.n_frames)
            probs = self.classify(stream_windows(blocks, starts, self.n_frames))
        return probs, self.start_seconds(starts)

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
            probs, starts = pr.file_probs(p)
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
import os
import tempfile
from fastcore.test import test_eq
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import build_model
from urbansound_nb.models import checkpoint_dict, save_checkpoint
classes = ["tone", "noise"]
with tempfile.TemporaryDirectory() as d:
    d, fp = Path(d), FeatureParams(sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)
    config = dict(n_classes=2, n_mels=32)
    model = build_model("small_cnn", **config)
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

# %% [markdown]
# Streaming changes nothing but memory: a 70-second file, at a rate that needs resampling down
# and at one that needs it up, gives the whole file's log-mel frames, block by block, and so
# the same probabilities; `file_probs` streams any file over `STREAM_SECONDS`.

# %%
from fastcore.test import test_close
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    save_checkpoint(checkpoint_dict(model, "small_cnn", config, fp, classes, 1.0), d/"model.pt")
    pr, rng = Predictor(d/"model.pt"), np.random.default_rng(0)
    for rate in (44100, 8000):
        sf.write(d/"long.wav", (0.1 * rng.standard_normal((rate * 70, 2))).astype(np.float32), rate)
        whole, starts = pr.window_probs((d/"long.wav").read_bytes(), "long.wav")
        full = pr.front(resample(torch.from_numpy(decode_audio((d/"long.wav").read_bytes())[0]), rate, fp.sample_rate))
        with sf.SoundFile(d/"long.wav") as sound:
            blocks, total = stream_logmel(sound, pr.front, "long.wav", block_frames=500)
            test_eq(total, full.shape[-1])
            test_close(torch.cat(list(blocks), -1), full, eps=1e-3)
        streamed, streamed_starts = pr.file_probs(d/"long.wav")
        test_eq(streamed_starts, starts)
        test_close(streamed, whole, eps=1e-5)

# %% [markdown]
# ## Memory on a long file
#
# `benchmark_predict_memory` measures what `urbansound-nb predict` needs: it writes a 4-second
# and a 10-minute stereo WAV at 44.1 kHz (the long one block by block), runs the command on each
# as a child process, and prints each one's peak resident memory (the kernel's `ru_maxrss`) and
# wall time. Without a checkpoint it makes one shaped like the study's usual choice (two EfficientAT
# mn04 networks averaged, randomly initialised: memory does not depend on the weights' values).
# It prints the floor first: Python with torch, torchaudio and torchvision imported and nothing
# else done, most of it the CUDA build's libraries, which no streaming can lower.
# `urbansound-nb bench --predict-memory [CHECKPOINT]` prints it.

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

def study_shaped_checkpoint(path, n_classes: int = 10) -> Path:
    "A randomly initialised checkpoint shaped like the study's probe + fine-tuned pair (two EfficientAT mn04)."
    from urbansound_nb.models import build_model, checkpoint_dict, save_checkpoint
    from urbansound_nb.pretrained import EfficientATFeatures
    config = dict(members=[dict(model="efficientat", config=dict(width=0.4, n_classes=n_classes))] * 2)
    classes = [f"class {i}" for i in range(n_classes)]
    save_checkpoint(checkpoint_dict(build_model("ensemble", **config), "ensemble", config, EfficientATFeatures(),
                                    classes, 4.0), path)
    return Path(path)

def peak_memory(cmd: list[str]) -> tuple[int, float, int]:
    "Peak resident memory (bytes), wall time (s) and exit status of `cmd` run as a child process."
    import os
    import subprocess
    import time
    t0 = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss * 1024, time.time() - t0, os.waitstatus_to_exitcode(status)

def benchmark_predict_memory(checkpoint=None, minutes: float = 10.0) -> dict:
    "Peak memory and time of `urbansound-nb predict` on a 4-second and a `minutes`-long file; printed and returned."
    import sys
    import tempfile
    command = [sys.executable, "-c", "import sys; from urbansound_nb.cli import main; sys.exit(main())", "predict"]
    floor = peak_memory([sys.executable, "-c", "import torch, torchaudio, torchvision"])[0]
    out = {"python with torch, torchaudio, torchvision imported": dict(peak_mb=round(floor / 2**20))}
    print(f"the floor, python with torch, torchaudio and torchvision imported: peak memory {floor / 2**20:,.0f} MB")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = Path(checkpoint) if checkpoint else study_shaped_checkpoint(d/"pair.pt")
        for label, length in (("4-second file", 4 / 60), (f"{minutes:g}-minute file", minutes)):
            f = write_long_wav(d/"clip.wav", length)
            rss, seconds, status = peak_memory([*command, str(ckpt), str(f), "--json"])
            if status != 0: raise RuntimeError(f"predict failed on the {label} (exit status {status})")
            out[label] = dict(peak_mb=round(rss / 2**20), seconds=round(seconds, 1))
            print(f"predict, {label} (44.1 kHz stereo): peak memory {rss / 2**20:,.0f} MB, {seconds:.1f} s")
    return out

# %%
#| eval: false
benchmark_predict_memory(minutes=1.5)   # `urbansound-nb bench --predict-memory` runs the 10-minute one

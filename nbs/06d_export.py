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
#| default_exp export

# %% [markdown]
# # One ONNX file: the study's model with its front end
#
# > A checkpoint, or a run's chosen model, as one ONNX graph from a waveform to class probabilities, checked.

# %% [markdown]
# `export_onnx` writes a checkpoint (or the model a run chose, `best_checkpoint`) as one ONNX
# graph: the module `predict` runs (`WaveformClassifier`, notebook 06b), so the graph holds the
# front end (pre-emphasis, STFT, mel banks, log, scaling), the frames fitted to the model's input
# (centre crop, or repetition of a short clip) and the network, or both members of an ensemble and
# the mean of their probabilities. It is exported by torch's own exporter (`torch.onnx.export`,
# dynamo, opset `OPSET`), with the batch and the length dynamic, checked by `onnx.checker`, and it
# carries its facts as metadata (notebook 06c reads them). `parity` runs ONNX Runtime and torch on
# the same windows of the same files.

# %%
#| export
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnx
import torch

from urbansound_nb import __version__
from urbansound_nb.audio import window_starts
from urbansound_nb.core import atomic_write_bytes
from urbansound_nb.deploy import OnnxPredictor
from urbansound_nb.predict import Predictor, peak_memory, study_shaped_checkpoint, write_long_wav
from urbansound_nb.windows import SILENCE_PEAK, file_windows

# %%
import time
from fastcore.test import test_eq

# %% [markdown]
# ## The graph and its facts

# %%
#| export
OPSET = 18   # the ONNX operator set: STFT needs 17; ONNX Runtime 1.16 and newer run 18

def _commit(path: Path) -> str | None:
    "The git commit of the repository holding `path`, if there is one."
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError): return None

def onnx_metadata(pr: Predictor, source: Path) -> dict:
    "The facts an ONNX file carries: what it classifies, how to feed it, and where it came from."
    return dict(urbansound_nb=__version__, classes=json.dumps(pr.classes), sample_rate=str(pr.fp.sample_rate),
                clip_seconds=str(pr.clip_seconds), min_samples=str(pr.fp.n_fft),
                windows=(f"one window up to {pr.clip_seconds:g} s; longer files in half-overlapping windows of "
                         f"{pr.clip_seconds:g} s, the last ending with the file; probabilities averaged"),
                input="waveform [batch, samples]: mono float32 at sample_rate, at least min_samples long",
                output="probabilities [batch, classes]", model=pr.ck["model"],
                feature_params=json.dumps(pr.ck["feature_params"]), silence_peak=str(SILENCE_PEAK),
                checkpoint=str(pr.path), checkpoint_sha256=hashlib.sha256(pr.path.read_bytes()).hexdigest(),
                run=str(source if source.is_dir() else pr.path.parent.parent),
                commit=_commit(Path(str(files("urbansound_nb")))) or "unknown", opset=str(OPSET))

def export_onnx(checkpoint, out) -> Path:
    "Write `checkpoint` (or a run directory's chosen model) as one ONNX file at `out`, checked; its path."
    pr = Predictor(checkpoint)
    example = torch.randn(2, int(round(pr.clip_seconds * pr.fp.sample_rate))) * 0.1
    dims = {"wave": {0: torch.export.Dim("batch", min=1, max=4096),
                     1: torch.export.Dim("samples", min=pr.fp.n_fft, max=2 ** 31 - 1)}}
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pr.net.eval(), (example,), f"{d}/model.onnx", dynamo=True, input_names=["waveform"],
                          output_names=["probabilities"], dynamic_shapes=dims, opset_version=OPSET, verbose=False,
                          external_data=False)
        model = onnx.load(f"{d}/model.onnx")
    for key, value in onnx_metadata(pr, Path(checkpoint)).items(): model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(out, model.SerializeToString())
    return Path(out)

# %% [markdown]
# ## Torch and ONNX Runtime, side by side
#
# `parity` cuts each file into the windows both predictors classify (notebook 06a) and compares
# their probabilities window by window and file by file (the mean over windows, as `predict`
# reports it).

# %%
#| export
def parity(onnx_path, checkpoint, files) -> dict:
    "Largest probability difference between ONNX Runtime and torch on `files`, and on how many their top-1 agrees."
    ours, theirs = OnnxPredictor(onnx_path), Predictor(checkpoint)
    worst, agree, n, failed = 0.0, 0, 0, []
    for f in files:
        try: windows = list(file_windows(f, theirs.fp.sample_rate, theirs.clip_seconds, theirs.fp.n_fft)[0])
        except Exception as e:
            failed.append(f"{Path(f).name}: {e}")
            continue
        a, b = theirs.classify(windows), ours.classify(windows)
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int(a.mean(0).argmax() == b.mean(0).argmax())
        n += 1
    return dict(files=n, max_probability_difference=worst, top1_agree=agree, not_classified=failed)

# %% [markdown]
# A randomly initialised study-shaped pair (two EfficientAT mn04 averaged) exported and checked on
# a short clip, a 4-second one, a long file and near-silence:

# %%
import soundfile as sf
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    ckpt = study_shaped_checkpoint(d/"pair.pt")
    t0 = time.time()
    path = export_onnx(ckpt, d/"pair.onnx")
    print(f"exported in {time.time() - t0:.0f} s: {path.stat().st_size / 2**20:.1f} MB")
    facts = OnnxPredictor(path).facts
    test_eq((facts["sample_rate"], facts["clip_seconds"], facts["opset"]), (32000, 4.0, str(OPSET)))
    assert all(k in facts for k in ("run", "commit", "checkpoint_sha256", "windows"))
    rng = np.random.default_rng(0)
    for name, seconds, level in (("short", 0.3, 0.1), ("clip", 4.0, 0.1), ("long", 13.0, 0.1), ("quiet", 2.0, 3e-4)):
        sf.write(d/f"{name}.wav", (level * rng.standard_normal(int(44100 * seconds))).astype(np.float32), 44100)
    check = parity(path, ckpt, sorted(d.glob("*.wav")))
    print(check)
    test_eq((check["files"], check["top1_agree"]), (4, 4))
    assert check["max_probability_difference"] < 1e-4

# %% [markdown]
# ## Memory and speed of both `predict` paths
#
# `benchmark_predict` runs `urbansound-nb predict` as a child process on a 4-second and a
# 10-minute stereo WAV at 44.1 kHz, with the torch checkpoint and with its ONNX export, two threads
# each, and prints each run's peak resident memory and its clips (windows) per second, end to end
# as a user meets them. It prints the floor of each path first: Python with what the path imports
# and nothing done. `urbansound-nb bench --predict-memory [CHECKPOINT]` prints it.

# %%
#| export
def _measured(code: str, args: list, label: str, windows: int) -> dict:
    rss, seconds, status = peak_memory(code, args)
    if status != 0: raise RuntimeError(f"predict failed on the {label} (exit status {status})")
    return dict(peak_mb=round(rss / 2**20), seconds=round(seconds, 1), clips_per_second=round(windows / seconds, 1))

def benchmark_predict(checkpoint=None, minutes: float = 10.0, threads: int = 2) -> dict:
    "Peak memory and clips/s of `predict` with torch and with ONNX Runtime on a 4-second and a `minutes`-long file."
    cli = "import sys\nfrom urbansound_nb.cli import main\nsys.exit(main())"
    floors = {"torch": "import torch, torchaudio, torchvision", "onnx": "import onnxruntime, numpy, soundfile"}
    out = {f"floor, {k}": dict(peak_mb=round(peak_memory(v)[0] / 2**20)) for k, v in floors.items()}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = Path(checkpoint) if checkpoint else study_shaped_checkpoint(d/"pair.pt")
        models = {"torch": ckpt, "onnx": export_onnx(ckpt, d/"model.onnx")}
        for label, length in (("4-second file", 4 / 60), (f"{minutes:g}-minute file", minutes)):
            f = write_long_wav(d/"clip.wav", length)
            windows = max(1, len(window_starts(int(length * 60 * 32000), 4 * 32000)))
            for path, model in models.items():
                out[f"{path}, {label}"] = _measured(cli, ["predict", model, f, "--json", "--threads", threads],
                                                    label, windows)
    for k, v in out.items(): print(f"{k:>32}: " + ", ".join(f"{n} {x}" for n, x in v.items()))
    long = f"{minutes:g}-minute file"
    ours, theirs = out[f"onnx, {long}"], out[f"torch, {long}"]
    print(f"ONNX Runtime against torch on the {long}: {ours['clips_per_second'] / theirs['clips_per_second']:.1f}x "
          f"the clips/s, {ours['peak_mb']} MB against {theirs['peak_mb']} MB at the peak")
    return out

# %%
#| eval: false
benchmark_predict(minutes=1.5)   # `urbansound-nb bench --predict-memory` runs the 10-minute one

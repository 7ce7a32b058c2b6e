# %%
#| default_exp export

# %% [markdown]
# # One ONNX file: the study's model with its front end
#
# > A checkpoint, or a run's chosen model, as one ONNX graph from a waveform to class probabilities, checked.

# %% [markdown]
# `export_onnx` writes a checkpoint (or a run's chosen model, `best_checkpoint`) as the module `predict` runs
# (`WaveformClassifier`, notebook 07b): front end, the frames fitted to the input, and the network, or an ensemble's
# members and their mean. torch's dynamo exporter writes it at opset `OPSET` with dynamic batch and length,
# `onnx.checker` checks it, and it carries its facts as metadata (notebook 07c).

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
from urbansound_nb.core import atomic_write_bytes
from urbansound_nb.deploy import OnnxPredictor
from urbansound_nb.predict import Predictor
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
# `parity` compares the two predictors' probabilities on the same windows (notebook 07a), window by window and file by
# file.

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
# An RBF SVM on MFCC statistics folded into a network, exported and checked on a short clip, a 4-second one, a long
# file and near-silence (chapter 10 exports the study's model):

# %%
import soundfile as sf
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import MFCCClassifier, checkpoint_dict, save_checkpoint
rng = np.random.default_rng(0)
_svm = make_pipeline(StandardScaler(), SVC(break_ties=True)).fit(rng.normal(size=(30, 32)), np.arange(30) % 3)
_config, _net = MFCCClassifier.fitted(_svm, 3, 32, 8, True)
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    ckpt = d/"svm.pt"
    save_checkpoint(checkpoint_dict(_net, "mfcc", _config, FeatureParams(16000, 32, 512, 256), list("abc"), 1.0), ckpt)
    t0 = time.time()
    path = export_onnx(ckpt, d/"svm.onnx")
    print(f"exported in {time.time() - t0:.0f} s: {path.stat().st_size / 2**20:.2f} MB")
    facts = OnnxPredictor(path).facts
    test_eq((facts["sample_rate"], facts["clip_seconds"], facts["opset"]), (16000, 1.0, str(OPSET)))
    assert all(k in facts for k in ("run", "commit", "checkpoint_sha256", "windows"))
    for name, seconds, level in (("short", 0.3, 0.1), ("clip", 1.0, 0.1), ("long", 6.0, 0.1), ("quiet", 2.0, 3e-4)):
        sf.write(d/f"{name}.wav", (level * rng.standard_normal(int(44100 * seconds))).astype(np.float32), 44100)
    check = parity(path, ckpt, sorted(d.glob("*.wav")))
    print(check)
    test_eq((check["files"], check["top1_agree"]), (4, 4))
    assert check["max_probability_difference"] < 1e-4

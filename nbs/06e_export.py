# %%
#| default_exp export

# %% [markdown]
# # One ONNX file: the study's model with its front end
#
# > A checkpoint, or a run's chosen model, as one ONNX graph from a waveform to class probabilities, checked.

# %% [markdown]
# `export_onnx` writes a checkpoint (or a run's chosen model, `best_checkpoint`) as the module `predict` runs
# (`WaveformClassifier`, notebook 06c): front end, the frames fitted to the input, and the network, or an ensemble's
# members and their mean. torch's dynamo exporter writes it at opset `OPSET` with dynamic batch and length,
# `onnx.checker` checks it, and it carries its facts as metadata (notebook 06d): the temperature is inside the graph,
# the "none of these" rule and the **model card** (`model_card`, also written beside the file as Markdown) in its
# metadata.

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
from urbansound_nb.calibration import answer
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

DATA_LICENSE = ("UrbanSound8K (Salamon, Jacoby and Bello, ACM MM 2014) is licensed CC BY-NC 4.0: the model is for "
                "non-commercial use, with attribution")

def _figure(value, spec: str = ".1%") -> str:
    "A number of the card as text; '-' where the checkpoint has none (an older or a plain checkpoint)."
    try: return format(float(value), spec)
    except (TypeError, ValueError): return "-"

def model_card(pr: Predictor, metadata: dict) -> str:
    "The model card (Mitchell et al. 2019; Hugging Face's sections) of a checkpoint, from its `card` and metadata."
    card = pr.ck.get("card") if isinstance(pr.ck.get("card"), dict) else {}
    cal = card.get("calibration") if isinstance(card.get("calibration"), dict) else {}
    rule = pr.rejection
    name = card.get("model") or pr.ck["model"]
    lines = [f"# Model card: {name}", "",
             f"An environmental-sound classifier of {len(pr.classes)} UrbanSound8K classes, exported by urbansound_nb "
             f"{metadata['urbansound_nb']} from `{Path(metadata['checkpoint']).name}` (sha256 "
             f"{metadata['checkpoint_sha256'][:16]}...), commit {metadata['commit']}.", "",
             "## Model", "", f"- Registry name: `{name}` (its network: `{pr.ck['model']}`); classes: "
             f"{', '.join(pr.classes)}.",
             f"- Input: {metadata['input']}; {metadata['windows']}.",
             f"- Front end: log-mel, {json.dumps(pr.ck['feature_params'])}.",
             f"- Calibration: temperature {pr.temperature:.3f} inside the graph (probabilities: softmax(output / T)).",
             "- \"None of these\": " + ("none; every file gets a class." if rule is None else
                                        f"`unknown` where {rule['score']} < {rule['threshold']:.4f}."),
             f"- Timeline rule: {json.dumps(pr.timeline_rule or 'the default, TIMELINE_RULE')}"
             + (f"; on a validation street recording: {card['timeline']}" if card.get("timeline") else ""), "",
             "## Training data and protocol", ""]
    if card:
        lines += [f"- Data: `{card.get('dataset')}`; trained on folds {card.get('train_folds')} "
                  f"({card.get('n_train') or '-'} clips), tested once on fold {card.get('test_fold')} "
                  f"({card.get('n_test')} clips); the folds are UrbanSound8K's, never reshuffled.",
                  f"- Chosen by the rule: {card.get('rule')}", f"- Its reason: {card.get('reason')}",
                  f"- {'Refit on every non-test fold' if card.get('refit') else 'The model of the study split'}"
                  + (f", {card['epochs']} epochs" if card.get("epochs") else "") + f"; seed {card.get('seed')}.",
                  "", "## Evaluation (the test fold, scored once)", "",
                  f"- Accuracy {_figure(card.get('test_accuracy'))}, macro F1 {_figure(card.get('macro_f1'), '.3f')}.",
                  f"- Expected calibration error {_figure(cal.get('ece_before'), '.3f')} as trained, "
                  f"{_figure(cal.get('ece_after'), '.3f')} calibrated (temperature fitted on validation).",
                  f"- At the threshold: {_figure(cal.get('test_answered'))} of test clips answered, "
                  f"{_figure(cal.get('test_accuracy_answered'))} of those right; "
                  f"{_figure(cal.get('others_answered'))} of {cal.get('others_reported') or 0} sounds that are none "
                  f"of the ten given a class, and {_figure(cal.get('made_answered'))} of noise, tones and silence.",
                  "", "| class | precision | recall | F1 | test clips |", "|---|---|---|---|---|"]
        per_class = card.get("per_class") if isinstance(card.get("per_class"), dict) else {}
        lines += [f"| {c} | {_figure(v.get('precision'), '.3f')} | {_figure(v.get('recall'), '.3f')} | "
                  f"{_figure(v.get('f1'), '.3f')} | {v.get('clips')} |" for c, v in per_class.items()
                  if isinstance(v, dict)]
    else: lines += ["- This checkpoint carries no record of its data or figures (it was not served by a study run)."]
    lines += ["", "## Intended use", "",
              "- Tagging which of the ten UrbanSound8K classes sounds in short urban recordings, for research and "
              "teaching; a timeline of longer files in windows.", "", "## Limitations", "",
              f"- Trained on mono copies of UrbanSound8K's clips (at most {pr.clip_seconds:g} s"
              + (f", resampled to {card['dataset_rate'] / 1000:g} kHz" if card.get("dataset_rate") else "")
              + f"), fed to the network at {pr.fp.sample_rate / 1000:g} kHz; other rates are resampled, stereo is "
              "mixed down.",
              "- It knows the ten classes only; other sounds get a class unless the threshold declines them, and the "
              "threshold was chosen on a few kinds of other sound, not all.",
              "- UrbanSound8K's clips come from Freesound uploads of a few hundred recordings: accents of recording "
              "gear, places and seasons outside them are untested. Not for safety-critical alarms or surveillance of "
              "people.", "", "## License", "", f"- {DATA_LICENSE}.", ""]
    return "\n".join(lines)

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
                commit=_commit(Path(str(files("urbansound_nb")))) or "unknown", opset=str(OPSET),
                temperature=str(pr.temperature), rejection=json.dumps(pr.rejection),
                timeline_rule=json.dumps(pr.timeline_rule))

def export_onnx(checkpoint, out) -> Path:
    "Write `checkpoint` (or a run's chosen model) as one ONNX file at `out`, checked, with its model card beside it."
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
    metadata = onnx_metadata(pr, Path(checkpoint))
    card = model_card(pr, metadata)
    card_path = Path(out).with_suffix(".md")
    metadata.update(model_card=card, model_card_file=card_path.name)
    for key, value in metadata.items(): model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(card_path, card.encode())
    atomic_write_bytes(out, model.SerializeToString())
    return Path(out)

# %% [markdown]
# ## Torch and ONNX Runtime, side by side
#
# `parity` compares the two predictors' probabilities on the same windows (notebook 06b), window by window and file by
# file.

# %%
#| export
def parity(onnx_path, checkpoint, files) -> dict:
    "Largest probability difference of ONNX Runtime and torch on `files`; on how many top-1 and the answer agree."
    ours, theirs = OnnxPredictor(onnx_path), Predictor(checkpoint)
    worst, agree, answers, n, failed = 0.0, 0, 0, 0, []
    for f in files:
        try: windows = list(file_windows(f, theirs.fp.sample_rate, theirs.clip_seconds, theirs.fp.n_fft)[0])
        except Exception as e:
            failed.append(f"{Path(f).name}: {e}")
            continue
        a, b = theirs.classify(windows), ours.classify(windows)
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int(a.mean(0).argmax() == b.mean(0).argmax())
        answers += int(answer(a.mean(0), theirs.classes, theirs.rejection) == answer(b.mean(0), ours.classes,
                                                                                    ours.rejection))
        n += 1
    return dict(files=n, max_probability_difference=worst, top1_agree=agree, answers_agree=answers,
                not_classified=failed)

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
    # calibrated as chapter 06 serves a model: a temperature, and "unknown" under a threshold
    rule = dict(score="max_probability", threshold=0.5)
    save_checkpoint(checkpoint_dict(_net, "mfcc", _config, FeatureParams(16000, 32, 512, 256), list("abc"), 1.0,
                                    calibration=dict(temperature=2.0, rejection=rule)), ckpt)
    t0 = time.time()
    path = export_onnx(ckpt, d/"svm.onnx")
    print(f"exported in {time.time() - t0:.0f} s: {path.stat().st_size / 2**20:.2f} MB")
    facts = OnnxPredictor(path).facts
    test_eq((facts["sample_rate"], facts["clip_seconds"], facts["opset"], facts["rejection"]),
            (16000, 1.0, str(OPSET), rule))
    assert all(k in facts for k in ("run", "commit", "checkpoint_sha256", "windows"))
    test_eq((facts["model_card"], facts["model_card_file"]), ((d/"svm.md").read_text(), "svm.md"))   # the card beside
    assert "temperature 2.000" in facts["model_card"] and "## Limitations" in facts["model_card"]
    for name, seconds, level in (("short", 0.3, 0.1), ("clip", 1.0, 0.1), ("long", 6.0, 0.1), ("quiet", 2.0, 3e-4)):
        sf.write(d/f"{name}.wav", (level * rng.standard_normal(int(44100 * seconds))).astype(np.float32), 44100)
    check = parity(path, ckpt, sorted(d.glob("*.wav")))
    print(check)
    test_eq((check["files"], check["top1_agree"], check["answers_agree"]), (4, 4, 4))
    assert check["max_probability_difference"] < 1e-4

# %%
#| default_exp deploy

# %% [markdown]
# # Predict without torch: the ONNX file
#
# > The study's model as one ONNX file, run by ONNX Runtime: the same windows and answers as torch, with no torch.

# %% [markdown]
# `urbansound-nb export` (notebook 06e) writes the study's model as one ONNX graph from a mono waveform to class
# probabilities, front end included, with its facts as metadata. `OnnxPredictor` reads and checks such a file and
# classifies audio with ONNX Runtime, importing nothing but NumPy, soundfile, ONNX Runtime and this package's
# torch-free audio and windows (notebooks 00b, 06b), so a small machine runs:
#
# ```sh
# pip install --no-deps urbansound_nb && pip install onnxruntime numpy soundfile
# urbansound-nb predict model.onnx recording.wav --timeline recording.csv
# ```
#
# Anything else is refused with one line saying why: not ONNX, no study metadata, an unsupported opset, or other
# inputs.

# %%
#| export
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from urbansound_nb.calibration import check_rejection
from urbansound_nb.windows import check_timeline_rule, file_windows, in_batches

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## What the file carries
#
# The class names, sample rate, clip length, shortest input, windowing of long files and provenance (run, commit,
# checkpoint) as `metadata_props`; `model_facts` reads and checks them.

# %%
#| export
REQUIRED_METADATA = ("urbansound_nb", "classes", "sample_rate", "clip_seconds", "min_samples", "windows")

class OnnxModelError(ValueError):
    "A file that is not a usable ONNX model of this study; the message names it and says why."

def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    "An ONNX Runtime session of `path`, or an `OnnxModelError` saying what the file is not."
    options = ort.SessionOptions()
    # no memory arena: the arena keeps its largest batch's memory for good, which on a long file doubled the peak
    options.enable_cpu_mem_arena = False
    if threads: options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try: return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        text = str(e)
        if "opset" in text.lower() or "ir version" in text.lower():
            raise OnnxModelError(f"{path}: ONNX Runtime {ort.__version__} cannot run it: {text.splitlines()[0][:200]}"
                                 ) from None
        raise OnnxModelError(f"{path}: not an ONNX model ONNX Runtime can read ({type(e).__name__}: "
                             f"{text.splitlines()[0][:160] if text else 'no details'})") from None

def model_facts(session: ort.InferenceSession, path) -> dict:
    "The study's metadata of an ONNX model, checked: classes, sample rate, clip seconds, shortest input, windows."
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise OnnxModelError(f"{path}: an ONNX model without this study's metadata ({', '.join(missing)} missing); "
                             "write one with `urbansound-nb export`")
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2:
        described = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise OnnxModelError(f"{path}: its inputs ({described}) are not one float tensor of waveforms [batch, samples]")
    try:
        facts = dict(classes=json.loads(meta["classes"]), sample_rate=int(meta["sample_rate"]),
                     clip_seconds=float(meta["clip_seconds"]), min_samples=int(meta["min_samples"]),
                     # the "none of these" rule (the temperature is inside the graph); older files have none
                     rejection=check_rejection(json.loads(meta.get("rejection") or "null"), f"{path}: rejection"),
                     timeline_rule=check_timeline_rule(json.loads(meta.get("timeline_rule") or "null"),
                                                       f"{path}: timeline rule"))
    except (ValueError, TypeError) as e: raise OnnxModelError(f"{path}: unreadable metadata ({e})") from None
    return {**meta, **facts}

# %% [markdown]
# ## The predictor
#
# `OnnxPredictor` has what `classify_files` (notebook 06b) asks of a predictor: the same records, options and bad-file
# handling as a checkpoint.

# %%
#| export
class OnnxPredictor:
    "An ONNX file written by `urbansound-nb export`, ready to classify audio files with ONNX Runtime."
    def __init__(self, path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file(): raise OnnxModelError(f"{path}: no such file")
        self.session = _session(self.path, threads)
        self.facts = model_facts(self.session, self.path)
        self.classes, self.sample_rate = self.facts["classes"], self.facts["sample_rate"]
        self.clip_seconds, self.min_samples = self.facts["clip_seconds"], self.facts["min_samples"]
        self.rejection, self.timeline_rule = self.facts["rejection"], self.facts["timeline_rule"]
        self.input = self.session.get_inputs()[0].name

    def classify(self, windows) -> np.ndarray:
        "Class probabilities [windows, classes] of waveform windows, `INFERENCE_BATCH` at a time (bounded memory)."
        return in_batches(windows, lambda b: self.session.run(None, {self.input: b})[0])

    def file_probs(self, path) -> tuple[np.ndarray, list[float]]:
        "Class probabilities of each window of a file [windows, classes] and the windows' start times (s)."
        windows, starts = file_windows(path, self.sample_rate, self.clip_seconds, self.min_samples)
        return self.classify(windows), starts

# %% [markdown]
# Files that are not this study's model are refused before any audio is read (notebook 06e checks a real export):

# %%
import tempfile
import onnx
from onnx import TensorProto, helper
def _tiny_model(path, metadata: dict, inputs=((["batch", "samples"]),), opset: int = 18):
    "An ONNX graph that averages each input waveform into two 'probabilities', with `metadata`."
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, shape) for i, shape in enumerate(inputs)]
    out = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])
    nodes = [helper.make_node("ReduceMean", ["x0"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Concat", ["m", "m"], ["p"], axis=1)]
    if opset >= 18: nodes[0] = helper.make_node("ReduceMean", ["x0", "axes"], ["m"], keepdims=1)
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])] if opset >= 18 else []
    model = helper.make_model(helper.make_graph(nodes, "tiny", ins, [out], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    for k, v in metadata.items(): model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
good = dict(urbansound_nb="0", classes='["a", "b"]', sample_rate="8000", clip_seconds="1.0", min_samples="64",
            windows="half-overlapping")
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    _tiny_model(d/"ok.onnx", good)
    test_eq(OnnxPredictor(d/"ok.onnx").classes, ["a", "b"])
    (d/"junk.onnx").write_bytes(b"not a model")
    test_fail(lambda: OnnxPredictor(d/"junk.onnx"), contains="junk.onnx: not an ONNX model")
    _tiny_model(d/"bare.onnx", {})
    test_fail(lambda: OnnxPredictor(d/"bare.onnx"), contains="without this study's metadata")
    _tiny_model(d/"two.onnx", good, inputs=(["batch", "samples"], ["batch"]))
    test_fail(lambda: OnnxPredictor(d/"two.onnx"), contains="are not one float tensor of waveforms")
    _tiny_model(d/"declines.onnx", dict(good, rejection='{"score": "max_probability", "threshold": 0.7}'))
    test_eq(OnnxPredictor(d/"declines.onnx").rejection, dict(score="max_probability", threshold=0.7))
    _tiny_model(d/"ruled.onnx", dict(good, timeline_rule='{"threshold": 0.6, "min_seconds": 2.0}'))
    test_eq(OnnxPredictor(d/"ruled.onnx").timeline_rule["min_seconds"], 2.0)
    _tiny_model(d/"odd.onnx", dict(good, rejection='{"score": "max_probability", "threshold": "high"}'))
    test_fail(lambda: OnnxPredictor(d/"odd.onnx"), contains="odd.onnx: rejection: threshold must be")
    _tiny_model(d/"future.onnx", good, opset=99)
    test_fail(lambda: OnnxPredictor(d/"future.onnx"), contains="future.onnx: ONNX Runtime")

# %%
#| default_exp deployment

# %% [markdown]
# # Deployment: the study's model as one ONNX file
#
# > The chosen model exported with its front end, checked against torch, quantised, and run over a long recording.

# %% [markdown]
# This chapter exports the model chapter 06 serves as one ONNX file (notebook 07d), front end included, and checks
# what a user of that file gets: **parity** with torch on every test clip, window by window; **speed** of both;
# **int8**, the file quantised by ONNX Runtime's tools, and its cost in accuracy; and **a timeline** of a long
# recording with known boundaries. Outside the study: `urbansound-nb export RUN_DIR model.onnx`, then `urbansound-nb
# predict model.onnx FILE --timeline FILE.csv --plot FILE.png` on any machine with ONNX Runtime, NumPy and soundfile.

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np

# %%
import tempfile
import time
import matplotlib.pyplot as plt
import pandas as pd
import soundfile as sf
from IPython.display import Markdown
from fastcore.test import test_eq, test_close
from urbansound_nb.audio import decode_row
from urbansound_nb.batches import study_data
from urbansound_nb.core import make_run_dir, write_results
from urbansound_nb.deploy import OnnxPredictor
from urbansound_nb.export import OPSET, export_onnx, parity
from urbansound_nb.params import as_bool, as_int, study_params, use_test_values
from urbansound_nb.bench import accuracy_and_speed, study_shaped_checkpoint
from urbansound_nb.predict import Predictor, resolve_checkpoint
from urbansound_nb.windows import file_windows, resample, timeline

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, ...) are notebook 00a's; set any of them here to override
long_clips = 24         # test-fold clips joined end to end into the long recording of the timeline
quantise = True         # also quantise the ONNX file to int8 and measure what it costs

# %% tags=["checks"]
stand_in = use_test_values(globals(), long_clips=6)
params = study_params(globals())
long_clips = as_int("long_clips", long_clips, 2, 1000)
quantise = as_bool("quantise", quantise)

# %% [markdown]
# ## The study's model, exported

# %%
run_path = make_run_dir(params.run_dir)
work = Path(tempfile.mkdtemp())
data = study_data(params, progress=False)
if stand_in:   # nbdev-test runs this chapter alone: a randomly initialised model of the study's shape stands in
    checkpoint = study_shaped_checkpoint(work/"stand_in.pt", data.split.classes)
else: checkpoint = resolve_checkpoint(run_path)   # chapter 06's choice; a clear error where it has not run
t0 = time.time()
onnx_path = export_onnx(checkpoint, run_path/"models"/"model.onnx")
export_seconds = time.time() - t0
model, reference = OnnxPredictor(onnx_path, threads=2), Predictor(checkpoint)
facts = {k: model.facts[k] for k in ("model", "sample_rate", "clip_seconds", "min_samples", "opset", "commit")}
print(f"{checkpoint} -> {onnx_path}: {onnx_path.stat().st_size / 2**20:.1f} MB, opset {OPSET}, "
      f"exported and checked in {export_seconds:.0f} s")
pd.Series(facts, name="metadata").to_frame()

# %% [markdown]
# ## Parity with torch on the test fold
#
# Every decodable test clip, written as the file it came as, cut as `predict` cuts files, classified by both: the
# largest difference of any probability of any window, and whether each clip's top class agrees:

# %%
rows = data.ds.select(data.test.tolist())
files = []
for i, row in enumerate(rows):
    suffix = Path(row["slice_file_name"]).suffix or ".wav"
    f = work/f"{i:04d}-{Path(row['slice_file_name']).stem}{suffix}"
    f.write_bytes(row["audio"]["bytes"] if row["audio"].get("bytes") else Path(row["audio"]["path"]).read_bytes())
    files.append(f)
check = parity(onnx_path, checkpoint, files)
print(f"{check['files']} test clips: largest probability difference {check['max_probability_difference']:.1e}, "
      f"top-1 the same on {check['top1_agree']} of {check['files']}")
assert check["max_probability_difference"] < 1e-4 and check["top1_agree"] == check["files"]

# %% [markdown]
# ## Speed, and int8
#
# Both classify the same windows with two threads. The int8 file is ONNX Runtime's `quantize_static` (QDQ, per-channel
# weights, activations calibrated on training-fold windows), the network's convolutions and linear layers only (the
# front end's mel product and log need float's range); recommended only where it loses at most a point.

# %%
import torch
torch_threads = torch.get_num_threads()
torch.set_num_threads(2)          # both predictors on two threads
labels = data.logmels.labels.numpy()[data.test]
windows = [next(file_windows(f, model.sample_rate, model.clip_seconds, model.min_samples)[0]) for f in files]
speed = {}
one_by_one = lambda classify: lambda ws: np.concatenate([classify([w]) for w in ws])   # each clip its own file
for name, fn in (("torch", reference.classify), ("ONNX Runtime", model.classify)):
    acc, rate, _ = accuracy_and_speed(one_by_one(fn), windows, labels)
    speed[name] = dict(test_accuracy=acc, clips_per_second=rate, megabytes=None)
speed["ONNX Runtime"]["megabytes"] = onnx_path.stat().st_size / 2**20
torch.set_num_threads(torch_threads)

# %%
#| export
def quantise_int8(onnx_path, out, calibration: list, batch: int = 8):
    "ONNX Runtime's static int8 quantisation (QDQ, per channel) of the network's convolutions and linear layers."
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    class Windows(CalibrationDataReader):
        def __init__(self): self.batches = iter(np.stack(calibration[i:i + batch])
                                                for i in range(0, len(calibration), batch))
        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"waveform": b.astype(np.float32)}
    quantize_static(str(onnx_path), str(out), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm"])
    return Path(out)

# %%
int8 = None
if quantise:
    rng = np.random.default_rng(params.seed)
    train_rows = data.ds.select(rng.choice(data.train, min(64, len(data.train)), replace=False).tolist())
    calibration = [resample(*decode_row(r), model.sample_rate) for r in train_rows]
    calibration = [np.resize(c, int(model.clip_seconds * model.sample_rate)).astype(np.float32) for c in calibration]
    int8_path = quantise_int8(onnx_path, run_path/"models"/"model.int8.onnx", calibration)
    quantised = OnnxPredictor(int8_path, threads=2)
    acc, rate, _ = accuracy_and_speed(one_by_one(quantised.classify), windows, labels)
    speed["ONNX Runtime, int8"] = dict(test_accuracy=acc, clips_per_second=rate,
                                       megabytes=int8_path.stat().st_size / 2**20)
    int8 = dict(speed["ONNX Runtime, int8"], accuracy_drop=speed["ONNX Runtime"]["test_accuracy"] - acc,
                recommended=speed["ONNX Runtime"]["test_accuracy"] - acc <= 0.01)
table = pd.DataFrame(speed).T
table.assign(test_accuracy=table.test_accuracy.map("{:.1%}".format), clips_per_second=table.clips_per_second.round(1),
             megabytes=table.megabytes.astype(float).round(2))

# %%
lines = [f"ONNX Runtime classifies {speed['ONNX Runtime']['clips_per_second'] / speed['torch']['clips_per_second']:.1f}"
         f"x as many clips a second as torch on the same windows and threads."]
if int8:
    lines.append(f"The int8 file is {int8['megabytes']:.1f} MB against "
                 f"{speed['ONNX Runtime']['megabytes']:.1f}, runs at {int8['clips_per_second']:.0f} clips/s, and "
                 f"scores {100 * int8['accuracy_drop']:+.1f} points below the float file on the test fold: "
                 + ("recommended where size or speed matters." if int8["recommended"] else
                    "not recommended (it loses more than one point)."))
Markdown(" ".join(lines))

# %% [markdown]
# ## A long recording and its timeline
#
# `long_clips` test clips, each of a class other than the one before, are joined end to end, so every boundary is
# known; the timeline rule (notebook 07a) makes segments, scored three ways: **time accuracy** (every tenth of a
# second, the window's most probable class), **clip accuracy** (the class whose segments cover most of each clip), and
# **onset error** (from each clip's start to the nearest start of its class, within one window; further or none:
# missed).

# %%
#| export
def join_clips(clips: list, rate: int) -> tuple[np.ndarray, list[dict]]:
    "Clips (samples at `rate`, class) joined end to end, and the truth: each clip's start, end and class."
    truth, t = [], 0
    for samples, label in clips:
        truth.append(dict(start=t / rate, end=(t + len(samples)) / rate, **{"class": label}))
        t += len(samples)
    return np.concatenate([s for s, _ in clips]).astype(np.float32), truth

def timeline_scores(tl: dict, truth: list[dict], classes, step: float = 0.1) -> dict:
    "Time accuracy, clip accuracy and onset errors of a timeline against the true clips (see the prose)."
    times = np.arange(0, tl["seconds"], step) + step / 2
    spans = np.array([[w["start"], w["end"]] for w in tl["windows"]])
    top = [max(w["probabilities"], key=w["probabilities"].get) for w in tl["windows"]]
    said = [top[min(np.searchsorted(spans[:, 1], t), len(top) - 1)] for t in times]
    true = [next((c["class"] for c in truth if c["start"] <= t < c["end"]), None) for t in times]
    cover = lambda clip, cls: sum(max(0.0, min(s["end"], clip["end"]) - max(s["start"], clip["start"]))
                                  for s in tl["segments"] if s["class"] == cls)
    window = tl["windows"][0]["end"] - tl["windows"][0]["start"] if tl["windows"] else 0.0
    onsets = []
    for clip in truth:
        starts = [abs(s["start"] - clip["start"]) for s in tl["segments"] if s["class"] == clip["class"]]
        onsets.append(min(starts) if starts and min(starts) <= max(window, 4.0) else None)
    found = [o for o in onsets if o is not None]
    return dict(time_accuracy=float(np.mean([a == b for a, b in zip(said, true)])),
                clip_accuracy=float(np.mean([max(classes, key=lambda c: cover(clip, c)) == clip["class"]
                                             and cover(clip, clip["class"]) > 0 for clip in truth])),
                onsets_found=len(found), onsets=len(onsets),
                median_onset_error=float(np.median(found)) if found else None,
                mean_onset_error=float(np.mean(found)) if found else None)

# %%
_truth = [dict(start=0.0, end=4.0, **{"class": "a"}), dict(start=4.0, end=8.0, **{"class": "b"})]
_tl = dict(seconds=8.0, windows=[dict(start=0.0, end=3.0, probabilities=dict(a=0.9, b=0.1)),
                                 dict(start=3.0, end=5.0, probabilities=dict(a=0.4, b=0.6)),
                                 dict(start=5.0, end=8.0, probabilities=dict(a=0.1, b=0.9))],
           segments=[dict(start=0.0, end=3.0, **{"class": "a"}, mean_probability=0.9),
                     dict(start=3.0, end=8.0, **{"class": "b"}, mean_probability=0.75)])
_s = timeline_scores(_tl, _truth, ["a", "b"])
test_close(_s["time_accuracy"], 0.875)          # 3.0-4.0 s is said to be b
test_eq((_s["clip_accuracy"], _s["onsets_found"], _s["median_onset_error"]), (1.0, 2, 0.5))

# %%
rng = np.random.default_rng(params.seed)
order, chosen = rng.permutation(len(rows)), []
for i in order:
    label = rows[int(i)]["class"]
    if not chosen or label != chosen[-1][1]: chosen.append((int(i), label))
    if len(chosen) == long_clips: break
clips = [(resample(*decode_row(rows[i]), model.sample_rate), label) for i, label in chosen]
recording, truth = join_clips(clips, model.sample_rate)
long_file = work/"long_recording.wav"
sf.write(long_file, recording, model.sample_rate, subtype="FLOAT")
probs, starts = model.file_probs(long_file)
tl = timeline(probs, starts, model.classes, model.clip_seconds, len(recording) / model.sample_rate)
scores = timeline_scores(tl, truth, model.classes)
long_check = parity(onnx_path, checkpoint, [long_file])
print(f"{len(clips)} test clips, {tl['seconds']:.0f} s; {len(tl['windows'])} windows, {len(tl['segments'])} segments; "
      f"parity on the long file: {long_check['max_probability_difference']:.1e}")
pd.Series(scores, name="timeline against the truth", dtype=object).to_frame()   # counts stay integers

# %%
from urbansound_nb.windows import plot_timeline
fig = plot_timeline(tl, f"A {tl['seconds']:.0f}-second recording of {len(clips)} test-fold clips: "
                        "probability per window (shade), segments (red), true clips (black)")
ax = fig.axes[0]
for clip in truth:
    i = model.classes.index(clip["class"])
    ax.plot([clip["start"], clip["end"]], [i - 0.3, i - 0.3], color="black", lw=2)
plt.show()

# %%
lines = [f"On a recording of {len(clips)} test-fold clips joined end to end ({tl['seconds']:.0f} s), the timeline "
         f"names the right class {scores['time_accuracy']:.0%} of the time and covers {scores['clip_accuracy']:.0%} "
         f"of the clips mostly with their own class.",
         f"It finds the start of {scores['onsets_found']} of {scores['onsets']} clips within a window"
         + (f", a median {scores['median_onset_error']:.1f} s from the true onset" if scores["onsets_found"] else "")
         + f": windows of {model.clip_seconds:g} s every {model.clip_seconds / 2:g} s cannot place an onset "
           "more finely than about a second."]
if stand_in: lines.append("(A randomly initialised model stands in here: these figures test the mechanics only.)")
Markdown(" ".join(lines))

# %%
write_results(run_path, "10_deployment", {
    name: dict(test_accuracy=v["test_accuracy"], clips_per_second=v["clips_per_second"], megabytes=v["megabytes"])
    for name, v in speed.items()}, dataset=params.dataset, onnx=str(onnx_path), checkpoint=str(checkpoint),
    metadata=facts, export_seconds=round(export_seconds, 1), parity=dict(check, long_file=long_check), int8=int8,
    timeline=dict(scores, clips=len(clips), seconds=tl["seconds"], segments=tl["segments"], truth=truth,
                  rule=tl["rule"]), stand_in=bool(stand_in), **data.clip_counts())

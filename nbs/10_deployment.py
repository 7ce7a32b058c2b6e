# %%
#| default_exp deployment

# %% [markdown]
# # Deployment: the study's model as one ONNX file
#
# > The chosen model's timeline scored as sound event detection is scored, then exported with its card and checked.

# %% [markdown]
# This chapter takes the model chapter 06 serves to a user: **a timeline** of street recordings with known events,
# its rule chosen on validation and scored by `sed_eval` (notebook 10b); **one ONNX file** (notebook 06e), front end,
# temperature and rules included, with its **model card**; **parity** with torch on every test clip, window by window;
# **speed** of both; and **int8**, the file quantised by ONNX Runtime's tools, and its cost in accuracy. Outside the
# study: `urbansound-nb export RUN_DIR model.onnx`, then `urbansound-nb predict model.onnx FILE --timeline FILE.csv
# --plot FILE.png` on any machine with ONNX Runtime, NumPy and soundfile.

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
from fastcore.test import test_eq
from urbansound_nb.audio import decode_audio, decode_row
from urbansound_nb.batches import study_data
from urbansound_nb.calibration import calibrated
from urbansound_nb.choice import read_other_sounds
from urbansound_nb.core import make_run_dir, read_choice, write_results
from urbansound_nb.events import ONSET_COLLAR, choose_timeline_rule, sed_scores, street_recording
from urbansound_nb.models import read_checkpoint, save_checkpoint
from urbansound_nb.deploy import OnnxPredictor
from urbansound_nb.export import OPSET, export_onnx, parity
from urbansound_nb.params import as_bool, as_int, study_params, use_test_values
from urbansound_nb.bench import accuracy_and_speed, study_shaped_checkpoint
from urbansound_nb.predict import Predictor, resolve_checkpoint
from urbansound_nb.windows import TIMELINE_RULE, file_windows, resample, timeline

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, ...) are notebook 00a's; set any of them here to override
long_clips = 24         # events of each street recording (validation's and the test fold's), with gaps between
quantise = True         # also quantise the ONNX file to int8 and measure what it costs

# %% tags=["checks"]
stand_in = use_test_values(globals(), long_clips=6)
params = study_params(globals())
long_clips = as_int("long_clips", long_clips, 2, 1000)
quantise = as_bool("quantise", quantise)

# %% [markdown]
# ## The served model, and street recordings with known events
#
# A timeline is scored on recordings built as a street recording is (notebook 10b): events of the ten classes with
# gaps of silence, quiet background and sounds that are none of the ten. The rule that turns windows into segments is
# chosen on one built from **validation** clips and the half of the other sounds that chose the threshold (chapter 06),
# classified by the chosen model of the study's split, which never trained on them; the refit did, so it is scored only
# on one built from **test** clips and the other half.

# %%
run_path = make_run_dir(params.run_dir)
work = Path(tempfile.mkdtemp())
data = study_data(params, progress=False)
if stand_in:   # nbdev-test runs this chapter alone: a randomly initialised model of the study's shape stands in
    checkpoint = study_shaped_checkpoint(work/"stand_in.pt", data.split.classes)
    split_checkpoint, calibration = checkpoint, {}
else:
    checkpoint = resolve_checkpoint(run_path)   # chapter 06's choice; a clear error where it has not run
    served = read_choice(run_path)
    split_checkpoint = run_path/"models"/f"{served['model']}.pt"
    split_checkpoint = split_checkpoint if split_checkpoint.is_file() else checkpoint
    calibration = served.get("calibration") or {}
served_model, split_model = Predictor(checkpoint), Predictor(split_checkpoint)
rate, classes, clip_seconds = served_model.fp.sample_rate, served_model.classes, served_model.clip_seconds
folder = calibration.get("other_sounds")
others = read_other_sounds(folder) if folder and Path(folder).is_dir() else None

def events_of(indices, seed: int) -> list:
    "`long_clips` clips of `indices` in a random order, each of another class than the one before, at the model's rate."
    rows, chosen = data.ds.select([int(i) for i in indices]), []
    for i in np.random.default_rng(seed).permutation(len(rows)):
        if not chosen or rows[int(i)]["class"] != chosen[-1][1]: chosen.append((int(i), rows[int(i)]["class"]))
        if len(chosen) == long_clips: break
    return [(resample(*decode_row(rows[i]), rate), label) for i, label in chosen]

def others_of(half: str) -> list:
    "The other sounds of one half of chapter 06's split of their kinds, mono at the model's rate (none without them)."
    if others is None: return []
    paths = others[others.kind.isin((calibration.get("other_kinds") or {}).get(half) or [])].path
    return [resample(*decode_audio(Path(p).read_bytes(), str(p)), rate) for p in paths]

def street_file(name: str, indices, half: str, seed: int) -> tuple[Path, list, float]:
    "A street recording written as `name`.wav: its path, truth and seconds."
    samples, truth = street_recording(events_of(indices, seed), others_of(half), rate, seed)
    sf.write(work/f"{name}.wav", samples, rate, subtype="FLOAT")
    return work/f"{name}.wav", truth, len(samples) / rate

val_file, val_truth, val_seconds = street_file("validation_street", data.val, "choose", params.seed)
test_file, test_truth, test_seconds = street_file("test_street", data.test, "report", params.seed + 1)
gaps = pd.Series([t["gap"] for t in test_truth]).value_counts().to_dict()
print(f"validation recording: {len(val_truth)} events, {val_seconds:.0f} s; test recording: {len(test_truth)} events, "
      f"{test_seconds:.0f} s, gaps before them: {gaps}")

# %% [markdown]
# ## The timeline's rule, chosen on validation
#
# Each rule of `RULE_GRID` (threshold x shortest segment; hysteresis and the joined gap as `TIMELINE_RULE`) makes a
# timeline of the validation recording, with the served model's temperature and its "none of these" threshold; the
# best segment-based F1 wins (notebook 10b). It travels with the model: its checkpoint and the ONNX file carry it, so
# `predict --timeline` uses it.

# %%
val_probs, val_starts = split_model.file_probs(val_file)
val_probs = calibrated(val_probs, served_model.temperature)      # the split model, calibrated as the served one is
val_timeline = lambda rule: timeline(val_probs, val_starts, classes, clip_seconds, val_seconds,
                                     rule={**TIMELINE_RULE, **rule}, rejection=served_model.rejection)
chosen_rule, trials = choose_timeline_rule(lambda rule: sed_scores(val_timeline(rule)["segments"], val_truth, classes))
timeline_rule = {**TIMELINE_RULE, **chosen_rule}
trials = pd.DataFrame(trials)
trials.pivot(index="threshold", columns="min_seconds", values="segment_f1").round(3).rename_axis(
    index="threshold", columns="segment-based F1 by shortest segment (s)")

# %% [markdown]
# ## The test fold's street recording, scored
#
# The served model, with the chosen rule and, for comparison, the hand-set `TIMELINE_RULE`:

# %%
probs, starts = served_model.file_probs(test_file)
tl = timeline(probs, starts, classes, clip_seconds, test_seconds, rule=timeline_rule, rejection=served_model.rejection)
scores = sed_scores(tl["segments"], test_truth, classes)
hand_set = sed_scores(timeline(probs, starts, classes, clip_seconds, test_seconds,
                               rejection=served_model.rejection)["segments"], test_truth, classes)
validation = trials.loc[trials.segment_f1.idxmax()].to_dict()
pd.DataFrame({"validation recording, chosen rule": {k: validation[k] for k in scores if k in validation},
              "test recording, chosen rule": scores, "test recording, TIMELINE_RULE": hand_set}).round(3)

# %%
from urbansound_nb.windows import plot_timeline
fig = plot_timeline(tl, f"A {tl['seconds']:.0f}-second street recording of {len(test_truth)} test-fold events: "
                        "probability per window (shade), segments (red), true events (black)")
ax = fig.axes[0]
for event in test_truth:
    i = classes.index(event["class"])
    ax.plot([event["start"], event["end"]], [i - 0.3, i - 0.3], color="black", lw=2)
plt.show()

# %%
lines = [f"On a street recording of {len(test_truth)} test-fold events ({tl['seconds']:.0f} s) with gaps of silence, "
         f"background and other sounds, the timeline scores a segment-based F1 of {scores['segment_f1']:.2f} (1 s "
         f"segments; error rate {scores['segment_error_rate']:.2f}) and an event-based F1 of {scores['event_f1']:.2f} "
         f"(onsets within {ONSET_COLLAR * 1000:.0f} ms), with the rule chosen on validation (threshold "
         f"{timeline_rule['threshold']:g}, shortest segment {timeline_rule['min_seconds']:g} s); the hand-set rule "
         f"scores {hand_set['segment_f1']:.2f} and {hand_set['event_f1']:.2f}.",
         f"Windows of {clip_seconds:g} s every {clip_seconds / 2:g} s place an onset no more finely than about a "
         "second, so few onsets fall within the collar."]
if stand_in: lines.append("(A randomly initialised model stands in here: these figures test the mechanics only.)")
Markdown(" ".join(lines))

# %%
ck = read_checkpoint(checkpoint)          # the rule, and the card's line on it, saved with the served model
ck["timeline_rule"] = timeline_rule
if isinstance(ck.get("card"), dict):
    ck["card"]["timeline"] = (f"segment-based F1 {validation['segment_f1']:.2f}; on the test fold's, "
                              f"{scores['segment_f1']:.2f} (event-based F1 {scores['event_f1']:.2f})")
save_checkpoint(ck, checkpoint)

# %% [markdown]
# ## The study's model, exported

# %%
t0 = time.time()
onnx_path = export_onnx(checkpoint, run_path/"models"/"model.onnx")
export_seconds = time.time() - t0
model, reference = OnnxPredictor(onnx_path, threads=2), Predictor(checkpoint)
facts = {k: model.facts[k] for k in ("model", "sample_rate", "clip_seconds", "min_samples", "opset", "commit")}
print(f"{checkpoint} -> {onnx_path}: {onnx_path.stat().st_size / 2**20:.1f} MB, opset {OPSET}, "
      f"exported and checked in {export_seconds:.0f} s")
pd.Series(facts, name="metadata").to_frame()

# %% [markdown]
# ## Its model card
#
# `export` writes the card beside the file (`model.md`) and into its metadata (`model_card`): what the model was
# trained on, how it was chosen, how good it is class by class, its calibration and threshold, and what it is not for.

# %%
card_path = onnx_path.with_suffix(".md")
assert card_path.read_text() == model.facts["model_card"]
Markdown("\n".join("##" + line if line.startswith("#") else line   # its headings, under this chapter's
                   for line in card_path.read_text().splitlines()))

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
      f"top-1 the same on {check['top1_agree']} of {check['files']}, the answer (a class or unknown) on "
      f"{check['answers_agree']}")
assert check["max_probability_difference"] < 1e-4 and check["top1_agree"] == check["answers_agree"] == check["files"]
long_check = parity(onnx_path, checkpoint, [test_file])
print(f"the street recording ({test_seconds:.0f} s): largest difference {long_check['max_probability_difference']:.1e}")
test_eq(model.timeline_rule, timeline_rule)

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

# %%
write_results(run_path, "10_deployment", {
    name: dict(test_accuracy=v["test_accuracy"], clips_per_second=v["clips_per_second"], megabytes=v["megabytes"])
    for name, v in speed.items()}, dataset=params.dataset, onnx=str(onnx_path), checkpoint=str(checkpoint),
    metadata=facts, export_seconds=round(export_seconds, 1), model_card=str(card_path),
    parity=dict(check, long_file=long_check), int8=int8,
    timeline=dict(scores, hand_set_rule=hand_set, validation=validation, trials=trials.to_dict("records"),
                  seconds=tl["seconds"], segments=tl["segments"], truth=test_truth, rule=timeline_rule,
                  rejection=tl["rejection"]), stand_in=bool(stand_in), **data.clip_counts())

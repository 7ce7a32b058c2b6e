# %%
#| default_exp windows

# %% [markdown]
# # Long recordings: windows and a timeline
#
# > Any file cut into the clips a model reads, resampled with the training filter; its answers as timed segments.

# %% [markdown]
# The models classify clips of `clip_seconds` (4 s); a user's file is anything from milliseconds to hours, at any
# rate. This notebook turns a file into the clips a model reads, and the answers back into "what happened when", with
# NumPy and soundfile alone, so that the torch checkpoints (notebook 06c) and the torch-free ONNX file (06d) share it:
#
# * **resampling** with training's own filter (torchaudio's windowed sinc) ported to NumPy, equal to float32 rounding;
# * **windows**: a file up to one clip long is one window; a longer one gives half-overlapping windows of one clip,
#   the last ending with the file, each featurised as a training clip was;
# * **streaming**: a file over `STREAM_SECONDS` is read and resampled block by block (each with the filter's margin,
#   so every sample equals the whole file's); memory depends on the block, not on the file;
# * **a timeline**: each window's class probabilities, merged into segments by a stated rule.

# %%
#| export
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from urbansound_nb.audio import AudioDecodeError, decode_audio, window_starts
from urbansound_nb.calibration import UNKNOWN, answer
from urbansound_nb.params import INFERENCE_BATCH

# %%
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# ## The training filter, in NumPy
#
# torchaudio's `Resample` reduces the rates by their greatest common divisor to `orig` and `new` and builds `new`
# filters of `2 * width + orig` taps, one per output phase, correlated with the padded input at a stride of `orig`.
# `resample_kernel` builds the same filters (float64, stored as float32) and `resample` applies them.

# %%
#| export
def resample_kernel(orig_rate: int, new_rate: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    "torchaudio's sinc-interpolation filters (Hann window) from `orig_rate` to `new_rate`: [new, taps] and the margin."
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None] / orig
    t = (np.arange(0, -new, -1, dtype=np.float32)[:, None] / np.float32(new)).astype(np.float64) + idx
    t = np.clip(t * base, -zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    t *= math.pi
    with np.errstate(divide="ignore", invalid="ignore"): kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    return (kernel * window * base / orig).astype(np.float32), width

def _phases(x: np.ndarray, kernel: np.ndarray, orig: int) -> np.ndarray:
    "`x` (already padded) correlated with each filter at a stride of `orig`: the output samples in order."
    taps = kernel.shape[1]
    rows = np.lib.stride_tricks.sliding_window_view(x, taps)[::orig]
    return (rows @ kernel.T).reshape(-1)

def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    "Float32 samples `x` resampled from `orig_rate` to `new_rate` with the training filter (torchaudio's `Resample`)."
    x = np.asarray(x, dtype=np.float32)
    if orig_rate == new_rate: return x
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = resample_kernel(orig_rate, new_rate)
    out = _phases(np.pad(x, (width, width + orig)), kernel, orig)
    return out[:math.ceil(new * len(x) / orig)]

# %% [markdown]
# The port against torchaudio itself, at the real files' rates (the notebook may use torch; the module does not):

# %%
import torch
import torchaudio
rng = np.random.default_rng(0)
for orig_rate, new_rate in ((44100, 32000), (48000, 22050), (8000, 32000), (96000, 32000), (11025, 22050)):
    x = rng.standard_normal(orig_rate // 3).astype(np.float32) * 0.1
    theirs = torchaudio.transforms.Resample(orig_rate, new_rate)(torch.from_numpy(x)).numpy()
    ours = resample(x, orig_rate, new_rate)
    test_eq(ours.shape, theirs.shape)
    test_close(ours, theirs, eps=2e-6)
print("the NumPy port equals torchaudio's Resample to float32 rounding at every rate tried")

# %% [markdown]
# ## Reading a long file block by block
#
# `resampled_blocks` reads a block at a time, mixes to mono and resamples each block with the margin the filter needs
# (zeros beyond the ends), so the blocks end to end equal `resample` of the whole file. A block that cannot be
# decoded, ends early or holds NaN is an `AudioDecodeError` naming the file.

# %%
#| export
STREAM_SECONDS = 60.0   # a longer file is read, resampled and windowed block by block, in bounded memory
BLOCK_VALUES = 2 ** 20  # values of the strided filter input per block (about 4 MB)

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

def resampled_length(frames: int, orig_rate: int, new_rate: int) -> int:
    "How many samples `frames` samples at `orig_rate` become at `new_rate` (as torchaudio's `Resample` makes them)."
    g = math.gcd(int(orig_rate), int(new_rate))
    return math.ceil(new_rate // g * frames / (orig_rate // g))

def resampled_blocks(sound: sf.SoundFile, new_rate: int, name: str = "clip",
                     block_values: int = BLOCK_VALUES) -> Iterator[np.ndarray]:
    "An open file's samples, mono, resampled to `new_rate` in consecutive blocks equal to the whole file's."
    g = math.gcd(sound.samplerate, int(new_rate))
    orig, new = sound.samplerate // g, int(new_rate) // g
    total = resampled_length(sound.frames, sound.samplerate, new_rate)
    kernel, width = (None, 0) if orig == new else resample_kernel(sound.samplerate, new_rate)
    taps = 1 if kernel is None else kernel.shape[1]
    rows_per_block = max(1, block_values // taps)
    for r0 in range(0, math.ceil(total / new), rows_per_block):
        r1 = min(r0 + rows_per_block, math.ceil(total / new))
        a, b = r0 * orig - width, r1 * orig + width + (orig if kernel is not None else 0)
        x = read_samples(sound, max(a, 0), min(b, sound.frames), name)
        if kernel is None:
            yield x
            continue
        x = np.pad(x, (max(0, -a), max(0, b - sound.frames)))        # the whole file's zero padding at its ends
        yield _phases(x, kernel, orig)[:min(r1 * new, total) - r0 * new]

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    for rate, new_rate in ((44100, 32000), (8000, 22050), (32000, 32000), (96000, 32000)):
        wave = (0.1 * rng.standard_normal((rate * 7 + 123, 2))).astype(np.float32)
        sf.write(f"{d}/long.wav", wave, rate, subtype="FLOAT")
        whole = resample(wave.mean(1, dtype=np.float32), rate, new_rate)
        with sf.SoundFile(f"{d}/long.wav") as sound:
            _blocks = list(resampled_blocks(sound, new_rate, "long.wav", block_values=20_000))
        assert len(_blocks) > 1 or rate == new_rate
        test_close(np.concatenate(_blocks), whole, eps=1e-6)
        test_eq(len(np.concatenate(_blocks)), resampled_length(len(wave), rate, new_rate))

# %% [markdown]
# ## Windows
#
# A file up to one clip long is one window (repeated if shorter than the STFT window); a longer one gives windows of
# one clip every half clip, the last ending with the file (`window_starts`, notebook 00b). `stream_windows` cuts them
# from consecutive blocks, keeping only the samples later windows need.

# %%
#| export
SILENCE_PEAK = 1e-4  # a file whose samples never exceed this is treated as silence, not classified

def repeat_to(x: np.ndarray, n: int) -> np.ndarray:
    "The last axis of `x` repeated until it is at least `n` long (a longer `x` is returned as it is)."
    return x if x.shape[-1] >= n else np.tile(x, -(-n // max(x.shape[-1], 1)))[..., :n]

def stream_windows(blocks: Iterable[np.ndarray], starts: list[int], length: int) -> Iterator[np.ndarray]:
    "The windows of `length` at `starts` cut from consecutive blocks (last axis), holding only what later ones need."
    buf, buf_start, i = None, 0, 0
    for block in blocks:
        buf = block if buf is None else np.concatenate([buf, block], -1)
        end = buf_start + buf.shape[-1]
        while i < len(starts) and starts[i] + length <= end:
            yield buf[..., starts[i] - buf_start:starts[i] - buf_start + length]
            i += 1
        drop = (starts[i] if i < len(starts) else end) - buf_start
        buf, buf_start = buf[..., drop:], buf_start + drop

# %%
test_eq(repeat_to(np.array([1., 2.]), 5).tolist(), [1., 2., 1., 2., 1.])

# %% [markdown]
# `file_windows` gives one file's windows for a front end's rate and clip length, their start times and the file's
# facts. Reading starts when the windows are drawn, so a bad block surfaces where the caller classifies.

# %%
#| export
def _checked_peak(x: np.ndarray, name: str) -> np.ndarray:
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioDecodeError(f"{name}: the audio is silent (peak {peak:.1e}); nothing to classify")
    return x

def _streamed(path, sample_rate: int, length: int, name: str):
    "A long file's windows, read block by block (silence is found once every block has been read)."
    with sf.SoundFile(str(path)) as sound: total = resampled_length(sound.frames, sound.samplerate, sample_rate)
    starts = window_starts(total, length)
    def blocks():
        peak = 0.0
        with sf.SoundFile(str(path)) as sound:
            for block in resampled_blocks(sound, sample_rate, name):
                peak = max(peak, float(np.abs(block).max()) if block.size else 0.0)
                yield block
        _checked_peak(np.array([peak]), name)
    return stream_windows(blocks(), starts, length), starts

def file_windows(path, sample_rate: int, clip_seconds: float, min_samples: int = 1) -> tuple[Iterator, list[float]]:
    "The windows (float32 samples at `sample_rate`) a model classifies in file `path`, and their start times (s)."
    name, length = str(path), int(round(clip_seconds * sample_rate))
    try: info = sf.info(name)
    except Exception: info = None      # not a file soundfile reads: decode_audio says why
    if info is not None and info.frames >= STREAM_SECONDS * info.samplerate:
        windows, starts = _streamed(path, sample_rate, length, name)
    else:
        samples, rate = decode_audio(Path(path).read_bytes(), name)
        x = resample(_checked_peak(samples, name), rate, sample_rate)
        if len(x) <= length: windows, starts = iter([repeat_to(x, min_samples)]), [0]
        else:
            starts = window_starts(len(x), length)
            windows = (x[s:s + length] for s in starts)
    return windows, [s / sample_rate for s in starts]

# %%
with tempfile.TemporaryDirectory() as d:
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(44100 * 10) / 44100)).astype(np.float32)
    sf.write(f"{d}/ten.wav", tone, 44100, subtype="FLOAT")
    wins, starts = file_windows(f"{d}/ten.wav", 32000, 4.0)
    test_eq(([w.shape for w in wins], starts), ([(128000,)] * 4, [0.0, 2.0, 4.0, 6.0]))

# %% [markdown]
# ## Classifying files
#
# A predictor (a torch checkpoint, notebook 06c, or an ONNX file, 06d) has `classes` and `file_probs(path)`.
# `classify_files` runs one over many files past a bad one: each gets its top classes and its answer, or the error
# naming its problem. The answer is the top class, or `unknown` where the predictor's `rejection` rule (notebook
# 06a: a score and a threshold chosen on validation) declines.

# %%
#| export
def in_batches(windows, run, batch: int = INFERENCE_BATCH) -> np.ndarray:
    "`run` (a batch [n, samples] -> [n, classes]) over `windows`, `batch` at a time, a batch holding one length."
    out, pending = [], []
    for w in windows:
        if pending and (len(pending) == batch or len(w) != len(pending[0])):
            out.append(run(np.stack(pending)))
            pending = []
        pending.append(np.asarray(w, dtype=np.float32))
    if pending: out.append(run(np.stack(pending)))
    return np.concatenate(out)

def _top(probs, classes, k):
    return [{"class": classes[i], "probability": round(float(probs[i]), 4)} for i in np.argsort(-probs)[:k]]

def classify_files(predictor, files, top_k: int = 3, per_window: bool = False, with_probs: bool = False) -> list[dict]:
    "Each file's top-k classes and answer (a class or `unknown`), + 'windows' with `per_window`; errors never stop."
    out = []
    for f in files:
        rec = {"file": str(f), "predictions": [], "error": None}
        try:
            p = Path(f)
            if not p.is_file(): raise AudioDecodeError(f"{f}: no such file")
            probs, starts = predictor.file_probs(p)
            rejection = getattr(predictor, "rejection", None)    # the model's "none of these" rule, if it has one
            rec["predictions"] = _top(probs.mean(0), predictor.classes, top_k)
            rec["answer"] = answer(probs.mean(0), predictor.classes, rejection)
            if per_window:
                rec["windows"] = [{"start_seconds": round(s, 3), "predictions": _top(w, predictor.classes, top_k),
                                   "answer": answer(w, predictor.classes, rejection)} for s, w in zip(starts, probs)]
            if with_probs: rec["probabilities"], rec["start_seconds"] = probs, starts     # for a timeline
        except (AudioDecodeError, OSError) as e: rec["error"] = str(e)
        except Exception as e:   # whatever else one file does, the others keep their results
            rec["error"], rec["predictions"] = f"{f}: cannot be classified ({type(e).__name__}: {e})", []
        out.append(rec)
    return out

# %%
class _Constant:
    "A stand-in predictor: the same probabilities for every window."
    classes = ["a", "b"]
    def file_probs(self, path):
        windows, starts = file_windows(path, 8000, 1.0)
        return np.array([[0.25, 0.75] for _ in windows]), starts
with tempfile.TemporaryDirectory() as d:
    sf.write(f"{d}/x.wav", 0.1 * np.ones(12000, np.float32), 8000)
    recs = classify_files(_Constant(), [f"{d}/x.wav", f"{d}/none.wav"], top_k=1)
    test_eq((recs[0]["predictions"], recs[0]["answer"], recs[1]["error"]),
            ([{"class": "b", "probability": 0.75}], "b", f"{d}/none.wav: no such file"))
    _Constant.rejection = dict(score="max_probability", threshold=0.8)     # a model that declines under 0.8
    test_eq(classify_files(_Constant(), [f"{d}/x.wav"], per_window=True)[0]["windows"][0]["answer"], UNKNOWN)
    del _Constant.rejection

# %% [markdown]
# ## A timeline of a long recording
#
# Each window stands for its middle half (the first and last for their outer ends too), so windows tile the file.
# Classes become segments by a stated rule, with hysteresis so that a probability hovering about the threshold does
# not flicker: a class **starts** where its probability reaches `threshold` (0.5) and **goes on** while it stays above
# `threshold - hysteresis` (0.4); segments of one class closer than `min_gap` (1 s) are joined, and one shorter than
# `min_seconds` (1 s) dropped. Each segment has its start, end, class and mean probability; classes may overlap.

# %%
#| export
TIMELINE_RULE = dict(threshold=0.5, hysteresis=0.1, min_gap=1.0, min_seconds=1.0)   # chapter 10 chooses a model's own

def check_timeline_rule(rule, where: str = "timeline rule") -> dict | None:
    "A timeline rule a model carries, checked (untrusted metadata): known keys, finite numbers; None stays None."
    if rule is None: return None
    unknown = sorted(set(rule) - set(TIMELINE_RULE)) if isinstance(rule, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{where}: expected a dict of {sorted(TIMELINE_RULE)}, got {rule!r}")
    bad = [k for k, v in rule.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad: raise ValueError(f"{where}: {bad} must be finite numbers, got {rule!r}")
    return {**TIMELINE_RULE, **{k: float(v) for k, v in rule.items()}}

def window_spans(starts, window_seconds: float, total_seconds: float) -> np.ndarray:
    "[windows, 2] start and end times each window stands for: its middle half, the outer windows to the file's ends."
    starts = np.asarray(starts, dtype=float)
    centres = starts + min(window_seconds, total_seconds) / 2
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [total_seconds]])
    return np.stack([edges[:-1], edges[1:]], 1)

def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    "(first, last + 1) of each run of True."
    d = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))

def segments(probs: np.ndarray, spans: np.ndarray, classes, rule: dict | None = None) -> list[dict]:
    "Per-class segments of a recording from its windows' probabilities [windows, classes], by `TIMELINE_RULE`."
    rule = {**TIMELINE_RULE, **(rule or {})}
    out = []
    for c, name in enumerate(classes):
        p = probs[:, c]
        on = p >= rule["threshold"]
        held = p >= rule["threshold"] - rule["hysteresis"]
        runs = [(a, b) for a, b in _runs(held) if on[a:b].any()]   # above the lower line, started by the upper
        merged = []
        for a, b in runs:
            if merged and spans[a, 0] - spans[merged[-1][1] - 1, 1] < rule["min_gap"]: merged[-1] = (merged[-1][0], b)
            else: merged.append((a, b))
        out += [dict(start=round(float(spans[a, 0]), 3), end=round(float(spans[b - 1, 1]), 3), **{"class": name},
                     mean_probability=round(float(p[a:b].mean()), 4))
                for a, b in merged if spans[b - 1, 1] - spans[a, 0] >= rule["min_seconds"]]
    return sorted(out, key=lambda s: (s["start"], s["class"]))

# %%
test_eq(check_timeline_rule(dict(threshold=0.6))["threshold"], 0.6)
test_fail(lambda: check_timeline_rule(dict(threshold="x"), "m.onnx"), contains="m.onnx: ['threshold'] must be")
test_fail(lambda: check_timeline_rule(dict(colour=1)), contains="expected a dict")
_probs = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.3, 0.7], [0.7, 0.3], [0.6, 0.4]])
_spans = window_spans([0, 2, 4, 6, 8, 10], 4.0, 14.0)
test_eq(_spans[[0, -1]].tolist(), [[0.0, 3.0], [11.0, 14.0]])
test_eq(segments(_probs, _spans, ["a", "b"]),
        [dict(start=0.0, end=5.0, **{"class": "a"}, mean_probability=0.675),        # held at 0.45 by the hysteresis
         dict(start=3.0, end=9.0, **{"class": "b"}, mean_probability=0.6833),
         dict(start=9.0, end=14.0, **{"class": "a"}, mean_probability=0.65)])

# %% [markdown]
# The timeline is written as JSON or CSV (a row per window; the segments in `*.segments.csv`) and drawn as classes
# against time: probabilities as bands, segments as bars.

# %%
#| export
def timeline(probs: np.ndarray, starts, classes, window_seconds: float, total_seconds: float,
             rule: dict | None = None, rejection: dict | None = None) -> dict:
    "A recording's timeline: each window's span, probabilities and answer, the merged segments, the rules used."
    spans = window_spans(starts, window_seconds, total_seconds)
    answers = [answer(row, classes, rejection) for row in probs]
    windows = [dict(start=round(float(s), 3), end=round(float(e), 3), answer=said,
                    probabilities={c: round(float(p), 4) for c, p in zip(classes, row)})
               for (s, e), row, said in zip(spans, probs, answers)]
    # a window the model declines ("none of these") starts and holds no segment
    held = np.where(np.array([a == UNKNOWN for a in answers])[:, None], 0.0, probs) if len(probs) else probs
    return dict(rule={**TIMELINE_RULE, **(rule or {})}, rejection=rejection, seconds=round(float(total_seconds), 3),
                windows=windows, segments=segments(held, spans, classes, rule))

def write_timeline(tl: dict, path) -> list[Path]:
    "Write a timeline as JSON, or as CSV (windows) with the segments beside it (`NAME.segments.csv`); the paths."
    path = Path(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(tl, indent=1))
        return [path]
    classes = list(tl["windows"][0]["probabilities"]) if tl["windows"] else []
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["start", "end", "answer", *classes])
    for row in tl["windows"]:
        w.writerow([row["start"], row["end"], row.get("answer", ""), *row["probabilities"].values()])
    path.write_text(table.getvalue())
    seg_path = path.with_name(path.stem + ".segments.csv")
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["start", "end", "class", "mean_probability"])
    for s in tl["segments"]: w.writerow([s["start"], s["end"], s["class"], s["mean_probability"]])
    seg_path.write_text(table.getvalue())
    return [path, seg_path]

def plot_timeline(tl: dict, title: str = "", path=None):
    "Classes against time: each class's probability per window (shade) and the merged segments (bars)."
    import matplotlib
    if path is not None: matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = list(tl["windows"][0]["probabilities"])
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(classes) + 1.6), constrained_layout=True)
    for i, c in enumerate(classes):
        for row in tl["windows"]:
            ax.fill_between([row["start"], row["end"]], i - 0.4, i + 0.4, color="tab:blue", lw=0,
                            alpha=0.85 * row["probabilities"][c])
    for s in tl["segments"]:
        i = classes.index(s["class"])
        ax.plot([s["start"], s["end"]], [i, i], color="tab:red", lw=3, solid_capstyle="butt")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlim=(0, tl["seconds"]), xlabel="time (s)", ylabel="class",
           title=title or "Timeline: probability per window (shade), merged segments (red)")
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig

# %%
_tl = timeline(_probs, [0, 2, 4, 6, 8, 10], ["a", "b"], 4.0, 14.0)
_declining = timeline(_probs, [0, 2, 4, 6, 8, 10], ["a", "b"], 4.0, 14.0, rejection=dict(score="max_probability",
                                                                                          threshold=0.65))
test_eq([w["answer"] for w in _declining["windows"]], ["a", UNKNOWN, "b", "b", "a", UNKNOWN])
test_eq([(s["class"], s["start"], s["end"]) for s in _declining["segments"]],     # no segment starts or holds on
        [("a", 0.0, 3.0), ("b", 5.0, 9.0), ("a", 9.0, 11.0)])                    # a window it declines
with tempfile.TemporaryDirectory() as d:
    test_eq([p.name for p in write_timeline(_tl, Path(d)/"t.csv")], ["t.csv", "t.segments.csv"])
    test_eq(json.loads(write_timeline(_tl, Path(d)/"t.json")[0].read_text())["segments"], _tl["segments"])
_fig = plot_timeline(_tl)


# %%
#| default_exp events

# %% [markdown]
# # Events: street recordings with known events, scored as sound event detection is scored
#
# > Long recordings built from clips with gaps of silence, background and other sounds; timelines scored by sed_eval.

# %% [markdown]
# A timeline (notebook 06b) turns a long recording into segments: a class, a start and an end. Sound event detection
# scores such output with standard measures (Mesaros, Heittola and Virtanen 2016, as DCASE reports them), computed
# here by `sed_eval`: **event-based** F1 and error rate, where an estimated event counts when its class matches a true
# event's and its onset lies within a 200 ms collar (offsets not scored); and **segment-based** F1 and error rate on
# one-second segments, where each second counts for each class active in it.
#
# To score a timeline the truth must be known, so recordings are built as a street recording is: events (clips of the
# ten classes) separated by gaps of digital silence, background (pink noise at a low level) and sounds that are none
# of the ten. Only the ten classes' clips are events; a gap is a stretch where the right answer is nothing.

# %%
#| export
from __future__ import annotations

import numpy as np

from urbansound_nb.audio import pink_noise

# %%
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# ## Building a recording

# %%
#| export
GAP_KINDS = ("silence", "background", "other sound")   # what lies between two events
GAP_SECONDS = (1.0, 3.0)                                # a silence or background gap lasts this long, uniformly drawn
BACKGROUND_PEAK = 0.01                                  # pink noise, this peak amplitude: a quiet street

def street_recording(events: list, others: list, rate: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    "Events [(samples, class)] at `rate` with a gap before each (silence, background or one of `others`); the truth."
    if not events: raise ValueError("street_recording: no events to place")
    rng, parts, truth, t = np.random.default_rng(seed), [], [], 0
    kinds = GAP_KINDS if others else GAP_KINDS[:2]
    for i, (samples, label) in enumerate(events):
        kind = kinds[rng.integers(len(kinds))]
        if kind == "other sound": gap = np.asarray(others[rng.integers(len(others))], dtype=np.float32)
        else:
            n = int(rng.uniform(*GAP_SECONDS) * rate)
            gap = np.zeros(n) if kind == "silence" else BACKGROUND_PEAK * pink_noise(n, rng)
        parts += [gap, np.asarray(samples, dtype=np.float32)]
        t += len(gap)
        truth.append(dict(start=round(t / rate, 4), end=round((t + len(samples)) / rate, 4), gap=kind,
                          **{"class": label}))
        t += len(samples)
    return np.concatenate(parts).astype(np.float32), truth

# %%
_rate = 100
_events = [(np.ones(400), "dog_bark"), (np.ones(200), "siren"), (np.ones(300), "dog_bark")]
_rec, _truth = street_recording(_events, [np.full(150, 0.5)], _rate, seed=1)
test_eq([t["class"] for t in _truth], ["dog_bark", "siren", "dog_bark"])
test_eq([round(t["end"] - t["start"], 2) for t in _truth], [4.0, 2.0, 3.0])        # each event as long as its clip
for t in _truth: test_eq(_rec[round(t["start"] * _rate):round(t["end"] * _rate)], np.ones(round((t["end"] - t["start"])
                                                                                                * _rate)))
assert all(_truth[i]["start"] > _truth[i - 1]["end"] for i in range(1, 3))          # a gap before every event
test_fail(lambda: street_recording([], [], 100), contains="no events")
[(t["gap"], t["start"], t["end"]) for t in _truth]

# %% [markdown]
# ## Scoring a timeline
#
# `sed_scores` hands the timeline's segments and the truth to `sed_eval` as event lists of one file.

# %%
#| export
ONSET_COLLAR = 0.2       # seconds: an estimated onset this close to a true one is a hit (DCASE's event-based F1)
SEGMENT_SECONDS = 1.0    # segment-based measures on segments of this length

def sed_scores(segments: list[dict], truth: list[dict], classes) -> dict:
    "Event-based (onset collar) and segment-based F1 and error rate of `segments` against `truth`, by sed_eval."
    import dcase_util
    import sed_eval
    events = lambda rows: dcase_util.containers.MetaDataContainer(
        [dict(filename="recording", event_label=r["class"], onset=float(r["start"]), offset=float(r["end"]))
         for r in rows])
    reference, estimated = events(truth), events(segments)
    by_segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(classes),
                                                          time_resolution=SEGMENT_SECONDS)
    by_event = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(classes), t_collar=ONSET_COLLAR,
                                                      evaluate_onset=True, evaluate_offset=False)
    for metric in (by_segment, by_event):
        metric.evaluate(reference_event_list=reference, estimated_event_list=estimated)
    seg, ev = by_segment.results_overall_metrics(), by_event.results_overall_metrics()
    # sed_eval's F1 is NaN where nothing was estimated (precision 0/0); with true events that is F1 = 2TP/(...) = 0
    f1 = lambda m: 0.0 if np.isnan(m["f_measure"]["f_measure"]) and truth else float(m["f_measure"]["f_measure"])
    return dict(segment_f1=f1(seg), segment_error_rate=float(seg["error_rate"]["error_rate"]), event_f1=f1(ev),
                event_error_rate=float(ev["error_rate"]["error_rate"]), events=len(truth), segments=len(segments))

# %%
_segments = [dict(start=0.1, end=3.0, **{"class": "a"}), dict(start=7.0, end=10.0, **{"class": "b"})]
_truth = [dict(start=0.0, end=4.0, **{"class": "a"}), dict(start=6.0, end=10.0, **{"class": "b"})]
_s = sed_scores(_segments, _truth, ["a", "b"])
test_close(_s["event_f1"], 0.5)             # a's onset is 0.1 s off (a hit); b's 1 s (a miss and a false alarm)
test_close(_s["segment_f1"], 6 / 7)         # 8 true seconds, 6 of them found, nothing said where nothing was
test_eq(sed_scores(_truth, _truth, ["a", "b"])["event_f1"], 1.0)
test_eq(sed_scores([], _truth, ["a", "b"])["segment_f1"], 0.0)

# %% [markdown]
# A user's truth is a CSV of events: `start,end,class`, as `predict --timeline` writes its segments, or sed_eval's
# `onset,offset,event_label`. It is checked as any untrusted file is.

# %%
#| export
def read_events(path, classes) -> list[dict]:
    "The true events of a recording from a CSV (start,end,class or onset,offset,event_label), checked."
    import csv
    with open(path, newline="") as f: rows = list(csv.DictReader(f))
    names = next(((a, b, c) for a, b, c in (("start", "end", "class"), ("onset", "offset", "event_label"))
                  if rows and {a, b, c} <= set(rows[0])), None)
    if names is None: raise ValueError(f"{path}: expected columns start,end,class (or onset,offset,event_label)")
    events = []
    for i, row in enumerate(rows, start=2):
        try: start, end = float(row[names[0]]), float(row[names[1]])
        except (TypeError, ValueError): raise ValueError(f"{path}, line {i}: start and end must be seconds") from None
        if not (np.isfinite(start) and np.isfinite(end) and 0 <= start < end):
            raise ValueError(f"{path}, line {i}: an event from {start} to {end} s")
        if row[names[2]] not in classes:
            raise ValueError(f"{path}, line {i}: {row[names[2]]!r} is not one of the model's classes")
        events.append(dict(start=start, end=end, **{"class": row[names[2]]}))
    return events

# %%
import tempfile
from pathlib import Path
with tempfile.TemporaryDirectory() as _d:
    (Path(_d)/"t.csv").write_text("onset,offset,event_label\n0.0,4.0,a\n6,10,b\n")
    test_eq(read_events(Path(_d)/"t.csv", ["a", "b"]), _truth)
    (Path(_d)/"t.csv").write_text("start,end,class\n4.0,1.0,a\n")
    test_fail(lambda: read_events(Path(_d)/"t.csv", ["a"]), contains="line 2: an event from 4.0 to 1.0 s")
    (Path(_d)/"t.csv").write_text("start,end,class\n0,1,c\n")
    test_fail(lambda: read_events(Path(_d)/"t.csv", ["a"]), contains="'c' is not one of the model's classes")

# %% [markdown]
# ## Choosing the timeline's rule
#
# The rule (`TIMELINE_RULE`, notebook 06b: a threshold with hysteresis, the shortest gap joined and the shortest
# segment kept) is chosen on validation recordings, built as above from validation clips, never on the test fold:
# each rule of a small grid scored, the best segment-based F1 taken (ties: the better event-based F1, then the first).

# %%
#| export
RULE_GRID = dict(threshold=(0.3, 0.4, 0.5, 0.6, 0.7), min_seconds=(0.5, 1.0, 2.0))

def choose_timeline_rule(score_rule, grid: dict = RULE_GRID) -> tuple[dict, list[dict]]:
    "The rule of `grid` whose `score_rule(rule)` (a `sed_scores` dict) is best; every rule's scores."
    from itertools import product
    rules = [dict(zip(grid, values)) for values in product(*grid.values())]
    trials = [dict(rule, **score_rule(rule)) for rule in rules]
    best = max(trials, key=lambda t: (t["segment_f1"], t["event_f1"]))    # max keeps the first of equals
    return {k: best[k] for k in grid}, trials

# %%
_chosen, _trials = choose_timeline_rule(lambda rule: dict(segment_f1=-abs(rule["threshold"] - 0.6), event_f1=0.0),
                                        dict(threshold=(0.4, 0.6, 0.8), min_seconds=(1.0,)))
test_eq((_chosen, len(_trials)), (dict(threshold=0.6, min_seconds=1.0), 3))

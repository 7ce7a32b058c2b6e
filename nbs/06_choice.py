# %%
#| default_exp choice

# %% [markdown]
# # The study's model: every family side by side, one rule, one refit, calibrated
#
# > Every model of chapters 03-05 on the same rotations; the rule, stated first; the chosen model refit, calibrated.

# %% [markdown]
# Chapters 03-05 fitted every model of the registry on the same rotations and tested each once. This chapter sets them
# side by side and chooses the study's model by the rule of notebook 03b, stated below before its figures, on
# validation averaged over the rotations; the test figures are shown and play no part. The chosen model, whatever its
# family, is trained again on every non-test fold (as `GridSearchCV(refit=True)` does), tested once, given a
# temperature and a "none of these" threshold chosen on validation (notebook 06a), and served:
# `predict RUN_DIR`, chapters 07 and 10, the reports and the site read the choice through `read_choice` (notebook 00).

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from urbansound_nb.audio import AudioDecodeError, pink_noise
from urbansound_nb.core import read_results, results_files
from urbansound_nb.registry import grid_cells, refit_epochs, study_models, study_tasks
from urbansound_nb.selection import SELECTION_RULE, choose_model
from urbansound_nb.windows import file_windows

# %%
import os
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
import soundfile as sf
from fastcore.test import test_eq, test_fail
from urbansound_nb.calibration import (answered_share, calibrated, calibration_error, choose_rejection, confidence,
                                       fit_temperature, plot_reliability, risk_coverage)
from urbansound_nb.core import CHOICE, make_run_dir, write_results
from urbansound_nb.metrics import evaluate
from urbansound_nb.calibration import ANSWER_SHARE
from urbansound_nb.params import OTHER_SOUNDS_ENV, as_bool, as_fraction, as_int, study_params, use_test_values
from urbansound_nb.registry import fit_grid, present_folds
from urbansound_nb.models import read_checkpoint, save_checkpoint
from urbansound_nb.predict import Predictor
from urbansound_nb.store import study_store

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, ...) are notebook 00a's; set any of them here to override
refit = True            # train the chosen model again on every non-test fold, and serve that
other_sounds = None     # a folder of sounds that are none of the ten (esc50-ood); None: $URBANSOUND_OTHER_SOUNDS

others_per_kind = None  # None: every file of each kind of other sound; a number: the first N of each (quick runs)
answer_share = None     # the share of in-class validation clips the served model answers; None: ANSWER_SHARE (0.9)

# %% tags=["checks"]
stand_in = use_test_values(globals())
params = study_params(globals())
refit = as_bool("refit", refit)
answer_share = ANSWER_SHARE if answer_share is None else as_fraction("answer_share", answer_share)
others_per_kind = None if others_per_kind is None else as_int("others_per_kind", others_per_kind, 1)

# %% [markdown]
# ## The candidates
#
# Every entry a family chapter wrote, so a model a plugin registers is a candidate like the study's own; `-p models`
# narrows them. Parameters count a network's weights (none for chance and the MFCC models).

# %%
#| export
def study_candidates(run_dir) -> dict:
    "Every model the run's family chapters fitted: their results entries, by name."
    out = {}
    for f in results_files(run_dir):
        doc = read_results(run_dir, f.stem)
        if doc.get("families"): out.update(doc.get("entries") or {})
    return out

def comparison_table(entries: dict) -> pd.DataFrame:
    "One row per model: family, validation (own fold, rotated mean and sd), test, F1, seconds, parameters."
    columns = ("family", "description", "val_accuracy", "val_mean", "val_sd", "n_val_total", "test_accuracy",
               "macro_f1", "seconds", "parameters", "ensemble", "checkpoint")
    return pd.DataFrame({name: {c: e.get(c) for c in columns} for name, e in entries.items()}).T

# %%
import tempfile
with tempfile.TemporaryDirectory() as _d:
    write_results(_d, "03_baselines", {"logreg": dict(family="engineered features", val_mean=0.4)}, families=["x"])
    write_results(_d, "07_other", {"logreg": dict(val_mean=0.9)})                 # not a family chapter's
    test_eq(comparison_table(study_candidates(_d)).loc["logreg", "val_mean"], 0.4)

# %% [markdown]
# ## The rule, fixed before this run

# %%
display(Markdown(f"**The rule.** {SELECTION_RULE}"))

# %% [markdown]
# ## Every family, one split, one choice

# %%
run_path = make_run_dir(params.run_dir)
asked = study_models(params)           # the run's models (`-p models`), among those its family chapters fitted
candidates = {m: e for m, e in study_candidates(run_path).items() if m in asked}
if stand_in and not candidates:   # nbdev-test runs this chapter alone: two made-up candidates stand in
    candidates = {m: dict(family="engineered features", val_accuracy=v, val_mean=v, val_sd=0.0, n_val_total=400,
                          test_accuracy=v, macro_f1=v, ensemble=False, parameters=None, rotation_best_epochs=[None],
                          checkpoint=None) for m, v in (("majority", 0.1), ("logreg", 0.4))}
table = comparison_table(candidates)
best_model, table, reason = choose_model(table)
display(Markdown(reason))
x, width = np.arange(len(table)), 0.38
fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
ax.bar(x - width / 2, table["val_mean"].astype(float), width, yerr=table["val_sd"].astype(float).fillna(0),
       color="tab:gray", capsize=3, label="validation, mean over the rotations (bar: sd)")
ax.bar(x + width / 2, table["test_accuracy"].astype(float), width, color="tab:blue", label="test fold, scored once")
ax.set_xticks(x, [f"{m}\n(chosen)" if m == best_model else m for m in table.index], rotation=25, fontsize=8)
ax.set(title="Every family: validation chooses, the test fold reports", xlabel="model", ylabel="accuracy",
       ylim=(0, 1.12))
ax.legend(loc="upper left", fontsize=8, ncols=2)
plt.show()
percent = lambda column: column.astype(float).map("{:.1%}".format)
spread = table.val_sd.astype(float).fillna(0).map(lambda sd: f" ± {100 * sd:.1f}")
pd.DataFrame({"family": table.family, "validation, own fold": percent(table.val_accuracy),
              "validation, mean ± sd": percent(table.val_mean) + spread,
              "tied": table.tied.map({True: "yes", False: ""}),
              "test": percent(table.test_accuracy), "macro F1": table.macro_f1.astype(float).round(3),
              "parameters": table.parameters.map(lambda n: f"{int(n):,}" if pd.notna(n) else "")})

# %% [markdown]
# ## The chosen model, refit on every non-test fold
#
# The models behind the rotations' figures each saw part of the non-test data, so the chosen one is trained once more
# on every non-test fold with its chosen settings: a classical model with its setting chosen again on the same
# rotations, a network for the mean of the rotations' best epochs (of every member of an ensemble) on the same
# schedule. It runs as a grid cell, is tested once, saved as `models/<model>.refit.pt` and served; the table keeps
# every candidate's split figure, so that they stay comparable. (`-p refit false` serves the split's model.)

# %%
#| export
def refit_task(split_task, best_epochs):
    "The refit of the chosen model's task on the study's split: every non-test fold, nothing to validate on."
    return split_task.like(train_folds=tuple(sorted({*split_task.train_folds, split_task.val_fold})), val_fold=None,
                           stop_after=refit_epochs(best_epochs))

# %% [markdown]
# Before the family chapters have run, `plan_alternatives` gives the refit of each model the rule may choose, for `run
# --plan`; the chosen one's where the run has the figures.

# %%
#| export
def plan_alternatives(params, present, refit: bool = True) -> dict:
    "{model: the grid's cells of its refit} for each model the rule may choose (the chosen one, once it is known)."
    if not refit: return {}
    candidates = {m: e for m, e in study_candidates(params.run_dir).items() if m in study_models(params)}
    names = [choose_model(comparison_table(candidates))[0]] if candidates else study_models(params)
    best = lambda n: (candidates.get(n) or {}).get("rotation_best_epochs") or [None]
    return {n: grid_cells([refit_task(study_tasks(params, [n], present)[n][0], best(n))]) for n in names}

# %%
served = dict(model=best_model, checkpoint=table.loc[best_model, "checkpoint"], refit=False,
              test_accuracy=table.loc[best_model, "test_accuracy"], macro_f1=table.loc[best_model, "macro_f1"])
if not stand_in:   # the chosen model's fits on the rotations (read back from the store), and its refit
    split_tasks = study_tasks(params, [best_model], present_folds(params))[best_model]
    task = refit_task(split_tasks[0], candidates[best_model]["rotation_best_epochs"]) if refit else split_tasks[0]
    records, inputs, _ = fit_grid(params, grid_cells([*split_tasks, task]), "06 refit")
    record, data = records[task.key], inputs[task.entry().front_end].data
    labels, classes = data.logmels.labels.numpy(), data.split.classes
    test_idx = task.indices(data.clips)[2]
if refit and not stand_in:
    scores = evaluate(labels[test_idx], np.asarray(record["test_proba"]).argmax(1), classes)
    checkpoint = study_store(params).export(record, run_path/"models"/f"{best_model}.refit.pt")
    served = dict(model=best_model, checkpoint=checkpoint and str(checkpoint.relative_to(run_path)), refit=True,
                  train_folds=list(task.train_folds), n_train=record["n_train"], n_test=record["n_test"],
                  epochs=task.stop_after, seconds=record["seconds"], test_accuracy=scores["accuracy"],
                  macro_f1=scores["macro_f1"], per_class_accuracy=scores["per_class_accuracy"],
                  trainings=record["trainings"])
    line = (f"Refit: **{best_model}** trained again on folds {'+'.join(map(str, task.train_folds))} "
            f"({record['n_train']:,} clips)" + (f", its networks for {task.stop_after} epochs" * bool(task.stop_after))
            + f": {scores['accuracy']:.1%} on test fold {task.test_fold}, against "
              f"{table.loc[best_model, 'test_accuracy']:.1%} for its model of the study's split.")
else: line = "No refit (`refit` is false, or a stand-in): the study's split model is served."
Markdown(line + f" `urbansound-nb predict {params.run_dir}` serves `{served['checkpoint']}`.")

# %% [markdown]
# ## Calibrated, and able to say "none of these"
#
# The served model's probabilities get a temperature and its answers a threshold (notebook 06a), both chosen on the
# chosen model's fits of the rotations, whose validation folds it was not trained on; the refit, trained on those
# folds, has none left, so it inherits them. The test fold only reports: expected calibration error before and after,
# and the share of its clips answered. Sounds that are none of the ten (`other_sounds`, e.g. `esc50-ood`: 18 kinds of
# ESC-50) are split by kind into two halves: one chooses the score, the other, with sounds made here (noise, tones,
# silence), reports false alarms. Both go into the served checkpoint, so `predict`, the timeline and the ONNX file
# answer `unknown` under the threshold (`--threshold` sets another, `--no-reject` turns it off).

# %%
#| export
def read_other_sounds(folder) -> pd.DataFrame:
    "Sounds that are none of the ten, one row a file (`path`, `kind`), from `folder`'s checked `metadata.csv`."
    folder = Path(folder).resolve()
    meta = folder/"metadata.csv"
    if not meta.is_file():
        raise ValueError(f"{folder}: no metadata.csv (columns file, esc50_class) of sounds that are none of the ten")
    df = pd.read_csv(meta, dtype=str)
    missing = sorted({"file", "esc50_class"} - set(df.columns))
    if missing: raise ValueError(f"{meta}: missing column(s) {missing}")
    paths = [(folder/f).resolve() for f in df["file"]]
    outside = [f for f, p in zip(df["file"], paths) if folder not in p.parents]
    if outside: raise ValueError(f"{meta}: lists files outside its folder, e.g. {outside[:2]}")
    absent = [f for f, p in zip(df["file"], paths) if not p.is_file()]
    if absent: raise ValueError(f"{meta}: {len(absent)} listed file(s) missing, e.g. {absent[:2]}")
    return pd.DataFrame({"path": paths, "kind": df["esc50_class"].str.strip()})

def split_other_sounds(sounds: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    "The kinds of sound in alternate halves (sorted by name): the first chooses the score, the second only reports."
    kinds = sorted(sounds["kind"].unique())
    choose = sounds["kind"].isin(kinds[0::2])
    return sounds[choose], sounds[~choose]

def synthetic_others(rate: int, seconds: float = 4.0, seed: int = 0) -> dict:
    "Sounds of no class made here, {name: samples at `rate`}: white and pink noise at three levels, tones, silence."
    rng, n = np.random.default_rng(seed), int(rate * seconds)
    out = {}
    for level in (0.01, 0.1, 0.5):
        white = rng.standard_normal(n)
        out[f"white noise, peak {level}"] = level * white / np.abs(white).max()
        out[f"pink noise, peak {level}"] = level * pink_noise(n, rng)
    for hz in (100, 440, 1000, 3000, 8000):
        out[f"tone {hz} Hz"] = 0.3 * np.sin(2 * np.pi * hz * np.arange(n) / rate)
    out["silence"] = np.zeros(n)
    return {k: v.astype(np.float32) for k, v in out.items()}

def file_probabilities(predictor, paths, chunk: int = 32) -> tuple[np.ndarray, list[str]]:
    "Each file's probabilities (its windows' mean) [files, classes], and the errors of those it refused."
    out, refused = [np.empty((0, len(predictor.classes)))], []
    for start in range(0, len(paths), chunk):   # a chunk's windows together, so that they go in full batches
        windows, owners = [], []
        for i, path in enumerate(paths[start:start + chunk]):
            try: cut = list(file_windows(path, predictor.fp.sample_rate, predictor.clip_seconds, predictor.fp.n_fft)[0])
            except (AudioDecodeError, OSError) as e: refused.append(str(e))
            else: windows, owners = windows + cut, owners + [i] * len(cut)
        if windows:
            probs, owners = predictor.classify(windows), np.asarray(owners)
            out.append(np.stack([probs[owners == i].mean(0) for i in np.unique(owners)]))
    return np.concatenate(out), refused

def model_card_facts(params, served: dict, reason: str, calibration: dict, y_true, proba, classes, task) -> dict:
    "What the served model's card says (notebook 06e writes it): data, folds, how it was chosen, its test figures."
    from sklearn.metrics import precision_recall_fscore_support
    y_pred = np.asarray(proba).argmax(1)
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=range(len(classes)), zero_division=0)
    return dict(model=served["model"], dataset=str(params.dataset), dataset_rate=params.sample_rate,
                train_folds=list(task.train_folds), test_fold=task.test_fold,
                n_train=served.get("n_train"), n_test=int(len(y_true)), refit=bool(served.get("refit")),
                epochs=served.get("epochs"), rule=SELECTION_RULE, reason=reason, seed=params.seed,
                test_accuracy=float(np.mean(y_pred == np.asarray(y_true))), macro_f1=float(np.mean(f)),
                per_class={c: dict(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), clips=int(n[i]))
                           for i, c in enumerate(classes)},
                calibration={k: calibration[k] for k in ("temperature", "ece_before", "ece_after", "rejection",
                                                         "test_answered", "test_accuracy_answered", "others_answered",
                                                         "others_reported", "made_answered", "other_kinds")})

# %%
with tempfile.TemporaryDirectory() as _d:
    _d = Path(_d)
    for _i, _kind in enumerate(["crow", "cow", "rain", "crow"]): (_d/f"{_i}.wav").write_bytes(b"")
    (_d/"metadata.csv").write_text("file,esc50_class\n" + "".join(f"{i}.wav,{k}\n" for i, k in
                                                                  enumerate(["crow", "cow", "rain", "crow"])))
    _choose, _report = split_other_sounds(read_other_sounds(_d))
    test_eq((sorted(set(_choose.kind)), sorted(set(_report.kind))), (["cow", "rain"], ["crow"]))   # kinds never split
    (_d/"metadata.csv").write_text("file,esc50_class\n../secret.wav,crow\n")
    test_fail(lambda: read_other_sounds(_d), contains="outside its folder")
    (_d/"metadata.csv").write_text("file,kind\n0.wav,crow\n")
    test_fail(lambda: read_other_sounds(_d), contains="missing column(s) ['esc50_class']")
test_eq(len(synthetic_others(8000, 1.0)), 12)

# %%
calibration = None
other_sounds = other_sounds or os.environ.get(OTHER_SOUNDS_ENV) or None   # the parameter, else the environment's
if stand_in: calibration_line = "(A stand-in has no fits: calibration and the threshold are chosen on a real run.)"
else:
    val_proba = np.concatenate([records[t.key]["val_proba"] for t in split_tasks])
    val_labels = np.concatenate([labels[t.indices(data.clips)[1]] for t in split_tasks])
    temperature = fit_temperature(val_proba, val_labels)
    test_proba, test_labels = np.asarray(record["test_proba"]), labels[test_idx]
    ece = dict(validation=calibration_error(calibrated(val_proba, temperature), val_labels),
               before=calibration_error(test_proba, test_labels),
               after=calibration_error(calibrated(test_proba, temperature), test_labels))
    plot_reliability({"as trained": ece["before"], f"temperature {temperature:.2f}": ece["after"]},
                     f"{best_model} on test fold {task.test_fold}: calibration before and after")
    plt.show()

# %%
if not stand_in:
    served_path = run_path/(served["checkpoint"] or "")
    ck = read_checkpoint(served_path) if served["checkpoint"] else None
    if ck is not None:   # the served checkpoint, calibrated (the refit's own file; a split model's, a copy)
        ck["calibration"] = dict(temperature=temperature, rejection=None)
        served_path = run_path/"models"/f"{best_model}.{'refit' if served['refit'] else 'served'}.pt"
        save_checkpoint(ck, served_path)
    others = {half: np.empty((0, len(classes))) for half in ("choose", "report", "made")}
    counts, kinds = dict(choose=0, report=0, made=0), {}
    if ck is not None:   # without a checkpoint (a model that has none) the rule is chosen on validation alone
        predictor = Predictor(served_path)
        sounds = read_other_sounds(other_sounds) if other_sounds else None
        if sounds is not None and others_per_kind: sounds = sounds.groupby("kind").head(others_per_kind)
        halves = split_other_sounds(sounds) if sounds is not None else ()
        for half, rows in zip(("choose", "report"), halves):
            others[half], _ = file_probabilities(predictor, list(rows.path))
            counts[half], kinds[half] = len(rows), sorted(set(rows.kind))
        work = Path(tempfile.mkdtemp())
        made = synthetic_others(predictor.fp.sample_rate, params.clip_seconds, params.seed)
        for i, samples in enumerate(made.values()): sf.write(work/f"{i:02d}.wav", samples, predictor.fp.sample_rate)
        others["made"], _ = file_probabilities(predictor, sorted(work.glob("*.wav")))    # silence: refused, unanswered
        counts["made"] = len(made)
    rule = choose_rejection(calibrated(val_proba, temperature), others["choose"] if counts["choose"] else None,
                            answer_share)
    # of every file, those it refused (silence) counted as not answered
    answered = lambda probs, n: (answered_share(probs, rule) * len(probs) / n if len(probs) else 0.0) if n else None
    test_cal = calibrated(test_proba, temperature)
    kept = confidence(test_cal, rule["score"]) >= rule["threshold"]
    calibration = dict(temperature=temperature, ece_validation=ece["validation"]["ece"],
                       ece_before=ece["before"]["ece"], ece_after=ece["after"]["ece"], reliability=ece,
                       rejection=dict(score=rule["score"], threshold=rule["threshold"]), rule=rule,
                       test_answered=float(kept.mean()),
                       test_accuracy_answered=float((test_cal.argmax(1) == test_labels)[kept].mean()) if kept.any()
                       else None,
                       others_chosen_on=counts["choose"], others_reported=counts["report"],
                       others_answered=answered(others["report"], counts["report"]),
                       others_answered_choosing=answered(others["choose"], counts["choose"]),
                       made_answered=answered(others["made"], counts["made"]),
                       other_kinds=kinds, other_sounds=str(other_sounds) if other_sounds else None)
    rc = risk_coverage(test_cal, test_labels, rule["score"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    ax.plot(rc["coverage"], rc["accuracy"], color="tab:blue", label="every threshold")
    ax.scatter([calibration["test_answered"]], [calibration["test_accuracy_answered"] or 0], color="tab:red", zorder=3,
               label=f"the chosen threshold ({rule['score']} >= {rule['threshold']:.3f})")
    ax.set(title=f"{best_model} on test fold {task.test_fold}: accuracy against the share answered",
           xlabel="coverage: share of clips answered", ylabel="accuracy of the answered clips", xlim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    plt.show()

# %%
if not stand_in:
    pct = lambda v: "-" if v is None else f"{v:.1%}"
    display(pd.DataFrame({
        "temperature": [f"{temperature:.3f}"], "ECE, test, as trained": [f"{calibration['ece_before']:.3f}"],
        "ECE, test, calibrated": [f"{calibration['ece_after']:.3f}"],
        "test clips answered": [pct(calibration["test_answered"])],
        "accuracy of those": [pct(calibration["test_accuracy_answered"])],
        "other sounds answered (report half)": [pct(calibration["others_answered"])],
        "noise, tones, silence answered": [pct(calibration["made_answered"])]}, index=[best_model]).T)
    trials = pd.DataFrame(rule["trials"]).T
    display(trials.assign(**{c: trials[c].map(pct) for c in ("val_answered", "others_answered")}))
    if ck is not None:
        ck["calibration"] = dict(temperature=temperature, rejection=calibration["rejection"])
        ck["card"] = model_card_facts(params, served, reason, calibration, labels[test_idx], test_cal, classes,
                                      task)
        save_checkpoint(ck, served_path)
        served["checkpoint"] = str(served_path.relative_to(run_path))
    served["calibration"] = {k: v for k, v in calibration.items() if k != "reliability"}
    calibration_line = (
        f"Temperature {temperature:.2f}: expected calibration error on the test fold {calibration['ece_before']:.3f} "
        f"as trained, {calibration['ece_after']:.3f} calibrated. Under {rule['score']} {rule['threshold']:.3f} "
        f"(chosen to answer {answer_share:.0%} of validation clips) the served model answers "
        f"{pct(calibration['test_answered'])} of the test clips, {pct(calibration['test_accuracy_answered'])} of "
        f"them right, and gives a class to {pct(calibration['others_answered'])} of the other sounds it reports on "
        f"and {pct(calibration['made_answered'])} of the noise, tones and silence.")
Markdown(calibration_line)

# %%
write_results(run_path, CHOICE, table.drop(columns=["checkpoint"]).to_dict("index"), dataset=params.dataset,
              chosen=best_model, served=served, rule=SELECTION_RULE, reason=reason, calibration=calibration,
              trainings=served.get("trainings", []))

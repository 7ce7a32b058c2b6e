# %%
#| default_exp choice

# %% [markdown]
# # The study's model: every family side by side, one rule, one refit
#
# > Every model of chapters 03-05 on the same rotations; the rule, stated first; the chosen model refit and served.

# %% [markdown]
# Chapters 03-05 fitted every model of the registry on the same rotations and tested each once. This chapter sets them
# side by side and chooses the study's model by the rule of notebook 03b, stated below before its figures, on
# validation averaged over the rotations; the test figures are shown and play no part. The chosen model, whatever its
# family, is trained again on every non-test fold (as `GridSearchCV(refit=True)` does), tested once and served:
# `predict RUN_DIR`, chapters 07 and 10, the reports and the site read the choice through `read_choice` (notebook 00).

# %%
#| export
from __future__ import annotations

import pandas as pd

from urbansound_nb.core import read_results, results_files
from urbansound_nb.registry import grid_cells, refit_epochs, study_models, study_tasks
from urbansound_nb.selection import choose_model

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from fastcore.test import test_eq
from urbansound_nb.core import CHOICE, make_run_dir, write_results
from urbansound_nb.metrics import evaluate
from urbansound_nb.params import as_bool, study_params, use_test_values
from urbansound_nb.registry import fit_grid, present_folds
from urbansound_nb.selection import SELECTION_RULE
from urbansound_nb.store import study_store

# %% tags=["parameters"]
# the shared parameters (dataset, folds, seed, ...) are notebook 00a's; set any of them here to override
refit = True            # train the chosen model again on every non-test fold, and serve that

# %% tags=["checks"]
stand_in = use_test_values(globals())
params = study_params(globals())
refit = as_bool("refit", refit)

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
if refit and not stand_in:
    split_task = study_tasks(params, [best_model], present_folds(params))[best_model][0]
    task = refit_task(split_task, candidates[best_model]["rotation_best_epochs"])
    records, inputs, trainings = fit_grid(params, grid_cells([task]), "06 refit")
    record, data = records[task.key], inputs[task.entry().front_end].data
    test_idx = task.indices(data.clips)[2]
    scores = evaluate(data.logmels.labels.numpy()[test_idx], np.asarray(record["test_proba"]).argmax(1),
                      data.split.classes)
    checkpoint = study_store(params).export(record, run_path/"models"/f"{best_model}.refit.pt")
    served = dict(model=best_model, checkpoint=checkpoint and str(checkpoint.relative_to(run_path)), refit=True,
                  train_folds=list(task.train_folds), n_train=record["n_train"], n_test=record["n_test"],
                  epochs=task.stop_after, seconds=record["seconds"], test_accuracy=scores["accuracy"],
                  macro_f1=scores["macro_f1"], per_class_accuracy=scores["per_class_accuracy"], trainings=trainings)
    line = (f"Refit: **{best_model}** trained again on folds {'+'.join(map(str, task.train_folds))} "
            f"({record['n_train']:,} clips)" + (f", its networks for {task.stop_after} epochs" * bool(task.stop_after))
            + f": {scores['accuracy']:.1%} on test fold {task.test_fold}, against "
              f"{table.loc[best_model, 'test_accuracy']:.1%} for its model of the study's split.")
else: line = "No refit (`refit` is false, or a stand-in): the study's split model is served."
Markdown(line + f" `urbansound-nb predict {params.run_dir}` serves `{served['checkpoint']}`.")

# %%
write_results(run_path, CHOICE, table.drop(columns=["checkpoint"]).to_dict("index"), dataset=params.dataset,
              chosen=best_model, served=served, rule=SELECTION_RULE, reason=reason,
              trainings=served.get("trainings", []))

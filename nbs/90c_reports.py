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
#| default_exp reports

# %% [markdown]
# # The pages a run writes itself: front page, results and runs
#
# > The site's pages made from a run's results files rather than from a notebook: figures, tables, one chart each.

# %% [markdown]
# The report site (notebook 91) renders the executed chapters; three of its pages are written from
# the run's results files instead, and live here: the front page's figures (the README with this
# run's own numbers), the results page (every results file as a table, one chart) and the Runs page
# (this run beside others, notebook 90a). Each is Markdown or HTML that either renderer, Quarto or
# nbconvert, takes as it is.

# %%
#| export
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import pandas as pd
import yaml

from urbansound_nb.core import read_results
from urbansound_nb.runner import read_timings, read_training_timings

# %%
from fastcore.test import test_eq

# %%
#| export
def split_text(split: dict) -> str:
    "A split's folds in words: train fold(s) ..., validation fold ..., test fold ...."
    if not split: return ""
    train = ", ".join(str(f) for f in split.get("train_folds") or [])
    return (f"train fold{'s' if ',' in train else ''} {train} · validation fold {split.get('val_fold')} · "
            f"test fold {split.get('test_fold')}")

# %%
test_eq(split_text(dict(train_folds=[1, 2], val_fold=3, test_fold=4)),
        "train folds 1, 2 · validation fold 3 · test fold 4")

# %% [markdown]
# ## The results page
#
# Every `results/*.json` of the run becomes a table: one row per model or condition with its
# figures, followed by the per-chapter wall times from `timings.csv`. Accuracies read as
# percentages, counts as integers, seconds with one decimal. The chapters that choose a best model
# (03, 04, 05) give the comparison chart of every model's validation and test accuracy.

# %%
#| export
RESULT_COLUMNS = ["val_accuracy", "val_mean", "val_sd", "test_accuracy", "macro_f1", "n_train", "n_val", "n_test",
                  "epochs", "seconds"]
INTEGER_COLUMNS = ("n_train", "n_val", "n_test", "epochs")

def results_tables(run_dir) -> dict[str, pd.DataFrame]:
    "One table per results file: its entries with the standard figures; then the wall time per chapter."
    out = {}
    for f in sorted((Path(run_dir)/"results").glob("[0-9][0-9]_*.json")):
        doc = json.loads(f.read_text())
        if not isinstance(doc.get("entries"), dict): continue     # resumable records such as 07_augmentation.runs.json
        rows = {k: {c: v.get(c) for c in RESULT_COLUMNS if c in v}
                for k, v in doc["entries"].items() if isinstance(v, dict)}
        rows = {k: v for k, v in rows.items() if v}
        if rows: out[f.stem] = pd.DataFrame(rows).T
    chapters, cells = read_timings(run_dir), read_training_timings(run_dir)
    if chapters: out["wall time per chapter"] = pd.DataFrame(chapters).T.rename_axis("notebook")
    if cells: out["training cells"] = pd.DataFrame(cells).set_index("notebook")
    return out

def formatted(df: pd.DataFrame) -> pd.DataFrame:
    "A results table as text: accuracies and F1 as percentages, counts as integers, seconds with one decimal."
    def fmt(column, v):
        if v is None or (isinstance(v, float) and pd.isna(v)): return ""
        if isinstance(v, str): return v
        if "accuracy" in column or column.endswith("f1") or column in ("val_mean", "val_sd"):
            return f"{100 * float(v):.1f}%"
        if column in INTEGER_COLUMNS: return f"{int(round(float(v))):,}"
        if column == "seconds": return f"{float(v):,.1f}"
        return str(v)
    return pd.DataFrame({c: [fmt(c, v) for v in df[c]] for c in df.columns}, index=df.index)

COLUMN_LABELS = dict(val_accuracy="validation accuracy (own fold)", val_mean="validation, mean over rotations",
                     val_sd="validation sd", test_accuracy="test accuracy", macro_f1="macro F1 (test)",
                     n_train="training clips", n_val="validation clips", n_test="test clips")

def _table_html(df: pd.DataFrame) -> str:
    return formatted(df).rename(columns=COLUMN_LABELS).to_html(border=0, classes="results table table-sm", escape=True)

# %%
_df = pd.DataFrame({"val_accuracy": [0.735, None], "n_train": [1761.0, 873.0], "epochs": [30.0, None],
                    "seconds": [2.04, 0.0]}, index=["probe", "majority"])
formatted(_df)

# %%
test_eq(formatted(_df).loc["probe"].tolist(), ["73.5%", "1,761", "30", "2.0"])
test_eq(formatted(_df).loc["majority"].tolist(), ["", "873", "", "0.0"])

# %%
#| export
def compared_models(run_dir) -> pd.DataFrame:
    "Every model of the chapters that choose a best one: chapter, model, validation (rotated mean) and test accuracy."
    rows = []
    for f in sorted((Path(run_dir)/"results").glob("[0-9][0-9]_*.json")):
        doc = json.loads(f.read_text())
        if "best_model" not in doc: continue
        for name, e in doc.get("entries", {}).items():
            if isinstance(e, dict) and {"val_accuracy", "test_accuracy"} <= set(e):
                rows.append(dict(chapter=f.stem, model=name, val_accuracy=e.get("val_mean", e["val_accuracy"]),
                                 test_accuracy=e["test_accuracy"], n_val=e.get("n_val_total", e.get("n_val")),
                                 n_test=e.get("n_test")))
    return pd.DataFrame(rows, columns=["chapter", "model", "val_accuracy", "test_accuracy", "n_val", "n_test"])

def _clips(counts: pd.Series) -> str:
    "', N clips' when the figures rest on one known number of clips, ', N-M clips' when on several."
    counts = counts.dropna().astype(int)
    if counts.empty: return ""
    lo, hi = counts.min(), counts.max()
    return f", {lo:,} clips" if lo == hi else f", {lo:,}-{hi:,} clips"

def comparison_chart(models: pd.DataFrame) -> bytes:
    "A PNG bar chart of every model's validation and test accuracy, grouped by chapter."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(models) + 1.2))
    y = range(len(models))
    labels = [f"{m} ({c[:2]})" for c, m in zip(models.chapter, models.model)]
    ax.barh([i - 0.2 for i in y], 100 * models.val_accuracy, height=0.4,
            label=f"validation (mean over rotations{_clips(models.n_val)})")
    ax.barh([i + 0.2 for i in y], 100 * models.test_accuracy, height=0.4,
            label=f"test fold (scored once{_clips(models.n_test)})")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_ylabel("model (chapter)")
    ax.set_title("Every model of chapters 03-05: validation and test accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, frameon=False)   # clear of the bars
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

def results_html(run_dir) -> str:
    "The body of the results page: the comparison chart and every results table, as HTML."
    parts, models = [], compared_models(run_dir)
    chosen = Path(run_dir)/"results"/"05_transfer.json"
    if chosen.exists() and json.loads(chosen.read_text()).get("selection"):
        doc = json.loads(chosen.read_text())
        parts.append(f"<h2>The study's model: {html.escape(str(doc['best_model']))}</h2>\n"
                     f"<p>{html.escape(doc['selection']['reason'])}</p>\n<p><em>The rule:</em> "
                     f"{html.escape(doc['selection']['rule'])}</p>")
    if len(models):
        png = base64.b64encode(comparison_chart(models)).decode()
        parts.append(f'<h2>Every model compared</h2>\n<p><img src="data:image/png;base64,{png}" '
                     f'alt="validation and test accuracy of every model" style="max-width:100%"></p>')
    parts += [f"<h2>{html.escape(name)}</h2>\n{_table_html(df)}" for name, df in results_tables(run_dir).items()]
    return "\n\n".join(parts)

RESULTS_SUMMARY = "Every results file of this run, gathered. Accuracies in percent; seconds are wall time."

def results_markdown(run_dir) -> str:
    "The results page for Quarto: front matter, then the HTML body."
    return f"---\ntitle: Results\ndescription: {RESULTS_SUMMARY}\n---\n\n{results_html(run_dir)}\n"

# %% [markdown]
# ## The front page
#
# The site opens with the README, but its section of figures (the README's own run) is replaced
# by this run's: every model that a chapter chose among, validation (rotated mean) and test
# accuracy, and the model the study chose, so the front page never shows figures of another run.

# %%
#| export
FIGURES_SECTION = "## What a run gives"   # the README's section that the run's own figures replace

def results_if_any(run_dir, notebook: str) -> dict:
    "A chapter's results file (`read_results`), or {} when the chapter has not written one."
    return read_results(run_dir, notebook) if (Path(run_dir)/"results"/f"{notebook}.json").exists() else {}

def chapter_results(run_dir, notebook: str) -> dict:
    "A chapter's results, its split filled in: the chapter's own, or the run's (chapter 00's) when it has none."
    doc = results_if_any(run_dir, notebook)
    if doc.get("split"): return doc
    folds = doc.get("summary", {}).get("folds") if isinstance(doc.get("summary"), dict) else None
    if folds: return {**doc, "split_text": f"cross-validation: each of {folds} folds tested once"}
    return {**doc, "split": (results_if_any(run_dir, "00_setup").get("entries") or {}).get("split") or {}}

def run_figures_markdown(run_dir) -> str:
    "This run's figures in Markdown: the split, each model's validation and test accuracy, the study's model."
    models, run_dir = compared_models(run_dir), Path(run_dir)
    setup = chapter_results(run_dir, "00_setup")
    split = setup["split"]
    lines = [f"{FIGURES_SECTION.replace('a run', 'this run')}\n",
             f"Dataset `{setup.get('dataset', '?')}`; {split_text(split)}." if split else "", ""]
    if len(models):
        lines += ["| model (chapter) | validation, mean over rotations | test |", "|---|---|---|"]
        lines += [f"| {m} ({c[:2]}) | {100 * v:.1f}% | {100 * t:.1f}% |"
                  for c, m, v, t in zip(models.chapter, models.model, models.val_accuracy, models.test_accuracy)]
    else: lines.append("No chapter of this run has chosen among models yet.")
    chosen = run_dir/"results"/"05_transfer.json"
    if chosen.exists() and (doc := json.loads(chosen.read_text())).get("best_model"):
        lines += ["", f"The study's model: **{doc['best_model']}**. {doc.get('selection', {}).get('reason', '')}"]
    return "\n".join(lines) + "\n\nEvery results file: the Results page; other runs beside this one: the Runs page.\n"

def index_markdown(run_dir, readme: str) -> str:
    "The README as the site's front page: its figures replaced by this run's, its link to the explanations local."
    start = readme.find(FIGURES_SECTION)
    if start >= 0:
        end = readme.find("\n## ", start + len(FIGURES_SECTION))
        readme = readme[:start] + run_figures_markdown(run_dir) + (readme[end:] if end >= 0 else "")
    return readme.replace("](docs/explanations.md", "](explanations.html")

# %%
import tempfile
from urbansound_nb.core import write_results
with tempfile.TemporaryDirectory() as d:
    write_results(d, "00_setup", {"split": dict(train_folds=[1], val_fold=2, test_fold=3)}, dataset="mini")
    write_results(d, "03_baselines", {"svm": dict(val_accuracy=0.4, val_mean=0.45, test_accuracy=0.5)},
                  best_model="svm")
    page = index_markdown(d, "# T\n\n## What a run gives\n\n| old | table |\n\n## Next\n[x](docs/explanations.md#a)\n")
    print(page)
    assert "| svm (03) | 45.0% | 50.0% |" in page and "| old | table |" not in page and "## Next" in page
    assert "train fold 1 · validation fold 2 · test fold 3" in page and "](explanations.html#a)" in page

# %% [markdown]
# ## The Runs page
#
# The site of a run can put other runs beside it (`build_site(..., compare=[...])`,
# `urbansound-nb site --compare RUN_DIR ...`): the Runs page shows the comparison of notebook
# 90a, with its warnings, one chart of test accuracy per model per run, the table, the parameters
# that differ, and each run's overview linked to its own site. Without other runs it shows this
# run alone and says how to add others.

# %%
#| export
RUNS_SUMMARY = "This run beside others: every model's accuracy in each run, and the parameters that differ."

def _run_link(run, site_dir: Path, own: bool) -> str:
    "A link to a run's own report: this site's home page, another run's site, else its folder."
    if own: return '<a href="index.html">this site</a>'
    target = run.path/"site"/"index.html"
    href = os.path.relpath(target if target.exists() else run.path, site_dir)
    return f'<a href="{html.escape(href)}">{"its report" if target.exists() else "its folder (no site built)"}</a>'

def runs_html(run_dir, compare=(), site_dir=None) -> str:
    "The body of the Runs page: warnings, the chart, the table, the differing parameters, each run's overview."
    from urbansound_nb.compare import compare_runs, run_overview, runs_chart, wide_table
    c, site_dir = compare_runs([run_dir, *compare]), Path(site_dir or Path(run_dir)/"site")
    parts = [] if len(c.runs) > 1 else ["<p>Only this run: <code>urbansound-nb site --compare RUN_DIR ...</code> "
                                        "puts other runs beside it.</p>"]
    parts += [f"<p><strong>Warning:</strong> {html.escape(w)}</p>" for w in [*c.skipped, *c.warnings]]
    png = base64.b64encode(runs_chart(c)).decode()
    parts.append(f'<h2>Test accuracy, run by run</h2>\n<p><img src="data:image/png;base64,{png}" '
                 f'alt="test accuracy of every model in each run" style="max-width:100%"></p>')
    table = wide_table(c).reset_index()
    table = table.astype(object).where(table.notna(), "")
    parts.append("<h2>Every model, run by run</h2>\n<p>Accuracy and macro F1 in percent; the last columns: test "
                 "accuracy minus the first run's, in points.</p>\n"
                 + table.to_html(border=0, classes="results table table-sm", index=False))
    if len(c.runs) > 1 and len(c.parameters):
        parts.append("<h2>Parameters that differ</h2>\n" + c.parameters.astype(str).to_html(
            border=0, classes="results table table-sm"))
    for i, r in enumerate(c.runs):
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in run_overview(r))
        parts.append(f"<h2>{html.escape(r.label)}</h2>\n<p>{html.escape(str(r.path))}: "
                     f"{_run_link(r, site_dir, i == 0)}</p>\n<table class='table table-sm'>{rows}</table>")
    return "\n\n".join(parts)

def runs_markdown(body: str) -> str:
    "The Runs page for Quarto: front matter, then the HTML body."
    meta = yaml.safe_dump({"title": "Runs", "description": RUNS_SUMMARY}, allow_unicode=True, width=1000)
    return f"---\n{meta}---\n\n{body}\n"

# %%
#| default_exp reports

# %% [markdown]
# # The pages a run writes itself: front page, results and runs
#
# > The site's pages made from a run's results files rather than from a notebook: figures, tables, one chart each.

# %% [markdown]
# Three pages of the site are written from the run's results files, not from a notebook: the front page's figures, the
# results page and the Runs page (notebook 90a), as Markdown or HTML that Quarto and nbconvert take as they are.

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

from urbansound_nb.core import NoChoice, read_choice, read_results, read_setup, results_files
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
# Every `results/*.json` as a table, a row per model or condition, then the chapters' wall times from `timings.csv`;
# the family chapters give the chart of every model's validation and test accuracy.

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
    "Every model of the family chapters: chapter, model, validation (rotated mean) and test accuracy."
    rows = []
    for f in results_files(run_dir):
        doc = json.loads(f.read_text())
        if not doc.get("families"): continue
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
    ax.set_title("Every model of the family chapters: validation and test accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, frameon=False)   # clear of the bars
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

def results_html(run_dir) -> str:
    "The body of the results page: the comparison chart and every results table, as HTML."
    parts, models = [], compared_models(run_dir)
    try: served = read_choice(run_dir)
    except NoChoice: served = None
    if served:
        parts.append(f"<h2>The study's model: {html.escape(str(served['model']))}</h2>\n"
                     f"<p>{html.escape(served_text(served))}</p>\n<p>{html.escape(served['reason'] or '')}</p>\n"
                     f"<p><em>The rule:</em> {html.escape(served['rule'] or '')}</p>")
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
# The README, its section of figures replaced by this run's: every candidate's validation (rotated mean) and test
# accuracy, and the model the study serves, so the front page never shows another run's figures.

# %%
#| export
FIGURES_SECTION = "## What a run gives"   # the README's section that the run's own figures replace

def chapter_results(run_dir, notebook: str) -> dict:
    "A chapter's results, its split filled in: the chapter's own, or the run's (chapter 00's) when it has none."
    doc = read_results(run_dir, notebook) if (Path(run_dir)/"results"/f"{notebook}.json").exists() else {}
    if doc.get("split"): return doc
    folds = doc.get("summary", {}).get("folds") if isinstance(doc.get("summary"), dict) else None
    if folds: return {**doc, "split_text": f"cross-validation: each of {folds} folds tested once"}
    return {**doc, "split": (read_setup(run_dir).get("entries") or {}).get("split") or {}}

def served_text(served: dict) -> str:
    "The model `predict` serves, in words: its test figures and how it was trained."
    how = (f"refit on folds {'+'.join(map(str, served.get('train_folds') or []))} ({served.get('n_train', 0):,} clips)"
           if served.get("refit") else "as fitted on the study's split")
    text = (f"Served by predict and the ONNX file: {served['model']}, {how}: {100 * served['test_accuracy']:.1f}% "
            f"on the test fold, macro F1 {served['macro_f1']:.3f}.")
    cal = served.get("calibration") if isinstance(served.get("calibration"), dict) else None
    if cal and cal.get("test_answered") is not None:
        text += (f" Calibrated (temperature {cal['temperature']:.2f}): expected calibration error "
                 f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; it answers {100 * cal['test_answered']:.0f}% of "
                 "the test clips and says unknown to the rest"
                 + (f", and to {100 * (1 - cal['others_answered']):.0f}% of the other sounds it was checked on."
                    if cal.get("others_answered") is not None else "."))
    return text

def run_figures_markdown(run_dir) -> str:
    "This run's figures in Markdown: the split, each model's validation and test accuracy, the study's model."
    models, run_dir = compared_models(run_dir), Path(run_dir)
    setup = read_setup(run_dir)
    split = (setup.get("entries") or {}).get("split") or {}
    lines = [f"{FIGURES_SECTION.replace('a run', 'this run')}\n",
             f"Dataset `{setup.get('dataset', '?')}`; {split_text(split)}." if split else "", ""]
    if len(models):
        lines += ["| model (chapter) | validation, mean over rotations | test |", "|---|---|---|"]
        lines += [f"| {m} ({c[:2]}) | {100 * v:.1f}% | {100 * t:.1f}% |"
                  for c, m, v, t in zip(models.chapter, models.model, models.val_accuracy, models.test_accuracy)]
    else: lines.append("No chapter of this run has fitted models yet.")
    try: served = read_choice(run_dir)
    except NoChoice: served = None
    if served: lines += ["", f"The study's model: **{served['model']}**. {served['reason'] or ''}", "",
                         f"**{served_text(served)}**"]
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
                  families=["engineered features"])
    write_results(d, "06_choice", {}, served=dict(model="svm", refit=True, train_folds=[1, 2], n_train=10,
                                                  test_accuracy=0.55, macro_f1=0.5), reason="It is tied.")
    page = index_markdown(d, "# T\n\n## What a run gives\n\n| old | table |\n\n## Next\n[x](docs/explanations.md#a)\n")
    print(page)
    assert "| svm (03) | 45.0% | 50.0% |" in page and "| old | table |" not in page and "## Next" in page
    assert "train fold 1 · validation fold 2 · test fold 3" in page and "](explanations.html#a)" in page
    assert "svm, refit on folds 1+2 (10 clips): 55.0% on the test fold" in page

# %% [markdown]
# ## The Runs page
#
# With other runs (`urbansound-nb site --compare RUN_DIR ...`), notebook 90a's comparison: its warnings, a chart, the
# table, the parameters that differ and links to each run's site; without, this run alone and how to add others.

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

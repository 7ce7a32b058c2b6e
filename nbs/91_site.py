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
#| default_exp site

# %% [markdown]
# # The report site
#
# > A run's executed chapters as a website, with the README as front page and a page of every results file.

# %% [markdown]
# `urbansound-nb site --run-dir DIR` (and `make study`, after the run) builds `DIR/site/`.
# With `quarto` on the PATH it stages a Quarto website (`_quarto.yml` of this repository, the
# executed notebooks, `index.md` from the README, `results.md`) and runs `quarto render`.
# Without it, which is the case on the machines this study was developed on, it falls back to
# nbconvert's HTML exporter and says so: one self-contained HTML page per notebook (figures and
# audio players embedded), a sidebar, the README as `index.html`, and `results.html`.

# %%
#| export
from __future__ import annotations

import html, json, shutil, subprocess
from pathlib import Path

import nbformat
import pandas as pd

from urbansound_nb.runner import project_root

# %% [markdown]
# ## Pages and their titles
#
# A page's title and summary are its notebook's H1 and the quoted line under it, as nbdev and
# Quarto read them.

# %%
#| export
def notebook_title(nb) -> tuple[str, str]:
    "The H1 title and the '> ' summary of a notebook's first title cell."
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.lstrip().startswith("# "):
            lines = c.source.strip().splitlines()
            summary = next((l[1:].strip() for l in lines[1:] if l.startswith(">")), "")
            return lines[0][2:].strip(), summary
    return "", ""

def executed_notebooks(run_dir) -> list[Path]:
    "The executed study notebooks of a run directory, in order."
    return sorted(p for p in Path(run_dir).glob("[0-9][0-9]_*.ipynb"))

# %%
from fastcore.test import test_eq, test_fail
_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| default_exp x"),
                                      nbformat.v4.new_markdown_cell("# Title\n\n> Summary line.")])
test_eq(notebook_title(_nb), ("Title", "Summary line."))

# %% [markdown]
# ## The results page
#
# Every `results/*.json` of the run becomes a table: one row per model or condition with its
# accuracy figures, followed by the per-notebook wall times from `timings.csv`.

# %%
#| export
RESULT_COLUMNS = ["val_accuracy", "test_accuracy", "macro_f1", "n_train", "n_val", "n_test", "epochs", "seconds"]

def results_tables(run_dir) -> dict[str, pd.DataFrame]:
    "One table per results file: its entries with the standard figures."
    out = {}
    for f in sorted((Path(run_dir)/"results").glob("[0-9][0-9]_*.json")):
        entries = json.loads(f.read_text()).get("entries", {})
        rows = {k: {c: v.get(c) for c in RESULT_COLUMNS if isinstance(v, dict) and c in v} for k, v in entries.items()}
        rows = {k: v for k, v in rows.items() if v}
        if rows: out[f.stem] = pd.DataFrame(rows).T
    t = Path(run_dir)/"timings.csv"
    if t.exists(): out["wall time per notebook"] = pd.read_csv(t).set_index("notebook")
    return out

def _table_html(df: pd.DataFrame) -> str: return df.to_html(float_format=lambda v: f"{v:.3f}", na_rep="", border=0,
                                                            classes="results")

def results_markdown(run_dir) -> str:
    "The results page as Markdown (for Quarto) with HTML tables."
    parts = ["# Results\n\n> Every results file of this run, gathered. "
             "Accuracies are fractions; seconds are wall time.\n"]
    for name, df in results_tables(run_dir).items(): parts.append(f"## {name}\n\n{_table_html(df)}\n")
    return "\n".join(parts)

# %% [markdown]
# ## Rendering

# %% [markdown]
# Besides the chapters, the site carries the explanations page (`docs/explanations.md`): the
# recipe and architecture trials that were tried and not taken, in one table. It is not a
# chapter, so no run executes it.

# %%
#| export
EXPLANATIONS = "docs/explanations.md"

def _quarto(run_dir: Path, out: Path, root: Path):
    "Stage a Quarto project of the run and render it into `out`."
    stage = run_dir/"_quarto_stage"; shutil.rmtree(stage, ignore_errors=True); stage.mkdir()
    shutil.copy(root/"_quarto.yml", stage/"_quarto.yml")
    for nb in executed_notebooks(run_dir): shutil.copy(nb, stage/nb.name)
    (stage/"index.md").write_text((root/"README.md").read_text())
    (stage/"results.md").write_text(results_markdown(run_dir))
    shutil.copy(root/EXPLANATIONS, stage/"explanations.md")
    subprocess.run(["quarto", "render", str(stage), "--output-dir", str(out.resolve())], check=True)

# %%
#| export
_STYLE = """<style>
body{margin:0}
.usn-nav{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;background:#f6f6f6;
  border-right:1px solid #ddd;padding:12px;font:14px system-ui,sans-serif}
.usn-nav a{display:block;padding:4px 2px;color:#0b5394;text-decoration:none}
.usn-nav a.here{font-weight:bold;color:#000}
.usn-nav small{display:block;color:#666;margin:0 0 6px 2px}
.usn-main{margin-left:280px;padding:0 16px 40px;max-width:1200px}
table.results{border-collapse:collapse;font:13px monospace}
table.results td,table.results th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
</style>"""

def _nav(pages, here) -> str:
    links = "".join(f'<a href="{html.escape(f)}" class="{"here" if f == here else ""}">{html.escape(t)}</a>'
                    + (f"<small>{html.escape(s)}</small>" if s else "")
                    for f, t, s in pages)
    return f'<nav class="usn-nav"><b>urbansound_nb</b>{links}</nav>'

def _page(body: str, title: str, pages, here) -> str:
    "A standalone page with the site's sidebar."
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
            f"<body>{_nav(pages, here)}<main class='usn-main'>{body}</main></body></html>")

# %%
#| export
def _nbconvert(run_dir: Path, out: Path, root: Path):
    "Render the run with nbconvert (no Quarto needed): one self-contained page per notebook, plus index and results."
    from nbconvert import HTMLExporter
    from nbconvert.filters import markdown2html_mistune
    nbs = executed_notebooks(run_dir); out.mkdir(parents=True, exist_ok=True)
    titled = [(nb, *notebook_title(nbformat.read(nb, as_version=4))) for nb in nbs]
    pages = ([("index.html", "Home", "")] + [(nb.stem + ".html", t or nb.stem, s) for nb, t, s in titled]
             + [("results.html", "Results", "every results file"),
                ("explanations.html", "Explanations", "what was tried and not taken")])
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    for nb, t, _ in titled:
        body, _ = exporter.from_notebook_node(nbformat.read(nb, as_version=4))
        nav = _STYLE + _nav(pages, nb.stem + ".html")
        body = body.replace("<body", "<body data-usn", 1)
        i = body.index(">", body.index("<body data-usn")) + 1
        rest = body[i:].replace("</body>", "</div></body>", 1)
        (out/f"{nb.stem}.html").write_text(body[:i] + nav + "<div class='usn-main'>" + rest)
    readme = markdown2html_mistune((root/"README.md").read_text())
    (out/"index.html").write_text(_page(readme, "urbansound_nb", pages, "index.html"))
    results = "".join(f"<h2>{html.escape(n)}</h2>{_table_html(df)}" for n, df in results_tables(run_dir).items())
    intro = "<h1>Results</h1><p>Every results file of this run. Accuracies are fractions; seconds are wall time.</p>"
    (out/"results.html").write_text(_page(intro + results, "Results", pages, "results.html"))
    explanations = markdown2html_mistune((root/EXPLANATIONS).read_text())
    (out/"explanations.html").write_text(_page(explanations, "Explanations", pages, "explanations.html"))

# %%
#| export
def build_site(run_dir, out=None, renderer: str | None = None) -> Path:
    "Build the report website of `run_dir` into `out` (default `run_dir/site`): Quarto if installed, else nbconvert."
    run_dir = Path(run_dir).resolve(); out = Path(out) if out else run_dir/"site"; root = project_root()
    if not executed_notebooks(run_dir):
        raise FileNotFoundError(f"{run_dir}: no executed notebooks; run `urbansound-nb run --run-dir {run_dir}` first")
    renderer = renderer or ("quarto" if shutil.which("quarto") else "nbconvert")
    if renderer not in ("quarto", "nbconvert"):
        raise ValueError(f"renderer must be 'quarto' or 'nbconvert', got {renderer!r}")
    if renderer == "quarto": _quarto(run_dir, out, root)
    else:
        print("quarto is not on the PATH: rendering with nbconvert (offline) instead")
        _nbconvert(run_dir, out, root)
    print(f"site ({renderer}): {out/'index.html'}")
    return out

# %% [markdown]
# A site from a tiny run directory: one executed notebook and one results file.

# %%
import tempfile
from urbansound_nb.core import write_results
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    two = nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo page\n\n> A summary."),
                                         nbformat.v4.new_code_cell("1+1", outputs=[two])])
    nbformat.write(nb, d/"00_demo.ipynb")
    write_results(d, "00_demo", {"m": {"val_accuracy": 0.5, "test_accuracy": 0.25}})
    site = build_site(d, renderer="nbconvert")
    test_eq(sorted(p.name for p in site.iterdir()), ["00_demo.html", "explanations.html", "index.html", "results.html"])
    assert "Demo page" in (site/"00_demo.html").read_text() and "0.250" in (site/"results.html").read_text()
    test_fail(lambda: build_site(d, renderer="mkdocs"), contains="renderer must be 'quarto' or 'nbconvert'")

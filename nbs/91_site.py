# %%
#| default_exp site

# %% [markdown]
# # The report site
#
# > A run's executed chapters as a report website: README, a page per chapter, results with a chart, explanations.

# %% [markdown]
# `urbansound-nb site --run-dir DIR` (and `make study`) builds `DIR/site/`: with `quarto` on the PATH, a Quarto
# website (this repository's `_quarto.yml` and `_theme.scss`, the prepared chapters, `index.md` from the README,
# `results.md`, `explanations.md`); without it, nbconvert pages with the same sidebar, and a line that says so.
#
# An executed notebook is a record of a run, not a report: it opens with imports and parameters, and nbdev's
# directives (`#| export`) would read to Quarto as cell options. Preparing a chapter does what nbdev's documentation
# pipeline does, and a little more: nbdev's directives are dropped (`#| hide` becomes `#| include: false`); imports,
# parameters, tests and test-mode scaffolding are hidden; the remaining code is folded, so prose, figures, tables and
# audio lead; the kernel's standard error (progress bars, warnings) is left out; a "this run" header follows the
# title.

# %%
#| export
from __future__ import annotations

import ast
import copy
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import yaml

from urbansound_nb import reports
from urbansound_nb.api import api_pages, fallback_api_page, linkify
from urbansound_nb.runner import project_root

# %% [markdown]
# ## Pages and their titles
#
# A page's title and summary are its notebook's H1 and the quoted lines under it, as nbdev and Quarto read them.

# %%
#| export
def notebook_title(nb) -> tuple[str, str]:
    "The H1 title and the '> ' summary (its lines joined) of a notebook's first title cell."
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.lstrip().startswith("# "):
            lines = c.source.strip().splitlines()
            summary = " ".join(line[1:].strip() for line in lines[1:] if line.startswith(">"))
            return lines[0][2:].strip(), summary
    return "", ""

def executed_notebooks(run_dir) -> list[Path]:
    "The executed study notebooks of a run directory, in order."
    return sorted(p for p in Path(run_dir).glob("[0-9][0-9]_*.ipynb"))

# %%
from fastcore.test import test_eq
_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| default_exp x"),
                                      nbformat.v4.new_markdown_cell("# Title\n\n> Summary line,\n> and more.")])
test_eq(notebook_title(_nb), ("Title", "Summary line, and more."))

# %% [markdown]
# ## A code cell's directives
#
# Quarto reads a code cell's leading `#|` lines as YAML options (`#| include: false`); nbdev's directives are single
# words with an optional argument, so a line is an option when it reads as `key: value`, and a directive otherwise.

# %%
#| export
def split_directives(source: str) -> tuple[dict, dict, str]:
    "A code cell's leading `#|` lines as (Quarto options, nbdev directives with their argument), and the code."
    options, directives, lines = {}, {}, source.splitlines()
    while lines and lines[0].startswith("#|"):
        text = lines.pop(0)[2:].strip()
        key, colon, value = text.partition(":")
        if colon and re.fullmatch(r"[A-Za-z][\w-]*", key.strip()):
            options[key.strip()] = yaml.safe_load(value.strip() or "null")
        elif text:
            name, _, arg = text.partition(" ")
            directives[name] = arg.strip()
    return options, directives, "\n".join(lines)

# %%
test_eq(split_directives("#| export\nx = 1"), ({}, {"export": ""}, "x = 1"))
test_eq(split_directives("#| default_exp core\n#| fig-cap: A plot\nplot()"),
        ({"fig-cap": "A plot"}, {"default_exp": "core"}, "plot()"))
test_eq(split_directives("#| hide\n#| eval: false\n# a comment\nx"), ({"eval": False}, {"hide": ""}, "# a comment\nx"))

# %% [markdown]
# ## Which cells a report hides
#
# nbdev's `#| hide` and `#| default_exp`, the parameters cells (the header shows their values), and cells with nothing
# to show that only import, test or set up the test mode. Cells that define functions or classes stay, folded: they
# are the method.

# %%
#| export
def _called(node) -> str:
    "The name of the function a call statement calls, or ''."
    call = node.value if isinstance(node, ast.Expr) else None
    if not isinstance(call, ast.Call): return ""
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""

def is_scaffolding(code: str) -> bool:
    "True for code that only imports, tests, or sets up the test-mode override (`use_test_values`)."
    try: tree = ast.parse(code)
    except SyntaxError: return False          # IPython magics and the like: leave them to the reader
    nodes = list(ast.walk(tree))
    if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in nodes): return False
    if any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "use_test_values" for n in nodes): return True
    tests = [n for n in nodes
             if isinstance(n, ast.Assert) or (isinstance(n, ast.Expr) and _called(n).startswith("test_"))]
    imports_only = all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body)
    return bool(tests) or imports_only

def shows_something(cell) -> bool:
    "Whether a code cell has an output a reader sees (standard error, progress bars included, does not count)."
    return any(not (o.output_type == "stream" and o.get("name") == "stderr") for o in cell.get("outputs", []))

# %%
assert is_scaffolding("import numpy as np\nfrom x import y") and is_scaffolding("test_eq(f(1), 2)\nassert g()")
assert is_scaffolding("use_test_values(globals(), epochs=2)\nparams = study_params(globals())")
assert not is_scaffolding("def f(x):\n    assert x\n    return x") and not is_scaffolding("fig = plot(ds)")
assert not is_scaffolding("%timeit f()") and is_scaffolding("")

# %% [markdown]
# ## This run
#
# The header gives the parameters papermill recorded, when it started and how long it ran, and the split from the
# chapter's results (the folds a run resolved).

# %%
#| export
# the dataset has a line of its own; the run and cache folders are paths of the machine that ran it
SHARED_IN_HEADER = ("dataset", "run_dir", "cache_dir")

def _duration(seconds) -> str:
    if seconds is None: return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"

def _clips_text(results: dict, shown: int = 5) -> str:
    "How many clips the chapter's figures rest on, and the ones it left out, named."
    used, skipped = results.get("clips_used"), results.get("clips_skipped") or []
    if used is None: return ""
    names = ", ".join(f"`{s['slice_file_name']}` (fold {s['fold']})" for s in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    left_out = f"; **{len(skipped)} left out**, they cannot be read or decoded: {names}{more}" if skipped else ""
    return f"{used:,}{left_out}"

def run_header(nb, results: dict | None = None) -> str:
    "A short Markdown table of what this run of the notebook was: dataset, split, parameters, start and wall time."
    pm = nb.metadata.get("papermill", {})
    passed = dict(pm.get("parameters") or {})
    results = results or {}
    dataset = passed.get("dataset") or results.get("dataset") or "the default (see chapter 00)"
    others = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in passed.items() if k not in SHARED_IN_HEADER)
    started = (pm.get("start_time") or "")[:16].replace("T", " ")
    split = results.get("split_text") or reports.split_text(results.get("split") or {})
    rows = [("dataset", f"`{dataset}`"), ("split", split),
            ("clips", _clips_text(results)), ("parameters", others or "the notebook's defaults"),
            ("wall time", _duration(pm.get("duration")) + (f" (started {started} UTC)" if started else ""))]
    if pm.get("exception"): rows.append(("status", "**failed**: the run stopped in this notebook"))
    body = "\n".join(f"| {k} | {v} |" for k, v in rows if v)
    return f"**This run**\n\n| | |\n|---|---|\n{body}\n"

# %%
_pm = {"parameters": {"dataset": "mini", "epochs": 2}, "duration": 139.1, "start_time": "2026-12-01T01:59:09.59+00:00"}
_nb = nbformat.v4.new_notebook(metadata={"papermill": _pm})
_header = run_header(_nb, {"split": {"train_folds": [1], "val_fold": 2, "test_fold": 3}})
print(_header)
assert "`mini`" in _header and "`epochs=2`" in _header and "2 min 19 s (started 2026-12-01 01:59 UTC)" in _header
assert "train fold 1 · validation fold 2 · test fold 3" in _header
_skipped = [dict(slice_file_name="x.wav", fold=3, reason="x.wav: the file holds no samples")]
assert "| clips | 2,147; **1 left out**, they cannot be read or decoded: `x.wav` (fold 3) |" in run_header(
    _nb, {"clips_used": 2147, "clips_skipped": _skipped})

# %% [markdown]
# ## A chapter prepared as a report page

# %%
#| export
def prepare_chapter(nb, results: dict | None = None, front_matter: bool = True):
    "A copy of an executed chapter prepared for the site (the module's first section says what changes)."
    nb = copy.deepcopy(nb)
    cells, titled = [], False
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags") or []
        cell.metadata = {}                  # papermill's timings and tags would become attribute text in Quarto
        if cell.cell_type == "markdown" and not titled and cell.source.lstrip().startswith("# "):
            titled = True
            title, summary = notebook_title(nbformat.v4.new_notebook(cells=[cell]))
            if front_matter:                # Quarto takes the title from front matter, as nbdev's pages do
                meta = yaml.safe_dump({"title": title, "description": summary}, allow_unicode=True, width=1000)
                cells.append(nbformat.v4.new_raw_cell(f"---\n{meta}---"))
                rest = [line for line in cell.source.strip().splitlines()[1:] if not line.startswith(">")]
                if "\n".join(rest).strip(): cells.append(nbformat.v4.new_markdown_cell("\n".join(rest).strip()))
            else: cells.append(cell)
            cells.append(nbformat.v4.new_markdown_cell(run_header(nb, results)))
            continue
        if cell.cell_type != "code":
            if cell.cell_type == "markdown": cell.source = linkify(cell.source)   # names to their API pages
            cells.append(cell)
            continue
        options, directives, code = split_directives(cell.source)
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
        hidden = ("hide" in directives or "default_exp" in directives or options.get("include") is False
                  or {"parameters", "injected-parameters"} & set(tags)
                  or not shows_something(cell) and is_scaffolding(code))
        options = {k: v for k, v in options.items() if k != "include"}
        if hidden: options = {"include": False, **options}
        elif is_scaffolding(code): options = {"echo": False, **options}     # its output shows, its code does not
        cell.source = "".join(f"#| {k}: {json.dumps(v)}\n" for k, v in options.items()) + code
        cells.append(cell)
    nb.cells = cells
    return nb

# %%
_cells = [nbformat.v4.new_code_cell("#| default_exp demo"),
          nbformat.v4.new_markdown_cell("# Demo chapter\n\n> What it shows."),
          nbformat.v4.new_code_cell("#| export\nimport numpy as np"),
          nbformat.v4.new_code_cell("epochs = 30", metadata={"tags": ["parameters"]}),
          nbformat.v4.new_code_cell("use_test_values(globals(), epochs=2)"),
          nbformat.v4.new_code_cell("params = study_params(globals())\nuse_test_values(globals())\nparams", outputs=[
              nbformat.v4.new_output("execute_result", {"text/plain": "StudyParams()"})]),
          nbformat.v4.new_code_cell("#| export\ndef f(x): return x", metadata={"papermill": {"duration": 1.0}}),
          nbformat.v4.new_code_cell("test_eq(f(1), 1)"),
          nbformat.v4.new_code_cell("f(2)", outputs=[
              nbformat.v4.new_output("execute_result", {"text/plain": "2"}),
              nbformat.v4.new_output("stream", name="stderr", text="100%|###|")])]
_page = prepare_chapter(nbformat.v4.new_notebook(cells=_cells, metadata={"papermill": {"duration": 3.0}}))
for c in _page.cells: print(repr(c.source[:60]))
test_eq([c.cell_type for c in _page.cells], ["code", "raw", "markdown", *["code"] * 7])
test_eq([c.source.split("\n")[0] for c in _page.cells if c.cell_type == "code"],
        ["#| include: false", "#| include: false", "#| include: false", "#| include: false", "#| echo: false",
         "def f(x): return x", "#| include: false", "f(2)"])
assert "title: Demo chapter" in _page.cells[1].source and "description: What it shows." in _page.cells[1].source
assert not any("#| export" in c.source for c in _page.cells)
test_eq(_page.cells[-1].outputs[0].output_type, "execute_result")
test_eq(len(_page.cells[-1].outputs), 1)
test_eq([c.metadata for c in _page.cells], [{}] * 10)

# %% [markdown]
# ## Rendering with Quarto
#
# The theme is cosmo with `$web-font-path: false` (`_theme.scss`), so no page asks a font host for anything; figures
# and audio are inline and the pages share `site_libs/`, so the site works offline. Quarto would add require.js and
# jQuery from a CDN to every page with an HTML output, in case it is a widget; the study's HTML outputs (tables, audio
# players) have no scripts, so they go to Quarto as raw HTML blocks, which render the same.

# %%
#| export
EXPLANATIONS = "docs/explanations.md"
STAGED_FILES = ("_quarto.yml", "_theme.scss")

def raw_html_outputs(page):
    "HTML outputs without scripts (tables, audio players) handed to Quarto as raw HTML blocks (see above)."
    for c in page.cells:
        for o in c.get("outputs", []):
            markup = o.get("data", {}).get("text/html")
            if markup is None: continue
            markup = "".join(markup) if isinstance(markup, list) else markup
            if "<script" not in markup: o.data = {"text/markdown": f"````{{=html}}\n{markup}\n````"}
    return page

def _quarto(run_dir: Path, out: Path, root: Path, runs_body: str):
    "Stage a Quarto project of the run and render it into `out`."
    stage = run_dir/"_quarto_stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for name in STAGED_FILES: shutil.copy(root/name, stage/name)
    for nb in executed_notebooks(run_dir):
        page = prepare_chapter(nbformat.read(nb, as_version=4), reports.chapter_results(run_dir, nb.stem))
        nbformat.write(raw_html_outputs(page), stage/nb.name)
    (stage/"index.md").write_text(reports.index_markdown(run_dir, (root/"README.md").read_text()))
    (stage/"results.md").write_text(reports.results_markdown(run_dir))
    (stage/"runs.md").write_text(reports.runs_markdown(runs_body))
    shutil.copy(root/EXPLANATIONS, stage/"explanations.md")
    for name, page in api_pages(root).items(): nbformat.write(page, stage/f"api_{name}.ipynb")   # -> {name}.html
    r = subprocess.run(["quarto", "render", str(stage), "--output-dir", str(out.resolve())],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"quarto render {stage} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    shutil.rmtree(stage, ignore_errors=True)

# %%
_html = nbformat.v4.new_output("display_data", {"text/html": "<audio controls></audio>", "text/plain": "<Audio>"})
_raw = raw_html_outputs(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("Audio(x)", outputs=[_html])]))
test_eq(_raw.cells[0].outputs[0].data, {"text/markdown": "````{=html}\n<audio controls></audio>\n````"})

# %% [markdown]
# ## The fallback: nbconvert
#
# The same prepared chapters through nbconvert's lab template, extended so that folded code is a `<details>` element.

# %%
#| export
_STYLE = """<style>
body{margin:0}
.usn-nav{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;background:#f6f6f6;
  border-right:1px solid #ddd;padding:12px;font:14px system-ui,sans-serif}
.usn-nav a{display:block;padding:4px 2px;color:#0b5394;text-decoration:none}
.usn-nav a.here{font-weight:bold;color:#000}
.usn-nav small{display:block;color:#666;margin:0 0 6px 2px}
.usn-main{margin-left:280px;padding:0 16px 40px;max-width:1200px;font-family:system-ui,sans-serif}
details.usn-code>summary{cursor:pointer;color:#666;font-size:13px;margin:4px 0}
table.results{border-collapse:collapse;font:13px monospace}
table.results td,table.results th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
</style>"""

# Blocks emptied: require.js and MathJax would come from a CDN, and the study's pages need neither.
_FOLDED_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{% block input_group -%}
<details class="usn-code"><summary>Code</summary>{{ super() }}</details>
{%- endblock input_group %}"""

def _nav(pages, here) -> str:
    links = "".join(f'<a href="{html.escape(f)}" class="{"here" if f == here else ""}">{html.escape(t)}</a>'
                    + (f"<small>{html.escape(s)}</small>" if s else "")
                    for f, t, s in pages)
    return f'<nav class="usn-nav"><b>urbansound_nb</b>{links}</nav>'

def _page(body: str, title: str, pages, here) -> str:
    "A standalone page with the site's sidebar."
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
            f"<body>{_nav(pages, here)}<main class='usn-main'>{body}</main></body></html>")

def fallback_notebook(page):
    "A prepared chapter as nbconvert renders it: hidden cells left out, the option lines removed."
    page = copy.deepcopy(page)
    kept = []
    for c in page.cells:
        if c.cell_type == "code":
            options, _, c.source = split_directives(c.source)
            if options.get("include") is False: continue
            if options.get("echo") is False: c.metadata["transient"] = {"remove_source": True}   # nbconvert's way
        kept.append(c)
    page.cells = kept
    return page

# %%
_fallback = fallback_notebook(prepare_chapter(nbformat.v4.new_notebook(cells=_cells), front_matter=False))
test_eq([c.source for c in _fallback.cells if c.cell_type == "code"],
        ["params = study_params(globals())\nuse_test_values(globals())\nparams", "def f(x): return x", "f(2)"])
test_eq(_fallback.cells[2].metadata, {"transient": {"remove_source": True}})
assert _fallback.cells[0].source.startswith("# Demo chapter") and "**This run**" in _fallback.cells[1].source

# %%
#| export
def _fallback_html(exporter, page, pages, here: str) -> str:
    "One notebook as a page of the fallback site: nbconvert's HTML with the site's sidebar."
    body, _ = exporter.from_notebook_node(page)
    body = body.replace("<body", "<body data-usn", 1)
    i = body.index(">", body.index("<body data-usn")) + 1
    rest = body[i:].replace("</body>", "</div></body>", 1)
    return body[:i] + _STYLE + _nav(pages, here) + "<div class='usn-main'>" + rest

def _nbconvert(run_dir: Path, out: Path, root: Path, runs_body: str):
    "Render the run with nbconvert (no Quarto needed): one self-contained page per chapter, plus index and results."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from nbconvert.filters import markdown2html_mistune
    nbs = executed_notebooks(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    titled = [(nb, *notebook_title(nbformat.read(nb, as_version=4))) for nb in nbs]
    pages = ([("index.html", "Home", "")] + [(nb.stem + ".html", t or nb.stem, "") for nb, t, _ in titled]
             + [("results.html", "Results", "every results file"), ("runs.html", "Runs", "beside other runs"),
                ("explanations.html", "Explanations", "what was tried and not taken")])
    exporter = HTMLExporter(extra_loaders=[DictLoader({"folded.html.j2": _FOLDED_TEMPLATE})],
                            template_file="folded.html.j2", embed_images=True)
    api = api_pages(root)
    pages += [(f"{name}.html", f"API: {name}", "") for name in api]
    for nb, t, _ in titled:
        results = reports.chapter_results(run_dir, nb.stem)
        page = prepare_chapter(nbformat.read(nb, as_version=4), results, front_matter=False)
        (out/f"{nb.stem}.html").write_text(_fallback_html(exporter, fallback_notebook(page), pages, nb.stem + ".html"))
    for name, page in api.items():
        page = fallback_notebook(fallback_api_page(page))
        (out/f"{name}.html").write_text(_fallback_html(exporter, page, pages, f"{name}.html"))
    readme = markdown2html_mistune(reports.index_markdown(run_dir, (root/"README.md").read_text()))
    (out/"index.html").write_text(_page(readme, "urbansound_nb", pages, "index.html"))
    intro = f"<h1>Results</h1><p>{reports.RESULTS_SUMMARY}</p>"
    (out/"results.html").write_text(_page(intro + reports.results_html(run_dir), "Results", pages, "results.html"))
    runs_intro = f"<h1>Runs</h1><p>{reports.RUNS_SUMMARY}</p>"
    (out/"runs.html").write_text(_page(runs_intro + runs_body, "Runs", pages, "runs.html"))
    explanations = markdown2html_mistune((root/EXPLANATIONS).read_text())
    (out/"explanations.html").write_text(_page(explanations, "Explanations", pages, "explanations.html"))

# %% [markdown]
# The site is built beside its place (`.site.building`) and swapped in when complete: a failed build leaves the
# previous site as it was.

# %%
#| export
def swap_in(new: Path, out: Path):
    "Put folder `new` at `out` by renames: `out` is the old site or the new one, never a half-written one."
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists(): os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)

def build_site(run_dir, out=None, renderer: str | None = None, compare=()) -> Path:
    "The report website of `run_dir` in `out` (default `run_dir/site`), by Quarto if installed, else nbconvert."
    run_dir = Path(run_dir).resolve()
    out = Path(out) if out else run_dir/"site"
    root = project_root()
    if not executed_notebooks(run_dir):
        raise FileNotFoundError(f"{run_dir}: no executed notebooks; run `urbansound-nb run --run-dir {run_dir}` first")
    asked = renderer is not None
    renderer = renderer or ("quarto" if shutil.which("quarto") else "nbconvert")
    if renderer not in ("quarto", "nbconvert"):
        raise ValueError(f"renderer must be 'quarto' or 'nbconvert', got {renderer!r}")
    if renderer == "quarto" and not shutil.which("quarto"):
        raise FileNotFoundError("quarto is not on the PATH: install it (https://quarto.org/docs/get-started/) "
                                "or leave the renderer out to use nbconvert")
    if not asked and renderer == "nbconvert": print("quarto is not on the PATH: rendering with nbconvert (offline)")
    building = out.with_name(f".{out.name}.building")    # the whole site is made aside, then swapped in
    shutil.rmtree(building, ignore_errors=True)
    runs_body = reports.runs_html(run_dir, compare, out)
    try: (_quarto if renderer == "quarto" else _nbconvert)(run_dir, building, root, runs_body)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    swap_in(building, out)
    print(f"site ({renderer}): {out/'index.html'}")
    return out

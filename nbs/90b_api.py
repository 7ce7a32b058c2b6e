# %%
#| default_exp api

# %% [markdown]
# # API pages: every module's reference, by nbdev's own processors
#
# > One page per module with the signature and docstring of every exported name, and links from the prose.

# %% [markdown]
# The site publishes one reference page per module, named as nbdev names it (`06c_predict` -> `predict.html`), beside
# the chapter reports: the notebook's prose and, for every exported name, nbdev's `show_doc`, executed. `api_notebook`
# keeps the prose and exported code and hands them to nbdev's documentation processors (`FilterDefaults`), and adds a
# table of the module's constants, which `show_doc` leaves out; the examples and tests are left out, since a reference
# page shows what a function is, not a run. `local_links` makes nbdev's links relative, so they work in any copy of
# the site, and `linkify` gives the chapter reports the same links.

# %%
#| export
from __future__ import annotations

import contextlib
import functools
import importlib
import re
from pathlib import Path

import nbformat

from urbansound_nb.runner import is_chapter, notebook_sources, project_root

# %%
from fastcore.test import test_eq

# %%
#| export
def doc_prefix() -> str:
    "Where nbdev's links to this package's pages start (the published site, from `_modidx`)."
    from urbansound_nb._modidx import d
    return d["settings"]["doc_host"] + d["settings"]["doc_baseurl"] + "/"

def local_links(text: str) -> str:
    "`text` with links into the published site made relative (`predict.html#predictor`)."
    return text.replace(doc_prefix(), "")

@functools.cache
def _lookup():
    from nbdev.doclinks import NbdevLookup
    return NbdevLookup(incl_libs="urbansound_nb")     # this package's names only, built once

def linkify(markdown: str) -> str:
    "Backticked names of this package in `markdown` linked to their API pages, relatively (nbdev's `NbdevLookup`)."
    return local_links(_lookup().linkify(markdown) or "")

# %%
test_eq(doc_prefix(), "https://urbansound-nb.github.io/urbansound_nb/")
test_eq(linkify("`read_results` and `nothing_here`"), "[`read_results`](setup.html#read_results) and `nothing_here`")

# %% [markdown]
# ## One module's page

# %%
#| export
CELL_KEYS = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}

def page_name(ipynb) -> str:
    "The name of a notebook's API page, as nbdev links it: the notebook's name without its number."
    return re.sub(r"^\d+[a-z]*_", "", Path(ipynb).stem)

def module_name(nb) -> str | None:
    "The module a notebook exports (its `#| default_exp`), or None."
    for c in nb.cells:
        if c.cell_type == "code" and c.source.startswith("#| default_exp"): return c.source.split()[2]
    return None

def _reference_cells(nb, module: str, chapter: bool) -> list:
    "The cells a reference page is made of: the retitled heading, prose (a library notebook's), exported code."
    cells = []
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.lstrip().startswith("# ") and not any(
                x.cell_type == "markdown" for x in cells):
            title, _, rest = c.source.lstrip()[2:].partition("\n")
            c.source = f"# `{module}`: {title}\n{rest}"
            cells.append(c)
        elif c.cell_type == "markdown" and not chapter: cells.append(c)
        elif c.cell_type == "code" and c.source.startswith(("#| default_exp", "#| export")):
            c.outputs = []
            cells.append(c)
    return cells

def constants_cell(module: str):
    "A Markdown table of the module's exported names that `show_doc` does not document: its constants, with values."
    from fastcore.nbio import mk_cell
    mod = importlib.import_module(f"urbansound_nb.{module}")
    rows = [(n, getattr(mod, n)) for n in getattr(mod, "__all__", []) if not callable(getattr(mod, n, None))]
    if not rows: return None
    cut = lambda v: (lambda r: r if len(r) <= 90 else r[:87] + "...")(repr(v)).replace("|", "\\|")
    lines = ["## Constants", "", "| name | value |", "|---|---|"] + [f"| `{n}` | `{cut(v)}` |" for n, v in rows]
    return mk_cell("\n".join(lines), "markdown")

def api_notebook(ipynb, root=None):
    "The API page of one notebook: its module's exported names shown by nbdev's `show_doc`, executed, linked."
    from fastcore.nbio import mk_cell, nb2str, read_nb
    from nbdev.processors import FilterDefaults
    nb, chapter = read_nb(ipynb), is_chapter(Path(ipynb).with_suffix(".py"))
    module = module_name(nb)
    nb.cells = _reference_cells(nb, module, chapter)
    if chapter: nb.cells.insert(1, mk_cell(
        f"The functions chapter [{Path(ipynb).stem}]({Path(ipynb).stem}.html) defines and uses; the chapter's "
        "report shows them at work.", "markdown"))
    if constants := constants_cell(module): nb.cells.append(constants)
    with contextlib.chdir(project_root(root)):          # nbdev reads its settings from pyproject.toml
        FilterDefaults()(nb)
    for c in nb.cells:
        if c.cell_type == "markdown": c.source = local_links(c.source)
        for o in c.get("outputs", []):
            if "text/markdown" in o.get("data", {}):
                o["data"]["text/markdown"] = local_links(o["data"]["text/markdown"])
    page = nbformat.reads(nb2str(nb), as_version=4)     # fastcore's notebook as nbformat's, plain JSON types
    for c in page.cells:                                  # the processors' own bookkeeping is not notebook format
        for key in set(c) - CELL_KEYS: del c[key]
        c.metadata = {}                                   # execution timings, in a form the format does not allow
    return page

# %%
test_eq([page_name(n) for n in ("06c_predict.ipynb", "00_setup.ipynb", "90b_api.ipynb")], ["predict", "setup", "api"])
page = api_notebook(project_root()/"nbs"/"06b_windows.ipynb")
shown = "".join(o["data"]["text/markdown"] for c in page.cells for o in c.get("outputs", []) if "data" in o)
assert "classify_files" in shown and "file_windows" in shown and "top_k" in shown          # signatures, parameters
assert "urbansound-nb.github.io" not in shown and page.cells[0].cell_type == "raw"       # local links, front matter
nbformat.validate(page)
assert "| `SILENCE_PEAK` | `0.0001` |" in page.cells[-1].source           # constants, which show_doc leaves out
print(page.cells[0].source)

# %%
#| export
def fallback_api_page(page):
    "An API page for nbconvert, which ignores front matter: its title and summary as the first Markdown cell."
    import yaml
    page, front = nbformat.from_dict(page), page.cells[0]
    if front.cell_type == "raw" and front.source.startswith("---"):
        meta = yaml.safe_load(front.source.strip().strip("-"))
        page.cells[0] = nbformat.v4.new_markdown_cell(f"# {meta.get('title', '')}\n\n> {meta.get('description', '')}")
    return page

# %%
test_eq(fallback_api_page(page).cells[0].source.splitlines()[0],
        "# `windows`: Long recordings: windows and a timeline")

# %% [markdown]
# ## Every module

# %%
#| export
def api_pages(root=None) -> dict:
    "{page name: its API page} for every notebook that exports a module."
    root = project_root(root)
    ipynbs = [py.with_suffix(".ipynb") for py in notebook_sources(root)]
    return {page_name(f): api_notebook(f, root) for f in ipynbs if module_name(nbformat.read(f, as_version=4))}

# %%
#| eval: false
pages = api_pages()        # every module: about a second each (the site builds them)
print(sorted(pages))

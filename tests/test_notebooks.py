"""The notebook tooling: stable sync, the committed package equals a fresh export, nbdev-test really runs."""
import os
import re
import shutil
import subprocess

import nbformat
from conftest import ROOT

from urbansound_nb.runner import is_chapter, notebook_sources, notebook_text, py_to_notebook, sync


def test_every_source_has_a_title_summary_and_default_exp():
    sources = notebook_sources(ROOT)
    assert len(sources) >= 2
    for py in sources:
        nb = py_to_notebook(py)
        assert nb.cells[0].source.startswith("#| default_exp "), py.name
        assert nb.cells[1].source.startswith("# "), f"{py.name}: second cell must be the H1 title"
        assert "\n> " in nb.cells[1].source, f"{py.name}: the title cell needs a one-line summary"
        n_parameters = sum("parameters" in c.metadata.get("tags", []) for c in nb.cells)
        if is_chapter(py): assert n_parameters == 1, f"{py.name}: one parameters cell"
        else: assert n_parameters == 0, f"{py.name}: a library notebook has no parameters cell"


def test_cell_ids_follow_the_cells_content(tmp_path):
    "An edit to one cell changes that cell's id and nothing else of the generated notebook (so modules diff small)."
    py = notebook_sources(ROOT)[0]
    before = py_to_notebook(py)
    nbformat.validate(nbformat.reads(notebook_text(before), as_version=4))
    assert before.metadata.kernelspec.name == "python3" and len({c.id for c in before.cells}) == len(before.cells)
    edited = tmp_path/py.name
    edited.write_text(py.read_text().replace("# %% [markdown]", "# %% [markdown]\n# An added line.", 1))
    after = py_to_notebook(edited)
    changed = [i for i, (a, b) in enumerate(zip(before.cells, after.cells)) if a.id != b.id]
    assert len(changed) == 1 and after.cells[changed[0]].source.startswith("An added line.")


def test_generated_notebooks_are_current():
    # `make test` runs `urbansound-nb sync --no-export` first; a second sync must change nothing
    assert sync(ROOT, export=False, quiet=True) == []


def test_package_equals_a_fresh_export(tmp_path):
    "Hand edits to urbansound_nb/ or a forgotten export make this fail."
    proj = tmp_path/"proj"
    (proj/"nbs").mkdir(parents=True)
    (proj/"urbansound_nb").mkdir()
    shutil.copy(ROOT/"pyproject.toml", proj)
    for py in notebook_sources(ROOT): shutil.copy(py, proj/"nbs")
    shutil.copy(ROOT/"urbansound_nb"/"__init__.py", proj/"urbansound_nb")
    sync(proj, export=True, quiet=True)
    committed = sorted(p.relative_to(ROOT/"urbansound_nb") for p in (ROOT/"urbansound_nb").rglob("*.py"))
    fresh = sorted(p.relative_to(proj/"urbansound_nb") for p in (proj/"urbansound_nb").rglob("*.py"))
    assert committed == fresh, "modules differ: run `urbansound-nb sync` and commit urbansound_nb/"
    differ = [str(p) for p in committed if (ROOT/"urbansound_nb"/p).read_text() != (proj/"urbansound_nb"/p).read_text()]
    assert not differ, f"{differ} differ from a fresh export of nbs/: edit the notebooks, `urbansound-nb sync`, commit"


LIBRARY = r"^([0-8][0-9]_|[_.])"   # nbdev-test's --skip-file-re for the chapters: the reduced study runs those


def test_nbdev_test_executes_every_library_notebook(venv_bin):
    """nbdev-test exits 0 when it finds nothing to test; here finding nothing, or skipping one, is a failure. The
    chapters (NN_name) are executed whole by papermill in the reduced study (test_study.py), on real audio."""
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([str(venv_bin/"nbdev-test"), "--do-print", "--timing", "--n-workers", "2",
                        "--skip-file-re", LIBRARY], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    out = r.stdout + r.stderr
    print(out[-5000:])
    assert "No files were eligible" not in out
    assert r.returncode == 0, out[-5000:]
    library = [py for py in notebook_sources(ROOT) if not re.match(LIBRARY, py.name)]
    assert len(library) > 20
    for py in library:
        assert f"Completed {py.with_suffix('.ipynb')}" in out, f"nbdev-test did not execute {py.name}"
    assert "Success." in out

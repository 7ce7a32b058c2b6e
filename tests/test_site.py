"""The report site of the reduced study, rendered by Quarto and by the nbconvert fallback and checked in headless
Chromium; JupyterLab opening a chapter as a notebook. Browser tests skip, saying why, where no Chromium is installed."""
import os
import re
import shutil
import subprocess

import pytest
from conftest import NOTEBOOKS, ROOT

from urbansound_nb.browser import check_site, lab_opens_as_notebook, missing_browser
from urbansound_nb.site import build_site

NO_BROWSER = missing_browser()
needs_browser = pytest.mark.skipif(NO_BROWSER is not None, reason=f"no browser to check pages in: {NO_BROWSER}")


def _without_quarto() -> str:
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (os.path.isdir(p) and "quarto" in os.listdir(p)))


@pytest.fixture(scope="module")
def fallback(reduced_run, venv_bin, tmp_path_factory):
    """`urbansound-nb site` with Quarto out of sight: the nbconvert fallback, photographed and checked in Chromium
    (where there is one) as `--screenshots --check` do. One render serves every test of the fallback."""
    out = tmp_path_factory.mktemp("nbconvert")/"site"
    cmd = [str(venv_bin/"urbansound-nb"), "site", "--run-dir", str(reduced_run), "--out", str(out)]
    if NO_BROWSER is None: cmd += ["--screenshots", "--check"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": _without_quarto()})
    return out, r


@pytest.fixture(scope="module")
def quarto_site(reduced_run):
    "Quarto's site of the reduced run: the run itself built it (`run --site`) where Quarto is on the PATH."
    if not shutil.which("quarto"):
        pytest.skip("quarto is not on the PATH (.ci/run installs it; users install it from quarto.org)")
    if (reduced_run/"site"/"site_libs").is_dir(): return reduced_run/"site"
    return build_site(reduced_run, reduced_run/"site", renderer="quarto")


@pytest.fixture(scope="module", params=["quarto", "nbconvert"])
def site(request, fallback):
    "The reduced run's site by each renderer."
    return fallback[0] if request.param == "nbconvert" else request.getfixturevalue("quarto_site")


def test_pages_read_as_a_report(site):
    for nb in NOTEBOOKS:
        page = (site/f"{nb}.html").read_text()
        assert "This run" in page and "wall time" in page, nb                       # the run header from papermill
        for scaffolding in ("#| export", "#| default_exp", "use_test_values(", "from urbansound_nb.params import"):
            assert scaffolding not in page, (nb, scaffolding)                      # hidden, not just folded
    assert "<audio" in (site/"01_eda.html").read_text() and "data:image/png;base64" in (site/"04_cnn.html").read_text()
    results = (site/"results.html").read_text()
    assert "Every model compared" in results and re.search(r">\s*\d+\.\d%\s*<", results)  # accuracies as percentages
    assert not re.search(r">\s*\d+\.000\s*<", results)                                    # no integer shown as a float
    assert "urbansound_nb" in (site/"index.html").read_text() and (site/"explanations.html").exists()


def test_every_exported_name_is_on_an_api_page(site):
    "Each module's reference page (nbdev's page name: the notebook's without its number) shows all of `__all__`."
    import importlib

    from urbansound_nb.api import page_name
    missing = []
    for py in sorted((ROOT/"nbs").glob("*.py")):
        module = re.search(r"#\| default_exp (\w+)", py.read_text())
        if not module: continue
        page = (site/f"{page_name(py.with_suffix('.ipynb'))}.html").read_text()
        names = importlib.import_module(f"urbansound_nb.{module.group(1)}").__all__
        missing += [f"{module.group(1)}.{n}" for n in names
                    if not re.search(rf'id="{n.lower()}"|>{re.escape(n)}<|<code>{re.escape(n)}</code>', page)]
    assert not missing, missing


@needs_browser
def test_every_quarto_page_passes_the_browser_checks(quarto_site):
    "The fallback's pages are checked by its own `--check` (test_screenshots_and_check_from_the_command_line)."
    problems = {page: found for page, found in check_site(quarto_site, NOTEBOOKS).items() if found}
    assert not problems, problems


def test_the_fallback_is_used_without_quarto(fallback):
    out, r = fallback
    assert r.returncode == 0 and "rendering with nbconvert" in r.stdout, r.stdout + r.stderr
    assert all((out/f"{nb}.html").exists() for nb in NOTEBOOKS)


@needs_browser
def test_screenshots_and_check_from_the_command_line(fallback, reduced_run):
    out, r = fallback
    assert r.returncode == 0 and "every page is fine" in r.stdout, r.stdout + r.stderr
    shots = sorted((reduced_run/"screenshots").glob("*.png"))
    assert {p.stem for p in shots} >= {*NOTEBOOKS, "index", "results", "explanations"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in shots)


@pytest.mark.slow   # a JupyterLab server and a browser
@needs_browser
def test_jupyterlab_opens_a_chapter_as_a_notebook(tmp_path):
    cells = lab_opens_as_notebook("nbs/00_setup.py", screenshot=tmp_path/"lab.png")
    assert cells > 5 and (tmp_path/"lab.png").stat().st_size > 10_000

"""The report site of the reduced study, rendered by Quarto and by the nbconvert fallback and checked in headless
Chromium; JupyterLab opening a chapter as a notebook. Browser tests skip, saying why, where no Chromium is installed."""
import re
import shutil

import pytest
from conftest import FALLBACK_CHAPTERS, NOTEBOOKS, ROOT
from lab_check import lab_opens_as_notebook

from urbansound_nb.browser import missing_browser
from urbansound_nb.site import build_site

NO_BROWSER = missing_browser()
needs_browser = pytest.mark.skipif(NO_BROWSER is not None, reason=f"no browser to check pages in: {NO_BROWSER}")


@pytest.fixture(scope="module")
def fallback(reduced_study):
    "The nbconvert fallback's site of the reduced run (conftest's SiteBuild.fallback), and its command's outcome."
    return reduced_study.sites["nbconvert"].result()


@pytest.fixture(scope="module")
def quarto_site(reduced_study):
    "Quarto's site of the reduced run, by `urbansound-nb site --run-dir RUN` where Quarto is on the PATH."
    if "quarto" not in reduced_study.sites:
        pytest.skip("quarto is not on the PATH (.ci/run installs it; users install it from quarto.org)")
    site, r = reduced_study.sites["quarto"].result()
    assert (site/"site_libs").is_dir(), r.stdout[-3000:] + r.stderr[-3000:]
    return site


@pytest.fixture(scope="module", params=["quarto", "nbconvert"])
def site(request, fallback):
    "The reduced run's site by each renderer, and the chapters it shows."
    if request.param == "nbconvert": return fallback[0], FALLBACK_CHAPTERS
    return request.getfixturevalue("quarto_site"), NOTEBOOKS


def test_pages_read_as_a_report(site):
    site, chapters = site
    for nb in chapters:
        page = (site/f"{nb}.html").read_text()
        assert "This run" in page and "wall time" in page, nb                       # the run header from papermill
        for scaffolding in ("#| export", "#| default_exp", "use_test_values(", "from urbansound_nb.params import"):
            assert scaffolding not in page, (nb, scaffolding)                      # hidden, not just folded
    figures = (site/"04_cnn.html").read_text()           # inline (nbconvert) or beside the page (Quarto's site_libs)
    assert "<audio" in (site/"01_eda.html").read_text()
    assert "data:image/png;base64" in figures or re.search(r'<img src="04_cnn_files/figure-html/[^"]+\.png"', figures)
    results = (site/"results.html").read_text()
    assert "Every model compared" in results and re.search(r">\s*\d+\.\d%\s*<", results)  # accuracies as percentages
    assert not re.search(r">\s*\d+\.000\s*<", results)                                    # no integer shown as a float
    assert "urbansound_nb" in (site/"index.html").read_text() and (site/"explanations.html").exists()


def test_every_exported_name_is_on_an_api_page(site):
    "Each module's reference page (nbdev's page name: the notebook's without its number) shows all of `__all__`."
    import importlib
    site = site[0]
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
def test_every_quarto_page_passes_the_browser_checks(quarto_site, reduced_study):
    """`site --check` of the Quarto site (conftest's SiteBuild.quarto): every page opened in Chromium, every chapter
    in its sidebar. The fallback's pages are checked by test_screenshots_and_check_from_the_command_line."""
    _, r = reduced_study.sites["quarto"].result()
    assert r.returncode == 0 and "every page is fine" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert {f"{nb}.html" for nb in NOTEBOOKS} <= {p.name for p in quarto_site.glob("*.html")}


def test_the_fallback_is_used_without_quarto(fallback):
    out, r = fallback
    assert r.returncode == 0 and "rendering with nbconvert" in r.stdout, r.stdout + r.stderr
    assert all((out/f"{nb}.html").exists() for nb in FALLBACK_CHAPTERS)


@needs_browser
def test_screenshots_and_check_from_the_command_line(fallback):
    out, r = fallback
    assert r.returncode == 0 and "every page is fine" in r.stdout, r.stdout + r.stderr
    shots = sorted((out.parent/"screenshots").glob("*.png"))
    assert {p.stem for p in shots} >= {*FALLBACK_CHAPTERS, "index", "results", "explanations", "registry"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in shots)


@pytest.mark.slow   # a JupyterLab server and a browser
@needs_browser
def test_jupyterlab_opens_a_chapter_as_a_notebook(tmp_path):
    cells = lab_opens_as_notebook("nbs/00_setup.py", screenshot=tmp_path/"lab.png")
    assert cells > 5 and (tmp_path/"lab.png").stat().st_size > 10_000


def test_the_fallback_has_a_runs_page_and_a_failed_build_leaves_it_as_it_was(fallback, reduced_run, tmp_path):
    out, r = fallback
    page = (out/"runs.html").read_text()
    assert "Test accuracy, run by run" in page and "other-run" in page and "its folder (no site built)" in page
    broken = tmp_path/"run"
    shutil.copytree(reduced_run/"results", broken/"results")
    shutil.copy(reduced_run/"00_setup.ipynb", broken)
    (broken/"results"/"01_broken.json").write_text("{half")          # a build that fails half-way
    with pytest.raises(Exception): build_site(broken, out, renderer="nbconvert")
    assert (out/"index.html").exists() and (out/"runs.html").read_text() == page
    assert not (out.parent/f".{out.name}.building").exists()
    with pytest.raises(ValueError, match="renderer must be 'quarto' or 'nbconvert'"):
        build_site(reduced_run, tmp_path/"x", renderer="mkdocs")

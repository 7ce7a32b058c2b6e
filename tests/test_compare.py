"""Runs side by side: two small synthetic runs made here, compared on the command line and on the site."""
import json
import subprocess

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow    # runs made with papermill here: a minute of work before the first test


def cli(venv_bin, *args, **kw):
    return subprocess.run([str(venv_bin/"urbansound-nb"), *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def two_runs(venv_bin, tmp_path_factory):
    "Chapters 00 and 03 on the synthetic data, twice: seed 0, then seed 1."
    base, cache = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("cache")
    for seed in (0, 1):
        r = cli(venv_bin, "run", "00", "03", "--dataset", "synthetic", "--run-dir", base/f"seed{seed}",
                "-p", "max_items", "100", "-p", "seed", seed, "-p", "cache_dir", cache)
        assert r.returncode == 0, r.stdout + r.stderr
    return base/"seed0", base/"seed1"


def snapshot(folder):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


def test_compare_lists_every_model_of_both_runs_and_the_parameter_that_differs(venv_bin, two_runs, tmp_path):
    a, b = two_runs
    before = snapshot(a.parent)
    r = cli(venv_bin, "compare", a, b, tmp_path)            # tmp_path: a folder that is not a run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parameters that differ:" in r.stdout and "seed" in r.stdout.split("parameters that differ:")[1]
    assert f"skipped: {tmp_path}: not a run directory" in r.stdout
    for model in ("majority", "logreg", "svm_rbf"):
        assert model in r.stdout, model
    assert "seed1: test vs first" in r.stdout
    doc = json.loads(cli(venv_bin, "compare", a, b, "--json").stdout)
    assert [run["label"] for run in doc["runs"]] == ["seed0", "seed1"] and "seed" in doc["parameters"]
    assert {row["model"] for row in doc["table"]} >= {"majority", "logreg", "svm_rbf"}
    csv = cli(venv_bin, "compare", a, b, "--csv").stdout.splitlines()
    assert csv[0].startswith("chapter,model,seed0: val") and len(csv) == 1 + len(doc["table"])
    assert snapshot(a.parent) == before                     # nothing written into the runs read


def test_a_run_with_other_data_or_missing_results_is_compared_with_a_warning(venv_bin, two_runs, tmp_path):
    import shutil
    a, b = two_runs
    c = tmp_path/"other"
    shutil.copytree(b, c)
    doc = json.loads((c/"results"/"00_setup.json").read_text())
    doc["entries"]["split"]["test_fold"] = 9
    doc["entries"]["dataset"]["classes"][0] = "kettle"
    (c/"results"/"00_setup.json").write_text(json.dumps(doc))
    (c/"results"/"03_baselines.json").unlink()
    r = cli(venv_bin, "compare", a, c)
    assert r.returncode == 0, r.stderr
    assert "differ in dataset or test fold" in r.stdout and "different class lists" in r.stdout
    assert "other has no results of 03_baselines" in r.stdout
    r = cli(venv_bin, "compare", tmp_path/"absent")
    assert r.returncode == 2 and "nothing to compare" in r.stderr and "Traceback" not in r.stderr


def test_the_site_has_a_runs_page(venv_bin, two_runs, tmp_path):
    a, b = two_runs
    r = cli(venv_bin, "site", "--run-dir", a, "--out", tmp_path/"site", "--renderer", "nbconvert", "--compare", b)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path/"site"/"runs.html").read_text()
    assert "Test accuracy, run by run" in page and "data:image/png;base64" in page and "Parameters that differ" in page
    assert "seed1" in page and "svm_rbf" in page and "its folder (no site built)" in page

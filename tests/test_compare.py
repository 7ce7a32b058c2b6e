"""Runs side by side: `urbansound-nb compare` on two run folders (notebook 90a compares them; here, the command and
the site's Runs page)."""
import json

import pytest
from conftest import in_process


def _run(folder, seed: int, svm: float):
    "A run folder as chapters 00 and 03 leave one: their results (seed `seed`), nothing else."
    from urbansound_nb.core import write_results
    setup = {"split": dict(train_folds=[1], val_fold=2, test_fold=3), "dataset": dict(classes=["a", "b"])}
    write_results(folder, "00_setup", setup, dataset="synthetic", params=dict(seed=seed, epochs=2))
    write_results(folder, "03_baselines", {"majority": dict(val_accuracy=0.3, test_accuracy=0.2, macro_f1=0.1),
                                           "svm_rbf": dict(val_accuracy=0.5, test_accuracy=svm, macro_f1=0.4)},
                  families=["chance", "engineered features"])
    return folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return _run(base/"seed0", 0, 0.40), _run(base/"seed1", 1, 0.45)


def snapshot(folder):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


def test_compare_lists_every_model_of_both_runs_and_the_parameter_that_differs(two_runs, tmp_path):
    a, b = two_runs
    before = snapshot(a.parent)
    r = in_process("compare", a, b, tmp_path)            # tmp_path: a folder that is not a run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parameters that differ:" in r.stdout and "seed" in r.stdout.split("parameters that differ:")[1]
    assert f"skipped: {tmp_path}: not a run directory" in r.stdout
    assert "majority" in r.stdout and "svm_rbf" in r.stdout and "seed1: test vs first" in r.stdout
    assert "svm_rbf (03) +5.0 points" in r.stdout
    doc = json.loads(in_process("compare", a, b, "--json").stdout)
    assert [run["label"] for run in doc["runs"]] == ["seed0", "seed1"] and "seed" in doc["parameters"]
    assert {row["model"] for row in doc["table"]} == {"majority", "svm_rbf"}
    csv = in_process("compare", a, b, "--csv").stdout.splitlines()
    assert csv[0].startswith("chapter,model,seed0: val") and len(csv) == 1 + len(doc["table"])
    assert snapshot(a.parent) == before                     # nothing written into the runs read
    r = in_process("compare", tmp_path/"absent")
    assert r.returncode == 2 and "nothing to compare" in r.stderr and "Traceback" not in r.stderr


def test_the_runs_page_puts_the_runs_side_by_side(two_runs, tmp_path):
    "The site's Runs page (the command `site --compare` is tested with the reduced study's site)."
    from urbansound_nb.reports import runs_html
    a, b = two_runs
    page = runs_html(a, [b], tmp_path/"site")
    assert "Test accuracy, run by run" in page and "data:image/png;base64" in page and "Parameters that differ" in page
    assert "seed1" in page and "svm_rbf" in page and "its folder (no site built)" in page
    alone = runs_html(a, [], tmp_path/"site")
    assert "Only this run" in alone and "Parameters that differ" not in alone

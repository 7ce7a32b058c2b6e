"""The papermill runner and its command line."""
import json
import subprocess
import time

import nbformat
import pytest
from conftest import ROOT

from urbansound_nb.runner import parse_value, select_notebooks


def cli(venv_bin, *args, timeout=900):
    return subprocess.run([str(venv_bin/"urbansound-nb"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_select_notebooks():
    assert [p.stem for p in select_notebooks(["00"], ROOT)] == ["00_setup"]
    assert [p.stem for p in select_notebooks(["00_setup.py"], ROOT)] == ["00_setup"]
    assert all(int(p.name[:2]) < 90 for p in select_notebooks(None, ROOT))
    with pytest.raises(SystemExit, match="no notebook"): select_notebooks(["42"], ROOT)


def test_parse_value():
    assert parse_value("[1,2]") == [1, 2] and parse_value("null") is None and parse_value("0.5") == 0.5


@pytest.mark.slow   # chapters run with papermill
def test_papermill_runs_setup_on_synthetic(venv_bin, tmp_path):
    r = cli(venv_bin, "run", "00", "--dataset", "synthetic", "--run-dir", tmp_path, "-p", "train_folds", "[1,2,3]",
            "-p", "val_fold", "4", "-p", "test_fold", "5", "-p", "max_items", "120")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path/"results"/"00_setup.json").read_text())
    assert res["entries"]["dataset"]["synthetic"] is True and res["entries"]["split"]["train_folds"] == [1, 2, 3]
    assert res["entries"]["dataset"]["n_clips"] == 120
    nb = nbformat.read(tmp_path/"00_setup.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "val_fold = 4" in injected[0].source
    assert "00_setup," in (tmp_path/"timings.csv").read_text()


def test_bad_fold_roles_stop_before_any_chapter(venv_bin, tmp_path):
    r = cli(venv_bin, "run", "00", "--dataset", "synthetic", "--run-dir", tmp_path,
            "-p", "val_fold", "3", "-p", "test_fold", "3")
    assert r.returncode == 2 and "00_setup" in r.stderr and "must not see the test fold" in r.stderr
    assert not (tmp_path/"00_setup.ipynb").exists()


def test_bad_metadata_stops_before_any_chapter(venv_bin, tmp_path):
    "Metadata with fold 11: one message naming the row and the value, exit status 2, before chapter 00 runs."
    import pandas as pd
    from conftest import write_official_layout
    write_official_layout(tmp_path/"data")
    csv = tmp_path/"data"/"metadata"/"UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    meta.loc[1, "fold"] = 11
    meta.to_csv(csv, index=False)
    r = cli(venv_bin, "run", "00", "--dataset", tmp_path/"data", "--run-dir", tmp_path/"run")
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path/"run"/"00_setup.ipynb").exists()
    assert "row 1" in r.stderr and "fold 11 is not one of 1-10" in r.stderr


def test_unknown_parameter_is_refused(venv_bin, tmp_path):
    r = cli(venv_bin, "run", "00", "--run-dir", tmp_path, "-p", "epochz", "3")
    assert r.returncode != 0 and "unknown parameter(s) ['epochz']" in r.stderr


def test_hub_offline_fails_within_seconds(venv_bin, tmp_path):
    t = time.time()
    r = cli(venv_bin, "run", "00", "--run-dir", tmp_path)
    assert r.returncode == 2 and time.time() - t < 60 and "Traceback" not in r.stderr
    assert "Cannot load UrbanSound8K from the hub" in r.stderr and "URBANSOUND_DATASET" in r.stderr


@pytest.mark.slow   # chapters run with papermill
@pytest.mark.parametrize("which", ["mini", "originals"])
def test_runner_on_shared_data(venv_bin, tmp_path, which, request):
    path = request.getfixturevalue(which)
    r = cli(venv_bin, "run", "00", "--dataset", path, "--run-dir", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path/"results"/"00_setup.json").read_text())
    assert res["entries"]["dataset"]["n_clips"] == {"mini": 2148, "originals": 34}[which]


@pytest.mark.slow   # chapters run with papermill
def test_run_streams_each_chapters_output(venv_bin, tmp_path):
    "What a chapter prints, and its progress bars, reach the terminal while it runs; a rerun says how long it took."
    run = ("--dataset", "synthetic", "--run-dir", tmp_path, "-p", "max_items", "40",
           "-p", "cache_dir", tmp_path/"cache")
    r = cli(venv_bin, "run", "00", "02", *run, "-p", "bench_items", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device: " in r.stdout                                      # 00's own print
    assert "log-mel logmel-" in r.stderr and "clip/s" in r.stderr       # 02's progress bar
    r2 = cli(venv_bin, "run", "00", *run)                              # one chapter again shows it
    assert "min last time)" in r2.stdout


@pytest.mark.slow   # every chapter's parameters, each refused in a run of its own
def test_every_chapter_parameter_is_checked_before_the_first_chapter(venv_bin, tmp_path):
    "A bad value of chapter 03's own parameter stops the run before chapter 00 starts: one line, exit status 2."
    r = cli(venv_bin, "run", "--dataset", "synthetic", "--run-dir", tmp_path/"run", "-p", "n_mfcc", "abc")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "03_baselines" in r.stderr and "'n_mfcc'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path/"run"/"00_setup.ipynb").exists()
    r = cli(venv_bin, "run", "--dataset", "synthetic", "--run-dir", tmp_path/"run", "-p", "cv_models", "[resnet, nope]")
    assert r.returncode == 2 and "'cv_models'" in r.stderr and "nope" in r.stderr, r.stderr


def test_an_unusable_run_directory_is_one_line(venv_bin, tmp_path):
    (tmp_path/"file").write_text("x")
    r = cli(venv_bin, "run", "00", "--dataset", "synthetic", "--run-dir", tmp_path/"file")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: run directory {tmp_path/'file'}: exists and is not a directory"

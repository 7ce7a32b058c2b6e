"""The papermill runner and its command line."""
import subprocess
import time

import pytest
from conftest import ROOT, in_process

from urbansound_nb.runner import parse_value, select_notebooks

OFFLINE = {"HF_HUB_OFFLINE": "1"}


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


def test_bad_fold_roles_stop_before_any_chapter(tmp_path):
    r = in_process("run", "00", "--dataset", "synthetic", "--run-dir", tmp_path,
            "-p", "val_fold", "3", "-p", "test_fold", "3")
    assert r.returncode == 2 and "00_setup" in r.stderr and "must not see the test fold" in r.stderr
    assert not (tmp_path/"00_setup.ipynb").exists()


def test_bad_metadata_stops_before_any_chapter(tmp_path):
    "Metadata with fold 11: one message naming the row and the value, exit status 2, before chapter 00 runs."
    import pandas as pd
    from conftest import write_official_layout
    write_official_layout(tmp_path/"data")
    csv = tmp_path/"data"/"metadata"/"UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    meta.loc[1, "fold"] = 11
    meta.to_csv(csv, index=False)
    r = in_process("run", "00", "--dataset", tmp_path/"data", "--run-dir", tmp_path/"run")
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path/"run"/"00_setup.ipynb").exists()
    assert "row 1" in r.stderr and "fold 11 is not one of 1-10" in r.stderr


def test_unknown_parameter_is_refused(tmp_path):
    r = in_process("run", "00", "--run-dir", tmp_path, "-p", "epochz", "3")
    assert r.returncode != 0 and "unknown parameter(s) ['epochz']" in r.stderr


def test_hub_offline_fails_within_seconds(tmp_path):
    t = time.time()
    r = in_process("run", "00", "--run-dir", tmp_path, env=OFFLINE)
    assert r.returncode == 2 and time.time() - t < 60 and "Traceback" not in r.stderr
    assert "Cannot load UrbanSound8K from the hub" in r.stderr and "URBANSOUND_DATASET" in r.stderr


def test_every_chapter_parameter_is_checked_before_the_first_chapter(tmp_path):
    "A bad shared or chapter's own parameter stops the run before chapter 00 starts: one line, exit status 2."
    for name, value, said in (("n_mfcc", "abc", "'n_mfcc'"), ("long_clips", "1", "10_deployment")):
        r = in_process("run", "--dataset", "synthetic", "--run-dir", tmp_path/"run", "-p", name, value)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
    assert not (tmp_path/"run"/"00_setup.ipynb").exists()


def test_an_unusable_run_directory_is_one_line(tmp_path):
    (tmp_path/"file").write_text("x")
    r = in_process("run", "00", "--dataset", "synthetic", "--run-dir", tmp_path/"file")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: run directory {tmp_path/'file'}: exists and is not a directory"

"""The whole study, reduced (few epochs, seeds and items), on the real mini data: what only a whole run can show."""
import json
import subprocess

import numpy as np
from conftest import CLIPS, NOTEBOOKS, ROOT, TOY_MODELS

from urbansound_nb.registry import list_models
from urbansound_nb.selection import choose_model

result = lambda run, nb: json.loads((run/"results"/f"{nb}.json").read_text())


def test_every_notebook_ran_and_wrote_results(reduced_run):
    for nb in NOTEBOOKS:
        assert (reduced_run/f"{nb}.ipynb").exists(), nb
        assert (reduced_run/"results"/f"{nb}.json").exists(), nb
    timings = (reduced_run/"timings.csv").read_text()
    assert all(f"{nb}," in timings for nb in NOTEBOOKS)
    import nbformat  # papermill's parameters, injected
    injected = [c for c in nbformat.read(reduced_run/"04_cnn.ipynb", as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "epochs = 2" in injected[0].source and "train_fraction = 0.5" in injected[0].source


def test_each_chapters_output_reaches_the_terminal_while_it_runs(reduced_study):
    "What a chapter prints and its progress bars stream to the run's output (the reduced study's log) as it runs."
    log = (reduced_study.root/"reduced-run.log").read_text()
    assert "[1/11] 00_setup ..." in log and "device: " in log                          # the runner's line, 00's print
    assert "log-mel logmel-" in log and "clip/s" in log                               # 02's progress bar
    assert log.index("device: ") < log.index("00_setup: ") < log.index("[2/11] 01_eda")  # as it comes, in order


def test_every_model_is_fitted_compared_and_cross_validated(reduced_run):
    "The registry's every model: fitted by its family's chapter, a candidate of chapter 06, and in chapter 09."
    families = {nb: result(reduced_run, nb) for nb in ("03_baselines", "04_cnn", "05_transfer")}
    fitted = [m for doc in families.values() for m in doc["entries"]]
    assert sorted(fitted) == sorted([*list_models(), *TOY_MODELS]) and len(fitted) == len(set(fitted))
    for doc in families.values():
        for name, e in doc["entries"].items():
            assert e["family"] in doc["families"] and len(e["val_rotations"]) == 2, name
            assert e["val_rotations"][0] == e["val_accuracy"] and e["n_val_total"] > e["n_val"], name
            assert (reduced_run/"models"/f"{name}.pt").exists() == (name != "knn"), name   # knn: no network form
    assert set(result(reduced_run, "06_choice")["entries"]) == set(fitted)
    cv = result(reduced_run, "09_cross_validation")
    assert cv["summary"]["folds"] == 3 and set(cv["summary"]["models"]) == set(fitted)
    assert set(cv["summary"]["differences"]["resnet"]["per_fold"]) == {"fold1", "fold2", "fold3"}   # paired


def test_shared_parameters_shape_every_chapter(reduced_run):
    "`train_fraction` 0.5 halves every model's training clips, in chapters 03-05 and 09 alike; seeds are averaged."
    setup = result(reduced_run, "00_setup")["entries"]["split"]
    cnn, cv = result(reduced_run, "04_cnn"), result(reduced_run, "09_cross_validation")["entries"]
    for nb in ("03_baselines", "04_cnn", "05_transfer"):
        for name, e in result(reduced_run, nb)["entries"].items():
            assert 0.3 * setup["n_train"] < e["n_train"] < 0.7 * setup["n_train"], (nb, name)
    assert cv["logreg/fold3"]["n_train"] == result(reduced_run, "03_baselines")["entries"]["logreg"]["n_train"]
    assert cnn["entries"]["resnet"]["params"]["resnet_seeds"] == 2 and len(cnn["entries"]["resnet"]["best_epoch"]) == 2


def test_the_choice_follows_the_rule_and_its_refit_is_served(reduced_run):
    "Chapter 06 chooses what the rule gives on the family chapters' own figures, refits it and serves the refit."
    entries = {m: e for nb in ("03_baselines", "04_cnn", "05_transfer")
               for m, e in result(reduced_run, nb)["entries"].items()}
    import pandas as pd
    table = pd.DataFrame({m: {k: e.get(k) for k in ("val_mean", "n_val_total", "parameters", "ensemble")}
                          for m, e in entries.items()}).T
    choice = result(reduced_run, "06_choice")
    assert choice["chosen"] == choose_model(table)[0] and "one standard error" in choice["rule"]
    served = choice["served"]
    assert served["refit"] and served["checkpoint"] == f"models/{choice['chosen']}.refit.pt"
    assert served["train_folds"] == [1, 2] and served["n_train"] > entries[choice["chosen"]]["n_train"]
    assert (reduced_run/served["checkpoint"]).exists()


def test_predict_run_dir_scores_the_test_fold_as_the_refit_did(reduced_run, reduced_data, venv_bin, tmp_path):
    "`predict RUN_DIR` on the test fold's own files gives the served model's test accuracy: the choice is served."
    from urbansound_nb.data import load_urbansound
    served = result(reduced_run, "06_choice")["served"]
    rows = [r for r in load_urbansound(str(reduced_data[0])).to_list()
            if r["fold"] == 3 and r["slice_file_name"] not in reduced_data[1].values()]
    files, labels = [], []
    for r in rows:
        files.append(tmp_path/r["slice_file_name"])
        files[-1].write_bytes(r["audio"]["bytes"])
        labels.append(r["class"])
    out = subprocess.run([str(venv_bin/"urbansound-nb"), "predict", str(reduced_run), *map(str, files), "--json",
                          "-k", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    said = [json.loads(line)["predictions"][0]["class"] for line in out.stdout.splitlines()]
    accuracy = float(np.mean([s == t for s, t in zip(said, labels)]))
    # the clips' own files through predict's windows: within a few clips of the cached features' figure
    assert len(said) == served["n_test"] and abs(accuracy - served["test_accuracy"]) <= 3.5 / len(said)


def test_damaged_clips_are_left_out_and_named_in_every_results_file(reduced_run, reduced_data):
    "A corrupt, a too-short and a NaN clip: every chapter finishes and names them (01 reads headers: not the NaN one)."
    damaged = reduced_data[1]
    for nb in (n for n in NOTEBOOKS[1:] if n != "06_choice"):    # 06 reads the other chapters' results, no clip
        doc = result(reduced_run, nb)
        named = {c["slice_file_name"] for c in doc["clips_skipped"]}
        expected = {damaged["corrupt"], damaged["too_short"]} | ({damaged["nan"]} if nb != "01_eda" else set())
        assert named == expected, (nb, named)
        assert doc["clips_used"] == CLIPS - len(expected), nb


def test_strict_audio_stops_at_the_first_chapter_that_meets_a_damaged_clip(reduced_data, venv_bin, tmp_path):
    r = subprocess.run([str(venv_bin/"urbansound-nb"), "run", "01", "02", "--dataset", str(reduced_data[0]),
                        "--run-dir", str(tmp_path/"run"), "-p", "strict_audio", "true", "-p", "cache_dir",
                        str(tmp_path/"cache")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "01_eda failed" in r.stderr and f"2 of {CLIPS} clips cannot be decoded" in r.stderr
    assert reduced_data[1]["corrupt"] in r.stderr or reduced_data[1]["too_short"] in r.stderr   # the first named
    assert not (tmp_path/"run"/"02_preprocessing.ipynb").exists()


def test_a_training_two_chapters_need_is_trained_once(reduced_run):
    "Chapter 09's cells for the study's test fold are chapters 04's and 05's; the store reads them back."
    cells = lambda nb: {t["cell"]: t["status"] for t in result(reduced_run, nb)["trainings"]}
    earlier = {**cells("04_cnn"), **cells("05_transfer")}
    shared = set(earlier) & set(cells("09_cross_validation"))
    assert {c.split("-")[0] for c in shared} == {"small_cnn", "resnet", "efficientat", "wide_shallow"}
    assert all(cells("09_cross_validation")[c] == "reused" for c in shared)
    assert all(c.split("-")[1:3] == ["train1", "val2"] for c in shared)                   # the study's split
    rows = (reduced_run/"timings.csv").read_text().splitlines()
    assert rows[0] == "notebook,seconds,status,cell"
    assert any(r.startswith("09_cross_validation,") and ",reused,efficientat-train1-val2-" in r for r in rows)


def test_the_plan_knows_every_training_the_run_made(reduced_study, venv_bin):
    "`run --plan` of the same run afterwards: every training it lists is held by the store, none new."
    r = subprocess.run([str(venv_bin/"urbansound-nb"), "run", "--plan", *reduced_study.args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=reduced_study.env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = next(line for line in r.stdout.splitlines() if line.startswith("This run:"))
    assert "(0 new," in summary and "held by the store" in summary, summary
    assert "The full dataset (8,732 clips, 10 folds)" in r.stdout

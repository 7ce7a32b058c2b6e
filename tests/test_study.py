"""The whole study, reduced (few epochs, seeds and items), on the real mini data: the notebooks, results, predict."""
import json
import subprocess

import pytest
from conftest import NOTEBOOKS, ROOT


def test_every_notebook_ran_and_wrote_results(reduced_run):
    for nb in NOTEBOOKS:
        assert (reduced_run/f"{nb}.ipynb").exists(), nb
        assert (reduced_run/"results"/f"{nb}.json").exists(), nb
    timings = (reduced_run/"timings.csv").read_text()
    assert all(f"{nb}," in timings for nb in NOTEBOOKS)


def test_results_follow_the_convention(reduced_run):
    keys = {"val_accuracy", "test_accuracy", "macro_f1", "per_class_accuracy", "n_train", "n_val", "n_test", "seconds"}
    for nb in ("03_baselines", "04_cnn", "07_augmentation"):
        entries = json.loads((reduced_run/"results"/f"{nb}.json").read_text())["entries"]
        for name, e in entries.items(): assert keys <= set(e), (nb, name, keys - set(e))
    cnn = json.loads((reduced_run/"results"/"04_cnn.json").read_text())
    assert cnn["best_model"] in cnn["entries"] and {"small_cnn", "resnet"} <= set(cnn["entries"])
    assert all("parameters" in e and "epochs" in e for e in cnn["entries"].values())
    assert cnn["entries"]["resnet"]["seeds"] == [0, 1]                # UrbanResNet: two seeds, averaged
    for name in cnn["entries"]: assert (reduced_run/"models"/f"{name}.pt").exists()
    setup = json.loads((reduced_run/"results"/"00_setup.json").read_text())["entries"]["split"]
    # half the recordings
    assert cnn["split"]["train_fraction"] == 0.5 and 0 < cnn["entries"]["resnet"]["n_train"] < setup["n_train"]
    transfer = json.loads((reduced_run/"results"/"05_transfer.json").read_text())
    compared = {r["model"] for r in transfer["comparison"]}
    assert {"probe", "finetune", "probe_finetune"} <= set(transfer["entries"]) and transfer["best_model"] in compared
    assert {"majority", "logreg", "svm_rbf", "small_cnn", "resnet", "probe", "finetune", "probe_finetune"} == compared
    for name in ("probe", "finetune", "probe_finetune"): assert (reduced_run/"models"/f"{name}.pt").exists()
    cv = json.loads((reduced_run/"results"/"08_cross_validation.json").read_text())
    every_family = {"logreg", "svm_rbf", "small_cnn", "resnet", "probe", "finetune", "probe_finetune"}
    assert cv["summary"]["folds"] == 3 and set(cv["summary"]["models"]) == every_family   # 08's default
    # paired on the same test folds
    assert set(cv["summary"]["differences"]["resnet"]["per_fold"]) == {"fold1", "fold2", "fold3"}


def one_file_per_format(originals) -> list[str]:
    "The first original file of each (rate, channels, encoding): 12 of the 34 (ONNX's test reads all 34)."
    import soundfile as sf
    first = {}
    for path in sorted((originals/"audio").rglob("*.wav")):
        info = sf.info(str(path))
        first.setdefault((info.samplerate, info.channels, info.subtype), str(path))
    return list(first.values())


@pytest.mark.parametrize("model", ["resnet", "finetune"])
def test_predict_classifies_every_original_format(reduced_run, originals, venv_bin, tmp_path, model):
    files = one_file_per_format(originals)
    assert len(files) >= 12                                            # 8-bit to float, 11 to 96 kHz, mono and stereo
    (tmp_path/"empty.wav").write_bytes(b"")
    ck = reduced_run/"models"/f"{model}.pt"
    cmd = [str(venv_bin/"urbansound-nb"), "predict", str(ck), *files, str(tmp_path/"empty.wav"), "--json", "-k", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == len(files) + 1 and r.returncode == 1          # the empty file fails, the others are classified
    assert all(rec["error"] is None and len(rec["predictions"]) == 3 for rec in recs[:-1])
    assert "empty" in recs[-1]["error"] and recs[-1]["predictions"] == []
    assert abs(sum(p["probability"] for p in recs[0]["predictions"])) <= 1.0001


def test_selection_is_rotated_and_stated(reduced_run):
    "Every choice rests on validation rotated over the two non-test folds; chapter 05 states its rule and its reason."
    for nb in ("03_baselines", "04_cnn", "05_transfer"):
        doc = json.loads((reduced_run/"results"/f"{nb}.json").read_text())
        for name, e in doc["entries"].items():
            if name == "random": continue
            assert len(e["val_rotations"]) == 2 and e["val_rotations"][0] == e["val_accuracy"], (nb, name)
            assert abs(e["val_mean"] - sum(e["val_rotations"]) / 2) < 1e-9 and e["n_val_total"] > e["n_val"]
    transfer = json.loads((reduced_run/"results"/"05_transfer.json").read_text())
    assert [r["val_fold"] for r in transfer["selection"]["rotations"]] == [2, 1]
    assert "one standard error" in transfer["selection"]["rule"]
    assert transfer["best_model"] in transfer["selection"]["reason"]
    chosen = {r["model"]: r for r in transfer["comparison"]}[transfer["best_model"]]
    assert chosen["tied"]
    if transfer["best_model"] in ("probe", "finetune", "probe_finetune"):    # refit on every non-test fold and served
        refit = transfer["refit"]
        assert transfer["best_checkpoint"] == refit["checkpoint"] == f"models/{transfer['best_model']}.refit.pt"
        assert refit["train_folds"] == [1, 2] and refit["n_train"] > transfer["entries"]["probe"]["n_train"]
        assert (reduced_run/refit["checkpoint"]).exists() and 0 <= refit["test_accuracy"] <= 1


def test_predict_serves_the_chosen_model(reduced_run, originals, venv_bin):
    "`predict RUN_DIR` uses the checkpoint of the model chapter 05 chose, with its own front end and padding."
    transfer = json.loads((reduced_run/"results"/"05_transfer.json").read_text())
    clip = next((originals/"audio").rglob("*.wav"))
    r = subprocess.run([str(venv_bin/"urbansound-nb"), "predict", str(reduced_run), str(clip), "--json"],
                       capture_output=True, text=True, timeout=600)
    if transfer["best_checkpoint"] is None:                      # a classical model chosen: nothing to serve
        assert r.returncode == 2 and "has no checkpoint" in r.stderr
        return
    direct = subprocess.run([str(venv_bin/"urbansound-nb"), "predict", str(reduced_run/transfer["best_checkpoint"]),
                             str(clip), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    first = lambda run: json.loads(run.stdout.splitlines()[0])["predictions"]
    assert first(r) == first(direct)


def test_damaged_clips_are_left_out_and_named_in_every_results_file(reduced_run, reduced_data):
    "A corrupt, a too-short and a NaN clip: every chapter finishes and names them (01 reads headers: not the NaN one)."
    damaged = reduced_data[1]
    for nb in NOTEBOOKS[1:]:
        doc = json.loads((reduced_run/"results"/f"{nb}.json").read_text())
        named = {c["slice_file_name"] for c in doc["clips_skipped"]}
        expected = {damaged["corrupt"], damaged["too_short"]} | ({damaged["nan"]} if nb != "01_eda" else set())
        assert named == expected, (nb, named)
        assert doc["clips_used"] == 240 - len(expected), nb


def test_strict_audio_stops_at_the_first_chapter_that_meets_a_damaged_clip(reduced_data, venv_bin, tmp_path):
    r = subprocess.run([str(venv_bin/"urbansound-nb"), "run", "01", "02", "--dataset", str(reduced_data[0]),
                        "--run-dir", str(tmp_path/"run"), "-p", "strict_audio", "true", "-p", "cache_dir",
                        str(tmp_path/"cache")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "01_eda failed" in r.stderr and "2 of 240 clips cannot be decoded" in r.stderr
    assert reduced_data[1]["corrupt"] in r.stderr or reduced_data[1]["too_short"] in r.stderr   # the first named
    assert not (tmp_path/"run"/"02_preprocessing.ipynb").exists()


def test_a_training_two_chapters_need_is_trained_once(reduced_run):
    "Chapter 08's fine-tuning for the study's test fold is chapter 05's; the store reads it back, timings.csv says so."
    tuned = lambda nb: {t["cell"]: t["status"] for t in json.loads(
        (reduced_run/"results"/f"{nb}.json").read_text())["trainings"] if t["cell"].startswith("efficientat-")}
    shared = set(tuned("05_transfer")) & set(tuned("08_cross_validation"))
    assert shared and all(tuned("08_cross_validation")[c] == "reused" for c in shared)
    assert any(c.startswith("efficientat-train1-val2-") for c in shared)          # the study's split
    rows = (reduced_run/"timings.csv").read_text().splitlines()
    assert rows[0] == "notebook,seconds,status,cell"
    assert any(r.startswith("08_cross_validation,") and ",reused,efficientat-train1-val2-" in r for r in rows)

"""A new model is one registry entry and its own code: the two toy models of `toy_models.py`, which a plugin alone
registers, are trained, compared, cross-validated and served by the reduced study with no edit anywhere else; and a
shared parameter shapes its family in every chapter that fits it."""
import json
import shutil
import subprocess

import numpy as np
import soundfile as sf
from conftest import ROOT, TOY_MODELS

from urbansound_nb.params import SHARED

result = lambda run, nb: json.loads((run/"results"/f"{nb}.json").read_text())["entries"]


def test_the_plugins_models_are_trained_compared_and_cross_validated(reduced_run):
    assert "knn" in result(reduced_run, "03_baselines") and "wide_shallow" in result(reduced_run, "04_cnn")
    assert set(TOY_MODELS) <= set(result(reduced_run, "06_choice"))                       # candidates of the choice
    assert {f"{m}/fold{f}" for m in TOY_MODELS for f in (1, 2, 3)} <= set(result(reduced_run, "09_cross_validation"))
    assert (reduced_run/"models"/"wide_shallow.pt").exists() and not (reduced_run/"models"/"knn.pt").exists()


def test_a_shared_parameter_shapes_its_family_in_every_chapter(reduced_run):
    "`-p n_mfcc 20` reaches chapter 03's models and chapter 09's alike: 80 statistics a clip (20 MFCCs, deltas)."
    baselines, cv = result(reduced_run, "03_baselines"), result(reduced_run, "09_cross_validation")
    for entry in (baselines["logreg"], baselines["knn"], baselines["svm_rbf"], cv["logreg/fold3"], cv["knn/fold1"]):
        assert entry["params"]["n_mfcc"] == 20 and entry["n_features"] == 80
    assert cv["logreg/fold3"]["test_accuracy"] == baselines["logreg"]["test_accuracy"]     # one fit, read back


def test_the_plugins_cnn_is_refit_and_served_when_chosen(reduced_study, venv_bin, tmp_path):
    """Chapter 06 again, on a copy of the run (less its site, which may be rendering), choosing among the toy CNN
    alone: it is refit and `predict` serves it."""
    run = tmp_path/"run"
    site = shutil.ignore_patterns("site", ".site.building", "_quarto_stage", "screenshots")
    shutil.copytree(reduced_study.run, run, ignore=site)
    args = [*reduced_study.args[:2], "--run-dir", str(run)]
    for k in range(4, len(reduced_study.args), 3):          # the shared parameters alone: 06 declares no others
        if reduced_study.args[k + 1] in SHARED: args += reduced_study.args[k:k + 3]
    r = subprocess.run([str(venv_bin/"urbansound-nb"), "run", "06", *args, "-p", "models", "[wide_shallow]"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=reduced_study.env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "min last time)" in r.stdout                              # the run says how long the chapter took before
    served = json.loads((run/"results"/"06_choice.json").read_text())["served"]
    assert served["model"] == "wide_shallow" and served["refit"] and served["checkpoint"].endswith(".refit.pt")
    sf.write(tmp_path/"clip.wav", (0.1 * np.random.default_rng(0).standard_normal(22050 * 2)).astype(np.float32),
             22050)
    said = subprocess.run([str(venv_bin/"urbansound-nb"), "predict", str(run), str(tmp_path/"clip.wav"), "--json"],
                          capture_output=True, text=True, timeout=600, env=reduced_study.env)
    assert said.returncode == 0 and json.loads(said.stdout)["error"] is None, said.stderr[-2000:]
    assert served["test_accuracy"] is not None and len(json.loads(said.stdout)["predictions"]) == 3

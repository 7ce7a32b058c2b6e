"""The study's model as one ONNX file: exported by chapter 09, served by `predict` without torch (in this venv and in
a fresh one holding only the `[onnx]` extra's dependencies), a timeline of a long file, and models that are refused."""
import json
import subprocess
import sys
import venv

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, in_process


def cli(venv_bin, *args, timeout=600):
    return subprocess.run([str(venv_bin/"urbansound-nb"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


NO_TORCH = ("import sys; from urbansound_nb.cli import main; status = main(sys.argv[1:]); "
            "loaded = [m for m in ('torch', 'torchaudio', 'torchvision') if m in sys.modules]; "
            "print('imported:', loaded, file=sys.stderr); sys.exit(status if not loaded else 3)")


def test_onnx_predict_answers_every_original_file_like_torch_without_importing_torch(reduced_run, originals):
    "Every original format, top-1 as the torch path gives it; torch, torchaudio and torchvision never imported."
    model = reduced_run/"models"/"model.onnx"
    files = sorted(str(p) for p in (originals/"audio").rglob("*.wav"))
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", str(model), *files, "--json", "-k", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "imported: []" in r.stderr
    ours = [json.loads(line) for line in r.stdout.splitlines()]
    theirs = subprocess.run([str(ROOT/".venv"/"bin"/"urbansound-nb") if (ROOT/".venv").is_dir() else "urbansound-nb",
                             "predict", str(reduced_run), *files, "--json", "-k", "1"], capture_output=True, text=True,
                            timeout=600)
    theirs = [json.loads(line) for line in theirs.stdout.splitlines()]
    assert len(ours) == len(files) and all(rec["error"] is None for rec in ours)
    same = sum(a["predictions"][0]["class"] == b["predictions"][0]["class"] for a, b in zip(ours, theirs))
    assert same == len(files)
    doc = json.loads((reduced_run/"results"/"10_deployment.json").read_text())
    check = doc["parity"]
    assert check["max_probability_difference"] < 1e-4
    assert check["top1_agree"] == check["answers_agree"] == check["files"]


def test_a_timeline_of_a_long_recording(reduced_run, venv_bin, tmp_path):
    rate = 32000
    rng = np.random.default_rng(0)
    sf.write(tmp_path/"long.wav", (0.1 * rng.standard_normal(rate * 75)).astype(np.float32), rate)  # streamed
    r = cli(venv_bin, "predict", reduced_run/"models"/"model.onnx", tmp_path/"long.wav", "--timeline",
            tmp_path/"t.csv", "--plot", tmp_path/"t.png")
    assert r.returncode == 0, r.stderr
    rows = (tmp_path/"t.csv").read_text().splitlines()
    assert rows[0].startswith("start,end,") and len(rows) == 1 + 37     # 75 s in 4 s windows every 2 s
    assert (tmp_path/"t.segments.csv").read_text().startswith("start,end,class,mean_probability")
    assert (tmp_path/"t.png").stat().st_size > 10_000
    r = cli(venv_bin, "predict", reduced_run/"models"/"model.onnx", tmp_path/"long.wav", tmp_path/"long.wav",
            "--timeline", tmp_path/"t.json")
    assert r.returncode == 2 and "one file" in r.stderr
    # with the truth, scored by sed_eval; the rule is the one chapter 10 chose and the file carries
    (tmp_path/"truth.csv").write_text("start,end,class\n10.0,20.0,siren\n")
    r = cli(venv_bin, "predict", reduced_run/"models"/"model.onnx", tmp_path/"long.wav", "--timeline",
            tmp_path/"t.json", "--truth", tmp_path/"truth.csv", "--json")
    assert r.returncode == 0 and "segment-based F1" in r.stderr, r.stderr
    scores = json.loads(r.stdout)["timeline_scores"]
    assert scores["events"] == 1 and 0 <= scores["segment_f1"] <= 1 and 0 <= scores["event_f1"] <= 1
    chosen = json.loads((reduced_run/"results"/"10_deployment.json").read_text())["timeline"]["rule"]
    assert json.loads((tmp_path/"t.json").read_text())["rule"] == chosen
    (tmp_path/"truth.csv").write_text("start,end,class\n10.0,20.0,helicopter\n")
    r = cli(venv_bin, "predict", reduced_run/"models"/"model.onnx", tmp_path/"long.wav", "--truth",
            tmp_path/"truth.csv")
    assert r.returncode == 2 and "'helicopter' is not one of the model's classes" in r.stderr


def test_the_exported_file_carries_calibration_rules_and_its_card(reduced_run):
    "Chapter 06's temperature and threshold, chapter 10's timeline rule and the card: in the checkpoint and the file."
    import onnx

    from urbansound_nb.core import read_choice
    from urbansound_nb.models import read_checkpoint
    served = read_choice(reduced_run)
    ck = read_checkpoint(reduced_run/served["checkpoint"])
    cal = served["calibration"]
    assert ck["calibration"] == dict(temperature=cal["temperature"], rejection=cal["rejection"])
    assert 0 < cal["temperature"] < 20 and 0 <= cal["ece_after"] <= 1 and 0 < cal["test_answered"] <= 1
    meta = {p.key: p.value for p in onnx.load(str(reduced_run/"models"/"model.onnx")).metadata_props}
    assert json.loads(meta["rejection"]) == cal["rejection"] and float(meta["temperature"]) == cal["temperature"]
    assert json.loads(meta["timeline_rule"]) == ck["timeline_rule"]
    card = (reduced_run/"models"/"model.md").read_text()
    assert meta["model_card"] == card and meta["model_card_file"] == "model.md"
    assert f"# Model card: {served['model']}" in card and f"Accuracy {100 * served['test_accuracy']:.1f}%" in card
    if cal.get("others_reported"):     # the shared data's other sounds: chosen on one half of their kinds, reported
        kinds = cal["other_kinds"]        # on the other
        assert kinds["choose"] and kinds["report"] and not set(kinds["choose"]) & set(kinds["report"])


def _tiny_onnx(path, metadata, inputs=(("batch", "samples"),), opset=18):
    import onnx
    from onnx import TensorProto, helper
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(s)) for i, s in enumerate(inputs)]
    out = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])
    nodes = [helper.make_node("ReduceMean", ["x0", "axes"], ["m"], keepdims=1),
             helper.make_node("Concat", ["m", "m"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", ins, [out], [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for k, v in metadata.items(): model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


GOOD = dict(urbansound_nb="0", classes='["a", "b"]', sample_rate="8000", clip_seconds="1.0", min_samples="64",
            windows="half-overlapping")


def test_a_model_that_is_not_the_studys_is_one_line_and_exit_2(tmp_path):
    "The command's side of a refused model (notebook 06d says why each kind is refused): one line, exit status 2."
    model = tmp_path/"junk.onnx"
    model.write_bytes(b"not a model at all")
    sf.write(tmp_path/"clip.wav", np.full(8000, 0.1, np.float32), 8000)
    r = in_process("predict", model, tmp_path/"clip.wav")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not an ONNX model" in r.stderr and model.name in r.stderr


def test_bad_audio_files_are_reported_and_the_others_classified(tmp_path):
    _tiny_onnx(tmp_path/"m.onnx", GOOD)
    sf.write(tmp_path/"clip.wav", np.full(8000, 0.1, np.float32), 8000)
    (tmp_path/"empty.wav").write_bytes(b"")
    r = in_process("predict", tmp_path/"m.onnx", tmp_path/"empty.wav", tmp_path/"clip.wav", "--json")
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1 and "empty" in recs[0]["error"] and recs[1]["error"] is None


def test_predict_says_unknown_under_the_files_threshold_and_obeys_threshold_and_no_reject(tmp_path):
    "The rule an ONNX file carries declines; `--threshold` replaces its threshold, `--no-reject` turns it off."
    _tiny_onnx(tmp_path/"m.onnx", dict(GOOD, rejection='{"score": "max_probability", "threshold": 0.5}'))
    sf.write(tmp_path/"clip.wav", np.full(8000, 0.3, np.float32), 8000)     # the tiny graph says 0.3 for each class
    said = lambda *extra: [json.loads(line)["answer"] for line in
                           in_process("predict", tmp_path/"m.onnx", tmp_path/"clip.wav", "--json", *extra)
                           .stdout.splitlines()]
    assert (said(), said("--threshold", "0.2"), said("--no-reject")) == (["unknown"], ["a"], ["a"])
    r = in_process("predict", tmp_path/"m.onnx", tmp_path/"clip.wav", "--threshold", "nan")
    assert r.returncode == 2 and "--threshold must be a finite number" in r.stderr


@pytest.mark.slow      # a pip install of the extra: `make test` only
def test_a_fresh_venv_with_only_the_onnx_extra_runs_predict(tmp_path):
    """`pip install --no-deps` of the package and the `[onnx]` extra's own dependencies: nothing else is needed to
    decode, resample, window and classify (a tiny graph: the study's own file is checked against torch above)."""
    import tomllib
    extra = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    venv.create(tmp_path/"small", with_pip=True)
    pip = [str(tmp_path/"small"/"bin"/"python"), "-m", "pip", "install", "--quiet"]
    r = subprocess.run([*pip, *extra], capture_output=True, text=True, timeout=600)
    if r.returncode != 0: pytest.skip(f"cannot install {extra} here: {r.stderr.strip().splitlines()[-1:]}")
    r = subprocess.run([*pip, "--no-deps", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    sf.write(tmp_path/"clip.wav", (0.1 * np.random.default_rng(0).standard_normal(44100 * 3)).astype(np.float32), 44100)
    _tiny_onnx(tmp_path/"m.onnx", GOOD)
    r = subprocess.run([str(tmp_path/"small"/"bin"/"urbansound-nb"), "predict", str(tmp_path/"m.onnx"),
                        str(tmp_path/"clip.wav"), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["error"] is None

"""Shared fixtures. Tests on real data read ../shared/data (or $URBANSOUND_SHARED_DATA) and skip when it is absent."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("URBANSOUND_SHARED_DATA", ROOT.parent/"shared"/"data"))
MINI, ORIGINALS = SHARED/"urbansound8k-mini", SHARED/"urbansound8k-originals"


# Under `pytest -n 2 --dist loadgroup --no-loadscope-reorder` (`make test`; the flag keeps this order) the tests
# that read the reduced study form two groups: "study", first in line, whose worker makes the study, and "site" (the
# site's renders and browser checks), last in line, so that the other worker takes it when its own tests are done and
# renders while the first runs the rest of "study". The run is shared through a folder every worker sees
# (`reduced_run`), so it is made once.
GROUP_ORDER = {"study": 0, None: 1, "site": 2}


@pytest.hookimpl(tryfirst=True)    # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    "Tests that read the reduced study are marked `study` (`make test-fast` leaves them and `slow` ones out)."
    def group(item):
        if not {"reduced_run", "reduced_data"} & set(getattr(item, "fixturenames", ())): return None
        return "site" if item.path.name == "test_site.py" else "study"
    for item in items:
        if group(item):
            item.add_marker(pytest.mark.study)
            _in_xdist_group(item, config, group(item))
    if hasattr(config, "workerinput"): items.sort(key=lambda item: GROUP_ORDER[group(item)])   # the same everywhere


def _in_xdist_group(item, config, name: str):
    "Put `item` in pytest-xdist's group `name`: the marker, and the `@name` suffix of its id that the scheduler reads."
    item.add_marker(pytest.mark.xdist_group(name))
    # pytest-xdist 3.8 adds the suffix only where the worker's `dist` is "loadgroup", which it never is under pytest 9
    # (workers run with dist "no"), and writes `_nodeid`, which pytest 9 no longer reads (it keeps a `NodeId` in
    # `_id`); so the suffix is added here, in workers only (a run without xdist keeps the plain ids).
    if hasattr(config, "workerinput") and hasattr(item, "_id") and "@" not in item.nodeid:
        from _pytest.nodeid import NodeId
        item._id = NodeId.parse(f"{item.nodeid}@{name}")


def _need(path):
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real data is only beside the repository on the project's machines)")
    return path


@pytest.fixture(scope="session")
def mini(): return _need(MINI)


@pytest.fixture(scope="session")
def originals(): return _need(ORIGINALS)


@pytest.fixture(scope="session")
def venv_bin():
    import sys
    return Path(sys.executable).parent


def write_official_layout(root: Path, n_clips: int | None = 3, folds=(1,)) -> list[dict]:
    "A folder in the official layout (metadata CSV, audio/foldN/*.wav) of `n_clips` generated clips; their rows."
    from urbansound_nb.audio import synthetic_urbansound
    from urbansound_nb.data import metadata_frame
    synth = synthetic_urbansound(clips_per_class_fold=1, folds=list(folds))
    synth = synth.select(range(n_clips or len(synth)))
    rows = synth.to_list()
    (root/"metadata").mkdir(parents=True)
    for f in folds: (root/"audio"/f"fold{f}").mkdir(parents=True)
    for r in rows: (root/"audio"/f"fold{r['fold']}"/r["slice_file_name"]).write_bytes(r["audio"]["bytes"])
    metadata_frame(synth).to_csv(root/"metadata"/"UrbanSound8K.csv", index=False)
    return rows


# The whole study, reduced (few epochs, seeds and items), on a copy of the real mini data with three damaged clips;
# its site is built by the run. Made once per test session and shared by every test that reads it.
WEIGHTS = SHARED.parent/"models"

NOTEBOOKS = ["00_setup", "01_eda", "02_preprocessing", "03_baselines", "04_cnn", "05_transfer", "06_error_analysis",
             "07_augmentation", "08_cross_validation", "09_deployment"]

# (fold of the clip that is damaged, how): unreadable bytes, too short, NaN samples
DAMAGE = {1: "corrupt", 2: "too_short", 3: "nan"}


def damaged_bytes(how: str) -> bytes:
    "The audio bytes of a damaged clip: a broken 240-byte WAV header, 0.01 s of sound, or samples that are NaN."
    from urbansound_nb.audio import encode_audio
    tone = (0.3 * np.sin(np.arange(22050) / 5)).astype(np.float32)
    if how == "corrupt": return b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(224))
    if how == "too_short": return encode_audio(tone[:220], 22050)
    tone[100:110] = np.nan
    return encode_audio(tone, 22050, subtype="FLOAT")


@pytest.fixture(scope="session")
def reduced_data(mini, tmp_path_factory):
    "240 clips of the mini data in the hub layout, one clip of each fold damaged (`DAMAGE`); (folder, their names)."
    from urbansound_nb.audio import dataset_from_rows
    from urbansound_nb.data import load_urbansound
    rows = load_urbansound(str(mini), max_items=240, seed=0).to_list()
    damaged = {}
    for fold, how in DAMAGE.items():
        row = next(r for r in rows if r["fold"] == fold and r["slice_file_name"] not in damaged.values())
        row["audio"] = dict(bytes=damaged_bytes(how), path=row["audio"].get("path"))
        damaged[how] = row["slice_file_name"]
    root = tmp_path_factory.mktemp("reduced-data")
    (root/"data").mkdir()
    dataset_from_rows(rows).to_parquet(str(root/"data"/"train-00000-of-00001.parquet"))
    return root, damaged


def _session_root(tmp_path_factory) -> Path:
    "The session's temporary folder, which every pytest-xdist worker of the session sees (each has its own below)."
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def reduced_run(reduced_data, tmp_path_factory, venv_bin):
    "The reduced study's run folder, made once per session: the first worker that needs it makes it, others wait."
    import fcntl
    root = _session_root(tmp_path_factory)
    run, outcome = root/"reduced-run", root/"reduced-run.outcome"
    with open(root/"reduced-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not outcome.exists():
            outcome.write_text(_make_reduced_run(run, root/"reduced-cache", reduced_data, venv_bin))
    assert outcome.read_text() == "ok", outcome.read_text()
    return run


def _make_reduced_run(run: Path, cache: Path, reduced_data, venv_bin) -> str:
    "Run the reduced study into `run`: 'ok', or the end of its output."
    cmd = [str(venv_bin/"urbansound-nb"), "run", "--dataset", str(reduced_data[0]), "--run-dir", str(run), "--site",
           "-p", "epochs", "2", "-p", "seeds", "2", "-p", "bench_items", "32",
           "-p", "cache_dir", str(cache),
           "-p", "conditions", "[none, specaugment_lite, mixup]",
           "-p", "train_fraction", "0.5", "-p", "finetune_epochs", "1", "-p", "grid_epochs", "2",
           "-p", "long_clips", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if (WEIGHTS/"mn04_as_mAP_432.pt").is_file(): env["URBANSOUND_PRETRAINED"] = str(WEIGHTS)   # the real weights
    else: cmd += ["-p", "weights", "random"]                                     # none here: a random network
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    return "ok" if r.returncode == 0 else r.stdout[-3000:] + r.stderr[-3000:]

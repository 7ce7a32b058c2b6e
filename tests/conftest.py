"""Shared fixtures. Tests on real data read ../shared/data (or $URBANSOUND_SHARED_DATA) and skip when it is absent."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("URBANSOUND_SHARED_DATA", ROOT.parent/"shared"/"data"))
MINI, ORIGINALS = SHARED/"urbansound8k-mini", SHARED/"urbansound8k-originals"


@pytest.hookimpl(tryfirst=True)    # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests that read the reduced study are marked `study` (`make test-fast` leaves them and `slow` ones out). Under
    `pytest -n 2 --dist loadgroup` (`make test`) they are one group, first in line: one worker makes the study once
    and runs what reads it while the other runs the rest."""
    reads_study = lambda item: bool({"reduced_run", "reduced_data"} & set(getattr(item, "fixturenames", ())))
    for item in items:
        if reads_study(item):
            item.add_marker(pytest.mark.study)
            _in_xdist_group(item, config, "study")
    if hasattr(config, "workerinput"): items.sort(key=lambda item: not reads_study(item))   # the same on every worker


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


@pytest.fixture(scope="session")
def reduced_run(reduced_data, tmp_path_factory, venv_bin):
    run = tmp_path_factory.mktemp("run")
    cmd = [str(venv_bin/"urbansound-nb"), "run", "--dataset", str(reduced_data[0]), "--run-dir", str(run), "--site",
           "-p", "epochs", "2", "-p", "seeds", "2", "-p", "bench_items", "32",
           "-p", "cache_dir", str(tmp_path_factory.mktemp("cache")),
           "-p", "conditions", "[none, specaugment_lite, mixup]",
           "-p", "train_fraction", "0.5", "-p", "finetune_epochs", "1", "-p", "grid_epochs", "2",
           "-p", "long_clips", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if (WEIGHTS/"mn04_as_mAP_432.pt").is_file(): env["URBANSOUND_PRETRAINED"] = str(WEIGHTS)   # the real weights
    else: cmd += ["-p", "weights", "random"]                                     # none here: a random network
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run

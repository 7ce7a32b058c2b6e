"""Shared fixtures. Tests on real data read ../shared/data (or $URBANSOUND_SHARED_DATA) and skip when it is absent."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("URBANSOUND_SHARED_DATA", ROOT.parent/"shared"/"data"))
MINI, ORIGINALS = SHARED/"urbansound8k-mini", SHARED/"urbansound8k-originals"


def _need(path):
    if not path.is_dir(): pytest.skip(f"{path} is absent (real data is only beside the repository on the project's machines)")
    return path


@pytest.fixture(scope="session")
def mini(): return _need(MINI)


@pytest.fixture(scope="session")
def originals(): return _need(ORIGINALS)


@pytest.fixture(scope="session")
def venv_bin():
    import sys
    return Path(sys.executable).parent


def write_official_layout(root: Path, n_clips: int = 3) -> list[dict]:
    "A folder in the official layout (metadata CSV + audio/fold1/*.wav) of `n_clips` generated clips; returns their rows."
    from urbansound_nb.audio import synthetic_urbansound
    from urbansound_nb.data import metadata_frame
    (root/"metadata").mkdir(parents=True); (root/"audio"/"fold1").mkdir(parents=True)
    synth = synthetic_urbansound(clips_per_class_fold=1, folds=[1]).select(range(n_clips)); rows = synth.to_list()
    for r in rows: (root/"audio"/"fold1"/r["slice_file_name"]).write_bytes(r["audio"]["bytes"])
    metadata_frame(synth).to_csv(root/"metadata"/"UrbanSound8K.csv", index=False)
    return rows

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

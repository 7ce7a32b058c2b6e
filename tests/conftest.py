"""Shared fixtures. Tests on real data read ../shared/data (or $URBANSOUND_SHARED_DATA) and skip when it is absent."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("URBANSOUND_SHARED_DATA", ROOT.parent/"shared"/"data"))
MINI, ORIGINALS = SHARED/"urbansound8k-mini", SHARED/"urbansound8k-originals"


# The tests that read the reduced study (the fixtures `reduced_run`, `reduced_data`) are marked `study` and run
# last, the site's last of all. The study itself is made in the background as soon as the tests are collected
# (`pytest_collection_finish`, a public hook), so it runs on one core while the other tests run on the other.
# Tests that read only its data (`reduced_data`, written before the study starts) run with the unit tests.
NEEDS_STUDY = {"reduced_run", "reduced_data", "reduced_study"}
NEEDS_RUN = {"reduced_run", "reduced_study"}
STUDY = pytest.StashKey()


def _needs_study(item) -> bool: return bool(NEEDS_STUDY & set(getattr(item, "fixturenames", ())))


def _needs_run(item) -> bool: return bool(NEEDS_RUN & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    "Mark the tests that read the reduced study, and put those that wait for its run last (the site's last of all)."
    for item in items:
        if _needs_study(item): item.add_marker(pytest.mark.study)
    items.sort(key=lambda item: (_needs_run(item), item.path.name == "test_site.py"))


def pytest_collection_finish(session):
    "Start the reduced study in the background when a selected test reads it (and the real data is here)."
    if any(_needs_study(item) for item in session.items) and MINI.is_dir():
        session.config.stash[STUDY] = ReducedStudy.start()


def pytest_terminal_summary(terminalreporter, config):
    "Where the reduced study's time went, chapter by chapter: kernel start, imports and work."
    study = config.stash.get(STUDY, None)
    if study is None or study.process.poll() != 0: return
    from urbansound_nb.runner import time_table
    terminalreporter.write_sep("-", "the reduced study's time")
    terminalreporter.write_line(time_table(study.run))


def pytest_unconfigure(config):
    study = config.stash.get(STUDY, None)
    if study is not None: study.close()


def in_process(*args, env: dict | None = None) -> SimpleNamespace:
    """`urbansound-nb ARGS` run in this process (no interpreter to start, no torch to import again): its exit status,
    stdout and stderr, as `subprocess.run` gives them. The tests of the console script itself start a process."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO
    from unittest import mock

    from urbansound_nb.cli import main
    out, err = StringIO(), StringIO()
    with mock.patch.dict(os.environ, env or {}), redirect_stdout(out), redirect_stderr(err):
        try: status = main([str(a) for a in args])
        except SystemExit as e: status = e.code if isinstance(e.code, int) else (print(e.code, file=err) or 1)
    return SimpleNamespace(returncode=status or 0, stdout=out.getvalue(), stderr=err.getvalue())


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


# The whole study, reduced (few epochs, seeds and items), on a copy of the real mini data with three damaged clips,
# with two toy models a plugin adds; its sites (Quarto's and the fallback's) are built in the background once it is
# done. Made once per test session and shared by every
# test that reads it.
WEIGHTS = SHARED.parent/"models"

NOTEBOOKS = ["00_setup", "01_eda", "02_preprocessing", "03_baselines", "04_cnn", "05_transfer", "06_choice",
             "07_error_analysis", "08_augmentation", "09_cross_validation", "10_deployment"]

# (fold of the clip that is damaged, how): unreadable bytes, too short, NaN samples
DAMAGE = {1: "corrupt", 2: "too_short", 3: "nan"}
CLIPS = 160          # of the mini data, stratified; with `train_fraction` 0.5 a few dozen clips train each model
REDUCED = ["-p", "epochs", "2", "-p", "seeds", "2", "-p", "bench_items", "32", "-p", "conditions",
           "[none, specaugment_lite, mixup]", "-p", "train_fraction", "0.5", "-p", "finetune_epochs", "1",
           "-p", "finetune_seeds", "2", "-p", "grid_epochs", "2", "-p", "long_clips", "8", "-p", "n_mfcc", "20",
           "-p", "others_per_kind", "3"]
# Models a plugin registers and nothing else names: the study trains, compares, cross-validates them (test_registry)
TOY_MODELS, TOY_PLUGIN = ("knn", "wide_shallow"), ROOT/"tests"/"toy_models.py"


def damaged_bytes(how: str) -> bytes:
    "The audio bytes of a damaged clip: a broken 240-byte WAV header, 0.01 s of sound, or samples that are NaN."
    from urbansound_nb.audio import encode_audio
    tone = (0.3 * np.sin(np.arange(22050) / 5)).astype(np.float32)
    if how == "corrupt": return b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(224))
    if how == "too_short": return encode_audio(tone[:220], 22050)
    tone[100:110] = np.nan
    return encode_audio(tone, 22050, subtype="FLOAT")


def write_reduced_data(root: Path) -> dict:
    "`CLIPS` clips of the mini data in the hub layout under `root`, one of each fold damaged (`DAMAGE`): their names."
    from urbansound_nb.audio import dataset_from_rows
    from urbansound_nb.data import load_urbansound
    rows = load_urbansound(str(MINI), max_items=CLIPS, seed=0).to_list()
    damaged = {}
    for fold, how in DAMAGE.items():
        row = next(r for r in rows if r["fold"] == fold and r["slice_file_name"] not in damaged.values())
        row["audio"] = dict(bytes=damaged_bytes(how), path=row["audio"].get("path"))
        damaged[how] = row["slice_file_name"]
    (root/"data").mkdir(parents=True)
    dataset_from_rows(rows).to_parquet(str(root/"data"/"train-00000-of-00001.parquet"))
    return damaged


class ReducedStudy:
    "The reduced study's run, made by a process of its own: its data, damaged clips, run folder and outcome."
    def __init__(self, root: Path):
        self.root, self.data, self.run = root, root/"reduced-data", root/"reduced-run"
        self.damaged = write_reduced_data(self.data)
        # the run's arguments and environment, which a test may repeat (`run --plan` of the same run)
        self.args = ["--dataset", str(self.data), "--run-dir", str(self.run), "-p", "cache_dir",
                     str(root/"reduced-cache"), *REDUCED]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "URBANSOUND_MODELS": str(TOY_PLUGIN)}
        if (WEIGHTS/"mn04_as_mAP_432.pt").is_file(): self.env["URBANSOUND_PRETRAINED"] = str(WEIGHTS)   # the real ones
        else: self.args += ["-p", "weights", "random"]                                 # none here: a random network
        if (SHARED/"esc50-ood").is_dir(): self.args += ["-p", "other_sounds", str(SHARED/"esc50-ood")]   # unknowns
        self.log, self.sites = open(root/"reduced-run.log", "w"), {}
        self.process = subprocess.Popen([str(Path(sys.executable).parent/"urbansound-nb"), "run", *self.args],
                                        cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

    @classmethod
    def start(cls): return cls(Path(tempfile.mkdtemp(prefix="urbansound-reduced-")))

    def wait(self):
        "The study once it is done; a failed study fails the test with the end of its output."
        status = self.process.wait(timeout=1800)
        self.log.flush()
        assert status == 0, (self.root/"reduced-run.log").read_text()[-5000:]
        if not self.sites:            # both renders run while the other tests read the run
            self.sites = dict(nbconvert=SiteBuild.fallback(self))
            if shutil.which("quarto"): self.sites["quarto"] = SiteBuild.quarto(self)
        return self

    def close(self):
        for process in (self.process, *(site.process for site in self.sites.values())):
            if process.poll() is None: process.kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def without_quarto() -> str:
    "The PATH without the folders that hold a `quarto`."
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (os.path.isdir(p) and "quarto" in os.listdir(p)))


FALLBACK_CHAPTERS = ["01_eda", "04_cnn", "06_choice"]     # audio, figures, the choice: what the fallback must show


class SiteBuild:
    "`urbansound-nb site ARGS` of the reduced run in the background; `result` waits for it."
    def __init__(self, site: Path, *args, path: str | None = None):
        self.site, self.outcome = site, None
        self.process = subprocess.Popen([str(Path(sys.executable).parent/"urbansound-nb"), "site", *map(str, args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PATH": path or os.environ["PATH"]})

    def result(self) -> tuple[Path, SimpleNamespace]:
        "The site's folder, and the command's exit status, stdout and stderr (as `subprocess.run` gives them)."
        if self.outcome is None:
            stdout, stderr = self.process.communicate(timeout=600)
            self.outcome = SimpleNamespace(returncode=self.process.returncode, stdout=stdout, stderr=stderr)
        return self.site, self.outcome

    @classmethod
    def quarto(cls, study: ReducedStudy) -> "SiteBuild":
        "Quarto's site of the whole run, every page checked in Chromium (where there is one), as `--check` does."
        from urbansound_nb.browser import missing_browser
        return cls(study.run/"site", "--run-dir", study.run, *(["--check"] if missing_browser() is None else []))

    @classmethod
    def fallback(cls, study: ReducedStudy) -> "SiteBuild":
        """With Quarto out of sight: the nbconvert fallback of three of the run's chapters (Quarto's site has them
        all) and a Runs page of two runs, photographed and checked in Chromium (where there is one)."""
        from urbansound_nb.browser import missing_browser
        run, other = study.root/"nbconvert"/"run", study.root/"other"/"other-run"
        shutil.copytree(study.run/"results", run/"results")
        for nb in FALLBACK_CHAPTERS: shutil.copy(study.run/f"{nb}.ipynb", run)
        shutil.copytree(study.run/"results", other/"results")             # another run for the Runs page
        checks = ["--screenshots", "--check"] if missing_browser() is None else []
        return cls(run/"site", "--run-dir", run, "--out", run/"site", "--compare", other, *checks,
                   path=without_quarto())


def _study(request) -> ReducedStudy:
    study = request.config.stash.get(STUDY, None)
    if study is None: pytest.skip(f"{MINI} is absent (real data is only beside the repository on the project's "
                                  "machines)")
    return study


@pytest.fixture(scope="session")
def reduced_data(request):
    "The reduced study's data (hub layout, three damaged clips): (folder, the damaged clips' names by how)."
    study = _study(request)
    return study.data, study.damaged


@pytest.fixture(scope="session")
def reduced_study(request) -> ReducedStudy:
    "The reduced study, made in the background since the tests were collected, once it is done."
    return _study(request).wait()


@pytest.fixture(scope="session")
def reduced_run(reduced_study) -> Path:
    "The reduced study's run folder."
    return reduced_study.run

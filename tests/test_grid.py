"""The experiment grids on Dask (notebook 04d): a local cluster gives the results of the in-process run, a killed
worker costs only its cell, a failing cell is reported without losing the others, a bad address fails fast."""
import json
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

from urbansound_nb.batches import study_data
from urbansound_nb.browser import free_port
from urbansound_nb.crossval import FoldTraining, cross_validate, cv_plan
from urbansound_nb.grid import GridFailed, Placement, grid_client, run_grid
from urbansound_nb.params import StudyParams

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module
pytestmark = pytest.mark.slow                                  # worker processes and trainings


def _square_slowly(x: int, seconds: float) -> dict:
    time.sleep(seconds)
    return dict(x=x, square=x * x)


def _fail_on_three(x: int) -> dict:
    if x == 3: raise ValueError("three is not allowed")
    return dict(x=x)


def test_local_cluster_gives_the_in_process_results(tmp_path):
    params = StudyParams(dataset="synthetic", cache_dir=str(tmp_path/"cache"), run_dir=str(tmp_path))
    data = study_data(params, progress=False)
    plan = cv_plan(data.meta["fold"].unique(), folds=[1, 2, 3])
    # one torch thread per cell on both: a CPU training's figures depend on its thread count (notebook 04d)
    here = cross_validate(plan, data, ["small_cnn"], FoldTraining(epochs=2), record_path=tmp_path/"here.json",
                          place=Placement(threads=1))
    with grid_client("local:2", paths=[tmp_path/"cache"]) as client:
        there = cross_validate(plan, data, ["small_cnn"], FoldTraining(epochs=2), record_path=tmp_path/"there.json",
                               place=Placement(client, tmp_path/"cache", threads=1))
    figures = ["test_fold", "val_fold", "n_train", "val_accuracy", "test_accuracy", "best_epoch", "threads"]
    assert here[figures].to_dict("records") == there[figures].to_dict("records")
    assert len(json.loads((tmp_path/"there.json").read_text())) == 3          # recorded by this process


def test_the_transfers_cross_validate_on_a_local_cluster(tmp_path):
    "The probe and the fine-tuning travel too: the network, its own features (a reference) and the embeddings."
    from urbansound_nb.crossval import Transfer
    from urbansound_nb.pretrained import EfficientATFeatures, cached_embeddings, pretrained_network
    params = StudyParams(dataset="synthetic", max_items=120, cache_dir=str(tmp_path/"cache"), run_dir=str(tmp_path))
    data, eat_data = study_data(params, progress=False), study_data(params, EfficientATFeatures(), progress=False)
    net = pretrained_network("mn04_as", "random", params.cache_dir)
    transfer = Transfer(net, eat_data, cached_embeddings(net, eat_data, params.cache_dir, progress=False)[0], 1)
    plan = cv_plan(data.meta["fold"].unique(), folds=[1])     # one fold's cell shows that they travel
    runs = {}
    for name, scheduler in (("here", None), ("there", "local:2")):
        with grid_client(scheduler, paths=[params.cache_dir]) as client:
            runs[name] = cross_validate(plan, data, ["probe", "finetune"], FoldTraining(epochs=1), transfer=transfer,
                                        place=Placement(client, params.cache_dir, threads=1))
    figures = ["model", "test_fold", "val_accuracy", "test_accuracy"]
    assert runs["here"][figures].to_dict("records") == runs["there"][figures].to_dict("records")


def test_a_killed_worker_costs_only_its_cell(tmp_path):
    cells = {f"x{x}": dict(x=x, seconds=1.5) for x in range(6)}
    killed = []
    with grid_client("local:2") as client:
        def kill_a_busy_worker(key, result):
            if not killed:                                # after the first result the other worker is mid-cell
                pids = client.run(os.getpid)
                victim = next(iter(pids.values()))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            return f"{key} done"
        done = run_grid(_square_slowly, cells, record_path=tmp_path/"record.json", place=Placement(client, tmp_path),
                        describe=kill_a_busy_worker)
    assert killed and {k: r["square"] for k, r in done.items()} == {f"x{x}": x * x for x in range(6)}
    assert json.loads((tmp_path/"record.json").read_text()) == done


def test_a_failing_cell_is_reported_and_the_others_recorded(tmp_path):
    cells = {f"x{x}": dict(x=x) for x in range(5)}
    with grid_client("local:2") as client, pytest.raises(GridFailed, match="x3: ValueError: three is not allowed"):
        run_grid(_fail_on_three, cells, record_path=tmp_path/"record.json", place=Placement(client, tmp_path),
                 retries=1)
    assert sorted(json.loads((tmp_path/"record.json").read_text())) == ["x0", "x1", "x2", "x4"]


def test_a_cluster_started_by_address(tmp_path, venv_bin):
    "The commands CONTRIBUTING.md gives: `dask scheduler`, then `dask worker ADDRESS`; the grid connects by address."
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(venv_bin/"dask")
    servers = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    servers.append(subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        # the cell's function is `dict` itself: workers started apart from this test can import it
        cells = {f"x{x}": dict(x=x, square=x * x) for x in range(4)}
        for attempt in range(60):                                    # the workers take a few seconds to register
            try:
                with grid_client(address, paths=[tmp_path]) as client:
                    if len(client.scheduler_info()["workers"]) < 2: raise RuntimeError("workers still starting")
                    done = run_grid(dict, cells, record_path=tmp_path/"record.json", place=Placement(client, tmp_path))
                break
            except (ConnectionError, RuntimeError):
                if attempt == 59: raise
                time.sleep(0.5)
        assert {k: r["square"] for k, r in done.items()} == {f"x{x}": x * x for x in range(4)}
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait(timeout=30)


def test_a_bad_address_fails_within_seconds():
    t0 = time.time()
    with pytest.raises(ConnectionError, match="no Dask scheduler answered at tcp://127.0.0.1:"):
        with grid_client(f"tcp://127.0.0.1:{free_port()}"): pass
    assert time.time() - t0 < 30


def test_workers_that_cannot_see_the_cache_are_named(tmp_path):
    with pytest.raises(RuntimeError, match="cannot see .*nowhere"):
        with grid_client("local:1", paths=[tmp_path/"nowhere"]): pass

"""The experiment grids on Dask (notebook 04d): a local cluster gives the results of the in-process run, a killed
worker costs only its cell, a failing cell is reported without losing the others, a bad address fails fast."""
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest
from lab_check import free_port

from urbansound_nb.grid import GridFailed, Placement, grid_client, run_grid
from urbansound_nb.params import StudyParams
from urbansound_nb.registry import cv_tasks, fit_cell, grid_cells, study_inputs

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module
pytestmark = pytest.mark.slow                                  # worker processes and trainings


def _square_slowly(x: int, seconds: float) -> dict:
    time.sleep(seconds)
    return dict(x=x, square=x * x)


def _fail_on_three(x: int, after=()) -> dict:
    if x == 3: raise ValueError("three is not allowed")
    return dict(x=x)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    "A `local:2` cluster the tests share (starting one costs seconds), with the folder its workers read."
    folder = tmp_path_factory.mktemp("cluster")
    with grid_client("local:2", paths=[folder]) as client: yield client, folder


def _here_and_there(cluster, models, folds, **params) -> dict:
    "The same fit cells in process and on the cluster, one torch thread a cell, each with a store of its own."
    client, folder = cluster
    params = StudyParams(dataset="synthetic", cache_dir=str(folder/"cache"), run_dir=str(folder), epochs=2,
                         resnet_epochs=2, **params)
    cells = grid_cells(t for ts in cv_tasks(params, models, folds).values() for t in ts)
    inputs, runs, key = study_inputs(params, cells), {}, "-".join(models)
    for name, place in (("here", Placement(threads=1)), ("there", Placement(client, params.cache_dir, threads=1))):
        runs[name] = run_grid(fit_cell, cells, shared=dict(inputs=inputs, store=str(folder/f"{name}-{key}")),
                              place=place)
    return runs


def test_a_local_cluster_gives_the_in_process_figures(cluster):
    "One torch thread a cell on both: a CPU training's figures depend on its thread count (notebook 04d)."
    plan = [dict(test_fold=3, val_fold=2, train_folds=[1]), dict(test_fold=1, val_fold=3, train_folds=[2])]
    runs = _here_and_there(cluster, ["logreg", "resnet"], plan, resnet_seeds=2)
    figures = lambda records: {k: (r["val_accuracy"], r["test_accuracy"], r.get("best_epoch"), r["threads"])
                               for k, r in records.items()}
    assert figures(runs["here"]) == figures(runs["there"]) and len(runs["here"]) == 2 * (1 + 2 + 1)
    assert not any(r["reused"] for r in runs["there"].values())              # trained there, not read back


def test_the_transfers_travel_to_a_local_cluster(cluster):
    "The probe and the fine-tuning travel too: the network's body, its own features (a reference), the embeddings."
    runs = _here_and_there(cluster, ["probe_finetune"], [dict(test_fold=3, val_fold=2, train_folds=[1])],
                           max_items=120, weights="random", finetune_epochs=1)
    figures = lambda records: [(r["model"], r["val_accuracy"], r["test_accuracy"]) for r in records.values()]
    assert figures(runs["here"]) == figures(runs["there"]) and len(runs["here"]) == 3


def test_a_killed_worker_costs_only_its_cell(tmp_path):
    cells = {f"x{x}": dict(x=x, seconds=1.0) for x in range(6)}
    killed = []
    with grid_client("local:2") as client:
        def kill_a_busy_worker(key, result):
            if not killed:                                # after the first result the other worker is mid-cell
                pids = client.run(os.getpid)
                victim = next(iter(pids.values()))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            return f"{key} done"
        done = run_grid(_square_slowly, cells, place=Placement(client, tmp_path), describe=kill_a_busy_worker)
    assert killed and {k: r["square"] for k, r in done.items()} == {f"x{x}": x * x for x in range(6)}


def test_a_failing_cell_is_reported_with_the_cells_that_read_it(cluster):
    from urbansound_nb.grid import Cell
    cells = {f"x{x}": Cell(dict(x=x)) for x in range(5)}
    cells["after3"] = Cell(dict(x=6), after=("x3",))
    cells["after4"] = Cell(dict(x=7), after=("x4",))
    with pytest.raises(GridFailed) as failed:
        run_grid(_fail_on_three, cells, place=Placement(cluster[0], cluster[1]), retries=1)
    assert "x3: ValueError: three is not allowed" in str(failed.value) and "after3: a cell it reads failed" in \
        str(failed.value) and "after4" not in str(failed.value) and "2 of 7 cells failed" in str(failed.value)


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
                    done = run_grid(dict, cells, place=Placement(client, tmp_path))
                break
            except (ConnectionError, RuntimeError):
                if attempt == 59: raise
                time.sleep(0.5)
        assert {k: r["square"] for k, r in done.items()} == {f"x{x}": x * x for x in range(4)}
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait(timeout=30)


def test_a_bad_address_fails_within_the_connect_timeout(monkeypatch):
    import urbansound_nb.grid as grid
    monkeypatch.setattr(grid, "CONNECT_TIMEOUT", 2)                  # the default is 10 s
    t0 = time.time()
    with pytest.raises(ConnectionError, match="no Dask scheduler answered at tcp://127.0.0.1:.* within 2 s"):
        with grid_client(f"tcp://127.0.0.1:{free_port()}"): pass
    assert time.time() - t0 < 10


def test_workers_that_cannot_see_the_cache_are_named(cluster, tmp_path):
    from urbansound_nb.grid import check_workers
    with pytest.raises(RuntimeError, match="cannot see .*nowhere"): check_workers(cluster[0], [tmp_path/"nowhere"])

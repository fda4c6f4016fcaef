"""Runs on a Dask cluster (real worker processes, 127.0.0.1 only): the same result
files as a serial run, a killed worker, a failing run, an external scheduler."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed")

from conftest import REPO, stop_processes  # noqa: E402
from helpers import (  # noqa: E402
    SMALL,
    run_here,  # noqa: E402
    run_script,
)

from ecomp_deap.config import EcompConfig  # noqa: E402
from ecomp_deap.study.executors import ClusterExecutor, run_task  # noqa: E402
from ecomp_deap.study.experiment import Experiment  # noqa: E402
from ecomp_deap.study.runner import run_experiments  # noqa: E402

NAMES = ("weighting121", "pareto121")
TINY = dict(pop_size=8, generations=6, batch_size=30, perplexity=5.0, val_size=60, device="cpu",
            embedding_layers=None, recombination_layers=None)


# ----------------------------------------------------------------- comparisons
def without_time(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("wall_time_s", None)  # a run's; summaries hold one per row and a median
    d.pop("phase_times_s", None)
    for row in d.get("runs", []):  # summary.json
        row.pop("wall_time_s")
    d.get("median", {}).pop("wall_time_s", None)
    return d


def assert_same_results(a: Path, b: Path, names, runs: int) -> None:
    """Two output folders hold the same runs: JSON apart from wall_time_s, identical weights."""
    for name in names:
        for k in range(runs):
            assert without_time(a / name / f"run_{k}.json") == without_time(b / name / f"run_{k}.json"), (name, k)
            sa = torch.load(a / name / f"run_{k}.pt", weights_only=True)["state_dict"]
            sb = torch.load(b / name / f"run_{k}.pt", weights_only=True)["state_dict"]
            assert sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa), (name, k)
        assert without_time(a / name / "summary.json") == without_time(b / name / "summary.json"), name


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".ckpt")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ through run.py
@pytest.fixture(scope="module")
def serial_out(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("serial")
    p = run_script("experiments/run.py", "--name", *NAMES, "--runs", "2", *SMALL, "--cache-dir", cache_dir,
                   "--out", out, "--executor", "serial", "--threads", "1")  # as the workers: 1 thread per run
    assert p.returncode == 0, p.stderr
    assert "cores: serial, 1 torch thread(s) per run" in p.stdout
    return out


def test_local_cluster_writes_the_same_files_as_serial(tmp_path, cache_dir, serial_out):
    out = tmp_path / "local"
    p = run_script("experiments/run.py", "--name", *NAMES, "--runs", "2", *SMALL, "--cache-dir", cache_dir,
                   "--out", out, "--executor", "local", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "executor: local" in p.stdout and "2 worker(s)" in p.stdout
    progress = [line for line in p.stdout.splitlines() if line.startswith("[")]
    assert sorted(line.split("]")[0] for line in progress) == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all("best test accuracy" in line for line in progress)
    assert_same_results(serial_out, out, NAMES, 2)
    assert no_temporary_files(out)


def test_external_scheduler_and_resume_across_executors(tmp_path, cache_dir, serial_out):
    """`dask scheduler` + one `dask worker` as processes; --resume finishes a serial study there."""
    out = tmp_path / "out"
    shutil.copytree(serial_out, out)
    for name in ("run_1.json", "run_1.pt", "summary.json", "summary.csv"):
        (out / "pareto121" / name).unlink()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = []
    try:
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env, cwd=tmp_path))
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1",
                                       "--host", "127.0.0.1", "--no-dashboard"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env, cwd=tmp_path))
        p = run_script("experiments/run.py", "--name", *NAMES, "--runs", "2", *SMALL, "--cache-dir", cache_dir,
                       "--out", out, "--executor", "dask", "--scheduler", address, "--resume")
        assert p.returncode == 0, p.stderr
        assert p.stdout.count("already finished, skipped") == 3
        assert "[1/1] pareto121 run 2/2" in p.stdout
        assert_same_results(serial_out, out, NAMES, 2)
        assert no_temporary_files(out)
    finally:
        stop_processes(procs)


def test_unreachable_scheduler_and_misplaced_options_are_one_line_errors(tmp_path):
    port = free_port()  # nothing listens there
    for args, expected in ((["--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"], "cannot reach"),
                           (["--executor", "dask"], "--scheduler"),
                           (["--executor", "serial", "--workers", "2"], "--executor local"),
                           (["--executor", "local", "--scheduler", "tcp://127.0.0.1:1"], "--executor dask")):
        p = run_script("experiments/run.py", "--name", "weighting121", "--out", tmp_path / "o", *args, timeout=120,
                       env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
        assert p.returncode == 2 and expected in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "10.0.0.5:8786", "tcp://scheduler.example.org:8786",
                                     "ws://10.0.0.5:8786", "ucx://10.0.0.5:13337", "tcp://[2001:db8::1]:8786",
                                     "tcp://0.0.0.0:8786"])
def test_a_plain_scheduler_on_another_host_is_refused_unless_insecure(address):
    from ecomp_deap.errors import ConfigError
    from ecomp_deap.study.executors import check_scheduler, dask_client

    with pytest.raises(ConfigError, match="--insecure-scheduler") as e:
        with dask_client("dask", scheduler=address):  # refused before any connection
            pass
    assert "pickles" in str(e.value) and "tls://" in str(e.value) and len(str(e.value).splitlines()) == 1
    check_scheduler(address, insecure=True)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "127.0.0.1:8786", "tcp://localhost:8786",
                                     "tcp://127.0.1.1:8786", "tcp://[::1]:8786", "tls://10.0.0.5:8786",
                                     "TLS://scheduler.example.org:8786", "wss://10.0.0.5:8786", "inproc://10.0.0.5/1/2"])
def test_tls_and_loopback_schedulers_pass_the_check(address):
    from ecomp_deap.study.executors import check_scheduler

    check_scheduler(address)


def test_cli_plain_remote_scheduler_is_one_line_exit_2_before_any_work(tmp_path):
    p = run_script("experiments/run.py", "--name", "weighting121", "--out", tmp_path / "o", "--executor", "dask",
                   "--scheduler", "tcp://10.0.0.5:8786", "--data-dir", tmp_path / "no-data", timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "plain tcp:// connection to another host" in p.stderr and "--insecure-scheduler" in p.stderr
    assert "data:" not in p.stdout and not (tmp_path / "o").exists()
    p = run_script("experiments/run.py", "--name", "weighting121", "--out", tmp_path / "o", "--insecure-scheduler")
    assert p.returncode == 2 and "--insecure-scheduler goes with --scheduler" in p.stderr, p.stderr


# ----------------------------------------------------------- library level
@pytest.fixture(scope="module")
def tiny_serial(tmp_path_factory, tiny_data, tiny_parent):
    """The serial reference, made before any Dask client lives in this process."""
    folder = tmp_path_factory.mktemp("tiny-serial")
    run_here(tiny_experiments(folder, runs=3), tiny_parent, tiny_data)
    return folder


@pytest.fixture(scope="module")
def client(tiny_serial):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def tiny_experiments(out: Path, runs: int = 2, checkpoint_every: int = 25, **settings) -> list[Experiment]:
    cfg = {**TINY, **settings}
    return [Experiment("w", EcompConfig(selection="weighted", **cfg), runs, 0, out, checkpoint_every),
            Experiment("p", EcompConfig(selection="nsga2", **cfg), runs, 3, out, checkpoint_every)]


def written_once(monkeypatch) -> dict:
    """Count the driver's writes of each run."""
    from ecomp_deap.study import runner

    counts: dict = {}
    real = runner.write_run

    def counting(folder, name, k, result_json, best_module):
        counts[(name, k)] = counts.get((name, k), 0) + 1
        return real(folder, name, k, result_json, best_module)

    monkeypatch.setattr(runner, "write_run", counting)
    return counts


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, client, tiny_serial, tiny_data, tiny_parent,
                                                         monkeypatch):
    def task(job, *args):
        if (job["name"], job["k"]) == ("p", 1):
            raise RuntimeError("injected failure")
        if (job["name"], job["k"]) == ("w", 1):  # an error whose traceback is too deep to pickle
            def down(n):
                return down(n + 1)
            down(0)
        return run_task(job, *args)

    counts = written_once(monkeypatch)
    errors, lines = [], []
    exps = tiny_experiments(tmp_path / "out", runs=3)
    report = run_experiments(exps, tiny_parent, tiny_data, ClusterExecutor(client, task=task), log=lines.append,
                             log_error=errors.append, details=True)
    failed = {(f.name, f.run): f.error for f in report.failures}
    assert failed == {("p", 1): "RuntimeError: injected failure",
                      ("w", 1): "RecursionError: maximum recursion depth exceeded"}
    lines_failed = [e for e in errors if " failed: " in e]
    assert len(lines_failed) == 2 and any("p run 2/3" in e and "injected failure" in e for e in lines_failed)
    # with details (run.py --debug), each is followed by the end of the worker's traceback
    tracebacks = [e for e in errors if e.startswith("traceback (end):")]
    assert len(tracebacks) == 2 and len(errors) == 4
    assert any("in task" in t and t.endswith("RuntimeError: injected failure") for t in tracebacks)
    assert any("in down" in t and t.endswith("RecursionError: maximum recursion depth exceeded") for t in tracebacks)
    assert counts == {(name, k): 1 for name in ("w", "p") for k in (0, 2)}
    assert len([line for line in lines if line.startswith("[")]) == 4
    for name in ("w", "p"):
        assert not (tmp_path / "out" / name / "summary.json").exists()
        assert not (tmp_path / "out" / name / "run_1.json").exists()
        assert not (tmp_path / "out" / name / "run_1.pt").exists()

    # --resume runs only the failed runs; then every file is the serial one
    again = run_experiments(tiny_experiments(tmp_path / "out", runs=3), tiny_parent, tiny_data, ClusterExecutor(client),
                            resume=True, log=lines.append)
    assert again.total == 2 and sorted(again.written) == [("p", 1), ("w", 1)] and len(again.skipped) == 4
    assert not again.failures
    assert_same_results(tiny_serial, tmp_path / "out", ["w", "p"], 3)


def test_a_worker_killed_mid_run_ends_with_every_run_written_once(tmp_path, client, tiny_serial, tiny_data,
                                                                  tiny_parent, monkeypatch):
    markers = tmp_path / "started"
    markers.mkdir()

    def task(job, *args):
        (markers / f"{job['name']}-{job['k']}-{os.getpid()}").touch()
        time.sleep(1.0)  # a window where the run is surely in progress
        return run_task(job, *args)

    killed = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            started = sorted(markers.iterdir())
            if started:
                pid = int(started[0].name.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(started[0].name)
            time.sleep(0.05)

    counts = written_once(monkeypatch)
    exps = tiny_experiments(tmp_path / "out", runs=3)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    report = run_experiments(exps, tiny_parent, tiny_data, ClusterExecutor(client, task=task), log=lambda s: None)
    thread.join(timeout=60)
    assert killed, "no worker was killed"
    assert not report.failures
    assert counts == {(name, k): 1 for name in ("w", "p") for k in range(3)}
    name, k, _ = killed[0].split("-")
    assert len(list(markers.glob(f"{name}-{k}-*"))) == 2  # the killed run was started again
    assert no_temporary_files(tmp_path / "out")
    assert_same_results(tiny_serial, tmp_path / "out", ["w", "p"], 3)
    client.wait_for_workers(2, timeout=60)


def test_a_run_whose_worker_dies_resumes_from_its_last_checkpoint_on_another_worker(tmp_path, client, tiny_data,
                                                                                    tiny_parent):
    """Checkpoints of a cluster run live in the scheduler: the task Dask starts again after
    its worker was killed resumes from the last one, and the files are an uninterrupted
    run's."""
    from distributed import Variable

    long = dict(generations=6, epochs=8)  # 48 generations, a checkpoint after each
    markers = tmp_path / "started"
    markers.mkdir()

    def task(job, *args):
        (markers / f"{job['name']}-{job['k']}-{os.getpid()}").touch()
        return run_task(job, *args)

    exps = tiny_experiments(tmp_path / "out", runs=1, checkpoint_every=1, **long)
    executor = ClusterExecutor(client, task=task, tag="killed")
    key = executor.checkpoint_key(exps[0].job(0))
    killed = []

    def killer():
        variable, deadline = Variable(key, client), time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            try:
                variable.get(timeout=0.05)  # the run has checkpointed at least once
            except TimeoutError:
                continue
            pid = int(next(markers.glob("w-0-*")).name.rsplit("-", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    lines = []
    report = run_experiments(exps, tiny_parent, tiny_data, executor, log=lines.append)
    thread.join(timeout=60)
    assert killed, "no worker was killed"
    assert not report.failures and len(report.written) == 2
    assert len(list(markers.glob("w-0-*"))) == 2  # started again, on another worker
    done = next(line for line in lines if "] w run 1/1" in line)
    assert "(resumed from generation " in done, done
    assert int(done.rsplit("(resumed from generation ", 1)[1].rstrip(")")) >= 1
    serial = tmp_path / "serial"
    run_here(tiny_experiments(serial, runs=1, **long), tiny_parent, tiny_data)
    assert_same_results(serial, tmp_path / "out", ["w", "p"], 1)
    assert no_temporary_files(tmp_path / "out")
    client.wait_for_workers(2, timeout=60)


def test_an_interrupted_cluster_run_leaves_its_checkpoint_for_resume(tmp_path, client, tiny_data, tiny_parent):
    """A stop request (SIGINT/SIGTERM on the driver) cancels the cluster's work and
    writes each unfinished run's last checkpoint to run_K.ckpt; --resume continues
    from it to the uninterrupted result."""
    from distributed import Variable

    from ecomp_deap.study.runner import RunInterrupted

    long = dict(generations=6, epochs=8)
    exps = tiny_experiments(tmp_path / "out", runs=1, checkpoint_every=1, **long)[:1]
    executor = ClusterExecutor(client, tag="stopped")
    key = executor.checkpoint_key(exps[0].job(0))

    def stop_after_a_checkpoint():
        variable, deadline = Variable(key, client), time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                variable.get(timeout=0.05)
            except TimeoutError:
                continue
            os.kill(os.getpid(), signal.SIGTERM)  # the driver's stop request
            return

    thread = threading.Thread(target=stop_after_a_checkpoint, daemon=True)
    thread.start()
    with pytest.raises(RunInterrupted):
        run_experiments(exps, tiny_parent, tiny_data, executor, log=lambda s: None)
    thread.join(timeout=60)
    folder = tmp_path / "out" / "w"
    assert (folder / "run_0.ckpt").exists() and not (folder / "run_0.json").exists()
    lines = []
    report = run_experiments(exps, tiny_parent, tiny_data, ClusterExecutor(client), resume=True, log=lines.append)
    assert report.written == [("w", 0)] and "(resumed from generation " in lines[-1]
    serial = tmp_path / "serial"
    run_here(tiny_experiments(serial, runs=1, **long)[:1], tiny_parent, tiny_data)
    assert_same_results(serial, tmp_path / "out", ["w"], 1)
    assert no_temporary_files(tmp_path / "out")


@pytest.mark.parametrize("tasks,cores,given,expected", [
    (1, 2, {}, ("serial", 1, 2)),  # this machine: one run, both cores as threads
    (20, 2, {}, ("serial", 1, 2)),  # measured faster here than two one-thread runs side by side
    (20, 3, {}, ("serial", 1, 3)),
    (1, 16, {}, ("serial", 1, 8)),  # one run alone: threads, at most MAX_THREADS
    (20, 16, {}, ("local", 8, 2)),  # many runs: processes of RUN_THREADS threads
    (3, 16, {}, ("local", 3, 5)),  # fewer runs than worker slots: the cores shared among them
    (20, 2, {"threads": 1}, ("local", 2, 1)),  # one thread asked for: runs fill the cores
    (20, 16, {"workers": 4}, ("local", 4, 4)),
    (20, 16, {"executor": "serial"}, ("serial", 1, 8)),
    (20, 16, {"executor": "local", "threads": 3}, ("local", 5, 3)),
    (20, 16, {"executor": "dask"}, ("dask", 0, 1)),  # someone else's machines: 1 unless told
    (20, 16, {"executor": "dask", "threads": 4}, ("dask", 0, 4)),
])
def test_default_use_of_the_cores(tasks, cores, given, expected):
    from ecomp_deap.study.executors import plan_cores

    plan = plan_cores(tasks, cores, **given)
    assert (plan.executor, plan.workers, plan.threads) == expected
    assert plan.describe()


def test_a_graph_parent_runs_on_the_cluster_as_here(tmp_path, client):
    """A residual parent is rebuilt on the workers from its spec (its state dict shipped
    as tensors) and its runs write the files a serial run writes; a graph parent with
    no way to rebuild it elsewhere is refused in one line before anything runs."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from ecomp_deap.errors import ConfigError
    from ecomp_deap.nets.parents import ParentSpec, train_parent
    from ecomp_deap.nets.reader import read_parent
    from ecomp_deap.search.run import check_data
    from ecomp_deap.study.runner import SerialExecutor

    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = torch.randn(4, 1, 12, 12, generator=g)[y] + 0.8 * torch.randn(400, 1, 12, 12, generator=g)
    data = SimpleNamespace(train_x=x[:300], train_y=y[:300], test_x=x[300:], test_y=y[300:],
                           fingerprint="synthetic", source="synthetic")
    spec = ParentSpec(arch="resnet", channels=(4, 6), blocks=1, hidden=(), in_features=144, n_classes=4, epochs=1,
                      batch_size=50)
    model = train_parent(spec, data.train_x, data.train_y, progress=False)
    parent = read_parent(model, data.train_x, {"kind": "spec", "spec": asdict(spec)})
    assert parent.is_graph
    data = check_data(parent, data, allow_weak_parent=True)  # one epoch: near chance; the cluster is the point
    settings = dict(TINY, generations=3, val_size=40, mutation="units")

    def experiments(out):
        return [Experiment("w", EcompConfig(selection="weighted", **settings), 2, 0, out, 25)]

    run_experiments(experiments(tmp_path / "serial"), parent, data, SerialExecutor(), log=lambda s: None)
    report = run_experiments(experiments(tmp_path / "cluster"), parent, data, ClusterExecutor(client),
                             log=lambda s: None)
    assert not report.failures and len(report.written) == 2
    assert_same_results(tmp_path / "serial", tmp_path / "cluster", ["w"], 2)

    homeless = read_parent(model, data.train_x)  # no source: the workers could not rebuild it
    with pytest.raises(ConfigError, match="can only run here"):
        run_experiments(experiments(tmp_path / "refused"), homeless, data, ClusterExecutor(client), log=lambda s: None)
    assert not (tmp_path / "refused").exists()

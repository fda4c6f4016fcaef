"""One run per output folder at a time: a lock held for the run's lifetime; a second
run stops with one line naming the holder's pid and host; a lock left by a killed run
is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import REPO, make_tiny_data
from helpers import SMALL, run_script

from ecomp_deap.config import EcompConfig
from ecomp_deap.study.experiment import Experiment
from ecomp_deap.study.lock import FolderBusy, FolderLock, folder_holder
from ecomp_deap.study.runner import SerialExecutor, run_experiments

TINY = EcompConfig(selection="nsga2", pop_size=8, generations=3, batch_size=30, perplexity=5.0, val_size=60,
                   device="cpu", embedding_layers=None, recombination_layers=None)
HOLD = """
import sys, time
from ecomp_deap.study.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_in_another_process(folder):
    """A process that takes ``folder``'s lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_lock_names_the_first_and_release_leaves_nothing(tmp_path):
    folder = tmp_path / "out" / "name"
    with FolderLock(folder):
        holder = json.loads((folder / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(FolderBusy) as e:
            FolderLock(folder).acquire()
        assert str(e.value).startswith(f"{folder} is in use by another run (pid {os.getpid()} on host "
                                       f"{socket.gethostname()}, since ")
        assert "another --out or --name" in str(e.value) and len(str(e.value).splitlines()) == 1
        with FolderLock(tmp_path / "out" / "other"):  # another name under the same --out: no conflict
            pass
    assert not (tmp_path / "out").exists()  # the lock made the folders; empty, they went with it
    FolderLock(folder).acquire().release()


def test_a_lock_held_by_a_live_process_refuses_and_a_killed_ones_is_taken_over(tmp_path):
    folder = tmp_path / "w"
    proc = hold_in_another_process(folder)
    try:
        assert f"pid {proc.pid} on host {socket.gethostname()}" in folder_holder(folder)
        with pytest.raises(FolderBusy, match=f"pid {proc.pid} on host"):
            FolderLock(folder).acquire()
    finally:
        kill(proc)
    assert json.loads((folder / ".lock").read_text())["pid"] == proc.pid  # left behind by the killed process
    assert folder_holder(folder) is None
    with FolderLock(folder):
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    assert not (folder / ".lock").exists()


def test_a_lock_file_from_another_host_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2026-01-01 00:00:00"}))
    with pytest.raises(FolderBusy) as e:
        FolderLock(folder).acquire()
    assert "pid 4242 on host elsewhere" in str(e.value) and f"delete {folder / '.lock'}" in str(e.value)


def test_run_experiments_refuses_a_held_folder_before_touching_it(tmp_path, tiny_parent):
    exp = Experiment("w", TINY, runs=1, seed=0, out=tmp_path)
    exp.folder.mkdir()
    (exp.folder / "run_0.json").write_text("{}")
    proc = hold_in_another_process(exp.folder)
    try:
        with pytest.raises(FolderBusy, match=f"pid {proc.pid}"):
            run_experiments([exp], tiny_parent, make_tiny_data(), SerialExecutor(progress=False), overwrite=True,
                            log=lambda s: None)
        assert sorted(p.name for p in exp.folder.iterdir()) == [".lock", "run_0.json"]  # nothing cleared
    finally:
        kill(proc)
    report = run_experiments([exp], tiny_parent, make_tiny_data(), SerialExecutor(progress=False), overwrite=True,
                             log=lambda s: None)
    assert report.written == [("w", 0)]
    assert sorted(p.name for p in exp.folder.iterdir()) == ["run_0.json", "run_0.pt", "summary.csv", "summary.json"]


def test_cli_a_second_run_into_a_held_folder_is_one_line_exit_2_before_any_work(tmp_path):
    folder = tmp_path / "out" / "pareto121"
    folder.mkdir(parents=True)
    (folder / "run_0.json").write_text("{}")
    proc = hold_in_another_process(folder)  # as a run.py in progress holds it
    try:
        p = run_script("experiments/run.py", "--name", "pareto121", *SMALL, "--out", tmp_path / "out", "--overwrite",
                       "--data-dir", tmp_path / "no-data")
    finally:
        kill(proc)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0] == (f"error: {folder} is in use by another run (pid {proc.pid} on host {socket.gethostname()}, "
                        f"since {json.loads((folder / '.lock').read_text())['started']}); wait for it to finish, "
                        "or use another --out or --name")
    assert "data:" not in p.stdout and (folder / "run_0.json").read_text() == "{}"

"""A full disk or a failed write stops the runs with one line naming the file and the
error, no traceback; the last checkpoint and every finished result stay intact, and
``--resume`` continues once space is back. Failures are injected (ENOSPC from fsync,
where a full disk reports what the page cache could not place) and, where this machine
lets a test mount one, come from a real full tmpfs."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO
from helpers import SMALL, run_here, run_script

from ecomp_deap import files
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import WriteError
from ecomp_deap.study import runner
from ecomp_deap.study.checkpoint import FileStore, read_checkpoint
from ecomp_deap.study.experiment import Experiment
from ecomp_deap.study.runner import SerialExecutor, run_experiments

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file written")

TINY = EcompConfig(selection="nsga2", pop_size=8, generations=6, batch_size=30, perplexity=5.0, val_size=60,
                   device="cpu", embedding_layers=None, recombination_layers=None)
ENOSPC = "No space left on device [ENOSPC]"
# loaded by every Python started with this folder on PYTHONPATH: fsync of a file whose
# name holds $ENOSPC_MATCH fails with ENOSPC after $ENOSPC_AFTER successful ones
SITECUSTOMIZE = """
import errno, os
_real, _seen = os.fsync, [0]
def _fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if os.environ["ENOSPC_MATCH"] in os.path.basename(path):
        _seen[0] += 1
        if _seen[0] > int(os.environ["ENOSPC_AFTER"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real(fd)
os.fsync = _fsync
"""


def fail_writes(monkeypatch, match: str, after: int) -> None:
    """fsync of a file whose name holds ``match`` fails with ENOSPC after ``after`` successes."""
    real, seen = os.fsync, [0]

    def fsync(fd):
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            name = ""
        if match in name:
            seen[0] += 1
            if seen[0] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def experiments(out: Path) -> list[Experiment]:
    return [Experiment("p", TINY, runs=2, seed=0, out=out, checkpoint_every=1)]


def result(path: Path) -> dict:
    body = json.loads(path.read_text())
    body.pop("wall_time_s")
    body.pop("phase_times_s")
    return body


def assert_same_runs(a: Path, b: Path) -> None:
    for k in range(2):
        assert result(a / "p" / f"run_{k}.json") == result(b / "p" / f"run_{k}.json"), k
        sa = torch.load(a / "p" / f"run_{k}.pt", weights_only=True)["state_dict"]
        sb = torch.load(b / "p" / f"run_{k}.pt", weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data, tiny_parent):
    """The uninterrupted runs."""
    out = tmp_path_factory.mktemp("reference")
    run_here(experiments(out), tiny_parent, tiny_data)
    return out


def test_a_failed_write_is_one_line_naming_the_file_and_keeps_the_file_before(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    files.save_json(path, {"v": 1})
    fail_writes(monkeypatch, "r.json", after=0)
    with pytest.raises(WriteError) as e:
        files.save_json(path, {"v": 2})
    assert str(e.value) == f"cannot write {path}: {ENOSPC}"
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    monkeypatch.undo()

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(WriteError, match=r"cannot write .*r\.json: Read-only file system \[EROFS\]"):
        files.save_torch(path, {"v": 3})  # torch's writer too: serialised first, then written as bytes
    assert json.loads(path.read_text()) == {"v": 1}


def test_a_full_disk_mid_run_stops_every_run_and_resume_finishes_them(tmp_path, reference, tiny_data, tiny_parent,
                                                                      monkeypatch):
    out = tmp_path / "out"
    fail_writes(monkeypatch, "run_1.ckpt", after=3)  # run 1's fourth checkpoint meets a full disk
    with pytest.raises(WriteError) as e:
        run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), log=lambda s: None)
    line = str(e.value)
    assert line.startswith(f"cannot write {out / 'p' / 'run_1.ckpt'}: {ENOSPC}; the runs stopped") and "--resume" in line
    assert len(line.splitlines()) == 1
    # run 0 finished and is intact; run 1 keeps its last checkpoint (generation 3); nothing else
    assert sorted(p.name for p in (out / "p").iterdir()) == ["run_0.json", "run_0.pt", "run_1.ckpt"]
    assert result(out / "p" / "run_0.json") == result(reference / "p" / "run_0.json")
    assert read_checkpoint(FileStore(out / "p" / "run_1.ckpt").load(), experiments(out)[0].run_config(1), "c")["t"] == 3

    monkeypatch.undo()  # space is back
    lines = []
    report = run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True,
                             log=lines.append)
    assert report.written == [("p", 1)] and report.skipped == [("p", 0)]
    assert any("resumed from generation 3" in line for line in lines)
    assert_same_runs(reference, out)


def test_a_full_disk_when_writing_a_result_keeps_the_checkpoint_to_resume_from(tmp_path, reference, tiny_data,
                                                                               tiny_parent, monkeypatch):
    out = tmp_path / "out"
    fail_writes(monkeypatch, "run_1.json", after=0)
    with pytest.raises(WriteError, match=r"cannot write .*run_1\.json: No space left on device \[ENOSPC\]"):
        run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), log=lambda s: None)
    names = sorted(p.name for p in (out / "p").iterdir())
    assert names == ["run_0.json", "run_0.pt", "run_1.ckpt", "run_1.pt"]  # no run_1.json: the run is not finished
    monkeypatch.undo()
    report = run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True,
                             log=lambda s: None)
    assert report.written == [("p", 1)]
    assert_same_runs(reference, out)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, unmounted after the test; skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write a file into ``disk`` until it is full; returns it."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_real_full_disk(small_disk, reference, tiny_data, tiny_parent, monkeypatch):
    out = small_disk / "out"
    saves = [0]

    class FillingStore(FileStore):  # fills the disk once run 1 has written two checkpoints
        def save(self, data: bytes) -> None:
            super().save(data)
            if self.path.name == "run_1.ckpt":
                saves[0] += 1
                if saves[0] == 2:
                    fill(small_disk)

    monkeypatch.setattr(runner, "FileStore", FillingStore)
    with pytest.raises(WriteError) as e:
        run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), log=lambda s: None)
    assert str(e.value).startswith(f"cannot write {out / 'p' / 'run_1.ckpt'}: {ENOSPC}")
    assert sorted(p.name for p in (out / "p").iterdir()) == ["run_0.json", "run_0.pt", "run_1.ckpt"]
    assert result(out / "p" / "run_0.json") == result(reference / "p" / "run_0.json")
    (small_disk / "filler").unlink()
    monkeypatch.undo()
    report = run_experiments(experiments(out), tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True,
                             log=lambda s: None)
    assert report.written == [("p", 1)]
    assert_same_runs(reference, out)


def test_cli_full_disk_is_one_line_exit_2_and_resume_finishes(tmp_path, cache_dir):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    common = ["--name", "pareto121", *SMALL, "--cache-dir", cache_dir, "--out", tmp_path / "out",
              "--checkpoint-every", "1"]
    env = {"PYTHONPATH": os.pathsep.join([str(inject), str(REPO)]), "ENOSPC_MATCH": "run_0.ckpt", "ENOSPC_AFTER": "1"}
    p = run_script("experiments/run.py", *common, env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    folder = tmp_path / "out" / "pareto121"
    assert lines[0].startswith(f"error: cannot write {folder / 'run_0.ckpt'}: {ENOSPC}; the runs stopped")
    assert lines[0].endswith("run the same command with --resume")
    assert sorted(p.name for p in folder.iterdir()) == ["run_0.ckpt"]  # generation 1's
    p = run_script("experiments/run.py", *common, "--resume")
    assert p.returncode == 0, p.stderr
    assert "resuming from generation 1" in p.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["run_0.json", "run_0.pt", "summary.csv", "summary.json"]

"""Interruption, resume, atomic files, and numerical robustness."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import SMALL

from ecomp_deap import files
from ecomp_deap.study import results

LONG = [a if a != "3" else "40" for a in SMALL]  # 40 generations: long enough to interrupt


def start(*args):
    return subprocess.Popen([sys.executable, str(REPO / "experiments/run.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def without_time(path):
    d = json.loads(path.read_text())
    d.pop("wall_time_s")
    d.pop("phase_times_s")  # timings, like wall_time_s
    return d


@pytest.mark.parametrize("selection", ["weighting121", "pareto121"])
def test_sigterm_then_resume_equals_uninterrupted_bit_for_bit(tmp_path, cache_dir, selection):
    common = ["--name", selection, "--runs", "1", *LONG, "--cache-dir", cache_dir, "--checkpoint-every", "1"]
    p = start(*common, "--out", tmp_path / "a")
    folder = tmp_path / "a" / selection
    wait_for(folder / "run_0.ckpt", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "resume with:" in err and "--resume" in err
    assert not (folder / "run_0.json").exists()
    r = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), *map(str, common), "--out",
                        tmp_path / "a", "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming from generation" in r.stdout
    u = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), *map(str, common), "--out", tmp_path / "b"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert u.returncode == 0, u.stderr
    assert without_time(folder / "run_0.json") == without_time(tmp_path / "b" / selection / "run_0.json")
    a = torch.load(folder / "run_0.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / selection / "run_0.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (folder / "run_0.ckpt").exists()


def test_sigkill_leaves_every_file_valid(tmp_path, cache_dir):
    p = start("--name", "weighting121", "--runs", "3", *LONG, "--cache-dir", cache_dir, "--checkpoint-every", "1",
              "--out", tmp_path)
    folder = tmp_path / "weighting121"
    wait_for(folder / "run_1.ckpt", p)
    time.sleep(0.3)
    p.kill()
    p.communicate()
    files = [f for f in folder.iterdir()]
    assert any(f.name == "run_0.json" for f in files)
    for f in files:
        assert not f.name.endswith(".tmp") or f.name.startswith("."), f
        if f.suffix == ".json":
            results.load_run(f)
        elif f.suffix in (".pt", ".ckpt"):
            torch.load(f, map_location="cpu", weights_only=True)  # checkpoints too: plain data only
    # a resume finishes the experiment from there
    r = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), "--name", "weighting121", "--runs", "3",
                        *map(str, LONG), "--cache-dir", str(cache_dir), "--out", str(tmp_path), "--resume"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(results.run_files(folder)) == 3


def test_atomic_writer_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    files.save_json(path, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        files.save_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left

    monkeypatch.undo()

    def failing_write(f):
        f.write(b"{partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, failing_write)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_degenerate_individuals_and_extreme_weights_give_finite_measures():
    from ecomp_deap.config import EcompConfig
    from ecomp_deap.fitness.evaluator import PopulationEvaluator
    from ecomp_deap.nets.parents import build_mlp
    from ecomp_deap.nets.reader import read_parent
    from ecomp_deap.search.genome import fitness_weights, make_types

    torch.manual_seed(0)
    parent = read_parent(build_mlp((16, 12), in_features=10, n_classes=3))
    w, b = list(parent.weights), list(parent.biases)
    _, ind_cls = make_types(fitness_weights("weighted", (1, 2, 1)))
    one_unit = [torch.zeros(16, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)]
    one_unit[0][3] = one_unit[1][5] = True
    dead = [t.clone() for t in w]
    dead[0] = torch.full_like(w[0], -1.0)  # every first-layer unit dead for positive inputs
    huge = [t * 1e6 for t in w]
    pop = [ind_cls(one_unit, w, b), ind_cls([torch.ones(16, dtype=torch.bool), torch.ones(12, dtype=torch.bool)], dead,
                                            [torch.full_like(b[0], -5.0), b[1], b[2]]),
           ind_cls([torch.ones(16, dtype=torch.bool), torch.ones(12, dtype=torch.bool)], huge, b)]
    x = torch.rand(40, 10)
    x[20:] = x[0]  # identical rows
    for kernel in ("gaussian", "student_t"):
        ev = PopulationEvaluator(parent, EcompConfig(perplexity=5.0, kernel=kernel, embedding_layers=None,
                                                     recombination_layers=None))
        m = ev.measure(pop, x, torch.randint(0, 3, (40,)))
        m.check_finite()
        assert np.all(m.similarity >= 0)


def test_a_non_finite_measure_stops_the_run_naming_individual_and_measure():
    from ecomp_deap.fitness.measures import Measures, NonFiniteError

    m = Measures(np.array([0.5, 0.6]), np.array([0.5, 0.5]), np.array([0.1, np.nan]))
    with pytest.raises(NonFiniteError, match="individual 1: similarity is nan"):
        m.check_finite()

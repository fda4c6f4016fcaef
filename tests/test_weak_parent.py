"""A parent at chance level on the user's data is refused before any search (one line,
the measured accuracy, the usual causes, the way to go on), and the parent's accuracy
on the user's data is printed and stored in every result."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_data
from helpers import SMALL, run_script

import ecomp_deap
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import WeakParentError
from ecomp_deap.nets.parent_accuracy import weak_below
from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.search import run as run_module
from ecomp_deap.search.run import run_ecomp

CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                  pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0, device="cpu")
DATA = make_tiny_data()  # 4 balanced classes: the tiny parent scores 1.0 on it


def no_search(monkeypatch):
    """Make any search fail loudly: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the search ran")

    monkeypatch.setattr(run_module.EcompRun, "evolve", refuse)


# the ways a user's data can differ from the parent's, and what the parent then scores
MISTAKES = {
    "inputs scaled down (a 0-255 parent given [0, 1] inputs)": lambda x, y: (x / 255, y),
    "labels in another order": lambda x, y: (x, (y + 1) % 4),
    "labels reversed": lambda x, y: (x, 3 - y),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_compress_refuses_a_parent_at_chance_level_on_the_given_val_data(tiny_parent, mistake, monkeypatch):
    no_search(monkeypatch)
    vx, vy = MISTAKES[mistake](DATA.test_x[:200], DATA.test_y[:200])
    with pytest.raises(WeakParentError) as e:
        ecomp_deap.compress(tiny_parent, train=(DATA.train_x, DATA.train_y), val=(vx, vy),
                            test=(DATA.test_x[200:], DATA.test_y[200:]), config=CFG, progress=False)
    line = str(e.value)
    assert len(line.splitlines()) == 1
    assert line.startswith("the parent's accuracy on the val data is 0.") and "(200 examples)" in line
    assert "at chance level (0.2500" in line and "of its 4 classes" in line
    assert "scaled" in line and "labels in another order" in line and "channels-last" in line
    assert line.endswith("use allow_weak_parent=True")


def test_compress_measures_the_training_data_without_val_and_goes_on_when_allowed(tiny_parent, capsys):
    x, y = MISTAKES["labels in another order"](DATA.train_x, DATA.train_y)
    with pytest.raises(WeakParentError, match=r"on the train data is 0\.0000 \(1200 examples\)"):
        ecomp_deap.compress(tiny_parent, train=(x, y), test=(DATA.test_x, DATA.test_y), config=CFG, progress=False)
    result = ecomp_deap.compress(tiny_parent, train=(x, y), test=(DATA.test_x, DATA.test_y), config=CFG,
                                 allow_weak_parent=True)
    assert result.run.parent["data_accuracy"] == 0.0
    assert result.run.parent["data_accuracy_on"] == "train" and result.run.parent["data_accuracy_examples"] == 1200
    assert "parent: accuracy 0.0000 on 1200 train examples (chance 0.2500)" in capsys.readouterr().err


def test_a_good_parents_accuracy_on_the_users_data_is_printed_and_stored(tiny_parent, capsys):
    result = ecomp_deap.compress(tiny_parent, train=(DATA.train_x, DATA.train_y),
                                 val=(DATA.test_x[:150], DATA.test_y[:150]), test=(DATA.test_x, DATA.test_y),
                                 config=CFG)
    expected = float((tiny_parent(DATA.test_x[:150]).argmax(1) == DATA.test_y[:150]).float().mean())
    parent = result.run.to_json()["parent"]
    assert parent["data_accuracy"] == pytest.approx(expected) and expected > 0.9
    assert parent["data_accuracy_on"] == "val" and parent["data_accuracy_examples"] == 150
    assert {"test_accuracy", "hidden_units", "parameters", "macs"} <= set(parent)  # the fields before, unchanged
    assert f"parent: accuracy {expected:.4f} on 150 val examples" in capsys.readouterr().err


def test_run_ecomp_refuses_too_and_a_large_set_is_measured_on_a_seeded_sample(tiny_parent, monkeypatch):
    data = make_tiny_data(n_train=7000)
    data.train_y = 3 - data.train_y
    with pytest.raises(WeakParentError, match=r"train data is 0\.0000 \(5000 examples\)"):
        run_ecomp(CFG, tiny_parent, data, progress=False)
    r = run_ecomp(CFG.replace(generations=2), tiny_parent, data, progress=False, allow_weak_parent=True)
    assert r.parent["data_accuracy"] == 0.0 and r.parent["data_accuracy_examples"] == 5000


def test_the_threshold_is_near_chance_whatever_the_number_of_classes():
    assert weak_below(0.1) == pytest.approx(0.15)  # 10 balanced classes: 1.5 x chance
    assert weak_below(0.5) == pytest.approx(0.55)  # 2 classes: a tenth of the way from chance to 1
    assert weak_below(0.01) == pytest.approx(0.015)
    assert weak_below(0.9) == pytest.approx(0.91)  # 90 % of one class: always guessing it scores 0.9


def test_data_of_one_label_cannot_tell_and_is_not_refused(tiny_parent):
    x = DATA.train_x[DATA.train_y == 0][:100]
    y = torch.full((100,), 1)  # wrong, but a parent cannot be judged on one class
    result = ecomp_deap.compress(tiny_parent, train=(DATA.train_x, DATA.train_y), val=(x, y),
                                 test=(DATA.test_x, DATA.test_y), config=CFG.replace(weights=(1, 0, 1)),
                                 progress=False)
    assert result.run.parent["data_accuracy"] == 0.0


# ------------------------------------------------------------------ run.py
def test_cli_weak_parent_is_one_line_exit_2_and_allow_weak_parent_goes_on(tmp_path, cache_dir):
    """An untrained parent, at chance on FashionMNIST: refused in one line before any
    work; with --allow-weak-parent the run goes on, its accuracy logged and stored."""
    torch.manual_seed(0)
    untrained = tmp_path / "untrained.pt"
    torch.save(build_mlp((8, 6)).state_dict(), untrained)
    common = ["--name", "pareto121", *SMALL, "--cache-dir", cache_dir, "--parent", untrained]
    p = run_script("experiments/run.py", *common, "--out", tmp_path / "out")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error: the parent's accuracy on the train data is 0.")
    assert "(5000 examples)" in lines[0] and lines[0].endswith("use --allow-weak-parent")
    assert not (tmp_path / "out").exists()

    p = run_script("experiments/run.py", *common, "--out", tmp_path / "out", "--allow-weak-parent")
    assert p.returncode == 0, p.stderr
    logged = next(line for line in p.stdout.splitlines() if line.startswith("parent: accuracy "))
    stored = json.loads((tmp_path / "out" / "pareto121" / "run_0.json").read_text())["parent"]
    assert f"parent: accuracy {stored['data_accuracy']:.4f} on 5000 train examples" in logged
    summary = json.loads((tmp_path / "out" / "pareto121" / "summary.json").read_text())
    assert summary["parent"]["data_accuracy"] == stored["data_accuracy"]

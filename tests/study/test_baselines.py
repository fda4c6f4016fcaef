import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from ecomp_deap.nets.chain import Chain, parent_tensors
from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.indicators import knee_point
from ecomp_deap.search.scores import unit_scores
from ecomp_deap.study.pruning_baselines import baseline_curves, keep_counts, pruned


@pytest.mark.parametrize("method", ["l1", "random", "activation"])
def test_baselines_keep_exactly_the_requested_unit_counts(method):
    torch.manual_seed(0)
    parent = read_parent(build_mlp((40, 9, 23), in_features=12, n_classes=3))
    arch, w, b = parent.net, parent.weights, parent.biases
    scores = unit_scores(method, arch, w, b, torch.randn(50, 12), torch.Generator().manual_seed(0))
    for size in (0.1, 0.25, 0.5, 0.75, 0.9):
        ind = pruned(parent, scores, size)
        assert ind.hidden_units() == [max(1, round(size * h)) for h in (40, 9, 23)] == keep_counts(arch, size)


def test_l1_and_activation_scores_rank_what_they_say():
    torch.manual_seed(1)
    model = build_mlp((6,), in_features=4, n_classes=2)
    arch = Chain.from_module(model)
    w, b, _ = parent_tensors(model, arch)
    w[0][2] *= 100  # unit 2: huge incoming weights
    l1 = unit_scores("l1", arch, w, b)
    assert int(l1[0].argmax()) == 2
    w[1][:, 4] *= 100  # unit 4: huge outgoing weights (and it is active)
    b[0][4] = 10.0
    act = unit_scores("activation", arch, w, b, torch.randn(30, 4))
    assert int(act[0].argmax()) == 4


def test_baseline_curves_on_a_tiny_parent(tiny_data, tiny_parent):
    curves = baseline_curves(tiny_parent, [0.25, 0.5, 1.0], tiny_data.test_x, tiny_data.test_y,
                             tiny_data.train_x[:200], seeds=3)
    assert set(curves) == {"l1", "random", "activation"}
    full = [c[-1]["test_accuracy"] for c in curves.values()]
    assert len(set(full)) == 1  # all units kept: every method is the parent
    assert curves["random"][0]["repeats"] == 3 and curves["l1"][0]["test_accuracy_std"] == 0.0


def test_knee_of_a_known_front():
    # (accuracy, compression): the corner at (0.9, 0.3) is the knee
    front = [[0.95, 1.0], [0.9, 0.3], [0.5, 0.2], [0.1, 0.05]]
    assert knee_point(front, (1, -1)) == 1
    assert knee_point([[0.9, 0.5]], (1, -1)) == 0


def test_baselines_script_writes_the_plot_format(tmp_path, fashion, fashion_parent):
    torch.save(fashion_parent.model.state_dict(), tmp_path / "parent.pt")
    p = subprocess.run([sys.executable, str(REPO / "experiments/baselines.py"), "--parent", str(tmp_path / "parent.pt"),
                        "--out", str(tmp_path), "--sizes", "0.25", "0.75", "0.25", "--seeds", "2", "--subset", "1000"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "baselines" / "baselines.json").read_text())
    assert data["schema"] == "ecomp_deap.baselines/1" and data["sizes"] == [0.25, 0.5, 0.75]
    assert [pt["hidden_units"] for pt in data["methods"]["l1"]] == [[8, 8], [16, 16], [24, 24]]
    q = subprocess.run([sys.executable, str(REPO / "plots/pareto.py"), str(tmp_path / "baselines"), "--out",
                        str(tmp_path / "plots")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr

"""Fine-tuning (ecomp_deap.study.fine_tuning, experiments/finetune.py) and the size table's
"after N epochs of fine-tuning" columns (experiments/compare.py)."""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import run_here

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError
from ecomp_deap.files import save_json
from ecomp_deap.nets.chain import parent_tensors
from ecomp_deap.nets.export import export_individual
from ecomp_deap.nets.parents import accuracy, build_cnn
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.study.fine_tuning import (
    Recipe,
    fine_tune,
    finetune_baselines,
    finetune_body,
    finetune_indices,
    finetune_parent,
    finetune_runs,
    hidden_widths,
)
from ecomp_deap.study.pruning_baselines import baseline_prunings, keep_counts
from ecomp_deap.study.results import load_experiment

try:
    from fixtures_results import make_all, make_baselines_finetune, make_experiment, make_finetune
except ImportError:  # tests/ imported as a package
    from tests.fixtures_results import make_all, make_baselines_finetune, make_experiment, make_finetune


def pruned_network(parent, size=0.5, method="l1"):
    read = read_parent(parent)
    ind = baseline_prunings(read, method, [size], seeds=1)[0]
    return read.net, ind, export_individual(ind, read.net)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the recipe


def test_fine_tuning_changes_only_the_network_it_is_given_and_keeps_its_size(tiny_parent, tiny_data):
    arch, ind, net = pruned_network(tiny_parent)
    parent_before, genome_before = state(tiny_parent), [t.clone() for t in ind.weights + ind.biases]
    masks_before = [m.clone() for m in ind.masks]
    net_before, widths = state(net), hidden_widths(net)
    rng_before = torch.get_rng_state()
    acc = fine_tune(net, tiny_data.train_x, tiny_data.train_y, Recipe(epochs=(1, 2), seed=3),
                    measure=lambda m: accuracy(m, tiny_data.test_x, tiny_data.test_y))
    assert sorted(acc) == [0, 1, 2] and all(0 <= a <= 1 for a in acc.values())
    # the given network learnt ...
    assert any(not torch.equal(net_before[k], v) for k, v in net.state_dict().items())
    assert acc[2] > acc[0]
    # ... and nothing else moved: the parent, the genome it came from (masks: the sizes), the global RNG
    assert all(torch.equal(parent_before[k], v) for k, v in tiny_parent.state_dict().items())
    assert all(torch.equal(a, c) for a, c in zip(genome_before, ind.weights + ind.biases))
    assert all(torch.equal(a, c) for a, c in zip(masks_before, ind.masks))
    assert torch.equal(rng_before, torch.get_rng_state())
    # sizes as they were: the physically smaller network, every tensor its shape
    assert hidden_widths(net) == widths == ind.hidden_units() == keep_counts(arch, 0.5)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in net_before.items()}
    assert not net.training


def test_fine_tuning_is_seeded(tiny_parent, tiny_data):
    _, _, net = pruned_network(tiny_parent, 0.25)
    a, b, c = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    x, y = tiny_data.train_x[:600], tiny_data.train_y[:600]
    fine_tune(a, x, y, Recipe(epochs=(2,), seed=5))
    torch.manual_seed(123)  # the global state does not matter
    fine_tune(b, x, y, Recipe(epochs=(2,), seed=5))
    fine_tune(c, x, y, Recipe(epochs=(2,), seed=6))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_fine_tuning_a_pruned_cnn_keeps_its_channels_and_batchnorm_sizes():
    torch.manual_seed(0)
    parent = build_cnn(channels=(4, 6), hidden=(8,), in_shape=(1, 8, 8), n_classes=3).eval()
    read = read_parent(parent, torch.zeros(1, 1, 8, 8))
    arch, w = read.net, read.weights
    net = export_individual(baseline_prunings(read, "l1", [0.5], seeds=1)[0], arch)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    x, y = torch.rand(101, 1, 8, 8), torch.arange(101) % 3  # the last batch of one image is skipped
    fine_tune(net, x, y, Recipe(epochs=(1,), batch_size=25))
    assert hidden_widths(net) == [2, 3, 4]
    assert {k: v.shape for k, v in net.state_dict().items()} == shapes
    assert all(torch.equal(a, c) for a, c in zip(w, parent_tensors(parent, arch)[0]))


def test_recipe_errors():
    for bad in (dict(epochs=()), dict(epochs=(0,)), dict(lr=0.0), dict(lr=float("nan")), dict(batch_size=0),
                dict(seed=-1)):
        with pytest.raises(ConfigError, match="fine-tuning"):
            Recipe(**bad).validate()
    assert Recipe(epochs=(5, 1, 5)).epochs == (1, 5)


def test_fine_tuning_images_are_the_training_images_outside_the_validation_split(tiny_data):
    from ecomp_deap.data import make_splits

    cfg = EcompConfig(generations=4, batch_size=50, val_size=200, seed=3)
    idx = finetune_indices(tiny_data.train_y, cfg)
    val = make_splits(tiny_data.train_y, cfg.subset_size, cfg.val_size, cfg.seed).validation
    assert len(idx) == len(tiny_data.train_y) - 200 and not set(idx.tolist()) & set(val.tolist())
    assert len(finetune_indices(tiny_data.train_y, cfg.replace(val_size=0))) == len(tiny_data.train_y)


# --------------------------------------------------------------------------- runs, baselines, parent


def test_runs_baselines_and_parent_fine_tuned_end_to_end_into_the_size_table(tmp_path, tiny_parent, tiny_data):
    from ecomp_deap.study import comparison
    from ecomp_deap.study.experiment import Experiment

    cfg = EcompConfig(selection="nsga2", weights=(1, 0, 1), pop_size=8, generations=4, batch_size=50,
                      perplexity=5.0, val_size=200, device="cpu", embedding_layers=None, recombination_layers=None,
                      kernel="student_t", max_size=0.5)
    run_here([Experiment("tiny", cfg, 2, 0, tmp_path)], tiny_parent, tiny_data)
    runs = load_experiment(tmp_path / "tiny")
    recipe = Recipe(epochs=(1, 2))
    lines = []
    tuned = finetune_runs(tmp_path / "tiny", "tiny", runs, tiny_data, recipe, log=lines.append)
    assert [t["run"] for t in tuned] == [0, 1] and len(lines) == 2 and "-> " in lines[0]
    for t, r in zip(tuned, runs):
        assert t["hidden_units"] == r["best"]["hidden_units"] and t["compression"] <= 0.5
        assert t["after_epochs"]["0"] == pytest.approx(r["best"]["test_accuracy"], abs=1e-9)  # the same network
        assert set(t["after_epochs"]) == {"0", "1", "2"}
        assert t["images"] == len(tiny_data.train_y) - 200
    indices = finetune_indices(tiny_data.train_y, cfg)
    parent = finetune_parent(tiny_parent, tiny_data, indices, recipe, log=lines.append)
    baselines = {"methods": {"l1": [], "random": [], "activation": []}, "random_seeds": 2, "seed": 0,
                 "subset": 400}
    methods = finetune_baselines(tiny_parent, baselines, tiny_data, [0.25, 0.5], indices, recipe, log=lines.append)
    assert [r["hidden_units"] for r in methods["l1"]] == [[4, 3], [8, 6]]
    assert [r["repeats"] for r in methods["random"]] == [2, 2] and methods["random"][0]["after_epochs_std"]["0"] >= 0
    # the unpruned parent, fine-tuned, is the control
    assert parent["hidden_units"] == [16, 12] and set(parent["after_epochs"]) == {"0", "1", "2"}

    body = finetune_body("experiment", recipe, parent, name="tiny", runs=tuned)
    base = finetune_body("baselines", recipe, parent, sizes=[0.25, 0.5], methods=methods)
    rows = comparison.finetune_rows(["tiny"], {"tiny": body}, base, [0.25, 0.5])
    assert [(r["size"], r["epochs"]) for r in rows] == [(s, n) for s in (0.25, 0.5) for n in (0, 1, 2)]
    half_2 = rows[-1]
    assert half_2["tiny"]["median"] == pytest.approx(np.median([t["after_epochs"]["2"] for t in tuned]))
    assert half_2["baseline_l1"] == methods["l1"][1]["after_epochs"]["2"]
    assert half_2["parent_accuracy"] == parent["after_epochs"]["2"]


# --------------------------------------------------------------------------- the size table from saved results


def run_script(script, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def script(name):
    """An experiments/ script as a module, to call its main() in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_size_table_shows_after_n_epochs_of_fine_tuning_columns_from_saved_results(tmp_path):
    paths = make_all(tmp_path, runs=4)
    for name in ("weighted", "nsga2"):
        make_finetune(paths[name], seed=1)
    make_baselines_finetune(paths["baselines"])
    p = run_script("experiments/compare.py", paths["weighted"], paths["nsga2"], "--baselines", paths["baselines"],
                   "--sizes", "0.125", "0.25", "0.5")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "comparison.md").read_text()
    assert "## Test accuracy at a size budget, before and after fine-tuning" in md
    for heading in ("≤ 25 %, not fine-tuned", "≤ 25 %, after 1 epoch of fine-tuning",
                    "≤ 50 %, after 5 epochs of fine-tuning", "≤ 12.5 %, after 5 epochs of fine-tuning"):
        assert heading in md
    assert "Adam (lr 0.001)" in md
    table = md.split("before and after fine-tuning")[1]
    for row in ("| weighting121", "| pareto121", "| l1 pruning", "| random pruning", "| activation pruning",
                "| parent"):
        assert row in table
    # the numbers are those of the files: medians over the runs that are small enough
    tuned = json.loads((paths["nsga2"] / "finetune.json").read_text())
    base = json.loads((paths["baselines"] / "finetune.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "comparison_finetune.csv")))
    assert len(rows) == 3 * 3  # sizes x (0, 1, 5 epochs)
    row = next(r for r in rows if float(r["size"]) == 0.5 and r["epochs"] == "5")
    fits = [e["after_epochs"]["5"] for e in tuned["runs"] if e["compression"] <= 0.5]
    assert int(row["pareto121_runs"]) == len(fits)
    if fits:
        assert float(row["pareto121_median"]) == pytest.approx(np.median(fits))
    assert float(row["baseline_l1"]) == pytest.approx(base["methods"]["l1"][2]["after_epochs"]["5"])
    assert float(row["parent_accuracy"]) == pytest.approx(base["parent"]["after_epochs"]["5"])
    # the table without fine-tuning is still there, as before
    assert "## Test accuracy at a size budget\n" in md


def test_size_table_without_fine_tuning_results_is_unchanged(tmp_path, capsys):
    paths = make_all(tmp_path, runs=3)
    assert script("compare").main([str(paths["weighted"]), str(paths["nsga2"]), "--baselines",
                                   str(paths["baselines"])]) == 0
    assert "fine-tuning" not in (tmp_path / "comparison.md").read_text()
    assert not (tmp_path / "comparison_finetune.csv").exists()


def test_stale_or_mixed_fine_tuning_results_are_refused(tmp_path):
    from ecomp_deap.errors import ResultsError

    main = script("compare").main
    folder = make_experiment(tmp_path, "quality25", "nsga2", runs=2)
    path = make_finetune(folder)
    body = json.loads(path.read_text())
    body["runs"][1]["hidden_units"] = [1, 1]  # the experiment was rerun since
    save_json(path, body)
    with pytest.raises(ResultsError, match="rerun experiments/finetune.py with --overwrite"):
        main([str(folder)])
    make_finetune(folder)
    other = make_experiment(tmp_path, "quality25_nosim", "nsga2", runs=2, seed=3)
    body = json.loads(make_finetune(other).read_text())
    body["recipe"]["lr"] = 0.01
    save_json(other / "finetune.json", body)
    with pytest.raises(ResultsError, match="different recipes"):
        main([str(folder), str(other)])


# --------------------------------------------------------------------------- the command line


def test_finetune_cli_help_and_errors_before_any_work(tmp_path):
    from ecomp_deap.errors import ResultsError

    h = run_script("experiments/finetune.py", "--help")
    assert h.returncode == 0 and "--overwrite" in h.stdout and "after each of --epochs" in h.stdout
    folder = make_experiment(tmp_path, "quality25", "nsga2", runs=2)
    p = run_script("experiments/finetune.py", folder)  # through the command line: one line, exit 2
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "run_0.pt is missing" in lines[0], p.stderr
    main = script("finetune").main
    cases = [((), ConfigError, "give experiment FOLDERs"),
             ((folder, "--sizes", "1.5"), ConfigError, "--sizes"),
             ((tmp_path / "nothing",), ResultsError, "no such results folder")]
    for args, error, expected in cases:
        with pytest.raises(error, match=expected):
            main([str(a) for a in args])
    with pytest.raises(SystemExit):  # argparse: one line, exit 2
        main([str(folder), "--epochs", "0"])
    for k in range(2):
        (folder / f"run_{k}.pt").write_bytes(b"")
    make_finetune(folder)
    before = (folder / "finetune.json").read_bytes()
    with pytest.raises(ConfigError, match="use --overwrite"):
        main([str(folder)])
    assert (folder / "finetune.json").read_bytes() == before  # never overwritten without --overwrite


def test_rerunning_an_experiment_with_overwrite_drops_its_fine_tuning_results(tmp_path):
    from ecomp_deap.study.experiment import clear_results

    folder = make_experiment(tmp_path, "quality25", "nsga2", runs=1)
    make_finetune(folder)
    clear_results(folder)
    assert not (folder / "finetune.json").exists() and not list(folder.glob("run_*"))

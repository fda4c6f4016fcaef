"""The size budget (``max_size``): never exceeded after any operator, clear errors, and
the run's choice within it."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from ecomp_deap.config import EcompConfig, budget_groups, check_budget
from ecomp_deap.errors import ConfigError
from ecomp_deap.nets.chain import Chain
from ecomp_deap.nets.parents import build_cnn, build_mlp
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.budget import budget_rates, group_ranks, repair_to_budget
from ecomp_deap.search.scores import l1_unit_scores
from ecomp_deap.search.toolbox import build_toolbox


def kept(ind) -> int:
    return sum(ind.hidden_units())


# --------------------------------------------------------------------------- the budget itself


def test_budget_is_a_whole_number_of_groups_and_bad_fractions_are_refused():
    assert budget_groups(0.25, (256, 256)) == 128  # 0.25 * 512 exactly, despite float rounding
    assert budget_groups(0.125, (256, 256)) == 64
    assert budget_groups(0.3, (16, 12)) == 8  # floor: a network at most that size
    assert check_budget(1, (5, 5)) == 10
    for bad in (0, -0.1, 1.5, math.nan, math.inf, True):
        with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
            check_budget(bad, (10, 10))
        with pytest.raises(ConfigError, match=r"max_size must be .* in \(0, 1\]"):
            EcompConfig(max_size=bad).validate()
    with pytest.raises(ConfigError, match="fewer than one per hidden layer"):
        check_budget(0.003, (256, 256))  # 1 unit for 2 layers
    assert check_budget(2 / 512, (256, 256)) == 2  # exactly one per layer is allowed


def test_a_budget_below_one_unit_per_layer_is_refused_against_the_parent():
    arch = Chain.from_module(build_mlp((16, 12, 8), in_features=10, n_classes=3))
    EcompConfig(max_size=3 / 36).validate().validate_for(arch)
    with pytest.raises(ConfigError, match=r"allows 2 of the parent's 36 hidden units, fewer than one per hidden "
                                          r"layer \(3 layers\): the smallest budget is 0\.08333"):
        EcompConfig(max_size=2.5 / 36).validate().validate_for(arch)
    assert EcompConfig(max_size=1).max_size == 1.0 and isinstance(EcompConfig(max_size=1).max_size, float)


def test_ranks_are_percentiles_within_each_layer():
    ranks = group_ranks([torch.tensor([0.5, 3.0, 1.0, 3.0]), torch.tensor([10.0, 20.0])])
    assert ranks[0].tolist() == [0.25, 1.0, 0.5, 0.75]  # ties: the lower index ranks higher
    assert ranks[1].tolist() == [0.5, 1.0]


from helpers import setup  # noqa: E402  (a small MLP's chain, tensors and individual type)


def test_repair_of_a_uniform_pruning_stays_uniform_and_drops_the_lowest_scores():
    arch, w, b, ind_cls = setup(hidden=(20, 20))
    scores = l1_unit_scores(w)
    full = ind_cls([torch.ones(20, dtype=torch.bool)] * 2, w, b)
    repair_to_budget(full, 10, group_ranks(scores))
    assert full.hidden_units() == [5, 5]
    for m, s in zip(full.masks, scores):
        assert s[m].min() >= s[~m].max()  # the lowest-scoring units went first
    # within the budget: untouched, the same mask tensors
    masks = list(full.masks)
    repair_to_budget(full, 10, group_ranks(scores))
    assert all(a is c for a, c in zip(full.masks, masks))


def test_repair_never_empties_a_layer_even_when_its_units_rank_lowest():
    arch, w, b, ind_cls = setup(hidden=(6, 6))
    ranks = [torch.full((6,), 0.01), torch.linspace(0.5, 1.0, 6, dtype=torch.float64)]
    ind = ind_cls([torch.tensor([True, True, False, False, False, False]), torch.ones(6, dtype=torch.bool)], w, b)
    repair_to_budget(ind, 2, ranks)
    assert ind.hidden_units() == [1, 1]
    assert bool(ind.masks[1][5])  # layer 2's best-ranked unit is what it keeps


def test_initial_prunings_spread_below_the_budget_from_it():
    low, high = budget_rates(0.25, 0.1, 0.8)
    assert 1 - low == pytest.approx(0.25)  # the first pruning keeps the budget
    assert (1 - high) / (1 - low) == pytest.approx(0.2 / 0.9)  # the spread below it as below the parent
    parent = read_parent(build_mlp((40, 40), in_features=10, n_classes=5))
    cfg = EcompConfig(selection="nsga2", max_size=0.5, embedding_layers=None, recombination_layers=None)
    pop = build_toolbox(cfg, parent, torch.Generator().manual_seed(0)).population(n=10)
    sizes = [kept(ind) for ind in pop]
    assert sizes[0] == 40 and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 10
    assert sizes[-1] == pytest.approx(40 * (1 - 0.7 * 9 / 10 / 0.9), abs=2)  # rate 0.73 of the budget


# --------------------------------------------------------------------------- the property


def random_parent(rng: torch.Generator, cnn: bool):
    """A small random MLP or CNN parent, read."""
    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    torch.manual_seed(draw(0, 10_000))
    if cnn:
        model = build_cnn(channels=[draw(2, 5) for _ in range(draw(1, 2))], hidden=(draw(2, 6),), in_shape=(1, 8, 8),
                          n_classes=3)
        return read_parent(model, torch.zeros(1, 1, 8, 8))
    model = build_mlp([draw(2, 20) for _ in range(draw(1, 3))], in_features=7, n_classes=3)
    return read_parent(model)


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp", "cnn"])
def test_the_budget_holds_after_every_operator_over_random_parents_and_budgets(cnn):
    rng = torch.Generator().manual_seed(11 if cnn else 7)
    for trial in range(25):
        parent = random_parent(rng, cnn)
        arch = parent.net
        total, layers = sum(arch.hidden_widths), arch.n_hidden
        # any budget from one group per layer to all of them
        max_size = (layers + float(torch.rand((), generator=rng)) * (total - layers)) / total
        budget = budget_groups(max_size, arch.hidden_widths)
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=rng))]  # noqa: E731
        selection = pick(["weighted", "nsga2"])
        cfg = EcompConfig(selection=selection, weights=(1, 1, 1), pop_size=8, max_size=max_size,
                          mask_flip_prob=pick([0.0, 0.3, 1.0]), mutation=pick(["weights", "units"]),
                          crossover="layerwise" if cnn else pick(["layerwise", "reference"]),
                          embedding_layers=None, recombination_layers=None,
                          init_prune_low=pick([0.0, 0.1]), init_prune_high=pick([0.5, 0.8, 1.0]))
        cfg.validate().validate_for(arch)
        scores = None if trial % 2 else [torch.rand(h, generator=rng) for h in arch.hidden_widths]  # L1 or given
        tb = build_toolbox(cfg, parent, torch.Generator().manual_seed(trial), init_scores=scores)

        def check(individuals, what):
            for ind in individuals:
                assert kept(ind) <= budget, (what, trial, ind.hidden_units(), budget)
                assert all(n >= 1 for n in ind.hidden_units()), (what, trial, ind.hidden_units())

        pop = tb.population(n=8)
        check(pop, "population")
        assert max(kept(ind) for ind in pop) >= budget - layers  # the largest initial pruning uses the budget
        for step in range(6):
            for i in range(0, 8, 2):
                check(tb.mate(pop[i], pop[i + 1]), "mate")
            for ind in pop:
                check(tb.mutate(ind), "mutate")
                check(tb.mutate_mask(ind), "mutate_mask")
                # a mask grown by hand (as a future operator might) is repaired by the decorated flip
                ind.masks = [torch.ones_like(m) for m in ind.masks]
                check(tb.mutate_mask(ind), "mutate_mask after growth")


# --------------------------------------------------------------------------- whole runs


CFG = dict(weights=(1, 1, 1), pop_size=12, generations=4, batch_size=50, perplexity=5.0, val_size=200,
           device="cpu", mask_flip_prob=0.1, embedding_layers=None, recombination_layers=None,
           kernel="student_t")  # no perplexity search on networks of two or three units


@pytest.mark.parametrize("selection", ["weighted", "nsga2"])
def test_a_budget_run_evaluates_only_networks_within_it_and_returns_the_most_accurate_on_validation(
        tiny_data, tiny_parent, selection):
    from ecomp_deap.search.run import run_ecomp

    cfg = EcompConfig(selection=selection, max_size=0.25, **CFG)
    r = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    assert all(row["compression"]["worst"] <= 0.25 for row in r.logbook)  # every generation, every individual
    assert all(f["compression"] <= 0.25 and sum(f["hidden_units"]) <= 7 for f in r.front)
    best_val = max(f["val_accuracy"] for f in r.front)
    assert r.best["val_accuracy"] == best_val and "within the size budget (0.25)" in r.best["selected_by"]
    assert r.evolution.train_measures.compression.max() <= 0.25
    body = r.to_json()
    assert body["config"]["max_size"] == 0.25
    assert EcompConfig.from_dict(body["config"]) == cfg  # the result reloads with its budget


def test_compress_with_max_size_and_its_errors():
    from torch import nn

    import ecomp_deap

    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))
    cfg = EcompConfig(selection="nsga2", pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0,
                      device="cpu", embedding_layers=None, recombination_layers=None, kernel="student_t")
    res = ecomp_deap.compress(model, train=(x[:600], y[:600]), val=(x[600:750], y[600:750]),
                              test=(x[750:], y[750:]), config=cfg, progress=False, max_size=0.3,
                              allow_weak_parent=True)  # untrained: at chance
    assert res.run.config.max_size == 0.3
    assert sum(res.best.hidden_units) <= 12 and all(sum(c.hidden_units) <= 12 for c in res.front)
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        ecomp_deap.compress(model, train=(x, y), test=(x, y), config=cfg, progress=False, max_size=1.5,
                            allow_weak_parent=True)
    with pytest.raises(ConfigError, match="fewer than one per hidden layer"):
        ecomp_deap.compress(model, train=(x, y), test=(x, y), config=cfg, progress=False, max_size=0.01,
                            allow_weak_parent=True)


@pytest.mark.parametrize("argv,expected", [
    (["--max-size", "0"], r"max_size must be a fraction"), (["--max-size", "abc"], "--max-size"),
    (["--refit", "-3"], "--refit"), (["--refit", "1"], "refit_images must be 0"),  # the refit (ecomp_deap.nets.refit)
    (["--refit-ridge", "0"], "refit_ridge must be a finite number > 0")])
def test_cli_refuses_a_bad_budget_or_refit_in_one_line(tmp_path, argv, expected):
    p = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), "--name", "quality25", *argv,
                        "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and expected in lines[0], p.stderr
    assert not (tmp_path / "o").exists()


def test_budget_presets_differ_only_in_budget_and_similarity_weight():
    from ecomp_deap.study.presets import PRESETS, preset_config

    # the quality search, shorter, with the Lamarckian refit and no compression objective
    base = preset_config("quality121").replace(epochs=5, refit_images=1000, refit_children=True,
                                               weights=(1.0, 2.0, 0.0))
    for name, f in (("quality12.5", 0.125), ("quality25", 0.25), ("quality50", 0.5)):
        cfg, nosim = preset_config(name).validate(), preset_config(f"{name}_nosim").validate()
        assert cfg == base.replace(max_size=f)
        assert nosim == cfg.replace(weights=(1.0, 0.0, 0.0))
        assert name in PRESETS and f"{name}_nosim" in PRESETS

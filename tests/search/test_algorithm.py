import json

import numpy as np
import pytest
import torch
from helpers import ecomp_run

from ecomp_deap.config import EcompConfig
from ecomp_deap.search.indicators import non_dominated_mask
from ecomp_deap.search.run import run_ecomp

TINY = dict(pop_size=8, generations=4, batch_size=30, perplexity=5.0, val_size=60, device="cpu",
            embedding_layers=None, recombination_layers=None)


@pytest.mark.parametrize("selection", ["weighted", "nsga2"])
def test_smoke_run_both_modes(tiny_data, tiny_parent, selection):
    cfg = EcompConfig(selection=selection, **TINY)
    r = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    assert len(r.logbook) == cfg.generations
    row = r.logbook[0]
    for measure in ("accuracy", "compression", "similarity", "fitness"):
        assert set(row[measure]) == {"avg", "std", "best", "worst"}
    assert 0 < r.best["compression"] <= 1 and 0 <= r.best["test_accuracy"] <= 1
    assert r.front and r.test_hypervolume > 0
    json.dumps(r.to_json())  # serialisable
    x = tiny_data.test_x[:10]
    assert r.best_module(x).shape == (10, 4)


def test_same_seed_same_result_different_seed_differs(tiny_data, tiny_parent):
    cfg = EcompConfig(selection="nsga2", **TINY)
    a = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    b = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    c = run_ecomp(cfg.replace(seed=1), tiny_parent, tiny_data, progress=False)
    assert a.logbook == b.logbook and a.best == b.best and a.front == b.front
    for p, q in zip(a.best_module.state_dict().values(), b.best_module.state_dict().values()):
        assert torch.equal(p, q)
    assert a.logbook != c.logbook


def test_weighted_is_deterministic_too(tiny_data, tiny_parent):
    cfg = EcompConfig(selection="weighted", elitism=1, selection_temperature=0.05, **TINY)
    a = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    b = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    assert a.logbook == b.logbook and a.best == b.best


def test_nsga2_returns_a_mutually_non_dominated_set(tiny_data, tiny_parent):
    cfg = EcompConfig(selection="nsga2", **{**TINY, "pop_size": 12})
    r = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    evo = r.evolution
    ref = evo.val_measures
    pts = np.stack([ref.accuracy, ref.similarity, ref.compression], 1)
    assert non_dominated_mask(pts, (1, -1, -1)).all()
    assert evo.best_index in evo.front_indices


def test_elitism_carries_the_best_individuals_over_unchanged(tiny_data, tiny_parent):

    cfg = EcompConfig(selection="weighted", elitism=2, **TINY)
    run = ecomp_run(cfg, tiny_parent, tiny_data)
    state = run.initial_state()
    before = list(state.population)
    run.evolve(state, until=state.t + 1)
    ranked = sorted(before, key=lambda ind: ind.fitness.values[0], reverse=True)[:2]
    for elite, kept in zip(ranked, state.population[:2]):
        assert all(torch.equal(a, b) for a, b in zip(elite.weights, kept.weights))
        assert all(torch.equal(a, b) for a, b in zip(elite.masks, kept.masks))


def test_activation_initialisation_keeps_the_highest_activation_score_units(tiny_data, tiny_parent):
    from ecomp_deap.search.run import INIT_SCORE_IMAGES
    from ecomp_deap.search.scores import top_units_mask, unit_scores

    cfg = EcompConfig(selection="nsga2", init_scores="activation", **TINY)
    run = ecomp_run(cfg, tiny_parent, tiny_data)
    pop = run.initial_state().population
    n = min(run.stream.n_batches, INIT_SCORE_IMAGES // cfg.batch_size)
    x = torch.cat([run.stream.batch(0, i)[0] for i in range(n)])
    scores = unit_scores("activation", run.net, run.parent.weights, run.parent.biases, x)
    l1 = ecomp_run(cfg.replace(init_scores="l1"), tiny_parent, tiny_data)
    l1_pop = l1.initial_state().population
    differs = False
    for ind, ref in zip(pop, l1_pop):
        for mask, s in zip(ind.masks, scores):
            assert torch.equal(mask, top_units_mask(s, int(mask.sum())))
        differs |= any(not torch.equal(a, b) for a, b in zip(ind.masks, ref.masks))
    assert differs  # not the L1 ranking
    assert run_ecomp(cfg, tiny_parent, tiny_data, progress=False).front

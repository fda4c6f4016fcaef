"""Validation data used as given: a set smaller than one batch is one smaller batch, the
examples past the last whole batch count too, and ``selected_by`` says how the choice
was made."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ecomp_run, varied_population

import ecomp_deap
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.search.choice import measure_split, validation_batches
from ecomp_deap.search.run import run_ecomp

CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), pop_size=8, generations=4, batch_size=50, perplexity=5.0,
                  val_size=0, device="cpu", embedding_layers=None, recombination_layers=None)


@pytest.mark.parametrize("n,sizes", [(250, [100, 100, 50]), (210, [100, 110]), (200, [100, 100]), (131, [100, 31]),
                                     (130, [130]), (40, [40]), (20, [20]), (0, [])])
def test_validation_batches_hold_every_example_once_in_order(n, sizes):
    x, y = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)
    batches = validation_batches(x, y, 100, min_rows=31)  # a remainder under 31 joins the last batch
    assert [len(bx) for bx, _ in batches] == sizes
    assert torch.equal(torch.cat([by for _, by in batches]) if batches else y, y)


def test_a_split_of_unequal_batches_counts_every_example(tiny_parent, tiny_data):
    parent, pop = varied_population(tiny_parent, n=6)
    evaluator = PopulationEvaluator(parent, CFG)
    x, y = tiny_data.test_x[:130], tiny_data.test_y[:130]
    batches = validation_batches(x, y, 50, CFG.similarity_min_rows)
    assert [len(bx) for bx, _ in batches] == [50, 50, 30]
    m = measure_split(evaluator, pop, batches)
    np.testing.assert_allclose(m.accuracy, evaluator.accuracy(pop, x, y), rtol=0, atol=1e-12)  # all 130
    per_batch = [evaluator.measure(pop, bx, by) for bx, by in batches]
    np.testing.assert_allclose(m.similarity, np.mean([p.similarity for p in per_batch], 0), rtol=1e-9)
    equal = batches[:2]  # one size: the evaluator's own measure, bit for bit
    a, b = measure_split(evaluator, pop, equal), evaluator.measure_batches(pop, equal)
    assert np.array_equal(a.accuracy, b.accuracy) and np.array_equal(a.similarity, b.similarity)


@pytest.mark.parametrize("n_val", [20, 130])  # smaller than a batch of 50; two batches and 30 more
def test_the_pareto_choice_uses_every_validation_example(tiny_parent, tiny_data, n_val):
    val = (tiny_data.train_x[-n_val:], tiny_data.train_y[-n_val:])
    r = run_ecomp(CFG, tiny_parent, tiny_data, validation=val, progress=False)
    assert r.best["selected_by"] == "knee (accuracy vs compression) of the validation front"
    for row, module in zip(r.front, r.front_modules):
        with torch.no_grad():
            accuracy = float((module(val[0]).argmax(1) == val[1]).double().mean())
        assert row["val_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_a_budget_run_chooses_on_every_validation_example(tiny_parent, tiny_data):
    val = (tiny_data.train_x[-70:], tiny_data.train_y[-70:])
    r = run_ecomp(CFG.replace(max_size=0.5), tiny_parent, tiny_data, validation=val, progress=False)
    assert "most accurate on the validation split" in r.best["selected_by"]
    with torch.no_grad():
        accuracy = float((r.best_module(val[0]).argmax(1) == val[1]).double().mean())
    assert r.best["val_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_a_validation_split_of_any_size_is_used_whole(tiny_parent, tiny_data):
    run = ecomp_run(CFG.replace(val_size=130), tiny_parent, tiny_data)
    assert [len(bx) for bx, _ in run.val_batches] == [50, 50, 30]
    run = ecomp_run(CFG.replace(val_size=40), tiny_parent, tiny_data)
    assert [len(bx) for bx, _ in run.val_batches] == [40]
    run = ecomp_run(CFG.replace(val_size=0), tiny_parent, tiny_data)
    r = run.run()
    assert r.best["selected_by"] == "knee (accuracy vs compression) of the training front"


def test_a_validation_set_too_small_for_the_similarity_is_refused_in_one_line(tiny_parent, tiny_data):
    EcompConfig(selection="nsga2", batch_size=100, val_size=31).validate()  # perplexity 30: one batch of 31
    with pytest.raises(ConfigError, match=r"val_size must be 0 \(no validation\) or more than the perplexity \(30\)"):
        EcompConfig(selection="nsga2", batch_size=100, val_size=30).validate()
    EcompConfig(selection="nsga2", weights=(1, 0, 1), val_size=10).validate()  # no similarity to compare
    EcompConfig(selection="weighted", val_size=10).validate()  # the weighted choice does not use validation
    with pytest.raises(ConfigError, match=r"^val data: 5 examples are too few for the similarity"):
        ecomp_deap.compress(tiny_parent, train=(tiny_data.train_x, tiny_data.train_y),
                            val=(tiny_data.test_x[:5], tiny_data.test_y[:5]), test=(tiny_data.test_x, tiny_data.test_y),
                            config=CFG, progress=False)

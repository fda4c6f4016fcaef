"""The one place where the DEAP toolbox is assembled: settings bound at register time."""
from __future__ import annotations

import torch
from deap import base, tools

from ..config import EcompConfig, check_budget, check_macs_budget
from ..errors import ConfigError
from ..nets.chain import Chain
from ..nets.graph import Graph
from ..nets.refit import Refit
from .budget import budget_rates, group_ranks, within_budget, within_macs
from .genome import Genome, fitness_weights, make_types
from .loops import evaluate_on_batch
from .operators import (
    cx_groupwise,
    cx_layerwise,
    cx_reference,
    init_pruned_population,
    mut_flip_units,
    mut_scale_group_units,
    mut_scale_units,
    mut_scale_weights,
    recalibrate_graph_norms,
    recalibrate_norms,
    sel_softmax_roulette,
)
from .scores import graph_l1_scores, l1_unit_scores


def recombination_indices(config: EcompConfig, chain: Chain | Graph) -> list[int]:
    """The stages ``config.recombination_layers`` names (None: every stage); for a graph
    parent, the state tensors of those layers' weights."""
    names = config.recombination_layers if config.recombination_layers is not None else chain.stage_names
    if isinstance(chain, Graph):
        weight = {layer.name: layer.weight for layer in chain.layers}
        return [weight[n] for n in names]
    return [chain.stage_names.index(n) for n in names]


def crossover_operator(config: EcompConfig, chain: Chain):
    """cx_layerwise (aligned, ours) or cx_reference (the reference study's; MLP parents
    without BatchNorm only: it reads rows and columns of Linear weights by kept-unit position)."""
    if config.crossover == "reference":
        if not chain.is_mlp or any(st.norm is not None for st in chain.stages):
            raise ConfigError(f"crossover 'reference' recombines MLP parents without BatchNorm only (Linear layers "
                              f"and hidden units); this parent is {chain.describe()}: use crossover 'layerwise'")
        return cx_reference
    return cx_layerwise


def build_toolbox(config: EcompConfig, parent, rng: torch.Generator, evaluator=None, stream=None, init_scores=None,
                  calibration_x: torch.Tensor | None = None, refit_x: torch.Tensor | None = None) -> base.Toolbox:
    """Registers: population, clone, mate, mutate, mutate_mask, select (and, for NSGA-II,
    select_parents) for ``parent`` (a :class:`~ecomp_deap.nets.reader.Parent`), and, given
    an ``evaluator`` (:class:`~ecomp_deap.fitness.evaluator.PopulationEvaluator`) and the
    run's batch ``stream``, ``evaluate(population, t)`` (:func:`~ecomp_deap.search.loops.evaluate_on_batch`).
    ``init_scores``: per hidden layer (H_l,) group scores ranking the initial prunings
    (None: L1 norm of the incoming weights, the reference); with
    ``config.norm_calibration``, ``recalibrate`` (adaptive BatchNorm on ``calibration_x``)
    is registered too, for parents with BatchNorm after the first stage; with
    ``config.refit_images``, ``refit`` (:class:`ecomp_deap.nets.refit.Refit` on ``refit_x``),
    which the final selection applies to the final population.
    With ``config.max_size``, the initial prunings are scaled into the budget
    (:func:`ecomp_deap.search.budget.budget_rates`) and ``population``, ``mate``, ``mutate`` and
    ``mutate_mask`` are decorated with the budget repair, ranked by the same group scores.
    Evaluation is batched over the population, not a per-individual function."""
    chain, parent_weights, parent_biases, parent_norms = parent.net, parent.weights, parent.biases, parent.norms
    graph = isinstance(chain, Graph)
    if graph and init_scores is None:  # a graph's groups have no stage order: their L1 scores, computed here
        init_scores = graph_l1_scores(chain, parent_weights)
    _, ind_cls = make_types(fitness_weights(config.selection, config.weights))
    rec = recombination_indices(config, chain)
    tb = base.Toolbox()
    low, high = config.init_prune_low, config.init_prune_high
    if config.has_budget:  # the largest initial pruning at the budget (multiply-adds go as the square of the width)
        fraction = min(f for f in (config.max_size, config.max_macs ** 0.5 if config.max_macs else None) if f)
        low, high = budget_rates(fraction, low, high)
    tb.register("population", init_pruned_population, ind_cls, parent_weights, parent_biases,
                low=low, high=high, scores=init_scores, norms=parent_norms)
    tb.register("clone", Genome.clone)
    if graph:
        crossover_operator(config, chain)  # refuses the reference crossover
        tb.register("mate", cx_groupwise, graph=chain, rng=rng)
    else:
        tb.register("mate", crossover_operator(config, chain), layers=rec, rng=rng)
    if config.mutation == "units" and graph:
        tb.register("mutate", mut_scale_group_units, graph=chain, low=config.mutation_low, high=config.mutation_high,
                    rng=rng)
    elif config.mutation == "units":
        tb.register("mutate", mut_scale_units, layers=rec, low=config.mutation_low, high=config.mutation_high,
                    rng=rng, repeats=[st.in_repeat for st in chain.stages])
    else:
        tb.register("mutate", mut_scale_weights, layers=rec, low=config.mutation_low, high=config.mutation_high,
                    rng=rng)
    tb.register("mutate_mask", mut_flip_units, flip_prob=config.mask_flip_prob, rng=rng)
    if evaluator is not None:
        tb.register("evaluate", evaluate_on_batch, evaluator=evaluator, stream=stream, config=config)
    if config.norm_calibration and graph:
        tb.register("recalibrate", recalibrate_graph_norms, graph=chain, x=calibration_x)
    elif config.norm_calibration and any(st.norm is not None for st in chain.stages[1:]):
        tb.register("recalibrate", recalibrate_norms, chain=chain, x=calibration_x)
    if config.refit_images:
        tb.register("refit", Refit(chain, parent_weights, parent_biases, parent_norms, refit_x, config.refit_ridge))
    if config.selection == "weighted":
        tb.register("select", sel_softmax_roulette, temperature=config.selection_temperature, rng=rng)
    else:
        tb.register("select", tools.selNSGA2)
        tb.register("select_parents", tools.selTournamentDCD)
    ranks = group_ranks(init_scores if init_scores is not None else l1_unit_scores(parent_weights)) \
        if config.has_budget else None
    if config.max_size is not None:  # every operator that returns individuals ends within the budget
        budget = check_budget(config.max_size, chain.hidden_widths, chain.group_kind)
        for name in ("population", "mate", "mutate", "mutate_mask"):
            tb.decorate(name, within_budget(budget, ranks))
    if config.max_macs is not None:
        macs = check_macs_budget(config.max_macs, chain)
        for name in ("population", "mate", "mutate", "mutate_mask"):
            tb.decorate(name, within_macs(chain, macs, ranks))
    return tb

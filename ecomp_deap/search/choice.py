"""The end of a run: the final population measured on all training batches, and the choice.

* Weighted mode: the best weighted fitness on all training batches.
* Pareto mode: the non-dominated set on all training batches, measured again on the
  validation split; what is non-dominated there is the front, and its knee (accuracy
  against compression) is "best" (without validation data, the training front's knee).
* With a size budget (``max_size``, ``max_macs``), either mode: the whole final population (all of it
  within the budget) measured on the validation split; its non-dominated set is the
  front and its most accurate network "best".

With ``refit_images`` (and not ``refit_children``, which refits every child already) the
final population is refitted to the parent first (:mod:`ecomp_deap.nets.refit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from deap import tools

from ..config import EcompConfig
from ..fitness.measures import Measures, weighted_fitness
from .indicators import knee_point, non_dominated_mask
from .loops import assign, settle


@dataclass
class EvolutionResult:
    """The final population, its measures on all training batches, the chosen individual
    and the front (indices into ``population``), and how they were chosen."""

    population: list
    train_measures: Measures
    best_index: int
    front_indices: list[int]
    logbook: tools.Logbook
    val_measures: Measures | None = None  # aligned with front_indices, when validation chose
    selected_by: str = ""
    extremes: dict = field(default_factory=dict)  # 'accuracy' / 'compression': the front's extreme individuals


def choose(population, logbook, toolbox, evaluator, config: EcompConfig, train_batches, val_batches=None,
           train_key=("batch", 0)) -> EvolutionResult:
    """Measure the final ``population`` on ``train_batches`` (the parent's references kept
    under ``train_key``: the generations' own) and choose, as the module docstring says."""
    if hasattr(toolbox, "refit") and not config.refit_children:  # refit_children: every one refitted already
        for ind in population:
            settle(ind, toolbox, refit=True)
    train = evaluator.measure_batches(population, train_batches, key=train_key)
    assign(population, train, config)
    if config.has_budget:
        return _within_budget(population, logbook, evaluator, config, train, val_batches)
    objectives = config.active_objectives
    pts, senses = train.objectives(objectives)
    front = np.flatnonzero(non_dominated_mask(pts, senses)).tolist()
    if config.selection == "weighted":
        best = int(np.argmax(weighted_fitness(train, config.weights)))
        return EvolutionResult(population, train, best, front, logbook,
                               selected_by="best weighted fitness on all training batches")
    val = None
    selected_by = "knee (accuracy vs compression) of the training front"
    candidates = front
    if val_batches:
        val = evaluator.measure_batches([population[i] for i in front], val_batches)
        vpts, _ = val.objectives(objectives)
        keep = non_dominated_mask(vpts, senses)
        candidates = [front[i] for i in np.flatnonzero(keep)]
        val = val.subset(keep)
        selected_by = "knee (accuracy vs compression) of the validation front"
    ref = val if val is not None else train.subset(candidates)
    ac = np.stack([ref.accuracy, ref.compression], 1)
    knee = candidates[knee_point(ac, (1, -1))]
    extremes = {"accuracy": candidates[int(np.argmax(ref.accuracy))],
                "compression": candidates[int(np.argmin(ref.compression))]}
    return EvolutionResult(population, train, knee, candidates, logbook, val_measures=val,
                           selected_by=selected_by, extremes=extremes)


def _within_budget(population, logbook, evaluator, config: EcompConfig, train: Measures,
                   val_batches=None) -> EvolutionResult:
    """Size-budget mode, weighted or NSGA-II: the whole final population measured on the
    validation split; its non-dominated set over the run's objectives is the front, and
    "best" is the front's most accurate network (ties: the smaller). Without a validation
    split, the training measures."""
    where = "on the validation split" if val_batches else "on all training batches"
    ref = evaluator.measure_batches(population, val_batches) if val_batches else train
    pts, senses = ref.objectives(config.active_objectives)
    front = np.flatnonzero(non_dominated_mask(pts, senses)).tolist()
    acc, comp = ref.accuracy[front], ref.compression[front]
    best = front[max(range(len(front)), key=lambda j: (acc[j], -comp[j]))]
    extremes = {"accuracy": best, "compression": front[int(np.argmin(comp))]}
    val = ref.subset(front) if val_batches else None
    return EvolutionResult(population, train, best, front, logbook, val_measures=val,
                           selected_by=f"most accurate {where} within the size budget ({config.describe_budget()})"
                           if config.max_macs is not None else
                           f"most accurate {where} within the size budget ({config.max_size:g})",
                           extremes=extremes)

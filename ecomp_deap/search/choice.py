"""The end of a run: the final population measured on all training batches, and the choice.

* Weighted mode: the best weighted fitness on all training batches.
* Pareto mode: the non-dominated set on all training batches, measured again on the
  validation split (every example of it: :func:`validation_batches`); what is
  non-dominated there is the front, and its knee (accuracy against compression) is
  "best" (without validation data, the training front's knee).
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


def validation_batches(x, y, batch_size: int, min_rows: int) -> list[tuple]:
    """Every example of (x, y) (N, ...) in batches: consecutive batches of ``batch_size``;
    the examples past the last whole batch make one more, smaller batch when there are at
    least ``min_rows`` of them (the fewest a similarity is measured on), else they join
    the last whole batch; a set smaller than one batch is one batch. Empty: no batches."""
    n = len(x)
    bounds = [(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]
    rest = n - len(bounds) * batch_size
    if rest and (rest >= min_rows or not bounds):
        bounds.append((n - rest, n))
    elif rest:
        bounds[-1] = (bounds[-1][0], n)
    return [(x[a:b], y[a:b]) for a, b in bounds]


def measure_split(evaluator, population, batches) -> Measures:
    """Measures of ``population`` on a split cut into ``batches`` (:func:`validation_batches`):
    the accuracy over all their examples, the similarity (a per-batch quantity) the mean of
    the batches'. Batches of one size are measured as the evaluator measures them
    (:meth:`~ecomp_deap.fitness.evaluator.PopulationEvaluator.measure_batches`)."""
    sizes = [len(x) for x, _ in batches]
    if len(set(sizes)) == 1:
        return evaluator.measure_batches(population, batches)
    groups = {size: [b for b in batches if len(b[0]) == size] for size in dict.fromkeys(sizes)}
    parts = [(size, len(group), evaluator.measure_batches(population, group)) for size, group in groups.items()]
    accuracy = sum(m.accuracy * (count * size) for size, count, m in parts) / sum(sizes)
    similarity = sum(m.similarity * count for _, count, m in parts) / len(batches)
    return Measures(accuracy, parts[0][2].compression, similarity)


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
        val = measure_split(evaluator, [population[i] for i in front], val_batches)
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
    ref = measure_split(evaluator, population, val_batches) if val_batches else train
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

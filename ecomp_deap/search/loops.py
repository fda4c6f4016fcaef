"""The generation loops, DEAP style: :func:`ea_weighted` and :func:`ea_nsga2`.

One generation per training batch: generation ``t`` uses batch ``t % batches_per_epoch``
of epoch ``t // batches_per_epoch``. The toolbox (:func:`ecomp_deap.search.toolbox.build_toolbox`)
carries the operators, and ``evaluate(population, t)``, which measures a population on
generation ``t``'s batch and assigns each individual its fitness and
:class:`~ecomp_deap.fitness.measures.IndividualMeasures` (:func:`assign`). A loop runs
from ``state.t`` to ``until`` and can be resumed from any state it leaves behind (what a
checkpoint holds); :class:`GenerationHooks` reports progress, writes checkpoints and
keeps the random state of a generation that fails.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from deap import tools

from ..config import EcompConfig
from ..fitness.measures import IndividualMeasures, Measures, NonFiniteError, fitness_tuples, weighted_fitness
from ..rng import rng_snapshot
from .indicators import hypervolume_2d, non_dominated_mask

HV_REFERENCE = {"accuracy": 0.0, "compression": 1.0}  # the (accuracy, compression) hypervolume's reference point


@dataclass
class EvolutionState:
    """Everything a generation needs to continue: what a checkpoint holds."""

    t: int
    population: list
    logbook: tools.Logbook
    rng: torch.Generator


def make_statistics() -> tools.MultiStatistics:
    """One Statistics per measure; 'best' follows each measure's direction."""
    def stats(field_name, maximise):
        s = tools.Statistics(key=lambda ind: getattr(ind.measures, field_name))
        s.register("avg", np.mean)
        s.register("std", np.std)
        s.register("best", np.max if maximise else np.min)
        s.register("worst", np.min if maximise else np.max)
        return s

    return tools.MultiStatistics(accuracy=stats("accuracy", True), compression=stats("compression", False),
                                 similarity=stats("similarity", False), fitness=stats("fitness", True))


def logbook_rows(logbook: tools.Logbook) -> list[dict]:
    """The Logbook as plain dicts: ``{"gen", ..., "accuracy": {"avg", ...}, ...}``."""
    rows = []
    for i, entry in enumerate(logbook):
        row = {k: v for k, v in entry.items()}
        for name, chapter in logbook.chapters.items():
            row[name] = {k: float(v) for k, v in chapter[i].items() if k not in entry}
        rows.append(row)
    return rows


def assign(population, m: Measures, config: EcompConfig) -> None:
    """Give each individual its DEAP fitness and its measures (``NonFiniteError`` first if
    any measure is NaN or infinite: nothing is assigned then)."""
    m.check_finite()
    fits = fitness_tuples(m, config.selection, config.weights)
    scalar = weighted_fitness(m, config.weights)
    for ind, f, row, s in zip(population, fits, m.as_rows(), scalar):
        ind.fitness.values = f
        ind.measures = IndividualMeasures(*row, float(s))


def evaluate_on_batch(population, t: int, evaluator, stream, config: EcompConfig) -> None:
    """Measure ``population`` on generation ``t``'s batch of ``stream`` and :func:`assign`
    (the parent's references kept per batch: every generation of an epoch reuses them)."""
    epoch, index = divmod(t, stream.n_batches)
    x, y = stream.batch(epoch, index)
    assign(population, evaluator.measure(population, x, y, key=("batch", epoch, index)), config)


def settle(ind, toolbox, refit: bool) -> None:
    """What a new individual gets before it is measured: with ``refit``, the refit to the
    parent (Lamarckian: it keeps the refitted weights), then adaptive BatchNorm for its
    channels; each only where the toolbox registers it."""
    if refit and hasattr(toolbox, "refit"):
        toolbox.refit(ind)
    if hasattr(toolbox, "recalibrate"):
        toolbox.recalibrate(ind)


def vary(parents, toolbox, config: EcompConfig, rng: torch.Generator) -> list:
    """The reference's variation (DEAP's ``varAnd`` with our operators): clone the parents,
    recombine consecutive pairs with probability ``cx_prob``, mutate each child with
    probability ``mutation_rate``, flip mask bits, settle (:func:`settle`); the children's
    fitnesses are invalid."""
    offspring = [toolbox.clone(ind) for ind in parents]
    for i in range(1, len(offspring), 2):
        if float(torch.rand((), generator=rng)) < config.cx_prob:
            toolbox.mate(offspring[i - 1], offspring[i])
    for ind in offspring:
        if float(torch.rand((), generator=rng)) < config.mutation_rate:
            toolbox.mutate(ind)
        toolbox.mutate_mask(ind)
        settle(ind, toolbox, refit=config.refit_children)
        del ind.fitness.values
    return offspring


def record(state: EvolutionState, population, stats, batches_per_epoch: int, evals: int) -> None:
    """One logbook entry for generation ``state.t``: its batch, the evaluations it made,
    the hypervolume of (accuracy, compression) and the front's size, and every measure's
    statistics."""
    epoch, index = divmod(state.t, batches_per_epoch)
    acc = np.array([ind.measures.accuracy for ind in population])
    comp = np.array([ind.measures.compression for ind in population])
    pts = np.stack([acc, comp], 1)
    hv = hypervolume_2d(pts, (HV_REFERENCE["accuracy"], HV_REFERENCE["compression"]))
    front = int(non_dominated_mask(pts, (1, -1)).sum())
    state.logbook.record(gen=state.t, epoch=epoch, batch=index, evals=evals, hypervolume=hv,
                         front_size=front, **stats.compile(population))


@dataclass
class GenerationHooks:
    """What happens around each generation: ``progress`` (a tqdm bar or None) advanced and
    shown the population's mean accuracy and compression; ``on_generation(state)`` after it
    (checkpoints, interruption); ``on_failure(state, rng_snapshot)`` with the random states
    of its start if a measure comes out NaN or infinite (the error propagates)."""

    progress: object = None
    on_generation: Callable | None = None
    on_failure: Callable | None = None
    summary: dict = field(default_factory=dict)

    @contextmanager
    def generation(self, state: EvolutionState):
        """A context around one generation's work: on a
        :class:`~ecomp_deap.fitness.measures.NonFiniteError` inside it, ``on_failure`` gets the
        random states from before the generation and the error propagates; otherwise
        ``state.t`` advances, the progress bar moves and ``on_generation(state)`` runs."""
        before = rng_snapshot(state.rng) if self.on_failure is not None else None
        try:
            yield
        except NonFiniteError:
            if self.on_failure is not None:
                self.on_failure(state, before)
            raise
        state.t += 1
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(acc=f"{self.summary['acc']:.3f}", comp=f"{self.summary['comp']:.3f}")
        if self.on_generation is not None:
            self.on_generation(state)

    def recorded(self, population) -> None:
        """The population the logbook just recorded (its means go to the progress bar)."""
        self.summary = {"acc": np.mean([ind.measures.accuracy for ind in population]),
                        "comp": np.mean([ind.measures.compression for ind in population])}


def ea_weighted(state: EvolutionState, toolbox, config: EcompConfig, stats, batches_per_epoch: int, until: int,
                hooks: GenerationHooks | None = None) -> EvolutionState:
    """The reference's loop: weighted fitness, softmax roulette, children replace parents.

    ::

        for t in state.t .. until - 1:
            evaluate(population, t)                         # on batch t
            record statistics
            offspring = vary(select(population, pop_size))  # softmax(fitness / T) roulette
            offspring[:elitism] = the elitism best of population, unchanged
            population = offspring
    """
    hooks = hooks or GenerationHooks()
    while state.t < until:
        with hooks.generation(state):
            population = state.population
            toolbox.evaluate(population, state.t)
            record(state, population, stats, batches_per_epoch, evals=len(population))
            hooks.recorded(population)
            offspring = vary(toolbox.select(population, len(population)), toolbox, config, state.rng)
            if config.elitism:
                elite = sorted(population, key=lambda ind: ind.fitness.values[0], reverse=True)[:config.elitism]
                offspring[:config.elitism] = [toolbox.clone(ind) for ind in elite]
            state.population = offspring
    return state


def ea_nsga2(state: EvolutionState, toolbox, config: EcompConfig, stats, batches_per_epoch: int, until: int,
             hooks: GenerationHooks | None = None) -> EvolutionState:
    """NSGA-II (mu + lambda) over the objectives with non-zero weight.

    ::

        for t in state.t .. until - 1:
            evaluate(population, t)               # parents again: every compared fitness from batch t
            population = selNSGA2(population, mu)          # ranks and crowding distances
            offspring = vary(selTournamentDCD(population, mu))
            evaluate(offspring, t)
            population = selNSGA2(population + offspring, mu)
            record statistics
    """
    hooks = hooks or GenerationHooks()
    while state.t < until:
        with hooks.generation(state):
            population = state.population
            mu = len(population)
            toolbox.evaluate(population, state.t)
            population = toolbox.select(population, mu)  # assigns crowding distances for the tournament
            offspring = vary(toolbox.select_parents(population, mu), toolbox, config, state.rng)
            toolbox.evaluate(offspring, state.t)
            population = toolbox.select(population + offspring, mu)
            record(state, population, stats, batches_per_epoch, evals=2 * mu)
            hooks.recorded(population)
            state.population = population
    return state


LOOPS = {"weighted": ea_weighted, "nsga2": ea_nsga2}

"""The generation loop: weighted (softmax roulette) or NSGA-II selection, one
generation per training batch, a DEAP Logbook, and the final selection.

A generation ``t`` uses batch ``t % generations`` of epoch ``t // generations``.

* weighted: evaluate the population on the batch, draw a mating pool of ``pop_size``
  with probabilities softmax(fitness / T), recombine pairs, mutate; the children
  replace the population (optionally keeping ``elitism`` best).
* nsga2 (mu + lambda): re-evaluate the parents on the batch (all compared fitnesses
  come from the same data), offspring by DCD tournament and the same operators,
  evaluate them, ``selNSGA2`` over parents plus offspring.

At the end the final population is evaluated on all training batches (averaged),
after, with ``refit_images``, the closed-form refit of its Linear layers to the parent
(:mod:`ecomp_deap.nets.refit`).
Weighted mode picks the best weighted fitness; Pareto mode takes the non-dominated
set, re-measures it on the validation split, keeps what is non-dominated there and
picks its knee (accuracy vs compression) as "best". With a size budget
(``max_size``), either mode measures the whole final population on the validation
split, keeps what is non-dominated there and picks its most accurate network (every
individual is within the budget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from deap import tools

from ..config import EcompConfig
from ..fitness.evaluator import Measures, NonFiniteError, PopulationEvaluator, fitness_tuples, weighted_fitness
from .indicators import hypervolume_2d, knee_point, non_dominated_mask
from ..rng import rng_snapshot

HV_REFERENCE = {"accuracy": 0.0, "compression": 1.0}
MEASURE_SENSES = {"accuracy": 1, "similarity": -1, "compression": -1}


def objective_matrix(m: Measures, objectives) -> tuple[np.ndarray, tuple[int, ...]]:
    cols = {"accuracy": m.accuracy, "similarity": m.similarity, "compression": m.compression}
    return np.stack([cols[o] for o in objectives], axis=1), tuple(MEASURE_SENSES[o] for o in objectives)


def make_statistics() -> tools.MultiStatistics:
    """One Statistics per measure; 'best' follows each measure's direction."""
    def stats(index, maximise):
        s = tools.Statistics(key=lambda ind: ind.measures[index])
        s.register("avg", np.mean)
        s.register("std", np.std)
        s.register("best", np.max if maximise else np.min)
        s.register("worst", np.min if maximise else np.max)
        return s

    return tools.MultiStatistics(accuracy=stats(0, True), compression=stats(1, False),
                                 similarity=stats(2, False), fitness=stats(3, True))


def logbook_rows(logbook: tools.Logbook) -> list[dict]:
    """The Logbook as plain dicts: ``{"gen", ..., "accuracy": {"avg", ...}, ...}``."""
    rows = []
    for i, entry in enumerate(logbook):
        row = {k: v for k, v in entry.items()}
        for name, chapter in logbook.chapters.items():
            row[name] = {k: float(v) for k, v in chapter[i].items() if k not in entry}
        rows.append(row)
    return rows


@dataclass
class EvolutionState:
    """Everything a generation needs to continue: what a checkpoint holds."""

    t: int
    population: list
    logbook: tools.Logbook
    gen: torch.Generator


@dataclass
class EvolutionResult:
    population: list
    train_measures: Measures
    best_index: int
    front_indices: list[int]
    logbook: tools.Logbook
    val_measures: Measures | None = None
    selected_by: str = ""
    extremes: dict = field(default_factory=dict)


class Evolution:
    """One EComp run's evolutionary loop over a batch stream."""

    def __init__(self, config: EcompConfig, toolbox, evaluator: PopulationEvaluator, stream,
                 gen: torch.Generator, progress: bool = True):
        self.config, self.toolbox, self.evaluator, self.stream = config, toolbox, evaluator, stream
        self.gen = gen
        self.progress = progress
        self.stats = make_statistics()
        self.total = config.epochs * stream.n_batches

    # ---------------------------------------------------------------- helpers
    def assign(self, population, m: Measures) -> None:
        m.check_finite()
        fits = fitness_tuples(m, self.config.selection, self.config.weights)
        scalar = weighted_fitness(m, self.config.weights)
        for ind, f, row, s in zip(population, fits, m.as_rows(), scalar):
            ind.fitness.values = f
            ind.measures = (*row, float(s))

    def evaluate(self, population, epoch: int, index: int) -> Measures:
        x, y = self.stream.batch(epoch, index)
        m = self.evaluator.measure(population, x, y, key=("batch", epoch, index))
        self.assign(population, m)
        return m

    def vary(self, parents) -> list:
        """Clone, recombine consecutive pairs, mutate: the reference's variation."""
        tb, cfg, g = self.toolbox, self.config, self.gen
        offspring = [tb.clone(ind) for ind in parents]
        for i in range(1, len(offspring), 2):
            if float(torch.rand((), generator=g)) < cfg.cx_prob:
                tb.mate(offspring[i - 1], offspring[i])
        for ind in offspring:
            if float(torch.rand((), generator=g)) < cfg.mutation_rate:
                tb.mutate(ind)
            tb.mutate_mask(ind)
            self.settle(ind, refit=cfg.refit_children)
            del ind.fitness.values
        return offspring

    def settle(self, ind, refit: bool) -> None:
        """What a new individual gets before it is measured: with ``refit``, the refit to
        the parent (Lamarckian: it keeps the refitted weights), then adaptive BatchNorm
        for its channels; each only where the toolbox registers it."""
        if refit and hasattr(self.toolbox, "refit"):
            self.toolbox.refit(ind)
        if hasattr(self.toolbox, "recalibrate"):
            self.toolbox.recalibrate(ind)

    def record(self, state: EvolutionState, population, epoch: int, index: int, evals: int) -> dict:
        acc = np.array([ind.measures[0] for ind in population])
        comp = np.array([ind.measures[1] for ind in population])
        pts = np.stack([acc, comp], 1)
        hv = hypervolume_2d(pts, (HV_REFERENCE["accuracy"], HV_REFERENCE["compression"]))
        front = int(non_dominated_mask(pts, (1, -1)).sum())
        state.logbook.record(gen=state.t, epoch=epoch, batch=index, evals=evals, hypervolume=hv,
                             front_size=front, **self.stats.compile(population))
        return {"acc": acc.mean(), "comp": comp.mean()}

    # ------------------------------------------------------------- generation
    def step(self, state: EvolutionState) -> dict:
        """Run generation ``state.t`` and advance the state."""
        cfg, tb = self.config, self.toolbox
        epoch, index = divmod(state.t, self.stream.n_batches)
        pop = state.population
        if cfg.selection == "weighted":
            self.evaluate(pop, epoch, index)
            info = self.record(state, pop, epoch, index, len(pop))
            offspring = self.vary(tb.select(pop, len(pop)))
            if cfg.elitism:
                elite = sorted(pop, key=lambda ind: ind.fitness.values[0], reverse=True)[:cfg.elitism]
                offspring[:cfg.elitism] = [tb.clone(ind) for ind in elite]
            state.population = offspring
        else:
            self.evaluate(pop, epoch, index)
            pop = tb.select(pop, len(pop))  # assigns crowding distances for the tournament
            offspring = self.vary(tb.select_parents(pop, len(pop)))
            self.evaluate(offspring, epoch, index)
            pop = tb.select(pop + offspring, len(pop))
            info = self.record(state, pop, epoch, index, 2 * len(pop))
            state.population = pop
        state.t += 1
        return info

    def initial_state(self) -> EvolutionState:
        population = self.toolbox.population(n=self.config.pop_size)
        for ind in population:
            self.settle(ind, refit=self.config.refit_children)
        return EvolutionState(0, population, tools.Logbook(), self.gen)

    def run(self, state: EvolutionState | None = None,
            on_generation: Callable[[EvolutionState], None] | None = None,
            on_failure: Callable[[EvolutionState, dict], None] | None = None) -> EvolutionState:
        """Run generations until the budget is spent. ``on_generation(state)`` follows
        every generation (checkpoints, interruption); if a measure is not finite,
        ``on_failure(state, rng)`` gets the state and random states of the start of
        the failed generation before the error propagates."""
        from tqdm.auto import tqdm

        state = state or self.initial_state()
        bar = tqdm(total=self.total, initial=state.t, disable=None if self.progress else True, unit="gen",
                   desc=f"{self.config.selection} pop {self.config.pop_size}", leave=False)
        with bar:
            while state.t < self.total:
                before = rng_snapshot(self.gen) if on_failure is not None else None
                try:
                    info = self.step(state)
                except NonFiniteError:
                    if on_failure is not None:
                        on_failure(state, before)
                    raise
                bar.update(1)
                bar.set_postfix(acc=f"{info['acc']:.3f}", comp=f"{info['comp']:.3f}")
                if on_generation is not None:
                    on_generation(state)
        return state

    # -------------------------------------------------------------- selection
    def finish(self, state: EvolutionState, val_batches=None) -> EvolutionResult:
        """Evaluate the final population on all training batches and choose."""
        cfg = self.config
        pop = state.population
        if hasattr(self.toolbox, "refit") and not cfg.refit_children:  # refit_children: every one refitted already
            for ind in pop:
                self.settle(ind, refit=True)
        # the generations' cache keys: epoch 0's parent references are reused
        train = self.evaluator.measure_batches(pop, self.stream.all_batches(), key=("batch", 0))
        self.assign(pop, train)
        if cfg.max_size is not None:
            return self.finish_within_budget(state, train, val_batches)
        objectives = cfg.active_objectives
        pts, senses = objective_matrix(train, objectives)
        front = np.flatnonzero(non_dominated_mask(pts, senses)).tolist()
        if cfg.selection == "weighted":
            best = int(np.argmax(weighted_fitness(train, cfg.weights)))
            return EvolutionResult(pop, train, best, front, state.logbook,
                                   selected_by="best weighted fitness on all training batches")
        val = None
        selected_by = "knee (accuracy vs compression) of the training front"
        candidates = front
        if val_batches:
            members = [pop[i] for i in front]
            val = self.evaluator.measure_batches(members, val_batches)
            vpts, _ = objective_matrix(val, objectives)
            keep = non_dominated_mask(vpts, senses)
            candidates = [front[i] for i in np.flatnonzero(keep)]
            val = Measures(val.accuracy[keep], val.compression[keep], val.similarity[keep])
            selected_by = "knee (accuracy vs compression) of the validation front"
        ref = val if val is not None else Measures(train.accuracy[candidates], train.compression[candidates],
                                                   train.similarity[candidates])
        ac = np.stack([ref.accuracy, ref.compression], 1)
        knee = candidates[knee_point(ac, (1, -1))]
        extremes = {"accuracy": candidates[int(np.argmax(ref.accuracy))],
                    "compression": candidates[int(np.argmin(ref.compression))]}
        return EvolutionResult(pop, train, knee, candidates, state.logbook, val_measures=val,
                               selected_by=selected_by, extremes=extremes)

    def finish_within_budget(self, state: EvolutionState, train: Measures, val_batches=None) -> EvolutionResult:
        """Size-budget mode, weighted or NSGA-II: the whole final population (all of it
        within the budget) measured on the validation split; its non-dominated set over
        the run's objectives is the front, and "best" is the front's most accurate
        network (ties: the smaller). Without a validation split, the training measures."""
        cfg, pop = self.config, state.population
        where = "on the validation split" if val_batches else "on all training batches"
        ref = self.evaluator.measure_batches(pop, val_batches) if val_batches else train
        pts, senses = objective_matrix(ref, cfg.active_objectives)
        front = np.flatnonzero(non_dominated_mask(pts, senses)).tolist()
        acc, comp = ref.accuracy[front], ref.compression[front]
        best = front[max(range(len(front)), key=lambda j: (acc[j], -comp[j]))]
        extremes = {"accuracy": best, "compression": front[int(np.argmin(comp))]}
        val = Measures(acc, comp, ref.similarity[front]) if val_batches else None
        return EvolutionResult(pop, train, best, front, state.logbook, val_measures=val,
                               selected_by=f"most accurate {where} within the size budget ({cfg.max_size:g})",
                               extremes=extremes)

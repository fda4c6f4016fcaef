"""One whole EComp run from a config: the library entry point.

    from ecomp_deap.search.run import run_ecomp
    result = run_ecomp(EcompConfig(), parent_model, data)   # data: FashionMNISTData-like
    result.best_module, result.to_json()

``data`` needs ``train_x, train_y, test_x, test_y`` tensors (images or flat rows).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._version import __version__
from .loops import HV_REFERENCE, Evolution, EvolutionResult, EvolutionState
from ..rng import seed_everything
from ..nets.chain import Chain, parent_input_shape, parent_tensors
from ..study.pruning_baselines import unit_scores
from ..config import EcompConfig
from ..data import BatchStream, make_splits
from ..fitness.evaluator import Measures, PopulationEvaluator
from ..nets.export import export_individual
from .indicators import hypervolume_2d
from .toolbox import build_toolbox
from ..validation import validate_parent_weights, validate_run_data


INIT_SCORE_IMAGES = 2000  # images behind activation-based initial unit scores


def _batches(x, y, batch_size):
    for i in range(0, len(x) - batch_size + 1, batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def versions() -> dict:
    import deap

    return {"ecomp_deap": __version__, "torch": torch.__version__, "deap": deap.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class RunResult:
    config: EcompConfig
    arch: Chain
    evolution: EvolutionResult
    best: dict
    front: list[dict]
    parent: dict
    test_hypervolume: float
    wall_time_s: float
    best_module: torch.nn.Sequential
    extremes: dict = field(default_factory=dict)
    front_modules: list = field(default_factory=list)
    phase_times_s: dict = field(default_factory=dict)
    """Wall time of the run's phases: generations (this session's, when resumed), the
    final pass (all training batches + validation) and the test pass with the export."""

    @property
    def final_population(self) -> dict:
        """Mean measures of the final population on all training batches."""
        m = self.evolution.train_measures
        return {"accuracy": float(m.accuracy.mean()), "compression": float(m.compression.mean()),
                "similarity": float(m.similarity.mean()), "size": len(m)}

    @property
    def logbook(self):
        from .loops import logbook_rows

        return logbook_rows(self.evolution.logbook)

    def to_json(self) -> dict:
        """The result-file body (without name/run, which the experiment layer adds)."""
        cfg = self.config
        return {"selection": cfg.selection, "objectives": list(cfg.active_objectives),
                "config": cfg.to_dict(), "versions": versions(), "seed": cfg.seed,
                "logbook": self.logbook, "parent": self.parent, "best": self.best, "extremes": self.extremes,
                "front": self.front, "final_population": self.final_population, "test_hypervolume": self.test_hypervolume,
                "hypervolume_reference": dict(HV_REFERENCE), "wall_time_s": self.wall_time_s,
                "phase_times_s": self.phase_times_s,
                "threads": torch.get_num_threads()}  # a run's last bits depend on it


class EcompRun:
    """Set-up shared by a fresh run and a resumed one."""

    def __init__(self, config: EcompConfig, parent_model: torch.nn.Module, data, progress: bool = True,
                 parent_test_accuracy: float | None = None, validation: tuple | None = None,
                 check_data: bool = True):
        """``data`` has train_x/train_y (the evolution subset and, unless ``validation``
        (x, y) is given, the validation split are drawn from it) and test_x/test_y.
        ``check_data=False`` skips :func:`validate_run_data` for callers that checked
        the same data against the same parent already."""
        if validation is not None:
            config = config.replace(val_size=0)
        config.validate()
        self.arch = Chain.from_module(parent_model, input_shape=parent_input_shape(parent_model, data.train_x))
        config.validate_for(self.arch)
        if check_data:
            validate_parent_weights(parent_model)
            validate_run_data(data, self.arch, validation)
        config.validate_data(len(data.train_y))
        self.config, self.data, self.progress = config, data, progress
        self.parent_model = parent_model
        self.parent_test_accuracy = parent_test_accuracy
        self.weights, self.biases, self.norms = parent_tensors(parent_model, self.arch)
        self.gen = seed_everything(config.seed)
        splits = make_splits(data.train_y, config.subset_size, config.val_size, config.seed)
        self.stream = BatchStream(data.train_x, data.train_y, splits.subset, config.batch_size, config.seed)
        val_x, val_y = validation if validation is not None else (data.train_x[splits.validation],
                                                                  data.train_y[splits.validation])
        self.val_batches = list(_batches(val_x, val_y, config.batch_size))
        self.evaluator = PopulationEvaluator(self.arch, self.weights, self.biases, config, config.resolved_device(),
                                             self.norms)
        calibration = self.subset_images(config.norm_calibration) if config.norm_calibration else None
        refit_x = self.subset_images(config.refit_images) if config.refit_images else None
        self.toolbox = build_toolbox(config, self.arch, self.weights, self.biases, self.gen, self.init_scores(),
                                     self.norms, calibration, refit_x)
        self.evolution = Evolution(config, self.toolbox, self.evaluator, self.stream, self.gen, progress)

    def init_scores(self, images: int = INIT_SCORE_IMAGES):
        """Unit scores ranking the initial prunings: None for L1 (the toolbox's default);
        for 'activation', from the first ``images`` images of the evolution subset."""
        if self.config.init_scores == "l1":
            return None
        batches = range(min(self.stream.n_batches, max(1, images // self.config.batch_size)))
        x = torch.cat([self.stream.batch(0, i)[0] for i in batches])
        return unit_scores(self.config.init_scores, self.arch, self.weights, self.biases, x, norms=self.norms)

    def subset_images(self, images: int) -> torch.Tensor:
        """The first ``images`` images of the evolution subset, in its first epoch's order."""
        batches = range(min(self.stream.n_batches, -(-images // self.config.batch_size)))
        return torch.cat([self.stream.batch(0, i)[0] for i in batches])[:images]

    def describe(self, ind, m: Measures, i: int) -> dict:
        kept = ind.hidden_units()
        params, macs = self.arch.sizes(kept)
        parent_params, parent_macs = self.arch.sizes()
        return {"test_accuracy": float(m.accuracy[i]), "compression": float(m.compression[i]),
                "similarity": float(m.similarity[i]), "hidden_units": kept,
                "parameters": params, "macs": macs, "parameters_kept": params / parent_params,
                "macs_kept": macs / parent_macs}

    def test_measures(self, individuals) -> Measures:
        """Measures on the test set: accuracy on all of it; the similarity, a per-batch
        quantity, averaged over its whole batches of the run's batch size."""
        batches = list(_batches(self.data.test_x, self.data.test_y, self.config.batch_size))
        if not batches:  # a test set smaller than one batch: one batch of all of it
            batches = [(self.data.test_x, self.data.test_y)]
        m = self.evaluator.measure_batches(individuals, batches, key=("test",))
        m.accuracy = self.evaluator.accuracy(individuals, self.data.test_x, self.data.test_y)
        return m

    def run(self, state: EvolutionState | None = None, on_generation=None, on_failure=None,
            elapsed_before_s: float = 0.0) -> RunResult:
        """Evolve (from ``state`` when resuming), select, measure on the test set, export."""
        t0 = time.perf_counter() - elapsed_before_s
        t_gen = time.perf_counter()
        state = self.evolution.run(state, on_generation, on_failure)
        t_final = time.perf_counter()
        evo = self.evolution.finish(state, self.val_batches)
        t_test = time.perf_counter()
        pop = evo.population
        chosen = sorted(set(evo.front_indices) | {evo.best_index} | set(evo.extremes.values()))
        test = self.test_measures([pop[i] for i in chosen])
        row = {idx: self.describe(pop[idx], test, j) for j, idx in enumerate(chosen)}
        for idx in chosen:
            row[idx]["train_accuracy"] = float(evo.train_measures.accuracy[idx])
            row[idx]["train_similarity"] = float(evo.train_measures.similarity[idx])
        if evo.val_measures is not None:  # Pareto mode: the validation front, aligned with front_indices
            for j, idx in enumerate(evo.front_indices):
                row[idx]["val_accuracy"] = float(evo.val_measures.accuracy[j])
        best = dict(row[evo.best_index], selected_by=evo.selected_by)
        front = [row[i] for i in evo.front_indices]
        hv = hypervolume_2d(np.array([[f["test_accuracy"], f["compression"]] for f in front]),
                            (HV_REFERENCE["accuracy"], HV_REFERENCE["compression"]))
        params, macs = self.arch.sizes()
        if self.parent_test_accuracy is None:
            from ..nets.parents import accuracy

            self.parent_test_accuracy = accuracy(self.parent_model, self.data.test_x, self.data.test_y)
        parent = {"test_accuracy": self.parent_test_accuracy, "hidden_units": list(self.arch.hidden_widths),
                  "parameters": params, "macs": macs}
        extremes = {k: row[i] for k, i in evo.extremes.items()}
        best_module = export_individual(pop[evo.best_index], self.arch)
        front_modules = [export_individual(pop[i], self.arch) for i in evo.front_indices]
        end = time.perf_counter()
        phases = {"generations": t_final - t_gen, "final_pass": t_test - t_final, "test_and_export": end - t_test}
        return RunResult(self.config, self.arch, evo, best, front, parent, hv, end - t0, best_module, extremes,
                         front_modules, phases)


def run_ecomp(config: EcompConfig, parent_model: torch.nn.Module, data, progress: bool = True,
              parent_test_accuracy: float | None = None, validation: tuple | None = None,
              check_data: bool = True) -> RunResult:
    """Run EComp once: evolve, select, measure on the test set, export the chosen network(s).
    The data are checked against the parent first (:mod:`ecomp_deap.validation`)."""
    return EcompRun(config, parent_model, data, progress, parent_test_accuracy, validation, check_data).run()

"""One whole EComp run, from a config to the chosen network: the library's entry point.

    from ecomp_deap.search.run import run_ecomp
    result = run_ecomp(EcompConfig(), model, data)   # data: train_x, train_y, test_x, test_y
    result.best_module, result.to_json()

:func:`run_ecomp` reads the parent (:func:`~ecomp_deap.nets.reader.read_parent`) and checks
the data against it (:func:`check_data`), once; :class:`EcompRun` is the run itself, for
callers that did both (``compress``, the experiment runner): evolve (:mod:`.loops`),
choose (:mod:`.choice`), measure the choice on the test set, export it.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from deap import tools

from .._version import __version__
from ..config import EcompConfig
from ..data import BatchStream, make_splits
from ..errors import ConfigError
from ..fitness.evaluator import PopulationEvaluator
from ..fitness.measures import Measures
from ..nets.chain import Chain
from ..nets.export import export_individual
from ..nets.graph import Graph
from ..nets.parent_accuracy import DataAccuracy, check_parent_accuracy, measure_parent_accuracy
from ..nets.reader import Parent, read_parent
from ..rng import seed_everything
from ..validation import validate_run_data
from .choice import EvolutionResult, choose, validation_batches
from .indicators import hypervolume_2d
from .loops import HV_REFERENCE, LOOPS, EvolutionState, GenerationHooks, logbook_rows, make_statistics, settle
from .scores import unit_scores
from .toolbox import build_toolbox

INIT_SCORE_IMAGES = 2000  # images behind activation-based initial unit scores


def whole_batches(x, y, batch_size):
    """The consecutive batches of ``batch_size`` in (x, y); a remainder is left out."""
    for i in range(0, len(x) - batch_size + 1, batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def versions() -> dict:
    """The versions a result was computed with (recorded in every result file)."""
    import deap

    return {"ecomp_deap": __version__, "torch": torch.__version__, "deap": deap.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class RunData:
    """A run's data, checked against its parent by :func:`check_data`: ``train_x``/``train_y``
    (the evolution subset and, unless ``validation`` (x, y) is given, the validation split
    are drawn from them) and ``test_x``/``test_y`` (for reporting only). A label tensor may
    be None (inputs only): a run whose ``accuracy_objective`` is 'fidelity' needs none and
    reads none of ``train_y`` and the validation labels; without ``test_y`` it reports
    no test accuracy. ``data_accuracy``: the parent's accuracy on the validation (else
    training) data, as measured there (None without labels)."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    validation: tuple | None = None
    data_accuracy: DataAccuracy | None = None

    def measured_on(self) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """The data the parent's accuracy is measured on: the validation set if given, else
        the training set (its labels None in a run without them)."""
        if self.validation is not None:
            return self.validation[0], self.validation[1], "val"
        return self.train_x, self.train_y, "train"


def check_data(parent: Parent, data, validation: tuple | None = None, allow_weak_parent: bool = False,
               opt_in: str = "allow_weak_parent=True", data_accuracy: DataAccuracy | None = None,
               measure_accuracy: bool = True) -> RunData:
    """``data`` (anything with ``train_x, train_y, test_x, test_y``) and the optional
    ``validation`` (x, y) checked against ``parent`` (:func:`~ecomp_deap.validation.validate_run_data`:
    one :class:`~ecomp_deap.errors.ConfigError` line naming the set and the problem; labels
    that are None are not checked), then, where there are labels and ``measure_accuracy``,
    the parent's accuracy on the validation (else training) data measured: at chance level
    it is one :class:`~ecomp_deap.errors.WeakParentError` line naming ``opt_in``, unless
    ``allow_weak_parent`` (:func:`~ecomp_deap.nets.parent_accuracy.check_parent_accuracy`).
    ``data_accuracy``: measured already (by the driver of a cluster run), kept as it is.
    A run without labels (fidelity) passes ``measure_accuracy=False``: it reads no label."""
    validate_run_data(data, parent.net, validation)
    checked = RunData(data.train_x, data.train_y, data.test_x, data.test_y, validation)
    x, y, on = checked.measured_on()
    if data_accuracy is None and measure_accuracy and y is not None:
        data_accuracy = check_parent_accuracy(parent, x, y, on, allow_weak_parent, opt_in)
    return replace(checked, data_accuracy=data_accuracy)


@dataclass
class RunResult:
    """One run's outcome: the chosen network (``best``, its measures; ``best_module``, it
    exported), the front (``front``, ``front_modules``) and its ``extremes``, the
    ``parent``'s test accuracy and sizes, the front's ``test_hypervolume``, the wall times
    and the :class:`~.choice.EvolutionResult` behind them."""

    config: EcompConfig
    net: Chain | Graph
    evolution: EvolutionResult
    best: dict
    front: list[dict]
    parent: dict
    test_hypervolume: float | None
    """The front's (test accuracy, compression) hypervolume; None without test labels."""
    wall_time_s: float
    best_module: torch.nn.Sequential
    extremes: dict = field(default_factory=dict)
    front_modules: list = field(default_factory=list)
    phase_times_s: dict = field(default_factory=dict)
    """Wall time of the run's phases: generations (this session's, when resumed), the
    final pass (all training batches + validation) and the test pass with the export."""

    @property
    def final_population(self) -> dict:
        """Mean measures of the final population on all training batches (the accuracy
        objective under its name, ``accuracy`` or ``fidelity``)."""
        m = self.evolution.train_measures
        return {self.config.accuracy_objective: float(m.accuracy.mean()), "compression": float(m.compression.mean()),
                "similarity": float(m.similarity.mean()), "size": len(m)}

    @property
    def logbook(self):
        """The logbook as plain dicts, one per generation (:func:`~.loops.logbook_rows`),
        the accuracy objective's statistics under its name (``accuracy`` or ``fidelity``)."""
        name = self.config.accuracy_objective
        return [{(name if k == "accuracy" else k): v for k, v in row.items()}
                for row in logbook_rows(self.evolution.logbook)]

    def to_json(self) -> dict:
        """The result-file body (without name/run, which the experiment layer adds)."""
        cfg = self.config
        return {"selection": cfg.selection, "objectives": list(cfg.objective_names),
                "config": cfg.to_dict(), "versions": versions(), "seed": cfg.seed,
                "logbook": self.logbook, "parent": self.parent, "best": self.best, "extremes": self.extremes,
                "front": self.front, "final_population": self.final_population, "test_hypervolume": self.test_hypervolume,
                "hypervolume_reference": dict(HV_REFERENCE), "wall_time_s": self.wall_time_s,
                "phase_times_s": self.phase_times_s,
                "threads": torch.get_num_threads()}  # a run's last bits depend on it


class EcompRun:
    """One run of ``config`` on a parent read by :func:`~ecomp_deap.nets.reader.read_parent`
    and data checked by :func:`check_data` (neither is read or checked again here)."""

    def __init__(self, config: EcompConfig, parent: Parent, data: RunData, progress: bool = True,
                 parent_test_accuracy: float | None = None):
        if data.validation is not None:
            config = config.replace(val_size=0)
        config.validate()
        config.validate_for(parent.net)
        config.validate_data(len(data.train_x), len(data.validation[0]) if data.validation is not None else None)
        self.config, self.parent, self.data, self.progress = config, parent, data, progress
        self.net = parent.net
        self.parent_test_accuracy = parent_test_accuracy
        self.rng = seed_everything(config.seed)
        self.evaluator = PopulationEvaluator(parent, config, config.resolved_device())
        # everything below measures agreement with these targets and nothing else
        train_targets = self.targets("train", data.train_x, data.train_y)
        splits = make_splits(train_targets, config.subset_size, config.val_size, config.seed)
        self.stream = BatchStream(data.train_x, train_targets, splits.subset, config.batch_size, config.seed)
        val_x, val_t = ((data.validation[0], self.targets("val", *data.validation)) if data.validation is not None
                        else (data.train_x[splits.validation], train_targets[splits.validation]))
        self.val_batches = validation_batches(val_x, val_t, config.batch_size, config.similarity_min_rows)
        calibration = self.subset_images(config.norm_calibration) if config.norm_calibration else None
        refit_x = self.subset_images(config.refit_images) if config.refit_images else None
        self.toolbox = build_toolbox(config, parent, self.rng, self.evaluator, self.stream, self.init_scores(),
                                     calibration, refit_x)
        self.total = config.epochs * self.stream.n_batches  # generations

    def targets(self, name: str, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """What the accuracy objective agrees with on data set ``name``: its ``labels``, or,
        for 'fidelity', the parent's top-1 predictions on ``x`` (the labels are not read)."""
        if self.config.accuracy_objective == "fidelity":
            return self.evaluator.parent_predictions(x)
        if labels is None:
            raise ConfigError(f"{name} data has no labels: the accuracy objective needs them "
                              "(accuracy_objective='fidelity' compresses without labels)")
        return labels

    def init_scores(self, images: int = INIT_SCORE_IMAGES):
        """Group scores ranking the initial prunings: None for L1 (the toolbox's default);
        for 'activation', from the first ``images`` images of the evolution subset."""
        if self.config.init_scores == "l1":
            return None
        batches = range(min(self.stream.n_batches, max(1, images // self.config.batch_size)))
        x = torch.cat([self.stream.batch(0, i)[0] for i in batches])
        p = self.parent
        return unit_scores(self.config.init_scores, self.net, p.weights, p.biases, x, norms=p.norms)

    def subset_images(self, images: int) -> torch.Tensor:
        """The first ``images`` images of the evolution subset, in its first epoch's order."""
        batches = range(min(self.stream.n_batches, -(-images // self.config.batch_size)))
        return torch.cat([self.stream.batch(0, i)[0] for i in batches])[:images]

    def initial_state(self) -> EvolutionState:
        """Generation 0: the initial prunings, each settled (refit, BatchNorm) as a child is."""
        population = self.toolbox.population(n=self.config.pop_size)
        for ind in population:
            settle(ind, self.toolbox, refit=self.config.refit_children)
        return EvolutionState(0, population, tools.Logbook(), self.rng)

    def evolve(self, state: EvolutionState | None = None, on_generation=None, on_failure=None,
               until: int | None = None) -> EvolutionState:
        """Run the generations left (from ``state`` when resuming; up to ``until``, by default
        all of them) with the run's loop (:data:`~ecomp_deap.search.loops.LOOPS`); the hooks
        as in :class:`~ecomp_deap.search.loops.GenerationHooks`."""
        from tqdm.auto import tqdm

        cfg = self.config
        state = state or self.initial_state()
        bar = tqdm(total=self.total, initial=state.t, disable=None if self.progress else True, unit="gen",
                   desc=f"{cfg.selection} pop {cfg.pop_size}", leave=False)
        with bar:
            hooks = GenerationHooks(bar, on_generation, on_failure)
            return LOOPS[cfg.selection](state, self.toolbox, cfg, make_statistics(), self.stream.n_batches,
                                        self.total if until is None else until, hooks)

    def describe(self, ind, m: Measures, i: int, label_accuracy=None) -> dict:
        """The result-file entry of ``ind``, whose measures are entry ``i`` of ``m``: test
        accuracy, compression, similarity, kept groups per hidden stage, parameters and
        multiply-adds per example (also as fractions of the parent's). A fidelity run's
        entry has its test fidelity (``m.accuracy``) and its test accuracy on the labels
        (``label_accuracy``; None without test labels)."""
        kept = ind.hidden_units()
        params, macs = self.net.sizes(ind.masks)
        parent_params, parent_macs = self.net.sizes()
        if self.config.accuracy_objective == "fidelity":
            head = {"test_accuracy": None if label_accuracy is None else float(label_accuracy[i]),
                    "test_fidelity": float(m.accuracy[i])}
        else:
            head = {"test_accuracy": float(m.accuracy[i])}
        return {**head, "compression": float(m.compression[i]),
                "similarity": float(m.similarity[i]), "hidden_units": kept,
                "parameters": params, "macs": macs, "parameters_kept": params / parent_params,
                "macs_kept": macs / parent_macs}

    def test_measures(self, individuals) -> Measures:
        """Measures on the test set: the accuracy objective on all of it; the similarity, a
        per-batch quantity, averaged over its whole batches of the run's batch size."""
        x = self.data.test_x
        y = self.targets("test", x, self.data.test_y)
        batches = list(whole_batches(x, y, self.config.batch_size))
        if not batches:  # a test set smaller than one batch: one batch of all of it
            batches = [(x, y)]
        m = self.evaluator.measure_batches(individuals, batches, key=("test",))
        m.accuracy = self.evaluator.accuracy(individuals, x, y)
        return m

    def test_label_accuracy(self, individuals):
        """(P,) test accuracy on the test labels, beside a fidelity run's test fidelity;
        None without test labels."""
        if self.data.test_y is None:
            return None
        return self.evaluator.accuracy(individuals, self.data.test_x, self.data.test_y)

    def run(self, state: EvolutionState | None = None, on_generation=None, on_failure=None,
            elapsed_before_s: float = 0.0) -> RunResult:
        """Evolve (from ``state`` when resuming), choose, measure on the test set, export."""
        t0 = time.perf_counter() - elapsed_before_s
        t_gen = time.perf_counter()
        state = self.evolve(state, on_generation, on_failure)
        t_final = time.perf_counter()
        evo = choose(state.population, state.logbook, self.toolbox, self.evaluator, self.config,
                     self.stream.all_batches(), self.val_batches)
        t_test = time.perf_counter()
        pop = evo.population
        chosen = sorted(set(evo.front_indices) | {evo.best_index} | set(evo.extremes.values()))
        individuals = [pop[i] for i in chosen]
        fidelity = self.config.accuracy_objective == "fidelity"
        test = self.test_measures(individuals)
        label_accuracy = self.test_label_accuracy(individuals) if fidelity else None
        row = {idx: self.describe(pop[idx], test, j, label_accuracy) for j, idx in enumerate(chosen)}
        measure = self.config.accuracy_objective  # what the train and val entries hold
        for idx in chosen:
            row[idx][f"train_{measure}"] = float(evo.train_measures.accuracy[idx])
            row[idx]["train_similarity"] = float(evo.train_measures.similarity[idx])
        if evo.val_measures is not None:  # Pareto mode: the validation front, aligned with front_indices
            for j, idx in enumerate(evo.front_indices):
                row[idx][f"val_{measure}"] = float(evo.val_measures.accuracy[j])
        selected_by = evo.selected_by.replace("most accurate", "highest fidelity").replace("accuracy", "fidelity") \
            if fidelity else evo.selected_by
        best = dict(row[evo.best_index], selected_by=selected_by)
        front = [row[i] for i in evo.front_indices]
        hv = None  # over the test accuracy: none without test labels
        if all(f["test_accuracy"] is not None for f in front):
            hv = hypervolume_2d(np.array([[f["test_accuracy"], f["compression"]] for f in front]),
                                (HV_REFERENCE["accuracy"], HV_REFERENCE["compression"]))
        params, macs = self.net.sizes()
        if self.parent_test_accuracy is None and self.data.test_y is not None:
            from ..nets.parents import accuracy

            self.parent_test_accuracy = accuracy(self.parent.model, self.data.test_x, self.data.test_y)
        measured = None if fidelity else \
            (self.data.data_accuracy or measure_parent_accuracy(self.parent, *self.data.measured_on()))
        parent = {"test_accuracy": self.parent_test_accuracy, "hidden_units": list(self.net.hidden_widths),
                  "parameters": params, "macs": macs, **(measured.to_json() if measured is not None else {})}
        extremes = {(measure if k == "accuracy" else k): row[i] for k, i in evo.extremes.items()}
        best_module = export_individual(pop[evo.best_index], self.net)
        front_modules = [export_individual(pop[i], self.net) for i in evo.front_indices]
        end = time.perf_counter()
        phases = {"generations": t_final - t_gen, "final_pass": t_test - t_final, "test_and_export": end - t_test}
        return RunResult(self.config, self.net, evo, best, front, parent, hv, end - t0, best_module, extremes,
                         front_modules, phases)


def run_ecomp(config: EcompConfig, model, data, progress: bool = True, parent_test_accuracy: float | None = None,
              validation: tuple | None = None, allow_weak_parent: bool = False) -> RunResult:
    """Run EComp once on ``model`` (an ``nn.Module`` classifier, or a :class:`~ecomp_deap.nets.reader.Parent`
    already read) and ``data`` (``train_x, train_y, test_x, test_y``; ``validation`` (x, y)
    for the final choice instead of a split of the training data): read the parent, check
    the data against it (a parent at chance level on them is refused unless
    ``allow_weak_parent``), evolve, choose, measure on the test set, export the chosen
    network(s)."""
    parent = read_parent(model, data.train_x)
    checked = check_data(parent, data, validation, allow_weak_parent,
                         measure_accuracy=config.accuracy_objective == "accuracy")
    return EcompRun(config, parent, checked, progress, parent_test_accuracy).run()

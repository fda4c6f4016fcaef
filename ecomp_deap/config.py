"""The settings of one EComp run: one frozen dataclass, validated with clear messages.

Only the command-line layer (``experiments/``) reads argv; everything below it takes
an ``EcompConfig``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

from .errors import ConfigError

OBJECTIVES = ("accuracy", "similarity", "compression")  # the order of the weights
SELECTIONS = ("weighted", "nsga2")
KERNELS = ("gaussian", "student_t")
DEVICES = ("auto", "cpu", "cuda")
INIT_SCORES = ("l1", "activation")
MUTATIONS = ("weights", "units")
CROSSOVERS = ("layerwise", "reference")
ACCURACY_OBJECTIVES = ("accuracy", "fidelity")

# The type of every setting, checked first by ``EcompConfig.validate`` (a string, None or a
# bool where a number belongs is one ConfigError line, not a TypeError deep in the run).
WHOLE_NUMBERS = ("pop_size", "generations", "epochs", "batch_size", "similarity_batch", "norm_calibration",
                 "refit_images", "elitism", "val_size", "seed", "eval_chunk")
NUMBERS = ("mutation_rate", "mutation_low", "mutation_high", "mask_flip_prob", "cx_prob", "perplexity",
           "init_prune_low", "init_prune_high", "refit_ridge", "selection_temperature")
FLAGS = ("refit_children",)
CHOICES = {"selection": SELECTIONS, "mutation": MUTATIONS, "crossover": CROSSOVERS, "kernel": KERNELS,
           "similarity_dtype": ("float32", "float64"), "init_scores": INIT_SCORES, "device": DEVICES,
           "accuracy_objective": ACCURACY_OBJECTIVES}
LAYER_LISTS = ("embedding_layers", "recombination_layers")
SEED_LIMIT = 2**63  # torch's generators take seeds below it


def is_number(v) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_whole_number(v) -> bool:
    """An integer (int, numpy integer), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ------------------------------------------------------------------ size budget
SIZE_TOL = 1e-9  # F * total is a float: 0.25 * 512 must give 128, not 127


def budget_groups(max_size: float, widths: Sequence[int]) -> int:
    """The most hidden groups an individual may keep: ``floor(max_size * sum(widths))``."""
    return int(math.floor(max_size * sum(widths) + SIZE_TOL))


def check_budget(max_size, widths: Sequence[int], kind: str = "units") -> int:
    """``budget_groups`` after checking F: a one-line :class:`ConfigError` for F outside
    (0, 1] or a budget that cannot give every hidden layer one group."""
    if isinstance(max_size, bool) or not isinstance(max_size, (int, float)) or not math.isfinite(max_size) \
            or not 0.0 < max_size <= 1.0:
        raise ConfigError(f"max_size must be a fraction of the parent's hidden {kind} in (0, 1], got {max_size}")
    total, layers = sum(widths), len(widths)
    budget = budget_groups(max_size, widths)
    if budget < layers:
        raise ConfigError(f"max_size {max_size:g} allows {budget} of the parent's {total} hidden {kind}, fewer than "
                          f"one per hidden layer ({layers} layers): the smallest budget is {layers / total:.4g}")
    return budget


def check_macs_budget(max_macs: float, net) -> float:
    """The multiply-adds ``max_macs`` allows of a parent's parsed network (``net.sizes()``);
    a one-line :class:`ConfigError` when even one group per layer needs more."""
    total = net.sizes()[1]
    smallest = net.sizes([1] * len(net.hidden_widths))[1]
    budget = max_macs * total
    if budget + SIZE_TOL * total < smallest:
        raise ConfigError(f"max_macs {max_macs:g} allows {budget:.0f} of the parent's {total} multiply-adds, fewer than "
                          f"one group per layer needs ({smallest}): the smallest budget is {smallest / total:.4g}")
    return budget


@dataclass(frozen=True)
class EcompConfig:
    """One EComp run. Defaults are the reference settings (``weighting121``)."""

    weights: tuple[float, float, float] = (1.0, 2.0, 1.0)
    """Objective weights in the order accuracy, similarity, compression. Weighted mode:
    fitness = wa*a - ws*s + wc*(1 - c). NSGA-II: a zero weight drops that objective."""
    accuracy_objective: str = "accuracy"
    """What the first objective measures: 'accuracy' (agreement with the labels) or
    'fidelity' (agreement with the parent's top-1 predictions, computed from the inputs
    once per data set: the run reads no training or validation label; test labels, where
    given, only report the test accuracy beside the test fidelity)."""
    selection: str = "weighted"
    """'weighted' (softmax roulette, the reference) or 'nsga2' (Pareto selection)."""
    pop_size: int = 100
    generations: int = 100
    """Generations (= training batches) per epoch; the evolution subset holds generations * batch_size images."""
    epochs: int = 1
    batch_size: int = 100
    mutation_rate: float = 0.01
    """Probability per child of the reference weight mutation (every weight of the
    recombination layers times its own factor from U(mutation_low, mutation_high))."""
    mutation_low: float = 0.9
    mutation_high: float = 1.1
    mutation: str = "weights"
    """'weights': the reference mutation (a factor per weight); 'units': a factor per
    hidden unit on its outgoing weights (``operators.mut_scale_units``)."""
    mask_flip_prob: float = 0.002
    """Per-unit probability that a child's mask bit flips (never emptying a layer).
    0.002 is about one flip per child per generation for 512 hidden units: enough to
    leave the nested L1-norm masks of the initial population, small enough not to
    swamp what crossover inherits."""
    crossover: str = "layerwise"
    """'layerwise': aligned one-point crossover, unit j of a child is the parent's unit j
    (``operators.cx_layerwise``); 'reference': the reference study's recombination, a
    child takes one parent's widths and a c x c block of the other's compacted weights
    (``operators.cx_reference``, MLP parents only)."""
    cx_prob: float = 1.0
    """Probability that a pair of selected parents is recombined (the reference: always)."""
    embedding_layers: tuple[str, ...] | None = ("layer_1_act", "layer_2_act")
    """Layers whose activations enter the similarity loss; None = every hidden activation."""
    recombination_layers: tuple[str, ...] | None = ("layer_1_linear", "layer_2_linear", "output")
    """Linear layers recombined (and weight-mutated); None = every Linear layer."""
    perplexity: float = 30.0
    similarity_batch: int = 0
    """Images of each batch entering the similarity loss (the first ones); 0 = the whole
    batch (the reference). Lets accuracy use large, less noisy batches while the
    t-SNE distributions, whose cost grows with the square of their size, stay small."""
    kernel: str = "gaussian"
    similarity_dtype: str = "float32"
    """Precision of the children's embedding distances and perplexity search: 'float32'
    (faster, docs/benchmarks.md; checked against scikit-learn to 1e-4 relative) or 'float64'.
    The parent's P and the KL sums are float64 either way; the Student-t kernel always
    runs in float64. Result files written before this setting existed ran in float64."""
    init_prune_low: float = 0.1
    init_prune_high: float = 0.8
    """Initial population: prunings at rates evenly spaced over [low, high)."""
    init_scores: str = "l1"
    """How the initial prunings rank units: 'l1' (L1 norm of the incoming weights, the
    reference) or 'activation' (mean |activation| on the evolution subset's first
    batches times the L2 norm of the outgoing weights)."""
    norm_calibration: int = 0
    """Images (the first of the evolution subset) on which every new individual's
    BatchNorm running statistics are re-estimated for its kept channels, forward only,
    no gradient ("adaptive BatchNorm"); 0 = off: individuals inherit the parent's
    statistics. Stages after the first only (the first one's inputs are never pruned).
    CNN parents with BatchNorm; nothing to do for others."""
    refit_images: int = 0
    """Images (the first of the evolution subset) on which the final population's Linear
    layers after the first are refitted to the parent's pre-activations by closed-form
    ridge least squares before the final measures and the choice (:mod:`ecomp_deap.nets.refit`;
    no gradient); 0 = off (the reference)."""
    refit_ridge: float = 1e-4
    """The refit's ridge, relative to the mean squared input of each refitted layer."""
    refit_children: bool = False
    """With ``refit_images``: refit every child after variation too (Lamarckian: it keeps
    the refitted weights), so that selection sees each mask at its refitted accuracy."""
    selection_temperature: float = 1.0
    """Weighted mode: roulette probabilities softmax(fitness / T). T = 1 is the reference
    (almost uniform for fitnesses a few hundredths apart); smaller T, more pressure."""
    elitism: int = 0
    """Weighted mode: the best `elitism` individuals survive unchanged (0 = the reference)."""
    val_size: int = 5000
    """Class-balanced validation images (disjoint from the evolution subset), for final
    selection; all of them count (a split smaller than a batch is one batch, and the images
    past the last whole batch count too: ``search.choice.validation_batches``)."""
    max_size: float | None = None
    """Size budget: at most this fraction of the parent's hidden groups (units, channels)
    in every individual (``ecomp_deap.search.budget``); None = no budget. The initial prunings
    lie within it, a repair after every operator that can grow a mask drops the
    lowest-scoring groups (by ``init_scores``) until it holds, and the run's "best" is
    the most accurate network on validation within it."""
    max_macs: float | None = None
    """Size budget in multiply-adds: at most this fraction of the parent's multiply-adds per
    example (its Conv and Linear layers') in every individual, the usual budget of CNN
    pruning; repaired and chosen as ``max_size`` is (both may be given). None = no budget."""
    seed: int = 0
    device: str = "auto"
    eval_chunk: int = 0
    """Individuals evaluated per batched forward; 0 = automatic (bounded memory)."""

    def __post_init__(self):
        w = self.weights
        if isinstance(w, (str, bytes)) or not isinstance(w, (tuple, list)) or not all(is_number(v) for v in w):
            raise ConfigError(f"weights must be 3 numbers (accuracy, similarity, compression), got {w!r}")
        object.__setattr__(self, "weights", tuple(float(v) for v in w))
        for name in ("max_size", "max_macs"):
            if is_number(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        for name in WHOLE_NUMBERS:  # numpy integers and floats as Python's (they go into JSON)
            if is_whole_number(getattr(self, name)):
                object.__setattr__(self, name, int(getattr(self, name)))
        for name in NUMBERS:
            if is_number(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        for name in LAYER_LISTS:
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, (tuple, list)) or not all(isinstance(layer, str) for layer in v):
                    raise ConfigError(f"{name} must be a list of layer names (or None: every layer), got {v!r}")
                object.__setattr__(self, name, tuple(v))

    # ------------------------------------------------------------------ derived
    @property
    def active_objectives(self) -> tuple[str, ...]:
        """The objectives with a non-zero weight, in the order of :data:`OBJECTIVES`."""
        return tuple(o for o, w in zip(OBJECTIVES, self.weights) if w != 0)

    @property
    def has_budget(self) -> bool:
        """Whether a size budget (groups or multiply-adds) bounds every individual."""
        return self.max_size is not None or self.max_macs is not None

    def describe_budget(self) -> str:
        """e.g. '0.25 of the groups', '0.5 of the multiply-adds' (both when both are given)."""
        parts = ([f"{self.max_size:g} of the groups"] if self.max_size is not None else []) + \
            ([f"{self.max_macs:g} of the multiply-adds"] if self.max_macs is not None else [])
        return " and ".join(parts)

    @property
    def objective_names(self) -> tuple[str, ...]:
        """:attr:`active_objectives` as result files name them: the first one after what it
        measures (``accuracy_objective``: 'accuracy' or 'fidelity')."""
        return tuple(self.accuracy_objective if o == "accuracy" else o for o in self.active_objectives)

    @property
    def similarity_size(self) -> int:
        """Images of each batch that enter the similarity: ``similarity_batch``, or the whole batch."""
        return self.similarity_batch or self.batch_size

    @property
    def similarity_min_rows(self) -> int:
        """The fewest images a similarity is measured on: more than the perplexity."""
        return int(math.floor(self.perplexity)) + 1

    @property
    def validation_similarity(self) -> bool:
        """Whether the final choice compares similarities on the validation split: it does
        in Pareto mode and with a size budget, when the similarity is an objective."""
        return self.weights[1] != 0 and (self.selection == "nsga2" or self.max_size is not None)

    @property
    def subset_size(self) -> int:
        """Images in the evolution subset: ``generations * batch_size``."""
        return self.generations * self.batch_size

    def to_dict(self) -> dict:
        """The settings as a dict, field name -> value (what a result file stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EcompConfig":
        """The config of a :meth:`to_dict` dict, not validated: an unknown setting is a
        :class:`ConfigError`, and a dict without ``similarity_dtype`` (saved before it existed)
        gets 'float64', what those runs used."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        if "similarity_dtype" not in d:  # saved before the setting existed: those runs used float64
            d = {**d, "similarity_dtype": "float64"}
        return cls(**d)

    def replace(self, **changes) -> "EcompConfig":
        """A copy with ``changes`` applied (:func:`dataclasses.replace`; not validated)."""
        return replace(self, **changes)

    # --------------------------------------------------------------- validation
    def validate(self) -> "EcompConfig":
        """Check every setting that needs no parent or data; raise ConfigError with what is allowed."""
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(msg)

        for name in WHOLE_NUMBERS:
            v = getattr(self, name)
            need(is_whole_number(v), f"{name} must be a whole number, got {v!r}")
        for name in NUMBERS:
            v = getattr(self, name)
            need(is_number(v), f"{name} must be a number, got {v!r}")
        for name in FLAGS:
            v = getattr(self, name)
            need(isinstance(v, bool), f"{name} must be True or False, got {v!r}")
        for name, allowed in CHOICES.items():
            v = getattr(self, name)
            need(isinstance(v, str) and v in allowed, f"{name} must be one of {', '.join(allowed)}, got {v!r}")
        need(len(self.weights) == 3, f"weights must be 3 numbers (accuracy, similarity, compression), got {len(self.weights)}")
        need(all(math.isfinite(w) for w in self.weights), f"weights must be finite, got {list(self.weights)}")
        need(all(w >= 0 for w in self.weights), f"weights must be non-negative, got {list(self.weights)}")
        need(any(w > 0 for w in self.weights), "weights are all zero: at least one objective needs a positive weight")
        need(isinstance(self.pop_size, int) and self.pop_size >= 2, f"pop_size must be an integer >= 2, got {self.pop_size}")
        if self.selection == "nsga2":
            need(self.pop_size % 4 == 0, f"pop_size must be a multiple of 4 for NSGA-II (its DCD tournament picks in fours), got {self.pop_size}")
        for name in ("generations", "epochs", "batch_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v}")
        for name in ("mutation_rate", "mask_flip_prob", "cx_prob"):
            v = getattr(self, name)
            need(math.isfinite(v) and 0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        need(0 < self.mutation_low <= self.mutation_high < math.inf, f"mutation factors need finite 0 < low <= high, got [{self.mutation_low}, {self.mutation_high}]")
        need(isinstance(self.norm_calibration, int) and self.norm_calibration >= 0,
             f"norm_calibration must be an integer >= 0 (images), got {self.norm_calibration}")
        need(isinstance(self.refit_images, int) and not isinstance(self.refit_images, bool)
             and (self.refit_images == 0 or self.refit_images >= 2),
             f"refit_images must be 0 (off) or an integer >= 2 (images), got {self.refit_images}")
        need(isinstance(self.refit_ridge, (int, float)) and math.isfinite(self.refit_ridge) and self.refit_ridge > 0,
             f"refit_ridge must be a finite number > 0, got {self.refit_ridge}")
        need(0.0 <= self.init_prune_low < self.init_prune_high <= 1.0,
             f"initial pruning rates need 0 <= low < high <= 1, got [{self.init_prune_low}, {self.init_prune_high})")
        need(math.isfinite(self.perplexity) and self.perplexity > 0, f"perplexity must be > 0, got {self.perplexity}")
        need(isinstance(self.similarity_batch, int) and 0 <= self.similarity_batch <= self.batch_size,
             f"similarity_batch must be an integer in [0, batch_size], got {self.similarity_batch}")
        need(self.perplexity < self.similarity_size,
             f"perplexity ({self.perplexity}) must be smaller than the "
             + (f"similarity batch ({self.similarity_batch})" if self.similarity_batch else f"batch size ({self.batch_size})"))
        need(math.isfinite(self.selection_temperature) and self.selection_temperature > 0,
             f"selection_temperature must be > 0, got {self.selection_temperature}")
        need(isinstance(self.elitism, int) and 0 <= self.elitism < self.pop_size,
             f"elitism must be an integer in [0, pop_size), got {self.elitism}")
        need(isinstance(self.val_size, int) and self.val_size >= 0, f"val_size must be an integer >= 0, got {self.val_size}")
        need(self.val_size == 0 or self.val_size >= self.similarity_min_rows or not self.validation_similarity,
             f"val_size must be 0 (no validation) or more than the perplexity ({self.perplexity:g}): the final choice "
             f"compares similarities on the validation split, got {self.val_size}")
        if self.max_size is not None:
            need(isinstance(self.max_size, (int, float)) and not isinstance(self.max_size, bool)
                 and math.isfinite(self.max_size) and 0.0 < self.max_size <= 1.0,
                 f"max_size must be a fraction of the parent's hidden units in (0, 1], got {self.max_size}")
        if self.max_macs is not None:
            need(isinstance(self.max_macs, (int, float)) and not isinstance(self.max_macs, bool)
                 and math.isfinite(self.max_macs) and 0.0 < self.max_macs <= 1.0,
                 f"max_macs must be a fraction of the parent's multiply-adds in (0, 1], got {self.max_macs}")
        need(isinstance(self.eval_chunk, int) and self.eval_chunk >= 0, f"eval_chunk must be an integer >= 0, got {self.eval_chunk}")
        need(0 <= self.seed < SEED_LIMIT, f"seed must be a whole number in [0, 2**63), got {self.seed}")
        if self.device == "cuda":
            import torch

            need(torch.cuda.is_available(), "device 'cuda' was asked for but no CUDA device is available (use --device cpu or auto)")
        return self

    def validate_for(self, chain) -> "EcompConfig":
        """Check the settings against a parent's parsed network (a
        :class:`~ecomp_deap.nets.chain.Chain` or a :class:`~ecomp_deap.nets.graph.Graph`):
        layer names, the size budget, and what graph parents do not support yet."""
        if self.max_size is not None:
            check_budget(self.max_size, chain.hidden_widths, chain.group_kind)
        if self.max_macs is not None:
            check_macs_budget(self.max_macs, chain)
        if chain.kind == "graph":
            for name, on in (("refit_images", self.refit_images), ("kernel 'student_t'", self.kernel == "student_t"),
                             ("crossover 'reference'", self.crossover == "reference")):
                if on:
                    raise ConfigError(f"{name} works on chain parents (nn.Sequential of the layers a chain holds) "
                                      f"only; this parent is {chain.describe()}")
        names = ", ".join(chain.embedding_names)
        for layer in self.embedding_layers or ():
            try:
                chain.embedding_index(layer)
            except KeyError:
                raise ConfigError(f"embedding layer {layer!r} is not a hidden layer of the parent; its hidden layers "
                                  f"are: {names}") from None
        for layer in self.recombination_layers or ():
            if layer not in chain.stage_names:
                raise ConfigError(f"recombination layer {layer!r} is not a Conv2d or Linear layer of the parent; "
                                  f"they are: {', '.join(chain.stage_names)}")
        return self

    def validate_data(self, n_train: int, n_val: int | None = None) -> "EcompConfig":
        """Check that the evolution subset and the validation split fit the training data,
        and that ``n_val`` validation examples given apart (None: none) are enough for the
        similarity the final choice compares on them."""
        if n_val is not None and self.validation_similarity and n_val < self.similarity_min_rows:
            raise ConfigError(f"val data: {n_val} examples are too few for the similarity the final choice compares "
                              f"on them (more than the perplexity, {self.perplexity:g}, are needed); give more, or "
                              "no val data")
        if self.norm_calibration > self.subset_size:
            raise ConfigError(f"norm_calibration ({self.norm_calibration} images) exceeds the evolution subset "
                              f"(generations x batch size = {self.subset_size})")
        if self.refit_images > self.subset_size:
            raise ConfigError(f"refit_images ({self.refit_images} images) exceeds the evolution subset "
                              f"(generations x batch size = {self.subset_size})")
        if self.subset_size + self.val_size > n_train:
            raise ConfigError(f"generations x batch size ({self.generations} x {self.batch_size} = {self.subset_size}) "
                              f"plus val_size ({self.val_size}) exceed the {n_train} training images")
        return self

    def resolved_device(self) -> str:
        """The device to run on: ``device``, 'auto' resolved to 'cuda' where CUDA is
        available, else 'cpu'."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

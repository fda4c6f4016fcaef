"""The individual: a mask over the parent's groups plus its own weights.

A group is a hidden unit (Linear) or an output channel (Conv2d) with everything cut
with it (see :mod:`ecomp_deap.nets.chain`). Group ``j`` of hidden stage ``l`` is the
parent's group ``j`` in every individual, so crossover swaps corresponding neurons
or filters and a population stacks into one tensor.

Tensors in a genome are never modified in place: operators replace them. That makes
cloning cheap (lists are copied, tensors shared) and lets the initial population
share the parent's weights. A stage's weights may be stored as crossover left them, row
ranges of their ancestors' tensors (:mod:`ecomp_deap.nets.spliced`): ``weights[k]`` reads
the tensor; ``weights.raw(k)`` what is stored.
"""
from __future__ import annotations

import copy

from deap import base, creator

from ..config import OBJECTIVES
from ..nets.spliced import StageTensors


class Genome:
    """masks[l]: (H_l,) bool per hidden stage; per stage k (the output layer last),
    parent-shaped float32: weights[k] (out_k, in_k) or (out_k, in_k, kh, kw), biases[k]
    (out_k,) and norms[k], its BatchNorm as a (4, out_k) stack [weight, bias, running
    mean, running var] or None."""

    def __init__(self, masks, weights, biases, norms=None):
        self.masks = list(masks)
        self.weights = weights
        self.biases = list(biases)
        self.norms = list(norms) if norms is not None else [None] * len(self.weights)
        self.measures = None  # (accuracy, compression, similarity) of the last evaluation

    @property
    def weights(self) -> StageTensors:
        return self._weights

    @weights.setter
    def weights(self, items) -> None:
        self._weights = StageTensors(items)  # a copy of the list, splices kept as they are

    def hidden_units(self) -> list[int]:
        return [int(m.sum()) for m in self.masks]

    def clone(self):
        """New individual sharing the (immutable) tensors, with its own fitness."""
        other = copy.copy(self)
        other.masks = list(self.masks)
        other.weights = self._weights
        other.biases = list(self.biases)
        other.norms = list(self.norms)
        if hasattr(self, "fitness"):
            other.fitness = copy.deepcopy(self.fitness)
        return other

    def __deepcopy__(self, memo):
        return self.clone()

    def __repr__(self):
        return f"{type(self).__name__}(hidden_units={self.hidden_units()})"


def fitness_weights(selection: str, weights) -> tuple[float, ...]:
    """DEAP fitness weights: weighted mode maximises one scalar; NSGA-II maximises
    accuracy and minimises similarity and compression, for the non-zero objectives."""
    if selection == "weighted":
        return (1.0,)
    sense = {"accuracy": 1.0, "similarity": -1.0, "compression": -1.0}
    return tuple(sense[o] for o, w in zip(OBJECTIVES, weights) if w != 0)


def make_types(fitness_w: tuple[float, ...]):
    """The DEAP Fitness and Individual classes for these fitness weights, created once.

    A second call returns the existing classes: no warning, no redefinition.
    """
    tag = "_".join(("max" if w > 0 else "min") for w in fitness_w)
    fit_name, ind_name = f"EcompFitness_{tag}", f"EcompIndividual_{tag}"
    if not hasattr(creator, fit_name):
        creator.create(fit_name, base.Fitness, weights=tuple(fitness_w))
    if not hasattr(creator, ind_name):
        creator.create(ind_name, Genome, fitness=getattr(creator, fit_name))
    return getattr(creator, fit_name), getattr(creator, ind_name)


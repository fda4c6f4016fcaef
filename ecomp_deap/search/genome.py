"""The individual: a :class:`~ecomp_deap.nets.masked.MaskedNetwork` (a mask over the
parent's groups plus its own weights) with a DEAP fitness and its last measures.
"""
from __future__ import annotations

import copy

from deap import base, creator

from ..config import OBJECTIVES
from ..nets.masked import MaskedNetwork


class Genome(MaskedNetwork):
    """An individual of the search: the network, ``fitness`` (added by the DEAP class
    :func:`make_types` creates) and ``measures``, an
    :class:`~ecomp_deap.fitness.measures.IndividualMeasures` of its last evaluation."""

    def __init__(self, masks, weights, biases, norms=None):
        super().__init__(masks, weights, biases, norms)
        self.measures = None

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


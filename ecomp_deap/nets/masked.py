"""A network as a mask over a parent's groups plus its own per-stage tensors.

This is what the search's individuals are (:class:`ecomp_deap.search.genome.Genome`
adds a DEAP fitness) and what the evaluator, the refit and the export read. Group ``j``
of hidden stage ``l`` is the parent's group ``j`` in every network, so networks of one
parent stack into one tensor and crossover swaps corresponding neurons or filters.

Tensors are never modified in place: code that changes a network replaces them. That
makes copies cheap (lists are copied, tensors shared) and lets pruned networks share the
parent's weights. A stage's weights may be stored as crossover left them, row ranges of
their ancestors' tensors (:mod:`.spliced`): ``weights[k]`` reads the tensor,
``weights.raw(k)`` what is stored.
"""
from __future__ import annotations

import torch

from .spliced import StageTensors


class MaskedNetwork:
    """``masks[l]``: (H_l,) bool per hidden stage, the groups kept; per stage ``k`` (the
    output layer last), parent-shaped float32: ``weights[k]`` (out_k, in_k) or (out_k,
    in_k, kh, kw), ``biases[k]`` (out_k,) and ``norms[k]``, its BatchNorm as a (4, out_k)
    stack [weight, bias, running mean, running var] or None."""

    def __init__(self, masks, weights, biases, norms=None):
        self.masks = list(masks)
        self.weights = weights
        self.biases = list(biases)
        self.norms = list(norms) if norms is not None else [None] * len(self.weights)

    @property
    def weights(self) -> StageTensors:
        """The per-stage weights, a :class:`~.spliced.StageTensors`; assigning a list (of
        tensors or splices) stores a copy of it."""
        return self._weights

    @weights.setter
    def weights(self, items) -> None:
        self._weights = StageTensors(items)  # a copy of the list, splices kept as they are

    def hidden_units(self) -> list[int]:
        """Kept groups per hidden stage."""
        return [int(m.sum()) for m in self.masks]

    @classmethod
    def whole(cls, hidden_widths, weights, biases, norms=None) -> "MaskedNetwork":
        """Every group kept: the parent itself, with the given tensors."""
        return cls([torch.ones(h, dtype=torch.bool) for h in hidden_widths], weights, biases, norms)

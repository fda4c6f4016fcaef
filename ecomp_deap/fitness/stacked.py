"""The stacked forward: a chunk of individuals as one masked batched program.

Every individual's parent-shaped tensors are stacked and its masked groups zeroed, so a
convolutional stage is one grouped convolution with the population as groups and a
Linear stage one batched matmul (:func:`ecomp_deap.nets.forward.stacked_stage`). It costs
the parent's forward per individual whatever its size, in few kernel launches: the
default on GPUs, and the CPU reference that the kept-groups forward is tested against.
"""
from __future__ import annotations

import torch

from ..nets.chain import Chain
from ..nets.forward import as_input, per_individual, stacked_stage
from .embeddings import Embeddings, block_rows


class StackedForward:
    """One masked batched program per chunk (:meth:`outputs`)."""

    name = "stacked"
    holds_feature_maps = True  # every individual's feature maps at once (bounds the chunk size)

    def __init__(self, chain: Chain, embeddings: Embeddings, device: torch.device):
        self.chain, self.embeddings, self.device = chain, embeddings, device

    def plan(self, population, x: torch.Tensor, rows: int, step: int) -> "StackedPlan":
        """Nothing to prepare: each chunk is stacked when it is run."""
        return StackedPlan(self, population, x, rows)

    def stack(self, population):
        """Per stage, the chunk's stacked tensors on the device: weights (C, out, ...),
        biases (C, out), norms (C, 4, out) or None; masks (C, H_l) float per hidden stage."""
        def stack(items):
            return torch.stack(items).to(self.device, torch.float32, non_blocking=True)

        n = len(self.chain.stages)
        weights = [stack([ind.weights[k] for ind in population]) for k in range(n)]
        biases = [stack([ind.biases[k] for ind in population]) for k in range(n)]
        norms = [stack([ind.norms[k] for ind in population]) if population[0].norms[k] is not None else None
                 for k in range(n)]
        masks = [stack([ind.masks[l] for ind in population]) for l in range(self.chain.n_hidden)]
        return weights, biases, norms, masks

    def outputs(self, population, x: torch.Tensor, rows: int, blocks: int = 1, dtype=None):
        """Logits (C, N, K), the masks (C, H_l) float and the embeddings' squared
        distances (C, blocks, rows, rows) of a chunk; ``x`` holds ``blocks`` equal batches."""
        weights, biases, norms, masks = self.stack(population)
        C, last, wanted = len(population), len(self.chain.stages) - 1, self.embeddings.wanted(rows)
        dists = [None] * len(self.embeddings)
        h = as_input(self.chain, x)
        for k, st in enumerate(self.chain.stages):
            positions = [where for _, where in wanted.get(k, ())]
            h, kept = stacked_stage(st, h, weights[k], biases[k], norms[k], masks[k] if k < last else None,
                                    shared=k == 0, positions=positions)
            for pos, where in wanted.get(k, ()):
                dists[pos] = self.embeddings.distances(block_rows(per_individual(kept[where], C), blocks, rows, 1),
                                                       dtype)
        logits = per_individual(h, C).reshape(C, x.shape[0], -1)  # (C, B, K)
        if not rows:
            dists = [torch.empty(C, blocks, 0, 0, dtype=dtype or self.embeddings.dtype, device=self.device)
                     for _ in range(len(self.embeddings))]
        return logits, masks, dists


class StackedPlan:
    """The stacked forward of ``population`` on ``x`` (:meth:`outputs` per chunk)."""

    def __init__(self, forward: StackedForward, population, x: torch.Tensor, rows: int):
        self.forward, self.population, self.x, self.rows = forward, population, x, rows

    def outputs(self, start: int, stop: int, blocks: int = 1, dtype=None):
        """:meth:`StackedForward.outputs` of members ``start`` to ``stop`` (excluded) of the
        population: C = stop - start."""
        return self.forward.outputs(self.population[start:stop], self.x, self.rows, blocks, dtype)

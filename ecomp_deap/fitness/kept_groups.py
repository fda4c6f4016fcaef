"""The kept-groups forward: each individual runs on its kept groups only.

An individual's filters and rows are gathered to its kept outputs and the kept inputs
of the stage below (:func:`ecomp_deap.nets.forward.kept_tensors`), so a network at a
quarter of the groups costs about a quarter of the parent's forward or less. The first
stage, whose input every individual shares, runs for many individuals at once
(:mod:`.first_stage`), and the distances of all individuals' embeddings are computed
together, zero-padded to a common width. The default on the CPU.
"""
from __future__ import annotations

from collections import Counter

import torch

from ..nets.chain import Chain
from ..nets.forward import as_input, kept_tensors, run_stage
from .embeddings import Embeddings, block_rows, padded_distances
from .first_stage import FirstStagePool, build_pool, first_stage_outputs

# A convolutional first stage runs once on the population's distinct filters from this many
# images (the final pass's concatenated batches) when the population is measured in several
# chunks; a Linear one always does (see KeptGroupsForward.pooled).
DEDUPE_MIN_IMAGES = 1000


def kept_groups(population, k: int) -> tuple[torch.Tensor, ...]:
    """Per individual, the kept group indices (h,) of hidden stage ``k``, in index order
    (one ``nonzero`` for the population: its columns, split by individual)."""
    masks = torch.stack([ind.masks[k] for ind in population])  # (P, H_k)
    _, cols = masks.nonzero(as_tuple=True)  # (S,) row by row
    return cols.split(masks.sum(1).tolist())


class KeptGroupsForward:
    """Each individual on its kept groups (:meth:`outputs`); a population's first stage
    from one run on its distinct groups where :meth:`pooled` says so (:meth:`plan`)."""

    name = "kept_groups"
    holds_feature_maps = False  # one individual's feature maps at a time

    def __init__(self, chain: Chain, embeddings: Embeddings, device: torch.device):
        self.chain, self.embeddings, self.device = chain, embeddings, device

    def pooled(self, population, x: torch.Tensor, step: int) -> bool:
        """Whether ``population``'s first stage on ``x`` runs once on its distinct groups:
        for a Linear first stage always (its shared input makes every copied row a wasted
        GEMM row), for a convolution from DEDUPE_MIN_IMAGES images when the population is
        measured in several chunks of ``step`` (below that, individuals sharing the
        parent's filters share per-channel Grams)."""
        if len(population) < 2:
            return False
        if self.chain.stages[0].kind == "linear":
            return True
        return len(x) >= DEDUPE_MIN_IMAGES and len(population) > step

    def plan(self, population, x: torch.Tensor, rows: int, step: int) -> "KeptGroupsPlan":
        """The forward of ``population`` on ``x`` in chunks of ``step``: with the first
        stage pooled (:func:`~ecomp_deap.fitness.first_stage.build_pool`) where it pays and fits."""
        pool = build_pool(self.chain, self.embeddings, population, x, rows, self.device) \
            if self.pooled(population, x, step) else None
        return KeptGroupsPlan(self, population, x, rows, pool)

    def outputs(self, population, x: torch.Tensor, rows: int, blocks: int = 1, dtype=None,
                pool: FirstStagePool | None = None, offset: int = 0):
        """Logits (C, N, K), the masks (C, H_l) float and, per embedding layer, the squared
        distances (C, blocks, rows, rows) between the embeddings of each batch's first
        ``rows`` images, computed from the kept groups (a masked group is 0 in every image,
        so it adds nothing): the values of the masked forward, at the cost of the kept
        groups. ``x`` holds ``blocks`` equal batches; ``pool``: the first stage of a
        population whose members ``offset``, ``offset + 1``, ... these are."""
        masks = [torch.stack([ind.masks[l] for ind in population]).float() for l in range(self.chain.n_hidden)]
        dtype = dtype or self.embeddings.dtype
        h0 = as_input(self.chain, x)
        C, last = len(population), len(self.chain.stages) - 1
        logits = x.new_empty(C, x.shape[0], self.chain.n_classes)
        dists = [torch.empty(C, blocks, rows, rows, dtype=dtype) for _ in range(len(self.embeddings))]
        embedded = [[None] * C for _ in range(len(self.embeddings))]  # per embedding: (blocks, rows, F_i) or None
        wanted = self.embeddings.wanted(rows)
        keeps = list(zip(*(kept_groups(population, k) for k in range(last))))  # per individual, per stage: (h_k,)
        positions = [where for _, where in wanted.get(0, ())]
        if pool is not None:
            first = [pool.take(offset + i, positions) for i in range(C)]
        else:
            first = first_stage_outputs(self.chain, population, h0, keeps, positions, rows, blocks, dtype)
        for i, ind in enumerate(population):
            h, kept = first[i]
            for pos, where in wanted.get(0, ()):
                if isinstance(kept[where], tuple):  # ('dist', distances from the shared per-group Grams)
                    dists[pos][i] = kept[where][1]
                else:
                    embedded[pos][i] = block_rows(kept[where], blocks, rows)
            prev = keeps[i][0]  # kept group indices of the stage below
            for k in range(1, last + 1):
                st = self.chain.stages[k]
                keep = keeps[i][k] if k < last else None
                w, b, n = kept_tensors(st, ind.weights[k], ind.biases[k], ind.norms[k], keep, prev)
                h, kept = run_stage(st, h, w, b, n, [where for _, where in wanted.get(k, ())])
                for pos, where in wanted.get(k, ()):
                    embedded[pos][i] = block_rows(kept[where], blocks, rows)
                prev = keep
            logits[i] = h.reshape(h.shape[0], -1)
        # the forward is done: an embedding no other one shares storage with (the same layer
        # named twice, or a group's columns of one first-stage run) is centred in place
        holders = Counter(e.untyped_storage().data_ptr() for per_pos in embedded for e in per_pos if e is not None)
        for pos in range(len(self.embeddings)):
            padded_distances(self.embeddings, embedded[pos], dists[pos], dtype, holders)
        return logits, masks, dists

class KeptGroupsPlan:
    """The kept-groups forward of ``population`` on ``x``, its first stage pooled or not
    (:meth:`outputs` per chunk)."""

    def __init__(self, forward: KeptGroupsForward, population, x: torch.Tensor, rows: int,
                 pool: FirstStagePool | None):
        self.forward, self.population, self.x, self.rows, self.pool = forward, population, x, rows, pool

    def outputs(self, start: int, stop: int, blocks: int = 1, dtype=None):
        """:meth:`KeptGroupsForward.outputs` of members ``start`` to ``stop`` (excluded) of the
        population, with the plan's first stage: C = stop - start."""
        return self.forward.outputs(self.population[start:stop], self.x, self.rows, blocks, dtype, self.pool, start)

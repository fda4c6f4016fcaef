"""The first stage of the kept-groups forward, for many individuals at once.

The first stage's input is the same for every individual, and every one of its
operations is per group (a filter or a row, its bias, its BatchNorm entries), so it need
not run once per individual:

* :func:`build_pool`: once on the population's *distinct* groups (equal content keys,
  :mod:`.row_keys`); each individual reads its kept groups' columns of that one output.
  Late in a run most kept first-stage rows are copies of a few (crossover moves rows
  without changing them, only mutation makes new ones).
* :func:`first_stage_outputs` otherwise: individuals holding the same tensors (operators
  never copy a tensor both parents share) share one full-width run, from which each takes
  its kept groups (and, for feature maps, per-group Gram matrices summed over its kept
  groups: :func:`shared_first_stage`); the others run side by side, their kept groups
  concatenated into one layer.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ..nets.chain import Chain
from ..nets.forward import as_input, kept_tensors, run_stage
from ..nets.spliced import rows_by_source
from . import memory
from .embeddings import Embeddings, block_rows
from .row_keys import group_keys, unique_rows
from .similarity import centred_gram, distances_from_gram, rescaled_as_one

# Features per group from which a shared first stage's embedding distances come from
# per-group Gram matrices (summing a group's rows x rows Gram costs what recomputing it
# costs divided by its feature count): feature maps yes, Linear units (1 feature) no.
GRAM_SHARING_MIN = 16


def unit_major(t: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(N, U) -> equal (N, U) whose storage is (U, N) contiguous (each unit's values in a
    row), copied ``block`` images at a time so that each block's reads and writes stay in
    cache."""
    out = t.new_empty(t.shape[1], t.shape[0])  # (U, N)
    for start in range(0, t.shape[0], block):
        out[:, start:start + block] = t[start:start + block].T
    return out.T


@dataclass
class FirstStagePool:
    """The first stage on ``x`` for a population's distinct groups: ``out`` (N, U, ...),
    the wanted tail positions' tensors ``kept``, and ``columns[i]``, individual ``i``'s
    kept groups as columns of U (in the order of the population the pool was built for)."""

    x: torch.Tensor
    out: torch.Tensor
    kept: dict
    columns: list

    def take(self, i: int, positions):
        """Individual ``i``'s first-stage output and wanted tail tensors."""
        cols = self.columns[i]

        def take(t):  # (N, h) from a unit-major (N, U) as its (U, N) transpose's rows; (N, h, ...) from (N, U, ...)
            return t.T.index_select(0, cols).T if t.dim() == 2 else t.index_select(1, cols)

        out = take(self.out)
        return out, {where: out if self.kept[where] is self.out else take(self.kept[where]) for where in positions}


def build_pool(chain: Chain, embeddings: Embeddings, population, x: torch.Tensor, rows: int,
               device: torch.device) -> FirstStagePool | None:
    """The first stage on ``x`` for the distinct groups of ``population`` (equal filter or
    row, bias and BatchNorm entries: :func:`~ecomp_deap.fitness.row_keys.group_keys`), or
    None when its output would not fit in ``memory.IMAGE_BYTES``. Each distinct group is
    computed from its first holder's tensors; groups come in the order of their keys, so
    the same population always gives the same program."""
    st = chain.stages[0]
    masks = torch.stack([ind.masks[0] for ind in population])  # (P, H)
    flat = masks.reshape(-1).nonzero().squeeze(1)  # (S,) every kept group as i * H + its row, by individual
    stored = [ind.weights.raw(0) for ind in population]  # tensors or row splices: rows are read, never the whole
    biases = torch.cat([ind.biases[0] for ind in population])  # (P H,)
    norms = torch.cat([ind.norms[0] for ind in population], 1) if population[0].norms[0] is not None else None
    keys = group_keys(stored, biases, norms).index_select(0, flat)  # (S, K)
    inverse, first = unique_rows(keys)  # (S,), (U,): each kept group's distinct group, each one's first holder
    n_distinct = len(first)
    positions = [where for _, where in embeddings.wanted(rows).get(0, ())]
    if 4 * len(x) * n_distinct * st.out_hw[0] * st.out_hw[1] * (1 + len(positions)) > memory.IMAGE_BYTES:
        return None
    holders = flat.index_select(0, first)  # (U,) each distinct group's first holder, as i * H + row
    w = torch.empty(n_distinct, *stored[0].shape[1:], dtype=stored[0].dtype, device=stored[0].device)  # (U, ...)
    for src, at, src_rows in rows_by_source(stored, holders):  # one gather per tensor that stores rows
        w.index_copy_(0, at, src.index_select(0, src_rows))
    b = biases.index_select(0, holders)
    n = norms.index_select(1, holders) if norms is not None else None
    out, kept = run_stage(st, as_input(chain, x), w.to(device), b.to(device),
                          n.to(device) if n is not None else None, positions)  # (N, U, ...)
    if out.dim() == 2:  # Linear: stored unit-major, so that each individual's units are
        # gathered as contiguous rows of the (U, N) transpose (as columns they are much slower)
        major = {}
        for t in (out, *kept.values()):  # each once: a kept position is often the output itself
            if id(t) not in major:
                major[id(t)] = unit_major(t)
        out, kept = major[id(out)], {where: major[id(t)] for where, t in kept.items()}
    inverse = inverse.to(device)
    columns, start = [], 0
    for count in masks.sum(1).tolist():
        columns.append(inverse[start:start + count])
        start += count
    return FirstStagePool(x, out, kept, columns)


def shared_first_stage(chain: Chain, ind, h0: torch.Tensor, positions, rows: int, blocks: int, dtype):
    """The first stage at full width for individuals sharing its tensors: its output
    and, per embedding position, ('gram', the centred Gram of each group's features
    on each batch's first ``rows`` images, (H_0, blocks, rows, rows) in ``dtype``),
    computed once and then summed over each individual's kept groups, when a group
    has at least GRAM_SHARING_MIN features (a feature map's H*W); else ('full', the
    output), from which each individual's distances are computed as usual."""
    out, full_kept = run_stage(chain.stages[0], h0, ind.weights[0], ind.biases[0], ind.norms[0], positions)
    shared = {}
    for where, t in full_kept.items():
        per_group = block_rows(t.flatten(2) if t.dim() > 2 else t[..., None], blocks, rows)  # (blocks, rows, H_0*S)
        per_group = per_group.reshape(blocks, rows, t.shape[1], -1).to(dtype)  # (blocks, rows, H_0, S)
        if per_group.shape[3] >= GRAM_SHARING_MIN:
            if dtype != torch.float64:  # one power of two for all groups: their Grams still add up
                per_group = rescaled_as_one(per_group)
            shared[where] = ("gram", centred_gram(per_group.permute(2, 0, 1, 3), dtype))  # (H_0, blocks, rows, rows)
        else:
            shared[where] = ("full", t)
    return out, shared


def first_stage_outputs(chain: Chain, population, h0: torch.Tensor, keeps, positions, rows: int, blocks: int,
                        dtype) -> list:
    """Per individual, (its first stage's output on its kept groups, {position:
    embedding, or ('dist', squared distances)}) on the shared input ``h0``: individuals
    holding the same first-stage tensors share one full-width run (:func:`shared_first_stage`);
    the others run side by side, their kept groups concatenated into one layer (one GEMM
    or convolution instead of one per individual), in groups whose output stays under
    ``memory.IMAGE_BYTES``. ``keeps[i][0]``: individual ``i``'s kept first-stage groups."""
    st = chain.stages[0]
    holders = defaultdict(list)  # the individuals holding each (weight, bias, norm) triple, by identity
    for i, ind in enumerate(population):
        holders[id(ind.weights[0]), id(ind.biases[0]), id(ind.norms[0])].append(i)
    out: list = [None] * len(population)
    own = []
    for group in holders.values():
        if len(group) == 1:
            continue
        full, embeddings = shared_first_stage(chain, population[group[0]], h0, positions, rows, blocks, dtype)
        for i in group:
            keep = keeps[i][0]
            kept = {}
            for where in positions:
                kind, t = embeddings[where]
                if kind == "gram":  # the Gram of the kept groups is the sum of theirs
                    kept[where] = ("dist", distances_from_gram(t.index_select(0, keep).sum(0)))
                else:
                    kept[where] = t.index_select(1, keep)
            out[i] = (full.index_select(1, keep), kept)
    own = [i for i in range(len(population)) if out[i] is None]
    group_bytes = 4 * h0.shape[0] * st.out_hw[0] * st.out_hw[1]  # one output group's feature map
    sizes = {i: int(keeps[i][0].shape[0]) for i in own}
    group: list[int] = []
    width = 0
    for j, i in enumerate(own):
        group.append(i)
        width += sizes[i]
        nxt = own[j + 1] if j + 1 < len(own) else None
        if nxt is None or (width + sizes[nxt]) * group_bytes > memory.IMAGE_BYTES:
            tensors = [kept_tensors(st, population[g].weights[0], population[g].biases[0], population[g].norms[0],
                                    keeps[g][0], None) for g in group]
            norm = torch.cat([t[2] for t in tensors], 1) if tensors[0][2] is not None else None
            z, kept = run_stage(st, h0, torch.cat([t[0] for t in tensors]), torch.cat([t[1] for t in tensors]),
                                norm, positions)  # (N, width, ...)
            start = 0
            for g in group:
                n = sizes[g]
                out[g] = (z[:, start:start + n], {where: t[:, start:start + n] for where, t in kept.items()})
                start += n
            group, width = [], 0
    return out

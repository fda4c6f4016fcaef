"""Content keys for the groups of a genome's stage: equal keys, equal groups.

Late in a run most kept first-layer rows (or filters) of a population are copies of a
few: crossover moves rows between individuals without changing them and only the
rare weight mutation makes new ones. The evaluator computes the first stage once per distinct group; these
keys find them without comparing rows.

A group's key is its weight row's 128-bit BLAKE2b digest (a collision is as unlikely
as one of a content-addressed store's; equal rows always get equal digests) followed
by the exact bit patterns of its bias and BatchNorm entries. The row digests come from
:func:`ecomp_deap.nets.spliced.row_digests` (computed once per tensor, inherited by
crossover's children), so in a run only new tensors (mutations, refits) are hashed. Only
the first stage is keyed.
"""
from __future__ import annotations

import torch

from ..nets.spliced import row_digests


def _bits(t: torch.Tensor) -> torch.Tensor:
    """float tensor -> int64 of the same shape: its exact bit patterns."""
    t = t.detach().to("cpu", copy=False).contiguous()
    ints = {4: torch.int32, 8: torch.int64, 2: torch.int16}[t.element_size()]
    return t.view(ints).to(torch.int64)


def group_keys(w, b: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """(out, K) int64 keys of a stage's groups: weight digest, bias bits and, with a
    BatchNorm (4, out) stack, its four entries' bits. Equal keys: equal groups. ``w``: a
    tensor or a splice, or a list of them (a population's stage: their rows one after
    another, with ``b`` and ``norm`` their concatenated biases and BatchNorm stacks)."""
    digests = [row_digests(t) for t in (w if isinstance(w, (list, tuple)) else [w])]
    parts = [torch.cat(digests) if len(digests) > 1 else digests[0], _bits(b)[:, None]]
    if norm is not None:
        parts.append(_bits(norm).T)
    return torch.cat(parts, 1)


def row_numbers(keys: torch.Tensor) -> torch.Tensor:
    """(S, K) int64 -> (S,) int64: sum_k keys[:, k] * m_k with odd multipliers m_k
    (wrapping around): equal rows give equal numbers."""
    mix = torch.tensor([1] + [0x9E3779B97F4A7C15 - 2**64 + 2 * j for j in range(keys.shape[1] - 1)],
                       dtype=torch.int64)
    return (keys * mix).sum(1)


def unique_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, K) int64 -> (inverse (S,), first (U,)): row i of ``keys`` is distinct row
    ``inverse[i]``, which first occurs at row ``first[inverse[i]]`` (so the distinct rows
    are ``keys[first]``, in the order of their numbers). Found like ``torch.unique(keys,
    dim=0, return_inverse=True)`` but through one int64 per row (a 1-D sort, much faster than a 2-D one),
    checked against the rows: if two different rows ever share that number, the exact
    2-D unique is used instead."""
    _, inverse = torch.unique(row_numbers(keys), return_inverse=True)
    first = _first_occurrences(inverse, len(keys))
    if not torch.equal(keys.index_select(0, first).index_select(0, inverse), keys):  # a shared number
        _, inverse = torch.unique(keys, dim=0, return_inverse=True)  # the exact way
        first = _first_occurrences(inverse, len(keys))
    return inverse, first


def _first_occurrences(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) group of each row -> (groups,) the first row of each group."""
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long)
    return first.scatter_reduce_(0, inverse, torch.arange(n), "amin")

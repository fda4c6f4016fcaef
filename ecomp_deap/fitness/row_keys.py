"""Content keys for the groups of a genome's stage: equal keys, equal groups.

Late in a run most kept first-layer rows (or filters) of a population are copies of a
few: crossover moves rows between individuals without changing them and only the
rare weight mutation makes new ones (a default weighted run at t = 90: 13763 kept rows,
1214 distinct). The evaluator computes the first stage once per distinct group; these
keys find them without comparing rows.

A group's key is its weight row's 128-bit BLAKE2b digest (a collision is as unlikely
as one of a content-addressed store's; equal rows always get equal digests) followed
by the exact bit patterns of its bias and BatchNorm entries. The digests of a tensor are
computed once and cached for the tensor object (tensors in a genome are never written in
place); crossover's first-stage children get theirs from their parents' (a row splice's
from its sources', and its copy, when it is read whole, through :func:`inherit`), so in
a run only new tensors (mutations, refits) are hashed. Only the first stage is keyed.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Sequence

import torch

from ..nets.spliced import RowSplice

_DIGESTS: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # id(tensor) -> (its weakref, (out, 2) int64)


def _cached(t: torch.Tensor) -> torch.Tensor | None:
    entry = _DIGESTS.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1]
    return None


def _remember(t: torch.Tensor, digests: torch.Tensor) -> None:
    key = id(t)
    _DIGESTS[key] = (weakref.ref(t, lambda _, key=key: _DIGESTS.pop(key, None)), digests)


def row_digests(w) -> torch.Tensor:
    """(out, ...) weights, a tensor or a :class:`~ecomp_deap.nets.spliced.RowSplice` -> (out, 2)
    int64: each row's (filter's) 128-bit BLAKE2b digest of its float bytes, cached for the
    object (a splice's from its sources')."""
    digests = _cached(w)
    if digests is None and isinstance(w, RowSplice):
        digests = torch.cat([row_digests(src)[a:b] for src, a, b in w.parts])
        _remember(w, digests)
    elif digests is None:
        rows = w.detach().reshape(w.shape[0], -1).to("cpu", copy=False).contiguous().numpy()
        raw = b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows)
        digests = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(w.shape[0], 2)
        _remember(w, digests)
    return digests


def inherit(child: torch.Tensor, parts: Sequence[tuple[torch.Tensor, slice]]) -> None:
    """Record the digests of ``child``, the rows ``parts`` [(parent tensor, row slice)]
    concatenated, when every parent's are known (crossover's children)."""
    known = [_cached(t) for t, _ in parts]
    if all(k is not None for k in known):
        _remember(child, torch.cat([k[s] for k, (_, s) in zip(known, parts)]))


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

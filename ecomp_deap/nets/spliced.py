"""Crossover's children as row ranges of their ancestors' tensors, copied only when read.

Aligned crossover (:func:`~ecomp_deap.search.operators.cx_layerwise`) gives a child the rows
[0, c) of one parent's stage tensor and [c, out) of the other's, and row ``j`` of any
descendant is row ``j`` of the tensor it was first written in (the parent's, or a
mutated copy). Late in a run every pair of parents holds different first-layer tensors,
and copying them (``torch.cat``) would cost a whole layer per child. A :class:`RowSplice`
records the ranges instead;
the evaluator reads the rows it needs from the sources (:func:`rows_by_source`), and
anything else reads the genome's
tensor as usual (:class:`StageTensors` materialises it on first read, once: the copy is
cached on the splice, which clones share).

A splice holds references to its sources (whole tensors, never other splices) and has
at most MAX_PARTS ranges (beyond, it is materialised at once), so a population keeps at
most MAX_PARTS tensors alive per individual (in practice far fewer: most individuals
of a late population read from the same few sources, docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

MAX_PARTS = 16  # ranges per splice; more and the child is copied at once


class RowSplice:
    """A (out, ...) tensor as ``parts``: (source, start, stop) ranges in row order that
    tile [0, out); row ``j`` is row ``j`` of the part's source (same shape as the whole)."""

    __slots__ = ("parts", "shape", "dtype", "device", "_dense", "__weakref__")

    def __init__(self, parts: list[tuple[torch.Tensor, int, int]]):
        self.parts = tuple(parts)
        src = parts[0][0]
        self.shape, self.dtype, self.device = src.shape, src.dtype, src.device
        self._dense: torch.Tensor | None = None

    def materialize(self) -> torch.Tensor:
        """The whole tensor (computed once; the row digests the parts know come with it)."""
        if self._dense is None:
            dense = dense_uncached(self)
            inherit(dense, [(src, slice(a, b)) for src, a, b in self.parts])  # its digests, from its sources''
            self._dense = dense
        return self._dense


def _ranges(t, start: int, stop: int) -> list[tuple[torch.Tensor, int, int]]:
    """The (source, a, b) ranges of rows [start, stop) of a tensor or a splice."""
    if isinstance(t, torch.Tensor):
        return [(t, start, stop)]
    if t._dense is not None:
        return [(t._dense, start, stop)]
    return [(src, max(a, start), min(b, stop)) for src, a, b in t.parts if a < stop and b > start]


def splice(head, tail, cut: int):
    """Rows [0, cut) of ``head`` and [cut, out) of ``tail`` (tensors or splices of the
    same shape): a :class:`RowSplice`, or a tensor when the ranges come from one tensor
    or there would be more than MAX_PARTS of them."""
    if head.shape != tail.shape:
        raise ValueError(f"splice: shapes differ, {tuple(head.shape)} and {tuple(tail.shape)}")
    parts: list[tuple[torch.Tensor, int, int]] = []
    for src, a, b in _ranges(head, 0, cut) + _ranges(tail, cut, head.shape[0]):
        if parts and parts[-1][0] is src and parts[-1][2] == a:
            parts[-1] = (src, parts[-1][1], b)  # adjacent rows of one source: one range
        else:
            parts.append((src, a, b))
    if len(parts) == 1:
        return parts[0][0]
    s = RowSplice(parts)
    return s.materialize() if len(parts) > MAX_PARTS else s


def rows_by_source(stored: list, index: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Rows ``index`` of the tensors or splices ``stored`` (each (out, ...), read as one
    stack: row ``i * out + j`` is row ``j`` of ``stored[i]``) grouped by the tensor that
    stores them: [(source, positions in ``index``, rows of the source)], so that a
    population's rows are read with one ``index_select`` per source."""
    out = stored[0].shape[0]
    sources, number, part_source, stops = [], {}, [], []
    for i, t in enumerate(stored):  # the parts tile each member's rows in order
        for src, _, b in (t.parts if isinstance(t, RowSplice) and t._dense is None else ((dense(t), 0, out),)):
            k = number.setdefault(id(src), len(sources))
            if k == len(sources):
                sources.append(src)
            part_source.append(k)
            stops.append(i * out + b)
    part = torch.bucketize(index, torch.tensor(stops[:-1], dtype=index.dtype), right=True)  # (len(index),)
    source = torch.tensor(part_source, dtype=torch.long).index_select(0, part)  # (len(index),) its source
    rows = index % out  # row j of a part is row j of its source
    order = torch.argsort(source, stable=True)
    groups, start = [], 0
    for src, n in zip(sources, torch.bincount(source, minlength=len(sources)).tolist()):
        if n:
            at = order[start:start + n]
            groups.append((src, at, rows.index_select(0, at)))
            start += n
    return groups


def dense(t) -> torch.Tensor:
    """A tensor or a splice -> the tensor."""
    return t.materialize() if isinstance(t, RowSplice) else t


def dense_uncached(t) -> torch.Tensor:
    """The tensor of a tensor or a splice, leaving a splice as it is (not materialised):
    for readers that must not change what a population holds, such as a benchmark."""
    if isinstance(t, RowSplice) and t._dense is None:
        return torch.cat([src[a:b] for src, a, b in t.parts])
    return dense(t)


class StageTensors(list):
    """A genome's per-stage weights: a list whose entries may be :class:`RowSplice`;
    reading an entry (indexing, slicing, iterating) gives the tensor, materialising a
    splice in place. :meth:`raw` reads an entry as it is stored."""

    def __init__(self, items: Iterable = ()):
        super().__init__(list.copy(items) if isinstance(items, StageTensors) else items)

    def raw(self, k: int):
        """Entry ``k`` as stored: a tensor, or a :class:`RowSplice` left unread."""
        return list.__getitem__(self, k)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        item = list.__getitem__(self, k)
        if isinstance(item, RowSplice):
            item = item.materialize()
            list.__setitem__(self, k, item)
        return item

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def copy(self) -> "StageTensors":
        """A shallow copy: a new :class:`StageTensors` of the same entries, splices kept as they are."""
        return StageTensors(self)

    def __reduce__(self):  # pickles as the list of tensors it reads as
        return (list, (list(self),))


# ------------------------------------------------------------------ row digests
# Each row's (filter's) 128-bit BLAKE2b digest of its float bytes: equal rows, equal
# digests (a collision is as unlikely as one of a content-addressed store's). Computed
# once per tensor (genome tensors are never written in place) and inherited by
# crossover's children from their sources' (a splice's, and its copy's when it is read
# whole), so in a run only new tensors (mutations, refits) are hashed.
_DIGESTS = WeakIdKeyDictionary()  # tensor or splice -> its (out, 2) int64 row digests, forgotten with it


def cached_digests(t) -> torch.Tensor | None:
    """The row digests already known for the tensor or splice ``t``, else None."""
    return _DIGESTS.get(t)


def row_digests(w) -> torch.Tensor:
    """(out, ...) weights, a tensor or a :class:`RowSplice` -> (out, 2)
    int64: each row's (filter's) 128-bit BLAKE2b digest of its float bytes, cached for the
    object (a splice's from its sources')."""
    digests = _DIGESTS.get(w)
    if digests is None and isinstance(w, RowSplice):
        digests = torch.cat([row_digests(src)[a:b] for src, a, b in w.parts])
        _DIGESTS[w] = digests
    elif digests is None:
        rows = w.detach().reshape(w.shape[0], -1).to("cpu", copy=False).contiguous().numpy()
        raw = b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows)
        digests = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(w.shape[0], 2)
        _DIGESTS[w] = digests
    return digests


def inherit(child: torch.Tensor, parts: Sequence[tuple[torch.Tensor, slice]]) -> None:
    """Record the digests of ``child``, the rows ``parts`` [(parent tensor, row slice)]
    concatenated, when every parent's are known (crossover's children)."""
    known = [_DIGESTS.get(t) for t, _ in parts]
    if all(k is not None for k in known):
        _DIGESTS[child] = torch.cat([k[s] for k, (_, s) in zip(known, parts)])

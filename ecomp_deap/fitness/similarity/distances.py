"""Pairwise squared distances of embeddings, through centred Gram matrices.

Only pairwise squared Euclidean distances enter the similarity, so a parent layer of H
units and a child's of h may differ in width. Rows are centred over the batch first (the
distances are translation invariant; centring limits cancellation in the Gram formula).
For float32 the Gram of a matrix whose squared norms leave float32's safe range is
computed again from the matrix times a power of two (exact), which the Gaussian P does
not see (its precision absorbs any scale). Float32 distances on the CPU come from the C
kernel of :mod:`.native` in one pass.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import native


def _as_float64(x) -> Tensor:
    return _as_dtype(x, torch.float64)


def _as_dtype(x, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


_SAFE_RANGE = (2.0**-100, 2.0**100)  # squared norms inside which a float32 Gram is trusted


def _rescaled(x: Tensor) -> Tensor:
    """(N, B, D) -> each matrix times the power of two that brings its largest |entry|
    into [0.5, 1): exact (only exponents change), so float32 neither overflows on huge
    activations nor underflows on tiny ones. All-zero matrices stay as they are."""
    top = x.abs().amax(dim=(-2, -1), keepdim=True).to(torch.float64)  # (N, 1, 1) largest |entry|
    _, exponent = torch.frexp(top)
    scale = torch.ldexp(torch.ones_like(top), -exponent)  # 2^-e
    return x * torch.where(top > 0, scale, torch.ones_like(scale)).to(x.dtype)


def rescaled_as_one(x: Tensor) -> Tensor:
    """``x`` (any shape) times one power of two when its largest squared entry lies
    outside the float32-safe range (else ``x`` itself): for blocks whose Grams are added
    up afterwards (per-channel Grams of a feature map), which must share one scale."""
    top = float(x.abs().amax()) if x.numel() else 0.0
    if top == 0.0 or _SAFE_RANGE[0] < top * top < _SAFE_RANGE[1]:
        return x
    return _rescaled(x.reshape(1, -1, 1)).reshape(x.shape)


def squared_distances(x: Tensor, dtype: torch.dtype = torch.float64, rescale: bool = False,
                      overwrite: bool = False, symmetric: bool = True, out: Tensor | None = None) -> Tensor:
    """Pairwise squared Euclidean distances D_ij = ||x_i - x_j||^2.

    x: (..., B, D) -> (..., B, B) in ``dtype``, clamped >= 0, exact zero diagonal and,
    with ``symmetric``, exactly symmetric (else D_ij and D_ji may differ in the last
    bit, as the Gram matrix's product rounds them; the search reads columns as rows).  Rows are
    centred over the batch first (D is translation invariant; this limits
    cancellation in the Gram formula). ``rescale``: the distances of a matrix with huge
    or tiny entries come scaled by a power of two (see :func:`centred_gram`).
    ``overwrite``: ``x`` may be modified in place (it is centred in place; a matrix that
    needs the rescale is then rescaled after centring instead of before, which can move
    its last bits). ``out``: a contiguous (..., B, B)
    tensor of ``dtype`` to write the distances into (returned).
    """
    lead, B = x.shape[:-2], x.shape[-2]
    gram, sq = _centred_gram(x, dtype, rescale, overwrite, out)
    return distances_from_gram(gram.reshape(-1, B, B), symmetric, sq.reshape(-1, B)).reshape(*lead, B, B)


def centred_gram(x: Tensor, dtype: torch.dtype = torch.float64, rescale: bool = False,
                 overwrite: bool = False, out: Tensor | None = None) -> Tensor:
    """(..., B, D) -> (..., B, B) Gram matrix in ``dtype`` of the rows centred over the batch.

    Centring is per feature, so the Gram of a concatenation of feature blocks is the
    sum of the blocks' Grams: the evaluator adds up per-channel Grams of a shared
    feature map instead of recomputing them for every subset of channels.
    ``rescale``: a (B, D) matrix whose largest squared norm comes out beyond 2^±100 (or
    not finite) is computed again from its entries multiplied by the power of two that
    puts them in [0.5, 1) (exact; for float32, whose range is small; only for
    scale-free uses such as the Gaussian P)."""
    return _centred_gram(x, dtype, rescale, overwrite, out, norms=False)[0]


def _centred_gram(x: Tensor, dtype: torch.dtype, rescale: bool, overwrite: bool,
                  out: Tensor | None, norms: bool = True) -> tuple[Tensor, Tensor | None]:
    """:func:`centred_gram` and, with ``norms`` or ``rescale``, its diagonals, the squared
    norms (..., B) (one strided read of the diagonal serves the rescale check and the
    distances); else None."""
    x = torch.as_tensor(x)
    lead, (B, F) = x.shape[:-2], x.shape[-2:]
    x3 = x.reshape(-1, B, F)  # (N, B, D)
    gram = _gram(x3, dtype, overwrite, None if out is None else out.view(-1, B, B))  # (N, B, B)
    if not (norms or rescale):
        return gram.reshape(*lead, B, B), None
    sq = torch.diagonal(gram, dim1=-2, dim2=-1).clone()  # (N, B)
    if rescale:  # a matrix whose squared norms left the safe range (or overflowed) again, rescaled
        top = sq.amax(dim=-1)  # (N,) largest squared norm
        bad = ~torch.isfinite(top) | (top > _SAFE_RANGE[1]) | (top < _SAFE_RANGE[0])
        if bad.any():  # rare: huge or tiny activations (or all-zero ones, which stay zero)
            idx = torch.nonzero(bad).squeeze(1)
            gram.index_copy_(0, idx, _gram(_rescaled(x3.index_select(0, idx).to(dtype)), dtype))
            sq.index_copy_(0, idx, torch.diagonal(gram.index_select(0, idx), dim1=-2, dim2=-1))
    return gram.reshape(*lead, B, B), sq.reshape(*lead, B)  # (..., B, B), (..., B)


def _gram(x3: Tensor, dtype: torch.dtype, overwrite: bool = False, out: Tensor | None = None) -> Tensor:
    """(N, B, D) -> (N, B, B) in ``dtype``: Gram matrices of the rows centred over the batch
    (``overwrite``: ``x3`` may be centred in place; ``out``: written into that (N, B, B))."""
    xc = x3.to(dtype)
    mean = xc.mean(dim=-2, keepdim=True)  # (N, 1, D)
    if not overwrite and xc.data_ptr() == x3.data_ptr():  # still the caller's tensor: a new one, in one pass
        xc = xc - mean  # (N, B, D), in x3's layout (as a copy would be)
    else:
        xc -= mean
    return torch.bmm(xc, xc.transpose(-1, -2), out=out)  # (N, B, B)


def distances_from_gram(gram: Tensor, symmetric: bool = True, sq: Tensor | None = None) -> Tensor:
    """(N, B, B) centred Gram matrices -> squared distances: >= 0, zero diagonal,
    exactly symmetric with ``symmetric``. Overwrites ``gram``. ``sq`` (N, B): its
    diagonals, when the caller has them. Float32 on the CPU without ``symmetric``: one
    pass of the C kernel (:mod:`ecomp_deap.fitness.similarity.native`), the same roundings."""
    if sq is None:
        sq = torch.diagonal(gram, dim1=-2, dim2=-1).clone()  # (N, B); same product, so duplicates give exactly 0
    lib = None if symmetric or not gram.is_contiguous() or not sq.is_contiguous() else native.for_tensor(gram)
    if lib is not None and gram.numel():
        N, B = gram.shape[0], gram.shape[-1]
        lib.distances(gram.data_ptr(), sq.data_ptr(), N, B, max(1, min(torch.get_num_threads(), N)))
        return gram
    # (N, B, B) (sq_i - 2 G_ij) + sq_j in place; -2 G is exact, so one pass gives what -2 G, then + sq_i, gave
    d = torch.add(sq.unsqueeze(-1), gram, alpha=-2.0, out=gram).add_(sq.unsqueeze(-2))
    if symmetric:
        d = d.add_(d.transpose(-1, -2).clone()).mul_(0.5)  # exact symmetry
    d.clamp_(min=0.0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d

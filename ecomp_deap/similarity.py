"""t-SNE similarity loss between a parent layer and a child (compressed) layer.

For one layer, let X (B x H) be the parent's activations and Y (B x h) the
child's activations on the same batch.  Only pairwise squared Euclidean
distances enter, so H and h may differ.

* Joint probabilities (exactly as scikit-learn's exact t-SNE):

  - conditional  p_{j|i} = exp(-D_ij beta_i) / sum_{k != i} exp(-D_ik beta_i),
    p_{i|i} = 0, with beta_i chosen so that the row entropy
    H_i = -sum_j p_{j|i} log p_{j|i} equals log(perplexity);
  - joint        P = (P_cond + P_cond^T) / sum(P_cond + P_cond^T)   (= / 2B),
    off-diagonal entries floored at eps = float64 machine epsilon,
    zero diagonal.

* Student-t option for the child:
  q_ij ∝ (1 + D_ij / dof)^(-(dof + 1) / 2), i != j, normalised so the full
  matrix sums to 1 (condensed upper triangle to 1/2), floored at eps.

* Loss = 2 * sum_{i<j} P_ij log(max(P_ij, eps) / Q_ij)
       = sum_{i != j} P_ij log(max(P_ij, eps) / Q_ij)   (KL of the full matrices).

Everything is vectorised over arbitrary leading (population) dimensions.  The
precision search uses safeguarded Newton steps on the entropy in log(beta)
(dH/dlog(beta) = -beta^2 Var_p(D)) inside a per-row bisection bracket.

Precision: float64 by default (entropy tolerance 1e-9). With ``dtype=torch.float32``
the child's distances and its perplexity search run in float32 (twice as fast on a
CPU) to scikit-learn's own entropy tolerance, 1e-5; rows that do not converge in
float32 are searched again in float64, and the KL divergence is always accumulated in
float64. The Gaussian P depends on the distances only up to their scale (beta absorbs
it), so float32 distances are computed from embeddings rescaled by a power of two
(``rescale=True``), which keeps huge and tiny activations inside float32's range. The
Student-t kernel is not scale-free and stays in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EPS",
    "squared_distances",
    "centred_gram",
    "distances_from_gram",
    "joint_probabilities",
    "student_t_probabilities",
    "kl_divergence",
    "count_active_units",
    "tsne_similarity_loss",
    "similarity_from_distances",
    "parent_entropy_term",
    "DTYPES",
    "rescaled_as_one",
]

EPS = float(np.finfo(np.float64).eps)  # floor for probabilities (= sklearn's MACHINE_EPSILON)
_ROW_SUM_FLOOR = 1e-8  # sklearn's EPSILON_DBL floor of the row sum (never hit after the shift)
_ENTROPY_TOL = 1e-9  # |H_i - log(perplexity)| convergence threshold in float64
_ENTROPY_TOL_FLOAT32 = 1e-5  # ... in float32 (scikit-learn's tolerance; float32 resolves H to ~1e-6)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MAX_ITER = 100  # same step budget as sklearn's binary search


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _as_float64(x) -> Tensor:
    return _as_dtype(x, torch.float64)


def _as_dtype(x, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _offdiag(x: Tensor) -> Tensor:
    """(..., B, B) -> (..., B, B-1): row i without its diagonal entry."""
    B = x.shape[-1]
    lead = x.shape[:-2]
    flat = x.reshape(*lead, B * B)[..., 1:]  # (..., B*B-1) = (..., (B-1)(B+1))
    return flat.reshape(*lead, B - 1, B + 1)[..., :-1].reshape(*lead, B, B - 1)


def _from_offdiag(o: Tensor) -> Tensor:
    """(..., B, B-1) -> (..., B, B) with a zero diagonal (inverse of _offdiag)."""
    B = o.shape[-2]
    lead = o.shape[:-2]
    o = o.reshape(*lead, B - 1, B)
    o = torch.cat([o, o.new_zeros(*lead, B - 1, 1)], dim=-1)  # (..., B-1, B+1)
    flat = torch.cat([o.new_zeros(*lead, 1), o.reshape(*lead, (B - 1) * (B + 1))], dim=-1)
    return flat.reshape(*lead, B, B)


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


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """(n, M), (n, M) -> (n,): sum_j a_ij b_ij without a full-size temporary."""
    return torch.einsum("nm,nm->n", a, b)


# --------------------------------------------------------------------------- #
# distances
# --------------------------------------------------------------------------- #
def squared_distances(x: Tensor, dtype: torch.dtype = torch.float64, rescale: bool = False,
                      overwrite: bool = False) -> Tensor:
    """Pairwise squared Euclidean distances D_ij = ||x_i - x_j||^2.

    x: (..., B, D) -> (..., B, B) in ``dtype``, symmetric, clamped >= 0, exact zero
    diagonal.  Rows are centred over the batch first (D is translation
    invariant; this limits cancellation in the Gram formula). ``rescale``: the
    distances of a matrix with huge or tiny entries come scaled by a power of two
    (see :func:`centred_gram`). ``overwrite``: ``x`` may be modified in place.
    """
    lead, B = x.shape[:-2], x.shape[-2]
    return distances_from_gram(centred_gram(x, dtype, rescale, overwrite).reshape(-1, B, B)).reshape(*lead, B, B)


def centred_gram(x: Tensor, dtype: torch.dtype = torch.float64, rescale: bool = False,
                 overwrite: bool = False) -> Tensor:
    """(..., B, D) -> (..., B, B) Gram matrix in ``dtype`` of the rows centred over the batch.

    Centring is per feature, so the Gram of a concatenation of feature blocks is the
    sum of the blocks' Grams: the evaluator adds up per-channel Grams of a shared
    feature map instead of recomputing them for every subset of channels.
    ``rescale``: a (B, D) matrix whose largest squared norm comes out beyond 2^±100 (or
    not finite) is computed again from its entries multiplied by the power of two that
    puts them in [0.5, 1) (exact; for float32, whose range is small; only for
    scale-free uses such as the Gaussian P)."""
    x = torch.as_tensor(x)
    lead, (B, F) = x.shape[:-2], x.shape[-2:]
    x3 = x.reshape(-1, B, F)  # (N, B, D)
    gram = _gram(x3, dtype, overwrite)  # (N, B, B)
    if rescale:  # a matrix whose squared norms left the safe range (or overflowed) again, rescaled
        top = gram.diagonal(dim1=-2, dim2=-1).amax(dim=-1)  # (N,) largest squared norm
        bad = ~torch.isfinite(top) | (top > _SAFE_RANGE[1]) | (top < _SAFE_RANGE[0])
        if bad.any():  # rare: huge or tiny activations (or all-zero ones, which stay zero)
            idx = torch.nonzero(bad).squeeze(1)
            gram.index_copy_(0, idx, _gram(_rescaled(x3.index_select(0, idx).to(dtype)), dtype))
    return gram.reshape(*lead, B, B)  # (..., B, B)


def _gram(x3: Tensor, dtype: torch.dtype, overwrite: bool = False) -> Tensor:
    """(N, B, D) -> (N, B, B) in ``dtype``: Gram matrices of the rows centred over the batch
    (``overwrite``: ``x3`` may be centred in place)."""
    xc = x3.to(dtype)
    if not overwrite and xc.data_ptr() == x3.data_ptr():  # still the caller's tensor: do not modify it
        xc = xc.clone()
    xc -= xc.mean(dim=-2, keepdim=True)  # (N, B, D)
    return torch.bmm(xc, xc.transpose(-1, -2))  # (N, B, B)


def distances_from_gram(gram: Tensor) -> Tensor:
    """(N, B, B) centred Gram matrices -> squared distances: symmetric, >= 0, zero
    diagonal. Overwrites ``gram``."""
    sq = torch.diagonal(gram, dim1=-2, dim2=-1).clone()  # (N, B); same product, so duplicates give exactly 0
    norms = sq.unsqueeze(-1) + sq.unsqueeze(-2)  # (N, B, B)
    d = gram.mul_(-2.0).add_(norms)  # (N, B, B)
    d = d.add_(d.transpose(-1, -2).clone()).mul_(0.5)  # exact symmetry
    d.clamp_(min=0.0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


# --------------------------------------------------------------------------- #
# perplexity search
# --------------------------------------------------------------------------- #
def _conditional_probabilities(
    d: Tensor,
    perplexity: float,
    tol: float | None = None,
    max_iter: int = _MAX_ITER,
    t_init: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise Gaussian conditionals with entropy log(perplexity).

    d: (N, M) float64 or float32 squared distances of each row to its M = B-1
    neighbours (self already removed); tol: entropy tolerance (default 1e-9 in
    float64, 1e-5 in float32); t_init: optional (N,) starting log(beta) per row
    (non-finite entries: the default guess).  Returns (p, n_iter, t): p (N, M)
    with rows summing to 1, p_j = exp(-beta d_j) / sum_k exp(-beta d_k); n_iter
    (N,) the number of entropy evaluations each row used (0 for rows solved in
    closed form); t (N,) the final log(beta) (NaN for rows solved in closed form).

    With the row minimum subtracted (p and H are invariant to the shift),
    Z = sum_k exp(-beta d_k) >= 1 and H = log Z + beta * E_p[d].
    H decreases monotonically from log(M) (beta = 0, uniform) to
    log(#nearest ties) (beta -> inf); targets outside that range are
    returned at the corresponding limit (sklearn walks to the same limit by
    halving / doubling beta 100 times).
    """
    N, M = d.shape
    target = math.log(perplexity)
    if tol is None:
        tol = _ENTROPY_TOL if d.dtype == torch.float64 else _ENTROPY_TOL_FLOAT32
    info = torch.finfo(d.dtype)
    floor = 1e-300 if d.dtype == torch.float64 else info.tiny  # smallest variance / slope used
    span = 1e-14 / EPS * info.eps  # a bracket this narrow (relative) has collapsed: 1e-14 in float64
    d = d - d.amin(dim=1, keepdim=True)  # (N, M), row minimum is 0
    out = torch.empty_like(d)
    n_iter = torch.zeros(N, dtype=torch.long, device=d.device)
    t_out = torch.full((N,), math.nan, dtype=d.dtype, device=d.device)

    # beta = 0 limit: every row's maximal entropy log(M) is already <= target.
    if math.log(M) <= target + tol:
        out.fill_(1.0 / M)
        return out, n_iter, t_out

    # beta -> inf limit: uniform over the nearest (tied) neighbours.
    is_min = d == 0  # (N, M)
    n_ties = is_min.sum(dim=1)  # (N,) >= 1
    tie_rows = torch.log(n_ties.to(d.dtype)) >= target - tol  # (N,)
    if tie_rows.any():
        out[tie_rows] = is_min[tie_rows].to(d.dtype) / n_ties[tie_rows].unsqueeze(1).to(d.dtype)
        idx = torch.nonzero(~tie_rows).squeeze(1)  # rows still to solve
        if idx.numel() == 0:
            return out, n_iter, t_out
        dw = d.index_select(0, idx)  # (n, M) working set
    else:
        idx = torch.arange(N, device=d.device)
        dw = d
    d2w = dw * dw  # (n, M)
    buf = torch.empty_like(dw)  # (n, M) reused for exp(-beta d)

    # Initial guess from the second-order cumulant expansion around beta = 0:
    # H(beta) ~= log M - beta^2 Var_uniform(d) / 2.
    mean_u = dw.mean(dim=1)  # (n,)
    var_u = (d2w.mean(dim=1) - mean_u * mean_u).clamp_min(floor)  # (n,) uniform-weight variance
    t = 0.5 * torch.log(2.0 * (math.log(M) - target) / var_u)  # (n,) t = log(beta)
    if t_init is not None:  # a warm start, e.g. the parent's solution rescaled
        ti = t_init.to(d.dtype).reshape(N).index_select(0, idx)
        t = torch.where(torch.isfinite(ti), ti, t)
    lo = torch.full_like(t, -math.inf)  # bracket on log(beta)
    hi = torch.full_like(t, math.inf)
    step = torch.full_like(t, 2.0)  # unbracketed fallback step on log(beta), doubled at each use
    active = torch.ones_like(t, dtype=torch.bool)  # rows of the working set still searching

    for it in range(max_iter):
        n = dw.shape[0]
        beta = torch.exp(t)  # (n,)
        w = torch.mul(dw, -beta.unsqueeze(1), out=buf[:n]).exp_()  # (n, M), max entry == 1
        z = w.sum(dim=1).clamp_min_(_ROW_SUM_FLOOR)  # (n,) >= 1
        m = _rowdot(w, dw) / z  # (n,) E_p[d]
        v = (_rowdot(w, d2w) / z - m * m).clamp_min_(0.0)  # (n,) Var_p[d]
        h = torch.log(z) + beta * m  # (n,) entropy
        err = h - target  # > 0: need larger beta

        # bracket update (H is decreasing in beta)
        lo = torch.where(err > 0, t, lo)
        hi = torch.where(err < 0, t, hi)

        if it == max_iter - 1:
            done = active
        else:
            done = active & ((err.abs() < tol) | (hi - lo <= span * t.abs().clamp_min(1.0)))
        if done.any():
            sel = torch.nonzero(done).squeeze(1)
            rows = idx.index_select(0, sel)
            out.index_copy_(0, rows, w.index_select(0, sel) / z.index_select(0, sel).unsqueeze(1))
            n_iter.index_fill_(0, rows, it + 1)
            t_out.index_copy_(0, rows, t.index_select(0, sel))
            active = active & ~done
            n_active = int(active.sum())
            if n_active == 0:
                break
            if n_active <= 0.75 * n:  # compact the working set
                keep = torch.nonzero(active).squeeze(1)
                idx, dw, d2w = idx[keep], dw.index_select(0, keep), d2w.index_select(0, keep)
                t, lo, hi, step = t[keep], lo[keep], hi[keep], step[keep]
                err, beta, v = err[keep], beta[keep], v[keep]
                active = active[keep]

        # safeguarded Newton step in log(beta): dH/dt = -beta^2 Var_p(d)
        slope = beta.square() * v  # (n,) = -dH/dt >= 0
        t_newton = t + err / slope
        both = torch.isfinite(lo) & torch.isfinite(hi)
        # Newton inside the bracket; while one side is still open, no further than the
        # expansion step (on an entropy plateau, e.g. a unique nearest neighbour before
        # many near-ties, the slope is ~0 and a Newton step would overflow beta)
        ok = (slope > floor) & torch.isfinite(t_newton) & (t_newton > lo) & (t_newton < hi) \
            & (both | ((t_newton - t).abs() <= step))
        expand = torch.where(err > 0, t + step, t - step)  # geometric expansion when unbracketed
        use_expand = ~ok & ~both
        step = torch.where(use_expand, 2.0 * step, step)
        t_next = torch.where(ok, t_newton, torch.where(both, 0.5 * (lo + hi), expand))
        t = torch.where(active, t_next, t)

    return out, n_iter, t_out


def joint_probabilities(sq_dist: Tensor, perplexity: float = 30.0, log_beta_init: Tensor | None = None,
                        return_log_beta: bool = False, dtype: torch.dtype = torch.float64):
    """Symmetric t-SNE joint probabilities from squared distances.

    sq_dist: (..., B, B).  Returns P (..., B, B) in ``dtype`` (float64 or float32:
    the precision of the search; float32 rows that do not converge are searched
    again in float64) with
    P = (P_cond + P_cond^T) / sum(P_cond + P_cond^T), off-diagonal floored at
    eps, zero diagonal; its condensed upper triangle equals sklearn's
    ``_joint_probabilities(sq_dist, perplexity, 0)`` (sums to ~1/2).
    log_beta_init: optional (..., B) starting log-precisions of the rows' search
    (a warm start changes the iterations, not the solution). With
    ``return_log_beta``, returns (P, log_beta (..., B)), NaN for rows solved in
    closed form.
    """
    if perplexity <= 0:
        raise ValueError("perplexity must be positive")
    d = _as_dtype(sq_dist, dtype)
    B = d.shape[-1]
    if d.shape[-2] != B:
        raise ValueError(f"expected (..., B, B) distances, got {tuple(d.shape)}")
    lead = d.shape[:-2]
    if B < 2:
        p = torch.zeros_like(d)
        return (p, torch.full(d.shape[:-1], math.nan, dtype=d.dtype)) if return_log_beta else p
    off = _offdiag(d).reshape(-1, B - 1)  # (N = prod(lead) * B, B-1)
    t_init = None if log_beta_init is None else log_beta_init.expand(*lead, B).reshape(-1)
    cond, n_iter, log_beta = _conditional_probabilities(off, perplexity, t_init=t_init)
    if dtype != torch.float64:  # float32 rows that used every step (or broke): again in float64
        redo = torch.nonzero((n_iter >= _MAX_ITER) | ~torch.isfinite(cond.sum(dim=1))).squeeze(1)
        if redo.numel():
            c64, _, t64 = _conditional_probabilities(
                off.index_select(0, redo).double(), perplexity,
                t_init=None if t_init is None else t_init.index_select(0, redo))
            cond.index_copy_(0, redo, c64.to(dtype))
            log_beta.index_copy_(0, redo, t64.to(dtype))
    cond = _from_offdiag(cond.reshape(*lead, B, B - 1))  # (..., B, B)
    p = cond + cond.transpose(-1, -2)  # (..., B, B)
    p.div_(p.sum(dim=(-2, -1), keepdim=True).clamp_min(EPS))
    p.clamp_(min=EPS)
    p.diagonal(dim1=-2, dim2=-1).zero_()
    if return_log_beta:
        return p, log_beta.reshape(*lead, B)
    return p


def student_t_probabilities(sq_dist: Tensor, dof: Tensor | float) -> Tensor:
    """Student-t joint probabilities q_ij ∝ (1 + D_ij/dof)^(-(dof+1)/2), i != j.

    sq_dist: (..., B, B); dof: float or tensor broadcast over the leading dims
    (e.g. (P,) for a (P, B, B) batch).  Normalised over the full matrix (sum 1,
    condensed sum 1/2), floored at eps, zero diagonal, float64.  Computed in
    log space with the maximum subtracted, so nothing underflows to 0/0.
    """
    d = _as_float64(sq_dist)
    B = d.shape[-1]
    dof = torch.as_tensor(dof, dtype=torch.float64, device=d.device)
    dof = dof.reshape(*dof.shape, 1, 1)  # (..., 1, 1)
    if B < 2:
        return torch.zeros(torch.broadcast_shapes(d.shape, dof.shape), dtype=torch.float64, device=d.device)
    off = _offdiag(d)  # (..., B, B-1)
    logw = -0.5 * (dof + 1.0) * torch.log1p(off / dof)  # (..., B, B-1)
    logw = logw - logw.amax(dim=(-2, -1), keepdim=True)
    w = torch.exp(logw)
    q = w / w.sum(dim=(-2, -1), keepdim=True)
    return _from_offdiag(q.clamp_min(EPS))


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """KL(P || Q) = sum_{i != j} P_ij log(max(P_ij, eps) / Q_ij).

    p, q: (..., B, B) (broadcastable) -> (...,).  Zero-probability entries
    (e.g. the diagonal) contribute 0; q is floored at eps as well.
    """
    p = _as_float64(p)
    q = _as_float64(q)
    shape = torch.broadcast_shapes(p.shape, q.shape)
    log_ratio = torch.log(q.clamp_min(EPS)).expand(shape).neg()  # (..., B, B) = -log q
    log_ratio.add_(torch.log(p.clamp_min(EPS)))  # log max(p, eps) - log max(q, eps)
    return torch.linalg.vecdot(p.flatten(-2), log_ratio.flatten(-2))  # (...,)


def parent_entropy_term(p: Tensor) -> Tensor:
    """(..., B, B) joint P -> (...,) float64 sum_ij P_ij log max(P_ij, eps): the part of
    KL(P || Q) that does not depend on Q (computed once per parent batch)."""
    p = _as_float64(p)
    return torch.linalg.vecdot(p.flatten(-2), torch.log(p.clamp_min(EPS)).flatten(-2))


def _kl_from_floored_q(p: Tensor, q: Tensor, p_term: Tensor) -> Tensor:
    """KL(P || Q) for a Q from this module (off-diagonal floored at eps, zero diagonal):
    ``p_term`` - sum_ij P_ij log Q_ij, with log Q in float64 whatever Q's precision (the
    diagonal, where P is 0, contributes 0). p (..., B, B) float64 broadcast against q."""
    log_q = q.to(torch.float64)
    if log_q.data_ptr() == q.data_ptr():
        log_q = log_q.clone()
    log_q.log_().diagonal(dim1=-2, dim2=-1).zero_()  # (..., B, B)
    kl = p_term - torch.linalg.vecdot(p.flatten(-2), log_q.flatten(-2))
    return kl.clamp_min_(0.0)  # KL >= 0; the difference can round to -1e-15 when Q == P


def count_active_units(x: Tensor) -> Tensor:
    """Number of columns of x (..., B, h) not identically zero over the batch, at least 1 -> (...,)."""
    x = torch.as_tensor(x)
    return (x != 0).any(dim=-2).sum(dim=-1).clamp_min(1)


# --------------------------------------------------------------------------- #
# loss
# --------------------------------------------------------------------------- #
def tsne_similarity_loss(
    parent_embeddings,
    child_embeddings,
    perplexity: float = 30.0,
    kernel: str = "gaussian",
    parent_p: Tensor | None = None,
    dof: Tensor | float | None = None,
    dtype: torch.dtype = torch.float64,
):
    """t-SNE similarity loss KL(P_parent || Q_child).

    parent_embeddings: (B, H) (may be None when ``parent_p`` is given);
    child_embeddings: (B, h) -> python float, or (P, B, h) -> (P,) float64 tensor.
    parent_p: optional precomputed ``joint_probabilities(squared_distances(parent))``
    (B, B), reused for every individual of the population.
    kernel: "gaussian" (Q built like P, same perplexity) or "student_t"
    (q_ij ∝ (1 + D_ij/dof)^(-(dof+1)/2), dof default = number of active child
    units, i.e. columns not identically zero over the batch, at least 1).

    dtype: precision of the child's distances and perplexity search (float32: twice as
    fast, to scikit-learn's tolerance; the parent's P stays float64; the Student-t
    kernel always runs in float64).

    Loss = 2 sum_{i<j} P_ij log(max(P_ij, eps) / Q_ij).
    """
    child = torch.as_tensor(child_embeddings) if not isinstance(child_embeddings, Tensor) else child_embeddings
    if parent_p is None:
        if parent_embeddings is None:
            raise ValueError("either parent_embeddings or parent_p is required")
        parent_p = joint_probabilities(squared_distances(parent_embeddings), perplexity)  # (B, B)
    else:
        parent_p = _as_float64(parent_p)
    student = kernel.lower().replace("-", "_") in ("student_t", "studentt", "t")
    if dof is None and student:
        dof = count_active_units(child)  # (...,)
    dtype = torch.float64 if student else dtype
    d_child = squared_distances(child, dtype, rescale=dtype != torch.float64)
    return similarity_from_distances(parent_p, d_child, perplexity, kernel, dof)


def similarity_from_distances(parent_p: Tensor, d_child: Tensor, perplexity: float = 30.0,
                              kernel: str = "gaussian", dof: Tensor | float | None = None,
                              log_beta_init: Tensor | None = None, parent_term: Tensor | None = None):
    """The loss of :func:`tsne_similarity_loss` from the child's squared distances
    ``d_child`` (..., B, B) and the parent's joint P (broadcast against them); ``dof``
    is required by the Student-t kernel; ``log_beta_init`` (..., B) warm-starts the
    Gaussian kernel's perplexity search, which runs in the distances' precision
    (float32 or float64); ``parent_term``: :func:`parent_entropy_term` of ``parent_p``,
    when the caller has it (computed here otherwise). Returns a python float or a
    (...,) float64 tensor."""
    parent_p = _as_float64(parent_p).to(d_child.device)
    if parent_p.shape[-2:] != d_child.shape[-2:]:
        raise ValueError(f"batch size mismatch: parent P {tuple(parent_p.shape)} vs child distances "
                         f"{tuple(d_child.shape)}")
    kernel = kernel.lower().replace("-", "_")
    if kernel == "gaussian":
        dtype = torch.float32 if d_child.dtype == torch.float32 else torch.float64
        q = joint_probabilities(d_child, perplexity, log_beta_init, dtype=dtype)  # (..., B, B)
    elif kernel in ("student_t", "studentt", "t"):
        if dof is None:
            raise ValueError("the Student-t kernel needs dof (degrees of freedom)")
        q = student_t_probabilities(d_child, dof)  # (..., B, B)
    else:
        raise ValueError(f"unknown kernel {kernel!r} (expected 'gaussian' or 'student_t')")

    if parent_term is None:
        parent_term = parent_entropy_term(parent_p)
    loss = _kl_from_floored_q(parent_p, q, parent_term.to(parent_p.device))  # (...,)
    if loss.dim() == 0:
        return float(loss)
    return loss

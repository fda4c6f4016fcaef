"""The t-SNE similarity loss: KL(P_parent || Q_child) of one hidden layer.

For one layer, X (B x H) are the parent's activations and Y (B x h) the child's on the
same batch. P is the parent's joint probabilities (:mod:`.perplexity`); Q the child's,
built the same way (Gaussian, same perplexity) or with a Student-t kernel whose degrees
of freedom are the child's unit count:

  q_ij ∝ (1 + D_ij / dof)^(-(dof + 1) / 2), i != j, normalised so the full matrix sums
  to 1 (condensed upper triangle to 1/2), floored at eps;

  loss = 2 * sum_{i<j} P_ij log(max(P_ij, eps) / Q_ij)
       = sum_{i != j} P_ij log(max(P_ij, eps) / Q_ij)   (KL of the full matrices).

Everything is vectorised over leading (population) dimensions. The child's distances and
search run in float32 or float64; the KL is accumulated in float64. The Student-t kernel
is not scale-free and always runs in float64. For float32 on the CPU the child's Q and
its KL come from the C kernel of :mod:`.native`, one matrix at a time.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import native
from .distances import _as_float64, squared_distances
from .perplexity import EPS, _conditionals, _joint, joint_probabilities

DTYPES = {"float32": torch.float32, "float64": torch.float64}
KERNELS = ("gaussian", "student_t")


def normalise_kernel(kernel: str) -> str:
    """'gaussian' or 'student_t' for a kernel name ('Student-t', 'studentt' and 't' name
    the latter); ValueError for anything else."""
    name = kernel.lower().replace("-", "_")
    if name in ("student_t", "studentt", "t"):
        return "student_t"
    if name != "gaussian":
        raise ValueError(f"unknown kernel {kernel!r} (expected 'gaussian' or 'student_t')")
    return name


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


@torch.no_grad()
def _kl_native(fn, cond: Tensor, parent_p: Tensor, parent_term: Tensor) -> Tensor:
    """(g,) KL(P || Q) by the C kernel ``fn``, Q the joint of the conditionals cond
    (g, B, B) float32 (either orientation: Q is symmetric) as :func:`joint_probabilities`
    builds it, P (g, B, B) float64 (one matrix broadcast, or any layout: gathered), its
    terms (g,). Matrices the kernel returns NaN for (a NaN in cond) are computed again
    the torch way (:func:`_joint`, :func:`_kl_from_floored_q`), which says NaN where the
    data does."""
    g, B = cond.shape[0], cond.shape[-1]
    c = cond if cond.is_contiguous() else cond.transpose(1, 2)
    c = c.to(torch.float32).contiguous()  # the kernel reads float32 conditionals and float64 P
    parent_p = parent_p.to(torch.float64)
    if parent_p.stride(0) == 0 and parent_p.shape[0] > 1 and parent_p[0].is_contiguous():
        p, stride = parent_p[0], 0  # one parent for all g
    else:
        p, stride = parent_p.contiguous(), B * B
    term = parent_term.to(torch.float64).expand(g).contiguous()
    out = torch.empty(g, dtype=torch.float64)
    fn(c.data_ptr(), g, B, p.data_ptr(), stride, term.data_ptr(), EPS, out.data_ptr(),
       max(1, min(torch.get_num_threads(), g)))
    bad = torch.nonzero(~torch.isfinite(out)).squeeze(1)
    if bad.numel():
        out[bad] = _kl_from_floored_q(parent_p[bad], _joint(c[bad]), term[bad])
    return out


def count_active_units(x: Tensor) -> Tensor:
    """Number of columns of x (..., B, h) not identically zero over the batch, at least 1 -> (...,)."""
    x = torch.as_tensor(x)
    return (x != 0).any(dim=-2).sum(dim=-1).clamp_min(1)


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

    dtype: precision of the child's distances and perplexity search (float32: faster,
    fast, to scikit-learn's tolerance; the parent's P stays float64; the Student-t
    kernel always runs in float64).

    Loss = 2 sum_{i<j} P_ij log(max(P_ij, eps) / Q_ij).
    """
    child = torch.as_tensor(child_embeddings) if not isinstance(child_embeddings, Tensor) else child_embeddings
    if parent_p is None:
        if parent_embeddings is None:
            raise ValueError("either parent_embeddings or parent_p is required")
        parent_p = joint_probabilities(squared_distances(parent_embeddings), perplexity, symmetric=True)  # (B, B)
    else:
        parent_p = _as_float64(parent_p)
    student = normalise_kernel(kernel) == "student_t"
    if dof is None and student:
        dof = count_active_units(child)  # (...,)
    dtype = torch.float64 if student else dtype
    d_child = squared_distances(child, dtype, rescale=dtype != torch.float64)
    return similarity_from_distances(parent_p, d_child, perplexity, kernel, dof)


# Distance entries per block of the loss (distances, search, Q, KL), per torch thread:
# the passes over a block then stay in cache instead of streaming a whole population's.
_BLOCK_ELEMENTS = 2**19


def similarity_from_distances(parent_p: Tensor, d_child: Tensor, perplexity: float = 30.0,
                              kernel: str = "gaussian", dof: Tensor | float | None = None,
                              log_beta_init: Tensor | None = None, parent_term: Tensor | None = None):
    """The loss of :func:`tsne_similarity_loss` from the child's squared distances
    ``d_child`` (..., B, B) (symmetric, up to rounding: the search reads its columns as
    its rows) and the parent's joint P (broadcast against them); ``dof``
    is required by the Student-t kernel; ``log_beta_init`` (..., B) warm-starts the
    Gaussian kernel's perplexity search, which runs in the distances' precision
    (float32 or float64); ``parent_term``: :func:`parent_entropy_term` of ``parent_p``,
    when the caller has it (computed here otherwise). Returns a python float or a
    (...,) float64 tensor. Computed in blocks of about _BLOCK_ELEMENTS distances."""
    parent_p = _as_float64(parent_p).to(d_child.device)
    if parent_p.shape[-2:] != d_child.shape[-2:]:
        raise ValueError(f"batch size mismatch: parent P {tuple(parent_p.shape)} vs child distances "
                         f"{tuple(d_child.shape)}")
    kernel = normalise_kernel(kernel)
    if kernel == "student_t" and dof is None:
        raise ValueError("the Student-t kernel needs dof (degrees of freedom)")
    terms = () if parent_term is None else (torch.as_tensor(parent_term, dtype=torch.float64).to(parent_p.device),)
    B = d_child.shape[-1]
    lead = torch.broadcast_shapes(parent_p.shape[:-2], d_child.shape[:-2], *(t.shape for t in terms))
    parent, child = _flat_leading(parent_p, lead, 2), _flat_leading(d_child, lead, 2)
    term = _flat_leading(terms[0], lead, 0) if terms else None
    extra = None  # the Gaussian kernel's warm start (..., B) or the Student-t's dof (...,)
    if kernel == "gaussian" and log_beta_init is not None:
        extra = _flat_leading(log_beta_init, lead, 1)
    if kernel == "student_t":
        extra = _flat_leading(torch.as_tensor(dof, dtype=torch.float64, device=d_child.device), lead, 0)
    total = math.prod(lead)
    size = max(1, _BLOCK_ELEMENTS * torch.get_num_threads() // max(1, B * B))  # matrices per block, aligned with the last
    inner = lead[-1] if lead else 1  # leading dim (a broadcast operand then reads a slice of itself)
    size = -(-inner // -(-inner // size)) if inner > size else inner * (size // inner)
    loss = torch.empty(total, dtype=torch.float64, device=d_child.device)
    for s in range(0, total, size):
        e = min(total, s + size)
        p_block = _block_rows(*parent, s, e)
        # without the parent's term each block computes it, summed as the block's KL is:
        # identical P and Q then give exactly 0
        term_block = parent_entropy_term(p_block) if term is None else _block_rows(*term, s, e)
        loss[s:e] = _loss_block(kernel, perplexity, p_block, _block_rows(*child, s, e), term_block,
                                None if extra is None else _block_rows(*extra, s, e))
    if not lead:
        return float(loss[0])
    return loss.reshape(lead)


def _flat_leading(x: Tensor, lead, tail: int) -> tuple[Tensor, Tensor | None]:
    """``x`` (*leading, *tail) with leading dims broadcastable to ``lead`` -> (x as
    (n, *tail), the (prod(lead),) rows of it each position of ``lead`` reads, or None
    when that is every row in order)."""
    shape = x.shape[:x.dim() - tail]
    rows = x.reshape(-1, *x.shape[x.dim() - tail:])
    if tuple(shape) == tuple(lead):
        return rows, None
    idx = torch.arange(rows.shape[0], device=x.device).reshape(shape).expand(lead).reshape(-1)
    return rows, idx


def _block_rows(rows: Tensor, idx: Tensor | None, s: int, e: int) -> Tensor:
    """Rows ``idx[s:e]`` of ``rows`` (all of them in order when idx is None): a view when
    they are one row repeated or consecutive rows, else a gathered copy."""
    if idx is None:
        return rows[s:e]
    if rows.shape[0] == 1:
        return rows[:1].expand(e - s, *rows.shape[1:])
    first = int(idx[s])
    if int(idx[e - 1]) - first == e - 1 - s:  # broadcast indices step by +1, 0 or back: all +1 here
        return rows[first:first + e - s]
    return rows.index_select(0, idx[s:e])


def _loss_block(kernel: str, perplexity: float, parent_p: Tensor, d_child: Tensor, parent_term: Tensor,
                extra: Tensor | None = None) -> Tensor:
    """(g,) losses of g matrices: parent P (g, B, B) float64, child distances (g, B, B),
    the parent's sum P log P (g,), and the warm start (g, B) (Gaussian) or dof (g,)
    (Student-t)."""
    if kernel == "gaussian":
        dtype = torch.float32 if d_child.dtype == torch.float32 else torch.float64
        lib = native.for_tensor(d_child)
        if lib is not None:  # Q from the conditionals and the KL in one C pass per matrix
            cond, _ = _conditionals(d_child, perplexity, extra, dtype, symmetric=True)  # (g, B, B)
            return _kl_native(lib.kl, cond, parent_p, parent_term)
        q = joint_probabilities(d_child, perplexity, extra, dtype=dtype, symmetric=True)  # (g, B, B)
    else:
        q = student_t_probabilities(d_child, extra)  # (g, B, B)
    return _kl_from_floored_q(parent_p, q, parent_term)  # (g,)

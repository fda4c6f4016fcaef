"""The perplexity search: each row's Gaussian precision such that its conditional
distribution has entropy log(perplexity), and the joint probabilities t-SNE builds from them.

  conditional  p_{j|i} = exp(-D_ij beta_i) / sum_{k != i} exp(-D_ik beta_i), p_{i|i} = 0,
               beta_i such that H_i = -sum_j p_{j|i} log p_{j|i} = log(perplexity);
  joint        P = (P_cond + P_cond^T) / sum(P_cond + P_cond^T)   (= / 2B),
               off-diagonal entries floored at eps = float64 machine epsilon, zero diagonal

exactly as scikit-learn's exact t-SNE (its ``_joint_probabilities`` is the test oracle).
The search takes plain Newton steps on the entropy in log(beta) (dH/dlog(beta) =
-beta^2 Var_p(D)), then, for the few rows these do not settle, safeguarded ones inside a
per-row bisection bracket. The plain Newton phase runs in the C kernel of :mod:`.native`
for float32 on the CPU, else in numpy (CPU) or torch (other devices) through one
function written for both array modules (:func:`_newton_step`).

Precision: float64 to an entropy tolerance of 1e-9; float32 (faster on a CPU) to scikit-learn's own tolerance, 1e-5, with rows that do not converge searched
again in float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import native
from .distances import _as_dtype

EPS = float(np.finfo(np.float64).eps)  # floor for probabilities (= sklearn's MACHINE_EPSILON)
_ROW_SUM_FLOOR = 1e-8  # sklearn's EPSILON_DBL floor of the row sum (never hit after the shift)
_ENTROPY_TOL = 1e-9  # |H_i - log(perplexity)| convergence threshold in float64
_ENTROPY_TOL_FLOAT32 = 1e-5  # ... in float32 (scikit-learn's tolerance; float32 resolves H to ~1e-6)
_MAX_ITER = 100  # same step budget as sklearn's binary search
# Rows x neighbours per piece of the search, per torch thread: its two working arrays
# then stay in a core's L2 cache, where the elementwise passes run faster than from
# memory (and each thread still gets a useful share of every operation); the size was
# chosen by measurement (docs/benchmarks.md).
_SEARCH_ELEMENTS = 2**18
_NEWTON_STEPS = 8  # evaluations of the plain Newton phase before the bracketed search takes over
_NEWTON_MAX_STEP = 2.0  # largest change of log(beta) in one plain Newton step
_POLISH_MAX_STEP = 1e-3  # largest unevaluated last step of a settled row (see _newton_phase)
_NUMPY_ON_CPU = True  # the Newton phase's per-row arithmetic in numpy for CPU tensors (tests switch it off)
_NATIVE_MIN_ROWS = 512  # rows per thread below which the kernel runs on one thread


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """(n, M), (n, M) -> (n,): sum_j a_ij b_ij without a full-size temporary."""
    return torch.einsum("nm,nm->n", a, b)


def _conditional_probabilities(
    d: Tensor,
    perplexity: float,
    tol: float | None = None,
    max_iter: int = _MAX_ITER,
    t_init: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise Gaussian conditionals with entropy log(perplexity).

    d: (N, M) float64 or float32 squared distances of each row to its M neighbours;
    tol: entropy tolerance (default 1e-9 in float64, 1e-5 in float32); t_init: optional
    (N,) starting log(beta) per row (non-finite entries: the default guess). Returns
    (p, n_iter, t): p (N, M) with rows summing to 1, p_j = exp(-beta d_j) / sum_k
    exp(-beta d_k); n_iter (N,) the number of entropy evaluations each row used (0 for
    rows solved in closed form); t (N,) the final log(beta) (NaN for rows solved in
    closed form). The search itself is :func:`_conditional_columns` (on d transposed), or
    the C kernel's (:func:`_conditional_rows_native`) for float32 on the CPU.
    """
    lib = native.for_tensor(d)
    if lib is not None:
        return _conditional_rows_native(lib.newton_rows, d, 0, perplexity, tol, max_iter, t_init)[:3]
    p, n_iter, t = _conditional_columns(d.T.unsqueeze(0), perplexity, tol, max_iter, t_init, own=False)
    return p[0].T.contiguous(), n_iter, t


@torch.no_grad()
def _conditional_rows_native(fn, d: Tensor, period: int, perplexity: float, tol: float | None = None,
                             max_iter: int = _MAX_ITER, t_init: Tensor | None = None):
    """The perplexity search on the rows of d (R, L) float32 with the C kernel ``fn``:
    its Newton phase (the same steps as :func:`_newton_phase`, one row at a time), then
    the rows it leaves to :func:`_settle_rows`. With ``period`` > 0, row r's own entry is
    column r % period (a stack of (B, B) distance matrices as rows, period B): not a
    neighbour, 0 in p. Returns (p (R, L), n_iter (R,), t (R,)) as
    :func:`_conditional_probabilities`, and finite (R,) bool: whether each row of p is
    finite (known from the kernel for the rows it wrote, no pass over p for them). Row
    ranges run on torch's thread count."""
    R, L = d.shape
    M = L - 1 if period else L
    target = math.log(perplexity)
    tol = _ENTROPY_TOL_FLOAT32 if tol is None else tol
    floor = torch.finfo(torch.float32).tiny
    out = torch.empty(R, L, dtype=torch.float32)
    n_iter = torch.zeros(R, dtype=torch.long)
    t_out = torch.full((R,), math.nan, dtype=torch.float32)
    if math.log(M) <= target + tol:  # beta = 0 limit: every row's maximal entropy is <= target
        out.fill_(1.0 / M)
        if period:
            out.view(-1, period, L).diagonal(dim1=1, dim2=2).zero_()
        return out, n_iter, t_out, torch.ones(R, dtype=torch.bool)
    d = d.contiguous()
    t0 = None if t_init is None else t_init.to(torch.float32).contiguous()
    if t0 is not None and t0.shape != (R,):  # the kernel reads one start per row
        raise ValueError(f"t_init has shape {tuple(t0.shape)}, expected ({R},)")
    done = torch.zeros(R, dtype=torch.uint8)
    steps = min(_NEWTON_STEPS, max_iter)
    threads = max(1, min(torch.get_num_threads(), R // _NATIVE_MIN_ROWS))
    fn(d.data_ptr(), R, L, L, period, None if t0 is None else t0.data_ptr(), target, tol, steps,
       int(steps >= max_iter), _NEWTON_MAX_STEP, _POLISH_MAX_STEP, floor, out.data_ptr(), n_iter.data_ptr(),
       t_out.data_ptr(), done.data_ptr(), threads)
    rest = torch.nonzero(done == 0).squeeze(1)
    finite = done == 1  # 2: a row with a NaN or an infinity, which the kernel wrote at its last step
    if rest.numel():  # rows the Newton phase did not settle
        p, it, t_r = _settle_rows(d.index_select(0, rest), rest % period if period else None,
                                  t_out.index_select(0, rest), target, tol, floor, max_iter, steps)
        out[rest] = p
        n_iter[rest] = it
        t_out[rest] = t_r
        finite[rest] = torch.isfinite(p.sum(dim=1))
    return out, n_iter, t_out, finite


@torch.no_grad()  # the search is not differentiable (its in-place work space, numpy arithmetic)
def _conditional_columns(
    d: Tensor,
    perplexity: float,
    tol: float | None = None,
    max_iter: int = _MAX_ITER,
    t_init: Tensor | None = None,
    own: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The perplexity search on columns: d (g, L, n), column i of matrix g the squared
    distances of row i to its neighbours; with ``own`` (L = n = B, a distance matrix
    read by columns), entry (i, i) is the point itself and is left out (M = B - 1
    neighbours), else all L = M entries are neighbours. Reading a symmetric distance
    matrix by columns needs no transposed copy, and every pass then runs along
    contiguous memory. Returns (c (g, L, n): column i the conditional distribution of
    row i, 0 at its own entry; n_iter (g n,); t (g n,)), as :func:`_conditional_probabilities`
    (row g n + i: column i of matrix g).

    With the column minimum subtracted (p and H are invariant to the shift),
    Z = sum_k exp(-beta d_k) >= 1 and H = log Z + beta * E_p[d].
    H decreases monotonically from log(M) (beta = 0, uniform) to
    log(#nearest ties) (beta -> inf); targets outside that range are
    returned at the corresponding limit (sklearn walks to the same limit by
    halving / doubling beta 100 times).

    A row is solved where |H - log(perplexity)| < tol first holds: plain Newton
    steps in log(beta) from the start (most rows need two or three evaluations),
    then, for the few rows these do not settle, a safeguarded search inside a
    bisection bracket. Columns are searched in pieces of about _SEARCH_ELEMENTS entries
    per thread (whole matrices, or column ranges of one).
    """
    g, L, n = d.shape
    M = L - 1 if own else L
    target = math.log(perplexity)
    if tol is None:
        tol = _ENTROPY_TOL if d.dtype == torch.float64 else _ENTROPY_TOL_FLOAT32
    out = torch.empty(d.shape, dtype=d.dtype, device=d.device)
    n_iter = torch.zeros(g * n, dtype=torch.long, device=d.device)
    t_out = torch.full((g * n,), math.nan, dtype=d.dtype, device=d.device)
    # beta = 0 limit: every row's maximal entropy log(M) is already <= target.
    if math.log(M) <= target + tol:
        out.fill_(1.0 / M)
        if own:
            out.diagonal(dim1=1, dim2=2).zero_()
        return out, n_iter, t_out
    budget = _SEARCH_ELEMENTS * torch.get_num_threads()  # each thread's share cache-sized
    k, c = (max(1, min(g, budget // (L * n))), n) if L * n <= budget else (1, max(1, budget // L))
    scratch = d.new_empty(2, k * L * c)  # reused by every piece: its distances and exp(-beta d)
    for s in range(0, g, k):
        for c0 in range(0, n, c):
            kk, cc = min(k, g - s), min(c, n - c0)
            flat = slice(s * n + c0, s * n + c0 + kk * cc)  # the piece's rows in the (g n,) results
            _search_piece(d[s:s + kk, :, c0:c0 + cc], c0 if own else None, target, tol, max_iter,
                          None if t_init is None else t_init[flat], out[s:s + kk, :, c0:c0 + cc],
                          n_iter[flat], t_out[flat], scratch)
    return out, n_iter, t_out


def _search_piece(d: Tensor, own: int | None, target: float, tol: float, max_iter: int, t_init: Tensor | None,
                  out: Tensor, n_iter: Tensor, t_out: Tensor, scratch: Tensor) -> None:
    """:func:`_conditional_columns` on the columns of d (k, L, c), written into ``out``
    (k, L, c), ``n_iter`` (k c,) and ``t_out`` (k c,) (views of the caller's results);
    ``own``: None, or the column offset of the piece in its matrices (column i's own
    entry is row own + i); ``scratch`` (2, >= k L c) work space."""
    k, L, c = d.shape
    M = L if own is None else L - 1
    floor = 1e-300 if d.dtype == torch.float64 else torch.finfo(d.dtype).tiny  # smallest variance used
    # (L, a = k c): the piece's columns side by side, so that every pass runs along rows of
    # k c entries (filled from d in runs of c: no transposed copy)
    x, w = (s[:k * L * c].view(L, k * c) for s in scratch)
    x.view(L, k, c).copy_(d.transpose(0, 1))
    diag = None if own is None else _own_entries(x, k, own)  # (k, c)
    if diag is not None:
        diag.fill_(math.inf)  # not a neighbour: not the minimum
    x.sub_(x.amin(dim=0))  # column minimum 0 (p and H do not depend on it)
    if diag is not None:
        diag.zero_()  # adds nothing to the starting point's sums
    # (own entries stay 0: exp(-beta 0) = 1 exactly, which the Newton phase takes off its
    # sums; a huge entry whose exp underflows instead makes every exp pass slower)
    t = _start(None if t_init is None else t_init.to(d.dtype).reshape(k * c), x, 0, M, target, floor)
    steps = min(_NEWTON_STEPS, max_iter)
    rest, t, x, used = _newton_phase(x, w, t.clone(), target, tol, steps, steps >= max_iter, own,
                                     out, n_iter, t_out)
    if rest is None:
        return
    # rows the plain Newton steps did not settle: x's columns (L, r) as rows
    p, it, t_r = _settle_rows(x.T.contiguous(), None if own is None else own + rest % c, t, target, tol, floor,
                              max_iter, used)
    out[rest // c, :, rest % c] = p
    n_iter.index_copy_(0, rest, it)
    t_out.index_copy_(0, rest, t_r)


def _settle_rows(rows: Tensor, own: Tensor | None, t: Tensor, target: float, tol: float, floor: float,
                 max_iter: int, used: int):
    """The rows (r, L) of squared distances that ``used`` plain Newton evaluations did
    not settle, from their t (r,); ``own``: None (every entry a neighbour) or (r,) the
    column of each row's own entry (left out, 0 in p). Rows whose nearest neighbours tie
    (at least perplexity of them: the beta -> inf limit) in closed form (uniform over the
    ties, n_iter 0, t NaN), the others by the bracketed search with the steps left.
    Returns (p (r, L), n_iter (r,), t (r,))."""
    r, L = rows.shape
    if own is not None:  # the neighbours only: (r, L - 1)
        neighbours = torch.ones(r, L, dtype=torch.bool, device=rows.device)
        neighbours[torch.arange(r, device=rows.device), own] = False
        rows = rows[neighbours].view(r, L - 1)
    dw = rows - rows.amin(dim=1, keepdim=True)  # minimum 0 (p and H do not depend on it)
    p = torch.empty_like(dw)
    n_iter = torch.zeros(len(dw), dtype=torch.long, device=dw.device)
    t_out = torch.full((len(dw),), math.nan, dtype=dw.dtype, device=dw.device)
    is_min = dw == 0  # (r, M)
    n_ties = is_min.sum(dim=1)  # (r,) >= 1
    tie_rows = torch.log(n_ties.to(dw.dtype)) >= target - tol  # (r,)
    if tie_rows.any():
        ties = torch.nonzero(tie_rows).squeeze(1)
        p[ties] = is_min.index_select(0, ties).to(dw.dtype) / n_ties.index_select(0, ties).unsqueeze(1).to(dw.dtype)
    others = torch.nonzero(~tie_rows).squeeze(1)
    if others.numel():
        p_o, it, t_o = _bracketed_search(dw.index_select(0, others), target, tol, floor, max_iter - used,
                                         t.index_select(0, others))
        p[others] = p_o
        n_iter[others] = it + used
        t_out[others] = t_o
    if own is not None:  # 0 at each row's own entry
        p = p.new_zeros(r, L).masked_scatter_(neighbours, p)
    return p, n_iter, t_out


def _own_entries(a: Tensor, k: int, own: int) -> Tensor:
    """The (k, c) view of each column's own entry in a piece's (L, k c) array, whose
    columns are k side-by-side blocks of c columns starting at column ``own`` of their
    matrices (column i of a block: row own + i)."""
    L, c = a.shape[0], a.shape[1] // k
    return a.view(L, k, c).diagonal(offset=-own, dim1=0, dim2=2)


def _start(t: Tensor | None, d: Tensor, dim: int, M: int, target: float, floor: float) -> Tensor:
    """Starting log(beta) for the rows of ``d`` along ``dim`` (M neighbours each, minimum
    0, any other entries 0), flattened: ``t`` where finite (a warm start), elsewhere (all
    of it when None) the second-order cumulant expansion around beta = 0, H(beta) ~=
    log M - beta^2 Var_uniform(d) / 2."""
    if t is not None and bool(torch.isfinite(t).all()):
        return t
    mean = d.sum(dim=dim).reshape(-1) / M  # (n,)
    var = (torch.linalg.vecdot(d, d, dim=dim).reshape(-1) / M - mean * mean).clamp_min(floor)  # uniform-weight variance
    guess = 0.5 * torch.log(2.0 * (math.log(M) - target) / var)
    return guess if t is None else torch.where(torch.isfinite(t), t, guess)


def _newton_phase(x: Tensor, w: Tensor, t: Tensor, target: float, tol: float, steps: int, final: bool,
                  own: int | None, out: Tensor, n_iter: Tensor, t_out: Tensor):
    """Plain Newton steps in t = log(beta) (no further than _NEWTON_MAX_STEP each) for
    the columns of x (L, a) (minimum 0; with ``own``, the column offset of the piece,
    column f's own entry is row own + f % c, and is 0), starting at t (a,); ``w`` (L, a)
    work space. A row stops where its entropy is first within ``tol``: it is
    written into out (k, L, c), n_iter and t_out (a = k c,) (n_iter counting the
    evaluations spent on it) after one more Newton step that is not evaluated (the
    polish: from within tol that step's error is about the square of the last, so the
    written rows are far closer to the target than tol; skipped where the step would be
    larger than _POLISH_MAX_STEP, as on an entropy plateau). With ``final``, every row
    ends at the last step (the caller's step budget). Returns (the positions of the rows
    it left unsolved, or None; their t; their columns (L, r); the evaluations spent)."""
    k, L, c = out.shape
    # the per-row arithmetic on (a,) vectors in numpy for a CPU tensor (zero-copy views; its
    # per-call cost is a fraction of torch's, and a step makes a few dozen such calls), else in torch
    cpu = x.device.type == "cpu" and _NUMPY_ON_CPU
    xp = np if cpu else torch
    as_xp = Tensor.numpy if cpu else _same
    as_torch = torch.from_numpy if cpu else _same
    t = as_xp(t)
    pos = None  # the active rows' positions among the a (None: all of them, in order)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf and NaN steps are handled
        for it in range(1, steps + 1):
            torch.mul(x, as_torch(-xp.exp(t)), out=w).exp_()  # (L, a) exp(-beta d), max entry 1 per column
            # the sums in place, in the distances' precision: z >= 1 (the minimum is 0), w d, w d^2
            z, s1, s2 = (as_xp(v) for v in (w.sum(0), w.mul_(x).sum(0), w.mul_(x).sum(0)))
            if own is not None:
                z = z - 1.0  # the own entry's exp(0) (z stays >= 1: no cancellation)
            t_next, conv = _newton_step(xp, z, s1, s2, t, target, tol, it == steps and final)
            n_conv = int(conv.sum())
            if n_conv and (n_conv * 2 >= len(conv) or it == steps):  # write the settled rows, keep the rest
                conv_t, t_next_t = as_torch(conv), as_torch(t_next)
                if pos is None:  # the first write: every row at once (the unsettled ones are written again later)
                    p = torch.mul(x, as_torch(-xp.exp(t_next)), out=w).exp_()  # (L, a)
                    if own is not None:
                        _own_entries(p, k, own).zero_()
                    out.copy_(_normalised(p, 0).view(L, k, c).transpose(0, 1))  # in runs of c
                    n_iter.fill_(it)
                    t_out.copy_(t_next_t)
                else:
                    done = torch.nonzero(conv_t).squeeze(1)
                    at = pos.index_select(0, done)
                    t_done = t_next_t.index_select(0, done)
                    p = torch.mul(x.index_select(1, done), t_done.exp().neg_()).exp_()  # (L, done)
                    if own is not None:
                        p[own + at % c, torch.arange(len(at), device=at.device)] = 0.0
                    out[at // c, :, at % c] = _normalised(p, 0).T
                    n_iter.index_fill_(0, at, it)
                    t_out.index_copy_(0, at, t_done)
                if n_conv == len(conv):
                    return None, None, None, it
                keep = torch.nonzero(~conv_t).squeeze(1)
                pos = keep if pos is None else pos.index_select(0, keep)
                x = x.index_select(1, keep)
                t, t_next = t[as_xp(keep)], t_next[as_xp(keep)]
                w = w[:, :len(keep)]
            if it == steps:  # the rows left go to the bracketed search from where they were evaluated
                break
            t = t_next
    return torch.arange(k * c, device=x.device) if pos is None else pos, as_torch(t), x, steps


def _same(v):
    return v


def _newton_step(xp, z, s1, s2, t, target: float, tol: float, end: bool):
    """One plain Newton step in t = log(beta) (no further than _NEWTON_MAX_STEP) from the
    column sums z = sum exp(-beta d), s1 = sum exp(-beta d) d and s2 = sum exp(-beta d) d^2
    (a,) at t (a,), in the array module ``xp`` (numpy or torch). Returns (t_next, conv):
    conv the rows that end here (entropy within ``tol``, or all of them with ``end``);
    those within tol take the step as the polish where it is at most _POLISH_MAX_STEP,
    else stay at t; the others take the step (NaN stays NaN)."""
    # (numpy: np.maximum/minimum and putmask, as np.clip and np.where with a scalar cost several
    # times as much on these short vectors)
    beta = xp.exp(t)
    m = s1 / z  # E_p[d]
    v = s2 / z - m * m  # Var_p[d], >= 0 but for rounding
    v = np.maximum(v, 0.0, out=v) if xp is np else v.clamp_min_(0.0)
    err = xp.log(z) + beta * m - target  # H - target, > 0: beta too small
    settled = xp.abs(err) < tol
    conv = settled | end
    step = err / (beta * beta * v)  # dH/dt = -beta^2 Var_p[d]; v = 0: an infinite step, clipped
    polish = settled & (xp.abs(step) <= _POLISH_MAX_STEP)
    if xp is np:
        step = np.minimum(np.maximum(step, -_NEWTON_MAX_STEP, out=step), _NEWTON_MAX_STEP, out=step)  # NaN stays NaN
        np.putmask(step, conv & ~polish, 0.0)
    else:
        step = step.clamp_(-_NEWTON_MAX_STEP, _NEWTON_MAX_STEP).masked_fill_(conv & ~polish, 0.0)
    return t + step, conv


def _normalised(w: Tensor, dim: int = 1) -> Tensor:
    """``w`` divided by its sums along ``dim``, in place, in its own precision (with the
    polish, float32 sums here leave the float32 loss of children close to their parent as
    close to the float64 search's as float64 sums do: within 5e-5 of it)."""
    return w.div_(w.sum(dim, keepdim=True))


def _bracketed_search(dw: Tensor, target: float, tol: float, floor: float, max_iter: int, t: Tensor):
    """The safeguarded search for rows dw (n, M) (row minimum 0) from t (n,) (non-finite:
    the default guess): Newton steps in log(beta) inside a bisection bracket, geometric
    expansion while it is open. Returns (p (n, M), evaluations (n,), final t (n,))."""
    N, M = dw.shape
    info = torch.finfo(dw.dtype)
    span = 1e-14 / EPS * info.eps  # a bracket this narrow (relative) has collapsed: 1e-14 in float64
    out = torch.empty_like(dw)
    n_iter = torch.zeros(N, dtype=torch.long, device=dw.device)
    t_out = torch.full((N,), math.nan, dtype=dw.dtype, device=dw.device)
    idx = torch.arange(N, device=dw.device)
    d2w = dw * dw  # (n, M)
    buf = torch.empty_like(dw)  # (n, M) reused for exp(-beta d)
    t = _start(t, dw, 1, M, target, floor)
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
            out.index_copy_(0, rows, _normalised(w.index_select(0, sel)))
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
                        return_log_beta: bool = False, dtype: torch.dtype = torch.float64,
                        symmetric: bool = False):
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
    closed form. ``symmetric``: ``sq_dist`` is symmetric (up to rounding, as distances
    from a Gram matrix): the search reads its columns as its rows, without a
    transposed copy.
    """
    d = _as_dtype(sq_dist, dtype)
    lead, B = d.shape[:-2], d.shape[-1]
    cond, log_beta = _conditionals(d, perplexity, log_beta_init, dtype, symmetric)
    p = _joint(cond).reshape(*lead, B, B)
    if return_log_beta:
        return p, log_beta.reshape(*lead, B)
    return p


def _joint(cond: Tensor) -> Tensor:
    """(g, B, B) conditionals (either orientation) -> the joint (cond + cond^T) / its sum,
    off-diagonal floored at eps, zero diagonal, in cond's precision."""
    p = cond + cond.transpose(-1, -2)
    p.div_(p.sum(dim=(-2, -1), keepdim=True).clamp_min(EPS))
    p.clamp_(min=EPS)
    p.diagonal(dim1=-2, dim2=-1).zero_()
    return p


def _conditionals(d: Tensor, perplexity: float, log_beta_init: Tensor | None, dtype: torch.dtype,
                  symmetric: bool) -> tuple[Tensor, Tensor]:
    """The conditionals of :func:`joint_probabilities` (its arguments; d in ``dtype``):
    (cond (g, B, B), [j, i] = p_{j|i} with g the flattened leading dims, log_beta (g B,))."""
    if perplexity <= 0:
        raise ValueError("perplexity must be positive")
    B = d.shape[-1]
    if d.shape[-2] != B:
        raise ValueError(f"expected (..., B, B) distances, got {tuple(d.shape)}")
    lead = d.shape[:-2]
    if B < 2:  # no neighbours: P is 0
        return (torch.zeros_like(d).reshape(-1, B, B),
                torch.full((math.prod(lead) * B,), math.nan, dtype=d.dtype, device=d.device))
    cols = d.reshape(-1, B, B)  # (g, B, B)
    if not symmetric:
        cols = cols.transpose(1, 2)  # column i: row i (the search copies it)
    t_init = None if log_beta_init is None else log_beta_init.expand(*lead, B).reshape(-1)
    lib = native.for_tensor(d)
    if lib is not None:  # the C kernel reads rows: (g B, B), row i of matrix g at g B + i
        rows, n_iter, log_beta, finite = _conditional_rows_native(lib.newton_rows, d.reshape(-1, B), B,
                                                                  perplexity, t_init=t_init)
        cond = rows.view(-1, B, B).transpose(1, 2)  # (g, B, B): [j, i] = p_{j|i}, as below
    else:
        cond, n_iter, log_beta = _conditional_columns(cols, perplexity, t_init=t_init)  # (g, B, B): [j, i] = p_{j|i}
        finite = None
    if dtype != torch.float64:  # float32 rows that used every step (or broke): their matrices again in float64
        if finite is None:
            finite = torch.isfinite(cond.sum(dim=1)).reshape(-1)  # (g B,)
        bad = (n_iter >= _MAX_ITER) | ~finite  # (g B,)
        redo = torch.nonzero(bad.view(-1, B).any(dim=1)).squeeze(1)  # matrices
        if redo.numel():
            c64, _, t64 = _conditional_columns(
                cols.index_select(0, redo).double(), perplexity,
                t_init=None if t_init is None else t_init.view(-1, B).index_select(0, redo).reshape(-1))
            cond.index_copy_(0, redo, c64.to(dtype))
            log_beta.view(-1, B).index_copy_(0, redo, t64.view(-1, B).to(dtype))
    return cond, log_beta

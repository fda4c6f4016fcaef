"""Tests for ecomp_deap.fitness.similarity.loss (t-SNE similarity loss).

Oracle: scikit-learn's private ``sklearn.manifold._t_sne._joint_probabilities``
(exact t-SNE P, condensed).  sklearn casts distances to float32 and stops its
bisection at an entropy error of 1e-5; we feed it float32-representable
distances and compare at 1e-4 relative.  For ill-conditioned inputs (ties,
1-D data) a tight float64 bisection reference written here is used instead.
"""

import math
import zlib

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, squareform

from ecomp_deap.fitness.similarity import (
    EPS,
    count_active_units,
    joint_probabilities,
    kl_divergence,
    squared_distances,
    student_t_probabilities,
    tsne_similarity_loss,
)
from ecomp_deap.fitness.similarity.loss import _offdiag
from ecomp_deap.fitness.similarity.perplexity import _conditional_probabilities

sk_tsne = pytest.importorskip("sklearn.manifold._t_sne")
MACHINE_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- #
# references
# --------------------------------------------------------------------------- #
def sk_joint(d: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """sklearn's P as a full (B, B) matrix."""
    return squareform(sk_tsne._joint_probabilities(np.asarray(d, dtype=np.float64), perplexity, 0))


def f32(d: np.ndarray) -> np.ndarray:
    """Round distances to float32 so sklearn's internal cast is lossless."""
    return np.asarray(d, dtype=np.float32).astype(np.float64)


def sk_sq_dist(x: np.ndarray) -> np.ndarray:
    return f32(cdist(x, x, "sqeuclidean"))


def sk_loss(x: np.ndarray, y: np.ndarray, perplexity: float = 30.0) -> float:
    """Loss the sklearn way: condensed P and Q, 2 * sum P log(max(P, eps) / Q)."""
    p = sk_tsne._joint_probabilities(sk_sq_dist(x), perplexity, 0)
    q = sk_tsne._joint_probabilities(sk_sq_dist(y), perplexity, 0)
    return float(2.0 * np.sum(p * np.log(np.maximum(p, MACHINE_EPS) / q)))


def tight_joint(d: np.ndarray, perplexity: float = 30.0, steps: int = 200) -> np.ndarray:
    """Plain per-row float64 bisection on beta, run to machine precision."""
    n = d.shape[0]
    target = math.log(perplexity)
    cond = np.zeros((n, n))
    for i in range(n):
        di = np.delete(d[i], i)
        di = di - di.min()
        lo, hi, beta = 0.0, math.inf, 1.0 / max(di.mean(), 1e-300)
        for _ in range(steps):
            w = np.exp(-beta * di)
            z = w.sum()
            p = w / z
            h = math.log(z) + beta * (p @ di)
            if h > target:
                lo = beta
                beta = beta * 2.0 if hi == math.inf else 0.5 * (lo + hi)
            else:
                hi = beta
                beta = 0.5 * (lo + hi)
        cond[i] = np.insert(p, i, 0.0)
    pj = cond + cond.T
    pj = np.maximum(pj / pj.sum(), MACHINE_EPS)
    np.fill_diagonal(pj, 0.0)
    return pj


def student_t_reference(d: np.ndarray, dof: float) -> np.ndarray:
    n = d.shape[0]
    w = (1.0 + d / dof) ** (-(dof + 1.0) / 2.0)
    np.fill_diagonal(w, 0.0)
    q = np.maximum(w / w.sum(), MACHINE_EPS)
    np.fill_diagonal(q, 0.0)
    assert q.shape == (n, n)
    return q


def full_kl(p: np.ndarray, q: np.ndarray) -> float:
    off = ~np.eye(p.shape[0], dtype=bool)
    return float(np.sum(p[off] * np.log(np.maximum(p[off], MACHINE_EPS) / q[off])))


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #
def make_data(kind: str, b: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.normal(size=(b, 20))
    if kind == "clusters":
        centres = rng.normal(size=(4, 16)) * 10.0
        return centres[rng.integers(0, 4, size=b)] + rng.normal(size=(b, 16))
    if kind == "relu":  # sparse non-negative activations
        return np.maximum(rng.normal(loc=-0.8, size=(b, 128)), 0.0)
    if kind == "lowrank":
        return rng.normal(size=(b, 3)) @ rng.normal(size=(3, 48))
    raise ValueError(kind)


KINDS = ["gaussian", "clusters", "relu", "lowrank"]


def _seed(*key) -> int:
    """Deterministic per-parameter seed (hash() of str is salted per process)."""
    return zlib.crc32(repr(key).encode())


# --------------------------------------------------------------------------- #
# distances
# --------------------------------------------------------------------------- #
def test_squared_distances_matches_cdist_and_is_clean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 30, 7)) * 5.0 + 100.0
    d = squared_distances(torch.tensor(x, dtype=torch.float32))
    assert d.shape == (3, 30, 30) and d.dtype == torch.float64
    for k in range(3):
        ref = cdist(x[k].astype(np.float32).astype(np.float64), x[k].astype(np.float32).astype(np.float64), "sqeuclidean")
        np.testing.assert_allclose(d[k].numpy(), ref, rtol=1e-9, atol=1e-8)
    assert torch.all(d >= 0)
    assert torch.equal(d, d.transpose(-1, -2))
    assert torch.all(torch.diagonal(d, dim1=-2, dim2=-1) == 0)


def test_squared_distances_does_not_modify_float64_input():
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x0 = x.clone()
    squared_distances(x)
    assert torch.equal(x, x0)


# --------------------------------------------------------------------------- #
# joint probabilities
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,perplexity", [(10, 3.0), (10, 30.0), (50, 10.0), (100, 30.0), (100, 5.0)])
def test_joint_probabilities_match_sklearn(kind, b, perplexity):
    rng = np.random.default_rng(_seed(kind, b, perplexity))
    d = sk_sq_dist(make_data(kind, b, rng))
    p = joint_probabilities(torch.tensor(d), perplexity).numpy()
    ref = sk_joint(d, perplexity)
    # sklearn stops at |H - log(perp)| <= 1e-5, which moves single entries by up to a
    # few 1e-4 relative (far more for entries < 1e-9); in aggregate it agrees to 1e-4.
    assert np.abs(p - ref).sum() / ref.sum() < 1e-4
    np.testing.assert_allclose(p, ref, rtol=5e-4, atol=1e-9)
    # against a bisection run to machine precision the agreement is tight
    np.testing.assert_allclose(p, tight_joint(d, perplexity), rtol=1e-6, atol=1e-12)


def test_joint_probabilities_batch_of_two_matches_sklearn():
    rng = np.random.default_rng(2)
    d = sk_sq_dist(rng.normal(size=(2, 5)))
    p = joint_probabilities(torch.tensor(d)).numpy()
    np.testing.assert_allclose(p, sk_joint(d), rtol=1e-12)
    np.testing.assert_allclose(p, [[0.0, 0.5], [0.5, 0.0]])


def test_joint_probabilities_properties():
    rng = np.random.default_rng(3)
    x = torch.tensor(np.stack([make_data(k, 60, rng)[:, :16] for k in KINDS]))  # (4, 60, 16)
    p = joint_probabilities(squared_distances(x))
    assert p.shape == (4, 60, 60) and p.dtype == torch.float64
    assert torch.equal(p, p.transpose(-1, -2))
    assert torch.all(torch.diagonal(p, dim1=-2, dim2=-1) == 0)
    off = ~torch.eye(60, dtype=torch.bool)
    assert torch.all(p[:, off] >= EPS)
    torch.testing.assert_close(p.sum(dim=(-2, -1)), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "case",
    ["duplicates", "tied_block", "single_unit", "integer_grid"],
)
def test_joint_probabilities_match_tight_reference_on_ill_conditioned_data(case):
    rng = np.random.default_rng(4)
    x = {
        "duplicates": np.concatenate([rng.normal(size=(30, 6))] * 2),
        "tied_block": np.concatenate([np.zeros((40, 8)), rng.normal(size=(30, 8))]),
        "single_unit": np.concatenate([rng.normal(size=(60, 1)), np.zeros((60, 5))], axis=1),
        "integer_grid": rng.integers(0, 3, size=(60, 3)).astype(np.float64),
    }[case]
    d = squared_distances(torch.tensor(x))
    p = joint_probabilities(d).numpy()
    ref = tight_joint(d.numpy())
    np.testing.assert_allclose(p, ref, rtol=1e-6, atol=1e-15)
    if case != "tied_block":
        # sklearn agrees to its own (looser) tolerance in absolute terms.  (For
        # "tied_block" sklearn cannot reach beta = inf for rows whose 40 nearest
        # neighbours tie: every exp underflows and its conditional row ends all zero.)
        np.testing.assert_allclose(p, sk_joint(f32(d.numpy())), rtol=0, atol=1e-6)


def test_newton_search_converges_fast_and_tightly():
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(20, 100, 256, generator=g) - 0.5)  # ReLU-like activations
    d = _offdiag(squared_distances(x)).reshape(-1, 99)
    cond, n_iter, _ = _conditional_probabilities(d, 30.0)
    assert int(n_iter.max()) <= 12
    assert float(n_iter.double().median()) <= 8
    torch.testing.assert_close(cond.sum(1), torch.ones(cond.shape[0], dtype=torch.float64))
    ent = -(cond * torch.log(cond.clamp_min(1e-300))).sum(1)
    assert torch.all((ent - math.log(30.0)).abs() < 1e-8)


# --------------------------------------------------------------------------- #
# loss
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,h", [(20, 5), (100, 64)])
def test_loss_matches_sklearn_reference(kind, b, h):
    rng = np.random.default_rng(_seed(kind, b, h, "loss"))
    parent = make_data(kind, b, rng)  # child dimension differs from the parent's
    child = parent @ rng.normal(size=(parent.shape[1], h)) / math.sqrt(h) + rng.normal(size=(b, h)) * 0.3
    parent = f32(parent).astype(np.float32)
    child = child.astype(np.float32)
    got = tsne_similarity_loss(torch.tensor(parent), torch.tensor(child), perplexity=10.0 if b == 20 else 30.0)
    assert isinstance(got, float)
    ref = sk_loss(parent.astype(np.float64), child.astype(np.float64), perplexity=10.0 if b == 20 else 30.0)
    assert got == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("kernel", ["gaussian", "student_t"])
def test_batched_equals_individual_calls(kernel):
    g = torch.Generator().manual_seed(6)
    parent = torch.randn(50, 30, generator=g)
    children = torch.relu(torch.randn(6, 50, 12, generator=g))
    children[2, :, 3:] = 0.0  # different numbers of active units
    children[4] = 0.0
    batched = tsne_similarity_loss(parent, children, kernel=kernel)
    assert isinstance(batched, torch.Tensor) and batched.shape == (6,) and batched.dtype == torch.float64
    single = torch.tensor([tsne_similarity_loss(parent, c, kernel=kernel) for c in children], dtype=torch.float64)
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)


def test_parent_p_reuse_matches_recomputing():
    g = torch.Generator().manual_seed(7)
    parent = torch.randn(40, 25, generator=g)
    children = torch.randn(5, 40, 9, generator=g)
    pp = joint_probabilities(squared_distances(parent))
    for kernel in ("gaussian", "student_t"):
        a = tsne_similarity_loss(parent, children, kernel=kernel)
        b = tsne_similarity_loss(None, children, kernel=kernel, parent_p=pp)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert tsne_similarity_loss(parent, children[0], kernel=kernel) == tsne_similarity_loss(
            None, children[0], kernel=kernel, parent_p=pp
        )


def test_identical_embeddings_zero_loss_and_nonnegative():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(60, 16, generator=g)
    assert tsne_similarity_loss(x, x) == pytest.approx(0.0, abs=1e-12)
    # the child may live in another dimension: an isometric embedding is still lossless
    rot, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    y = torch.cat([x.double(), torch.zeros(60, 8, dtype=torch.float64)], 1) @ rot
    assert tsne_similarity_loss(x, y) == pytest.approx(0.0, abs=1e-8)
    losses = tsne_similarity_loss(x, torch.randn(10, 60, 5, generator=g))
    assert torch.all(losses >= 0) and torch.all(losses > 1e-3)
    losses_t = tsne_similarity_loss(x, torch.randn(10, 60, 5, generator=g), kernel="student_t")
    assert torch.all(losses_t >= 0)


def test_student_t_matches_numpy_reference_with_active_units():
    rng = np.random.default_rng(9)
    parent = rng.normal(size=(40, 20))
    child = np.maximum(rng.normal(size=(3, 40, 10)), 0.0)
    child[0, :, 4:] = 0.0  # 4 active units
    child[1, :, [1, 7]] = 0.0  # 8 active units
    child[2, :, 1:] = 0.0  # 1 active unit
    assert count_active_units(torch.tensor(child)).tolist() == [4, 8, 1]
    got = tsne_similarity_loss(torch.tensor(parent), torch.tensor(child), kernel="student_t")
    p = joint_probabilities(squared_distances(torch.tensor(parent))).numpy()
    for k, dof in enumerate([4, 8, 1]):
        q = student_t_reference(cdist(child[k], child[k], "sqeuclidean"), float(dof))
        assert float(got[k]) == pytest.approx(full_kl(p, q), rel=1e-9)
    # explicit dof, as a tensor or a float
    dof = torch.tensor([2.0, 3.0, 5.0])
    got2 = tsne_similarity_loss(torch.tensor(parent), torch.tensor(child), kernel="student_t", dof=dof)
    for k in range(3):
        q = student_t_reference(cdist(child[k], child[k], "sqeuclidean"), float(dof[k]))
        assert float(got2[k]) == pytest.approx(full_kl(p, q), rel=1e-9)
    got3 = tsne_similarity_loss(torch.tensor(parent), torch.tensor(child[1]), kernel="student_t", dof=3.0)
    q = student_t_reference(cdist(child[1], child[1], "sqeuclidean"), 3.0)
    assert got3 == pytest.approx(full_kl(p, q), rel=1e-9)


def test_student_t_probabilities_normalised_and_stable():
    d = squared_distances(torch.randn(2, 30, 50, generator=torch.Generator().manual_seed(10)) * 1e4)
    q = student_t_probabilities(d, torch.tensor([1.0, 256.0]))  # would underflow without log-space
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=(-2, -1)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)
    assert torch.all(torch.diagonal(q, dim1=-2, dim2=-1) == 0)


def test_kl_divergence_matches_formula():
    rng = np.random.default_rng(11)
    p = sk_joint(sk_sq_dist(rng.normal(size=(30, 4))))
    q = sk_joint(sk_sq_dist(rng.normal(size=(30, 4))))
    got = kl_divergence(torch.tensor(p), torch.tensor(q))
    assert got.shape == ()
    assert float(got) == pytest.approx(full_kl(p, q), rel=1e-12)
    assert float(kl_divergence(torch.tensor(p), torch.tensor(p))) == 0.0


# --------------------------------------------------------------------------- #
# degenerate input
# --------------------------------------------------------------------------- #
def _degenerate_children(b: int, g: torch.Generator) -> dict:
    return {
        "all_zero": torch.zeros(b, 16),
        "duplicate_rows": torch.randn(b // 2, 8, generator=g).repeat(2, 1),
        "single_active_unit": torch.cat([torch.randn(b, 1, generator=g), torch.zeros(b, 15)], 1),
        "huge": torch.randn(b, 32, generator=g) * 1e4,
        "huge_relu": torch.relu(torch.randn(b, 32, generator=g) * 1e4 + 3e3),
        "tiny": torch.randn(b, 8, generator=g) * 1e-6,
    }


@pytest.mark.parametrize("kernel", ["gaussian", "student_t"])
def test_degenerate_inputs_stay_finite(kernel):
    g = torch.Generator().manual_seed(12)
    b = 100
    children = _degenerate_children(b, g)
    # zero-padding to a common width changes neither distances nor active units
    batch = torch.stack([torch.nn.functional.pad(c, (0, 32 - c.shape[1])) for c in children.values()])  # (6, B, 32)
    d_batch = squared_distances(batch)  # (6, B, B)
    p_batch = joint_probabilities(d_batch)  # (6, B, B)
    q_batch = (
        p_batch if kernel == "gaussian" else student_t_probabilities(d_batch, count_active_units(batch))
    )  # (6, B, B)
    assert torch.isfinite(p_batch).all() and torch.isfinite(q_batch).all()
    torch.testing.assert_close(p_batch.sum(dim=(-2, -1)), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-9)

    for pname, parent in {"random": torch.randn(b, 20, generator=g), "all_zero": torch.zeros(b, 20)}.items():
        pp = joint_probabilities(squared_distances(parent))
        assert torch.isfinite(pp).all()
        losses = tsne_similarity_loss(parent, batch, kernel=kernel)  # degenerate children
        assert torch.isfinite(losses).all() and torch.all(losses >= 0), (pname, losses)
        # the degenerate embeddings as the parent
        dp = squared_distances(parent)
        q_par = joint_probabilities(dp) if kernel == "gaussian" else student_t_probabilities(dp, 20.0)
        rev = kl_divergence(p_batch, q_par)  # (6,)
        assert torch.isfinite(rev).all() and torch.all(rev >= 0), (pname, rev)
    # a few single (unbatched) calls take the python-float path
    for child in (children["all_zero"], children["huge"], children["single_active_unit"]):
        loss = tsne_similarity_loss(children["duplicate_rows"], child, kernel=kernel)
        assert isinstance(loss, float) and math.isfinite(loss) and loss >= 0.0


def test_all_zero_embeddings_give_uniform_p():
    p = joint_probabilities(squared_distances(torch.zeros(50, 7)))
    off = ~torch.eye(50, dtype=torch.bool)
    torch.testing.assert_close(p[off], torch.full((50 * 49,), 1.0 / (50 * 49), dtype=torch.float64))
    assert tsne_similarity_loss(torch.zeros(50, 7), torch.zeros(50, 3)) == 0.0


@pytest.mark.parametrize("b", [1, 2, 3, 10])
def test_small_batches(b):
    g = torch.Generator().manual_seed(13)
    parent = torch.randn(b, 6, generator=g)
    children = torch.randn(4, b, 3, generator=g)
    for kernel in ("gaussian", "student_t"):
        losses = tsne_similarity_loss(parent, children, kernel=kernel)
        assert losses.shape == (4,) and torch.isfinite(losses).all() and torch.all(losses >= 0)
    if b >= 2:  # perplexity 30 unreachable: sklearn ends at (nearly) uniform conditionals
        d = squared_distances(parent).numpy()
        np.testing.assert_allclose(joint_probabilities(torch.tensor(d)).numpy(), sk_joint(f32(d)), rtol=1e-6, atol=1e-12)


def _unit_subset_children(n: int, keep: float):
    """A ReLU parent (100 points, 64 units) and ``n`` children keeping random subsets of
    its units: their squared distances (100, 100) and (n, 100, 100), the parent's
    log-precisions (100,) and the children's warm start as the evaluator makes it (the
    parent's, rescaled by the mean distances) (n, 100)."""
    g = torch.Generator().manual_seed(8)
    parent = torch.relu(torch.randn(100, 64, generator=g))
    children = parent[None] * (torch.rand(n, 1, 64, generator=g) < keep)  # (n, 100, 64)
    dp, dc = squared_distances(parent), squared_distances(children)
    _, log_beta = joint_probabilities(dp, 30.0, return_log_beta=True)
    warm = log_beta + torch.log(dp.sum(-1) / 99) - torch.log(dc.sum(-1) / 99)  # (n, 100)
    return dp, dc, log_beta, warm


def test_warm_start_changes_the_iterations_not_the_solution():
    dp, dc, log_beta, warm = _unit_subset_children(6, 0.5)
    assert log_beta.shape == (100,) and bool(torch.isfinite(log_beta).all())
    off = _offdiag(dc).reshape(-1, 99)
    cold_p, cold_n, _ = _conditional_probabilities(off, 30.0)
    warm_p, warm_n, _ = _conditional_probabilities(off, 30.0, t_init=warm.reshape(-1))
    torch.testing.assert_close(warm_p, cold_p, rtol=0, atol=1e-8)
    assert warm_n.double().mean() < cold_n.double().mean()
    torch.testing.assert_close(joint_probabilities(dc, 30.0, warm), joint_probabilities(dc, 30.0), rtol=0, atol=1e-10)
    # non-finite starts fall back to the default guess
    nan_start = torch.full((6, 100), float("nan"), dtype=torch.float64)
    torch.testing.assert_close(joint_probabilities(dc, 30.0, nan_start), joint_probabilities(dc, 30.0))


def test_settled_rows_are_written_after_one_more_unevaluated_newton_step(search_path):
    # the polish: a row is written one Newton step past the evaluation that found it within
    # tol, so float32 rows land far inside tol (1e-5) and agree with the float64 search
    _, dc, _, warm = _unit_subset_children(40, 0.6)
    warm = warm.reshape(-1)
    off = _offdiag(dc).reshape(-1, 99)
    p32, n32, _ = _conditional_probabilities(off.float(), 30.0, t_init=warm)
    p64, _, _ = _conditional_probabilities(off, 30.0, t_init=warm)
    assert bool((n32 > 0).all())
    ent = -(p32.double() * torch.log(p32.double().clamp_min(1e-300))).sum(1)
    assert float((ent - math.log(30.0)).abs().max()) < 2e-6  # without the polish: ~1e-5
    assert float(((p32.double() - p64) / p64).abs().max()) < 3e-5  # without: ~1.2e-4
    torch.testing.assert_close(p32.double().sum(1), torch.ones(len(p32), dtype=torch.float64), rtol=0, atol=3e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_arithmetic_in_torch_matches_numpy(dtype, monkeypatch):
    # CPU tensors do the per-row arithmetic in numpy, GPU ones in torch: the same search
    from ecomp_deap.fitness.similarity import native, perplexity

    g = torch.Generator().manual_seed(21)
    x = torch.relu(torch.randn(30, 100, 40, generator=g) - 0.3)
    x[3, :50] = x[3, 50:]  # duplicated points: tied rows
    d = squared_distances(x, dtype)
    warm = torch.randn(30, 100, generator=g, dtype=torch.float64) * 0.2 + 1.0
    warm[5] = math.nan  # cold-started rows
    monkeypatch.setattr(native, "USE", False)  # the C kernel has its own test (test_native.py)
    results = []
    for on in (True, False):
        monkeypatch.setattr(perplexity, "_NUMPY_ON_CPU", on)
        results.append(joint_probabilities(d, 30.0, warm, return_log_beta=True, dtype=dtype, symmetric=True))
    (p_np, t_np), (p_t, t_t) = results
    tol = 1e-5 if dtype == torch.float32 else 1e-12  # float32: numpy's and torch's exp and log differ in ulps
    torch.testing.assert_close(p_t, p_np, rtol=tol, atol=1e-12)
    torch.testing.assert_close(t_t, t_np, rtol=tol, atol=tol, equal_nan=True)


# --------------------------------------------------------------------------- #
# float32 (the evaluator's default precision for the children)
# --------------------------------------------------------------------------- #
F32_RTOL = 1e-4  # issue #13: relative error of the loss against the oracle


@pytest.fixture(params=["native", "numpy"])
def search_path(request, monkeypatch):
    """A float32 CPU search through the C kernel (ecomp_deap.fitness.similarity.native), then through the
    numpy Newton phase it replaces (the path without a compiler)."""
    from ecomp_deap.fitness.similarity import native

    if request.param == "native" and native.for_tensor(torch.zeros(1)) is None:
        pytest.skip("the C kernel is not available here (no C compiler)")
    monkeypatch.setattr(native, "USE", request.param == "native")
    return request.param


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,h", [(20, 5), (100, 64)])
def test_float32_loss_matches_sklearn_reference(kind, b, h, search_path):
    rng = np.random.default_rng(_seed(kind, b, h, "loss"))
    parent = make_data(kind, b, rng)
    child = parent @ rng.normal(size=(parent.shape[1], h)) / math.sqrt(h) + rng.normal(size=(b, h)) * 0.3
    parent = f32(parent).astype(np.float32)
    child = child.astype(np.float32)
    perplexity = 10.0 if b == 20 else 30.0
    got = tsne_similarity_loss(torch.tensor(parent), torch.tensor(child), perplexity=perplexity, dtype=torch.float32)
    ref = sk_loss(parent.astype(np.float64), child.astype(np.float64), perplexity=perplexity)
    assert got == pytest.approx(ref, rel=F32_RTOL)


def _oracle_children(b: int, g: torch.Generator) -> dict:
    """Degenerate children whose float32-cast distances scikit-learn can still take."""
    return {
        **_degenerate_children(b, g),
        "large_scale": torch.relu(torch.randn(b, 32, generator=g)) * 1e8,
        "small_scale": torch.relu(torch.randn(b, 32, generator=g)) * 1e-8,
        "near_duplicates": torch.randn(b // 4, 16, generator=g).repeat(4, 1) + 1e-3 * torch.randn(b, 16, generator=g),
    }


@pytest.mark.parametrize("parent_kind", ["random", "relu"])
def test_float32_loss_on_degenerate_children_matches_sklearn(parent_kind, search_path):
    g = torch.Generator().manual_seed(13)
    b = 100
    parent = torch.randn(b, 20, generator=g)
    if parent_kind == "relu":
        parent = torch.relu(parent)
    for name, child in _oracle_children(b, g).items():
        got = tsne_similarity_loss(parent, child, dtype=torch.float32)
        ref = sk_loss(parent.double().numpy(), child.double().numpy())
        assert got == pytest.approx(ref, rel=F32_RTOL), name


def test_float32_survives_scales_beyond_its_range(search_path):
    """Activations whose squares overflow (1e30) or underflow (1e-30) float32: the
    rescaled float32 loss equals the float64 one (sklearn's float32 cast cannot take
    these), and a batch mixing them with ordinary children is unaffected."""
    g = torch.Generator().manual_seed(14)
    parent = torch.randn(100, 20, generator=g)
    base = torch.relu(torch.randn(100, 24, generator=g)).double()
    children = torch.stack([base * 1e30, base * 1e-30, base, torch.zeros_like(base)])  # (4, B, 24) float64
    f64 = tsne_similarity_loss(parent, children)
    f32 = tsne_similarity_loss(parent, children, dtype=torch.float32)
    assert torch.isfinite(f32).all()
    torch.testing.assert_close(f32, f64, rtol=F32_RTOL, atol=0)
    torch.testing.assert_close(f32[0], f32[2], rtol=F32_RTOL, atol=0)  # the scale does not matter


def test_float32_search_falls_back_to_float64_for_rows_it_cannot_solve(search_path):
    """Rows whose float32 search runs out of steps are solved again in float64."""
    g = torch.Generator().manual_seed(15)
    d = squared_distances(torch.randn(60, 10, generator=g))
    p64 = joint_probabilities(d)
    p32 = joint_probabilities(d, dtype=torch.float32)
    off = ~torch.eye(60, dtype=torch.bool)
    assert p32.dtype == torch.float32
    rel32 = ((p32.double() - p64).abs() / p64)[off].max()
    assert 1e-6 < rel32 < 1e-4  # float32's own search: to its entropy tolerance
    from ecomp_deap.fitness.similarity import perplexity

    original = perplexity._MAX_ITER
    try:  # every float32 row now counts as out of steps: all of them take the float64 path
        perplexity._MAX_ITER = 1
        p_fallback = joint_probabilities(d, dtype=torch.float32)
    finally:
        perplexity._MAX_ITER = original
    assert p_fallback.dtype == torch.float32
    assert ((p_fallback.double() - p64).abs() / p64)[off].max() < 1e-6  # the float64 solution, rounded


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_entropy_plateau_does_not_overflow_the_search(dtype, search_path):
    """A unique nearest neighbour before many near-ties: H(beta) has a plateau (slope
    ~0) where an unguarded Newton step sent log(beta) to 1e29 and the row to NaN."""
    d = torch.tensor([[1.46e-7] + [1.28e-4] * 20 + [1.0] * 28], dtype=dtype)
    p, n_iter, t = _conditional_probabilities(d, 5.0)
    assert torch.isfinite(p).all() and int(n_iter[0]) < 100
    p = p.double()
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    assert float(entropy) == pytest.approx(math.log(5.0), abs=1e-4)
    # the same rows inside a batch of distances (as the evaluator sees them)
    x = torch.cat([torch.zeros(1, 3), torch.full((1, 3), 2e-4), torch.randn(20, 3) * 1e-3 + 0.01,
                   torch.randn(28, 3) + 5.0]).to(dtype)
    assert torch.isfinite(joint_probabilities(squared_distances(x, dtype), 5.0, dtype=dtype)).all()


@pytest.mark.parametrize("kernel,dtype", [("gaussian", torch.float64), ("gaussian", torch.float32),
                                          ("student_t", torch.float64)])
def test_the_loss_in_small_blocks_equals_it_in_one(kernel, dtype, monkeypatch):
    """similarity_from_distances works through blocks of matrices (views of broadcast
    parents where it can, gathered copies where it cannot): any block size gives the
    one-block losses, for the evaluator's layouts (a parent per batch against
    (individuals, batches) children; one parent against many) and odd broadcasts."""
    from ecomp_deap.fitness.similarity import loss, parent_entropy_term, similarity_from_distances

    g = torch.Generator().manual_seed(21)
    B = 12
    parents = torch.relu(torch.randn(5, B, 7, generator=g))  # 5 batches
    children = parents[None] * (torch.rand(4, 1, 1, 7, generator=g) < 0.6)  # (4 individuals, 5 batches, B, 7)
    pp = joint_probabilities(squared_distances(parents), 5.0)  # (5, B, B)
    dc = squared_distances(children, dtype, rescale=dtype == torch.float32)  # (4, 5, B, B)
    # float32: a row's search may settle one step apart when its piece has another width
    # (the reductions' last bits): the losses then agree to the search's tolerance
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    warm = torch.randn(4, 5, B, generator=g)
    dof = torch.arange(1.0, 5.0)[:, None]  # (4, 1) broadcast over the batches
    cases = [(pp, dc, warm, parent_entropy_term(pp)),  # per-batch parents
             (pp[0], dc[:, 0], warm[:, 0], None),  # one parent, own term
             (pp[:, None].expand(5, 4, B, B).transpose(0, 1)[:, :3], dc[:, :3], None, None),  # a strided parent
             (pp[None, :3], dc[:2, :3], warm[:1, :3], parent_entropy_term(pp[:3]))]  # broadcast warm start
    for p, d, w, term in cases:
        kw = dict(kernel=kernel, dof=dof[:d.shape[0]] if d.dim() == 4 else dof[:d.shape[0], 0],
                  log_beta_init=w, parent_term=term)
        monkeypatch.setattr(loss, "_BLOCK_ELEMENTS", 2**30)
        whole = similarity_from_distances(p, d, 5.0, **kw)
        for elements in (1, B * B, 3 * B * B, 7 * B * B):
            monkeypatch.setattr(loss, "_BLOCK_ELEMENTS", elements)
            torch.testing.assert_close(similarity_from_distances(p, d, 5.0, **kw), whole, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrices_read_by_columns_in_any_pieces_match_the_row_search(dtype, monkeypatch):
    """The search on distance matrices (columns as rows, each column's own entry left
    out) in whole-matrix pieces, pieces of several matrices and column ranges of one
    matrix, equals the search on the off-diagonal rows, tied rows (closed form, NaN
    log(beta)) included."""
    from ecomp_deap.fitness.similarity import loss, native, perplexity

    monkeypatch.setattr(native, "USE", False)  # the column search (the C kernel reads rows)
    g = torch.Generator().manual_seed(23)
    x = torch.randn(3, 70, 4, generator=g).to(dtype)
    x[0, :40] = 0.0  # 40 coincident points: rows whose 39 nearest neighbours tie
    x[1, 35:] = x[1, :35]  # duplicated points
    d = squared_distances(x, dtype)  # (3, 70, 70), exactly symmetric
    cond, _, t_rows = _conditional_probabilities(_offdiag(d).reshape(-1, 69), 30.0)
    full = loss._from_offdiag(cond.reshape(3, 70, 69))
    ref = full + full.transpose(1, 2)
    ref = (ref / ref.sum(dim=(1, 2), keepdim=True)).clamp_min(perplexity.EPS)
    ref.diagonal(dim1=1, dim2=2).zero_()
    tol = dict(rtol=1e-9, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-9)
    for elements in (2**30, 2 * 70 * 70, 7 * 70, 1):  # one piece, 2 matrices, 7 columns, 1 column
        monkeypatch.setattr(perplexity, "_SEARCH_ELEMENTS", elements)
        p, t = joint_probabilities(d, 30.0, return_log_beta=True, dtype=dtype, symmetric=True)
        torch.testing.assert_close(p, ref.to(dtype), **tol)
        assert torch.equal(torch.isnan(t), torch.isnan(t_rows.reshape(3, 70)))
        assert bool(torch.isnan(t[0, :40]).all())
        torch.testing.assert_close(t, t_rows.reshape(3, 70), equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_of_tied_neighbours_are_solved_in_closed_form_after_the_newton_phase(dtype, search_path):
    """A row whose nearest neighbours tie (at least perplexity of them) has no finite
    beta: the plain Newton steps cannot settle it, and it ends uniform over its ties
    (no evaluations counted, log(beta) NaN); its neighbours in the same piece are
    searched as usual."""
    g = torch.Generator().manual_seed(22)
    x = torch.cat([torch.zeros(40, 4), torch.randn(30, 4, generator=g) + 3.0]).to(dtype)
    d = _offdiag(squared_distances(x, dtype)).reshape(-1, 69)
    p, n_iter, t = _conditional_probabilities(d, 30.0)
    tied = torch.arange(70) < 40
    torch.testing.assert_close(p[tied], torch.cat([torch.full((40, 39), 1 / 39), torch.zeros(40, 30)], 1).to(dtype))
    assert bool((n_iter[tied] == 0).all()) and bool(torch.isnan(t[tied]).all())
    assert bool((n_iter[~tied] > 0).all()) and bool(torch.isfinite(t[~tied]).all())
    p64 = p[~tied].double()
    entropy = -(p64 * torch.log(p64.clamp_min(1e-300))).sum(1)
    assert torch.all((entropy - math.log(30.0)).abs() < (1e-8 if dtype == torch.float64 else 1e-4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e30])
def test_squared_distances_into_out_equal_the_returned_ones(dtype, scale):
    """``out=`` writes exactly the distances that are otherwise returned (also those of a
    matrix rescaled into float32's range), and the input is not modified."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(4, 2, 9, 6, generator=g) * scale).transpose(-1, -2).contiguous().transpose(-1, -2)
    x[0, 1] *= 1e-30  # one matrix with tiny entries
    x0 = x.clone()
    want = squared_distances(x, dtype, rescale=dtype == torch.float32, symmetric=dtype == torch.float64)
    out = torch.full((4, 2, 9, 9), float("nan"), dtype=dtype)
    got = squared_distances(x, dtype, rescale=dtype == torch.float32, symmetric=dtype == torch.float64, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out, want) and torch.equal(x, x0)

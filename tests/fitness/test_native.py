"""The float32 similarity's C kernels (ecomp_deap.fitness.similarity.native, csrc/similarity.c): built where a
C compiler is, the same search as the numpy Newton phase it replaces, and a clean
fallback where it cannot be built."""
import math
import shutil
import warnings

import pytest
import torch

from ecomp_deap.fitness.similarity import distances, joint_probabilities, loss, native, perplexity, squared_distances
from ecomp_deap.fitness.similarity.loss import _offdiag
from ecomp_deap.fitness.similarity.perplexity import _conditional_probabilities

HAVE_CC = shutil.which(native.compiler()[0]) is not None
needs_kernel = pytest.mark.skipif(not HAVE_CC, reason="no C compiler here")


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """The kernel loaded again, from an empty build folder; forgotten afterwards."""
    monkeypatch.setenv("ECOMP_DEAP_NATIVE_DIR", str(tmp_path / "native"))
    native.reset()
    yield tmp_path / "native"
    native.reset()


@needs_kernel
def test_the_kernel_builds_where_there_is_a_compiler(fresh_kernel):
    assert native.kernels() is not None
    assert native.library_path().parent == fresh_kernel and native.library_path().exists()
    assert [p.name for p in fresh_kernel.iterdir()] == [native.library_path().name]  # no temporary left
    assert native.for_tensor(torch.zeros(3)) is not None  # float32 on the CPU takes it
    assert native.for_tensor(torch.zeros(3, dtype=torch.float64)) is None


def test_without_a_compiler_the_search_warns_once_and_runs_in_numpy(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    native.reset()
    with pytest.warns(RuntimeWarning, match="C similarity kernels are not available"):
        assert native.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels() is None  # once per process
        d = squared_distances(torch.randn(30, 5, generator=torch.Generator().manual_seed(1)))
        p = joint_probabilities(d, 10.0, dtype=torch.float32)
    monkeypatch.setattr(native, "USE", False)
    assert torch.equal(p, joint_probabilities(d, 10.0, dtype=torch.float32))


def test_a_failing_compiler_is_reported_not_raised(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1: as a compile error would
    native.reset()
    with pytest.warns(RuntimeWarning, match="compiling similarity.c failed: false: exit status 1"):
        assert native.kernels() is None
    assert not native.library_path().exists()


def test_ecomp_deap_native_0_switches_it_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("ECOMP_DEAP_NATIVE", "0")
    native.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels() is None
    assert not fresh_kernel.exists()  # nothing built


# --------------------------------------------------------------------------- #
# the same search as the numpy Newton phase


def _search(monkeypatch, use_native: bool, fn, *args, **kwargs):
    monkeypatch.setattr(native, "USE", use_native)
    return fn(*args, **kwargs)


def _cases():
    g = torch.Generator().manual_seed(31)
    relu = torch.relu(torch.randn(6, 100, 40, generator=g) - 0.3)
    relu[1, :50] = relu[1, 50:]  # duplicated points
    relu[2] = 0.0  # all-zero embeddings: uniform rows
    relu[3, :, 1:] = 0.0  # one active unit: many tied distances
    relu[4] *= 1e15  # large and small scales (float32 oracle tests: the extremes)
    relu[5] *= 1e-3
    odd = torch.randn(4, 37, 3, generator=g)  # a width that is not a whole number of vectors
    odd[0, :20] = 0.0  # 20 coincident points: their 19 nearest neighbours tie
    return {"relu": (relu, 30.0), "odd": (odd, 5.0), "two": (torch.randn(3, 2, 4, generator=g), 1.5),
            "tiny": (torch.randn(2, 3, 4, generator=g), 30.0)}


@needs_kernel
@pytest.mark.parametrize("case", ["relu", "odd", "two", "tiny"])
@pytest.mark.parametrize("warm", [False, True])
def test_the_kernel_finds_the_rows_the_numpy_search_finds(case, warm, monkeypatch):
    x, perplexity = _cases()[case]
    d = squared_distances(x, torch.float32, rescale=True)  # (g, B, B), as the evaluator computes them
    B = d.shape[-1]
    t_init = None
    if warm:  # the evaluator's warm start: near the solution, NaN for some rows
        _, t64 = joint_probabilities(d.double(), perplexity, return_log_beta=True)
        t_init = t64 + 0.3 * torch.randn(t64.shape, generator=torch.Generator().manual_seed(2), dtype=t64.dtype)
        t_init[0, :2] = math.nan
    got = _search(monkeypatch, True, joint_probabilities, d, perplexity, t_init, return_log_beta=True,
                  dtype=torch.float32)
    ref = _search(monkeypatch, False, joint_probabilities, d, perplexity, t_init, return_log_beta=True,
                  dtype=torch.float32)
    p64 = joint_probabilities(d.double(), perplexity)
    for (p, t), name in ((got, "kernel"), (ref, "numpy")):
        assert torch.isfinite(p).all(), name
        # both to float32's entropy tolerance of the float64 search
        torch.testing.assert_close(p.double(), p64, rtol=1e-4, atol=1e-12, msg=name)
    assert torch.equal(torch.isnan(got[1]), torch.isnan(ref[1]))  # the same rows in closed form
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4, equal_nan=True)
    # rows (no own entry) with a small step budget: the bracketed search takes the rest
    rows = _offdiag(d).reshape(-1, B - 1)
    for max_iter in (1, 3, 100):
        (pn, nn, tn), (pr, nr, tr) = (_search(monkeypatch, use, _conditional_probabilities, rows, perplexity,
                                              max_iter=max_iter) for use in (True, False))
        assert torch.isfinite(pn).all() and torch.isfinite(tn[nn > 0]).all()
        # (the numpy phase's float32 beta^2 overflows where every distance is 0: NaN rows with a budget of
        # 2 to 7 steps, below the 100 any caller uses; the kernel's per-row arithmetic is float64)
        ok = torch.isfinite(pr).all(1)
        assert ok.float().mean() > 0.8
        torch.testing.assert_close(pn[ok], pr[ok], rtol=1e-3 if max_iter < 100 else 1e-4, atol=1e-7)
        assert torch.equal((nn == 0)[ok], (nr == 0)[ok])  # closed-form rows
        # evaluations: rows near the tolerance may settle a step apart (the kernel's step arithmetic is float64)
        assert abs(nn[ok].double().mean() - nr[ok].double().mean()) < 0.5
        assert int(nn.max()) <= max_iter


@needs_kernel
def test_row_ranges_on_threads_give_the_same_bits(monkeypatch):
    g = torch.Generator().manual_seed(33)
    d = squared_distances(torch.relu(torch.randn(40, 50, 20, generator=g)), torch.float32)
    one = joint_probabilities(d, 10.0, return_log_beta=True, dtype=torch.float32)
    threads = torch.get_num_threads()
    monkeypatch.setattr(perplexity, "_NATIVE_MIN_ROWS", 7)
    try:
        torch.set_num_threads(3)
        split = joint_probabilities(d, 10.0, return_log_beta=True, dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], split[0]) and torch.equal(one[1], split[1])


@needs_kernel
def test_a_nan_distance_breaks_only_its_own_matrix(monkeypatch):
    g = torch.Generator().manual_seed(34)
    d = squared_distances(torch.randn(3, 20, 4, generator=g), torch.float32)
    d[1, 4, 7] = math.nan
    for use in (True, False):
        p = _search(monkeypatch, use, joint_probabilities, d, 5.0, dtype=torch.float32)
        assert not torch.isfinite(p[1]).all()
        assert torch.isfinite(p[[0, 2]]).all()


@needs_kernel
def test_the_search_says_which_rows_it_wrote_finite():
    """The kernel flags the rows it wrote (done 1: finite, 2: not); the rows it leaves to
    the bracketed search are checked there. _conditionals reads these flags instead of
    summing every row of the result."""
    g = torch.Generator().manual_seed(36)
    d = squared_distances(torch.randn(3, 20, 4, generator=g), torch.float32).reshape(-1, 20)  # (60, 20)
    d[25, 7] = math.nan  # row 5 of matrix 1
    d[47, 3] = math.inf  # row 7 of matrix 2: its search breaks down (NaN) too
    lib = native.kernels()
    for max_iter in (3, 100):  # 3: the kernel writes every row at its last step; 100: the rest goes to Python
        p, _, _, finite = perplexity._conditional_rows_native(lib.newton_rows, d, 20, 5.0, max_iter=max_iter)
        assert torch.equal(finite, torch.isfinite(p.sum(dim=1)))
        assert (~finite).nonzero().flatten().tolist() == [25, 47]


@needs_kernel
@pytest.mark.parametrize("shape", [(7, 100, 130), (3, 13, 5), (2, 1, 4), (2, 2, 3), (4, 33, 700)])
def test_the_distance_kernel_gives_the_torch_passes_bits(shape, monkeypatch):
    g = torch.Generator().manual_seed(37)
    x = torch.relu(torch.randn(*shape, generator=g)) * 3
    if shape[1] > 2:
        x[0, 1] = x[0, 2]  # duplicate rows: exactly 0 apart
        x[0, 3:] = x[0, 3:4] + 1e-6 * x[0, 3:]  # near duplicates: the Gram formula rounds below 0, clamped
        x[1, :, 1:] = 0.0  # one active feature: ties
        xc = x[0] - x[0].mean(0)
        gram, sq = xc @ xc.T, (xc @ xc.T).diagonal()
        assert bool(((sq[:, None] - 2 * gram + sq[None]) < 0).any())  # the case reaches the clamp
    x[-1] *= 1e25  # squared norms beyond float32's safe range: rescaled
    bits = {}
    for use in (True, False):
        monkeypatch.setattr(native, "USE", use)
        out = torch.full((*shape[:2], shape[1]), -1.0)
        d = squared_distances(x, torch.float32, rescale=True, symmetric=False, out=out)
        assert d.data_ptr() == out.data_ptr()  # written in place
        bits[use] = d.view(torch.int32)  # bit patterns: the signs of zeros too
    assert torch.equal(bits[True], bits[False])
    y = x.clone()
    y[0, 0, 0] = math.nan  # NaN stays NaN, in the rows and columns it reaches
    y[-1, 0, 0] = math.inf
    res = {}
    for use in (True, False):
        monkeypatch.setattr(native, "USE", use)
        gram = torch.bmm(y, y.transpose(1, 2))
        res[use] = distances.distances_from_gram(gram, symmetric=False)
    assert torch.equal(res[True].isnan(), res[False].isnan())
    assert torch.equal(torch.nan_to_num(res[True], nan=-1.0), torch.nan_to_num(res[False], nan=-1.0))


@needs_kernel
def test_a_start_per_row_is_checked_before_the_kernel_reads_it():
    rows = torch.rand(5, 9)
    with pytest.raises(ValueError, match="t_init has shape"):
        _conditional_probabilities(rows, 3.0, t_init=torch.zeros(4))


# --------------------------------------------------------------------------- #
# the KL kernel: the child's joint Q from its conditionals, KL(P || Q)


def _kl_case(g_: int, B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    parent = torch.relu(torch.randn(B, 12, generator=g))
    pp = joint_probabilities(squared_distances(parent), 5.0)  # (B, B) float64
    children = parent[None] * (torch.rand(g_, 1, 12, generator=g) < 0.7)  # (g, B, 12)
    d = squared_distances(children, torch.float32, rescale=True)
    return pp, d


@needs_kernel
@pytest.mark.parametrize("B", [2, 3, 13, 100])
def test_the_kl_kernel_gives_the_torch_loss(B, monkeypatch):
    from ecomp_deap.fitness.similarity import parent_entropy_term, similarity_from_distances

    pp, d = _kl_case(9, B, B)
    term = parent_entropy_term(pp)
    kernel = _search(monkeypatch, True, similarity_from_distances, pp, d, 5.0 if B > 6 else 1.5, parent_term=term)
    monkeypatch.setattr(native, "USE", True)
    cond, _ = perplexity._conditionals(d, 5.0 if B > 6 else 1.5, None, torch.float32, True)
    q = cond.double() + cond.double().transpose(1, 2)  # Q in float64, as the kernel builds it
    q = (q / q.sum(dim=(1, 2), keepdim=True)).clamp_min(perplexity.EPS)
    q.diagonal(dim1=1, dim2=2).zero_()
    torch_kl = loss._kl_from_floored_q(pp, q, term)  # the same conditionals, the torch KL
    torch.testing.assert_close(kernel, torch_kl, rtol=1e-9, atol=1e-12)
    assert bool((kernel >= 0).all())
    # one broadcast parent (stride 0) and per-matrix copies of it give the same bits
    copies = loss._kl_native(native.kernels().kl, cond, pp.expand(9, B, B).contiguous(), term)
    broadcast = loss._kl_native(native.kernels().kl, cond, pp.expand(9, B, B), term)
    assert torch.equal(copies, broadcast)


@needs_kernel
def test_the_kl_kernel_gives_zero_for_the_parent_itself_and_nan_for_nan(monkeypatch):
    monkeypatch.setattr(native, "USE", True)
    pp, d = _kl_case(4, 20, 5)
    cond, _ = perplexity._conditionals(d, 5.0, None, torch.float32, True)
    q = cond.double() + cond.double().transpose(1, 2)
    q = (q / q.sum(dim=(1, 2), keepdim=True)).clamp_min(perplexity.EPS)
    q.diagonal(dim1=1, dim2=2).zero_()
    from ecomp_deap.fitness.similarity import parent_entropy_term

    own = loss._kl_native(native.kernels().kl, cond, q, parent_entropy_term(q))  # P = Q: the loss is 0
    assert float(own.abs().max()) < 1e-6
    cond[2, 3, 4] = math.nan
    out = loss._kl_native(native.kernels().kl, cond, pp.expand(4, 20, 20), parent_entropy_term(pp).expand(4))
    assert bool(torch.isnan(out[2])) and bool(torch.isfinite(out[[0, 1, 3]]).all())


@needs_kernel
def test_a_library_others_could_have_written_is_not_loaded(fresh_kernel):
    assert native.kernels() is not None  # built, private
    native.reset()
    native.library_path().chmod(0o666)  # as if planted in a shared folder
    with pytest.warns(RuntimeWarning, match="not private to this user"):
        assert native.kernels() is None

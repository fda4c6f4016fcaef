"""The perplexity search's C kernel (ecomp_deap.native, csrc/perplexity.c): built where a
C compiler is, the same search as the numpy Newton phase it replaces, and a clean
fallback where it cannot be built."""
import math
import shutil
import warnings

import pytest
import torch

import ecomp_deap.similarity as sim
from ecomp_deap import native
from ecomp_deap.similarity import _conditional_probabilities, _offdiag, joint_probabilities, squared_distances

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
    assert native.newton_rows() is not None
    assert native.library_path().parent == fresh_kernel and native.library_path().exists()
    assert [p.name for p in fresh_kernel.iterdir()] == [native.library_path().name]  # no temporary left
    assert sim._native_kernel(torch.zeros(3)) is not None  # float32 on the CPU takes it
    assert sim._native_kernel(torch.zeros(3, dtype=torch.float64)) is None


def test_without_a_compiler_the_search_warns_once_and_runs_in_numpy(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    native.reset()
    with pytest.warns(RuntimeWarning, match="C perplexity kernel is not available"):
        assert native.newton_rows() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.newton_rows() is None  # once per process
        d = squared_distances(torch.randn(30, 5, generator=torch.Generator().manual_seed(1)))
        p = joint_probabilities(d, 10.0, dtype=torch.float32)
    monkeypatch.setattr(sim, "_NATIVE", False)
    assert torch.equal(p, joint_probabilities(d, 10.0, dtype=torch.float32))


def test_a_failing_compiler_is_reported_not_raised(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1: as a compile error would
    native.reset()
    with pytest.warns(RuntimeWarning, match="compiling perplexity.c failed"):
        assert native.newton_rows() is None
    assert not native.library_path().exists()


def test_ecomp_deap_native_0_switches_it_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("ECOMP_DEAP_NATIVE", "0")
    native.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.newton_rows() is None
    assert not fresh_kernel.exists()  # nothing built


# --------------------------------------------------------------------------- #
# the same search as the numpy Newton phase


def _search(monkeypatch, use_native: bool, fn, *args, **kwargs):
    monkeypatch.setattr(sim, "_NATIVE", use_native)
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
    monkeypatch.setattr(sim, "_NATIVE_MIN_ROWS", 7)
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
def test_a_start_per_row_is_checked_before_the_kernel_reads_it():
    rows = torch.rand(5, 9)
    with pytest.raises(ValueError, match="t_init has shape"):
        _conditional_probabilities(rows, 3.0, t_init=torch.zeros(4))

"""Shared fixtures: a tiny synthetic problem (fast, no dataset needed) and the real
FashionMNIST (skipped with a reason when absent; CI installs it)."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ecomp_deap.nets.parents import ParentSpec, train_parent

REPO = Path(__file__).resolve().parents[1]
# The scripts the tests start (experiments/, benchmarks/, plots/) import this checkout's
# package, not whichever checkout an editable install of a shared virtualenv points at.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


@dataclass
class TinyData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: str = "tiny"


def make_tiny_data(n_train=1200, n_test=300, features=20, classes=4, seed=0) -> TinyData:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 2.0

    def draw(n):
        y = torch.arange(n) % classes
        x = centers[y] + torch.randn(n, features, generator=g)
        return x, y

    (xt, yt), (xs, ys) = draw(n_train), draw(n_test)
    return TinyData(xt, yt, xs, ys)


@pytest.fixture(scope="session")
def tiny_data() -> TinyData:
    return make_tiny_data()


@pytest.fixture(scope="session")
def tiny_parent(tiny_data):
    spec = ParentSpec(hidden=(16, 12), in_features=20, n_classes=4, epochs=3, batch_size=50, seed=0)
    return train_parent(spec, tiny_data.train_x, tiny_data.train_y, progress=False)


def _real_data_root() -> Path | None:
    from ecomp_deap.data import DEBIAN_DIR, RAW_FILES, raw_dir, resolve_data_root

    root = resolve_data_root(None)
    if all((raw_dir(root) / n).exists() for n in RAW_FILES) or DEBIAN_DIR.exists():
        return root
    return None


@pytest.fixture(scope="session")
def fashion():
    """The real FashionMNIST in memory (provisioned from the Debian package if needed)."""
    root = _real_data_root()
    if root is None:
        pytest.skip("FashionMNIST not available (apt-get install dataset-fashion-mnist, or set ECOMP_DATA_DIR)")
    from ecomp_deap.data import load_fashion_mnist

    return load_fashion_mnist(root, allow_download=False)


@pytest.fixture(scope="session")
def fashion_parent(fashion, tmp_path_factory):
    """A small FashionMNIST parent (784-32-32-10, 1 epoch): fast to train, same names as the reference."""
    from ecomp_deap.nets.parents import load_or_train_parent

    cache = Path(os.environ.get("ECOMP_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    return load_or_train_parent(ParentSpec(hidden=(32, 32), epochs=1), fashion, cache, progress=False, log=lambda s: None)


def stop_processes(procs) -> None:
    """Terminate started servers (the last started first), killing any that hang."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, fashion):
    return tmp_path_factory.mktemp("parent-cache")

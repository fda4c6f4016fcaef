import gzip

import pytest
import torch

from ecomp_deap import data as D
from ecomp_deap.errors import DataError


def test_real_data_shapes_dtype_and_range(fashion):
    assert fashion.train_x.shape == (60000, 1, 28, 28) and fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_x.dtype == torch.float32 and fashion.train_y.dtype == torch.int64
    assert float(fashion.train_x.min()) == 0.0 and float(fashion.train_x.max()) == 1.0
    assert set(fashion.train_y.unique().tolist()) == set(range(10))


def test_subset_is_class_balanced_and_disjoint_from_validation(fashion):
    s = D.make_splits(fashion.train_y, 10000, 5000, seed=3)
    assert len(s.subset) == 10000 and len(s.validation) == 5000
    assert torch.bincount(fashion.train_y[s.subset], minlength=10).tolist() == [1000] * 10
    assert torch.bincount(fashion.train_y[s.validation], minlength=10).tolist() == [500] * 10
    assert len(set(s.subset.tolist()) | set(s.validation.tolist())) == 15000  # disjoint, no repeats
    again = D.make_splits(fashion.train_y, 10000, 5000, seed=3)
    assert torch.equal(s.subset, again.subset)


def test_batch_stream_covers_the_subset_once_per_epoch(tiny_data):
    s = D.make_splits(tiny_data.train_y, 400, 100, seed=0)
    stream = D.BatchStream(tiny_data.train_x, tiny_data.train_y, s.subset, 50, seed=0)
    assert stream.n_batches == 8
    for epoch in (0, 1):
        seen = torch.cat([stream.order(epoch)[i * 50:(i + 1) * 50] for i in range(8)])
        assert sorted(seen.tolist()) == sorted(s.subset.tolist())
    assert not torch.equal(stream.order(0), stream.order(1))


def _fake_debian_dir(tmp_path, corrupt=None):
    src = tmp_path / "debian"
    src.mkdir()
    for name, (magic, items, item_bytes) in D.RAW_FILES.items():
        header = (magic.to_bytes(4, "big") + items.to_bytes(4, "big")
                  + ((28).to_bytes(4, "big") * 2 if magic == 2051 else b""))
        body = bytes(items * item_bytes)
        if name == corrupt:
            body = body[:-5]
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(header + body)
    return src


def test_provision_from_the_debian_package_layout(tmp_path):
    src = _fake_debian_dir(tmp_path)
    root = tmp_path / "root"
    assert D.provision(root, allow_download=False, debian_dir=src).startswith("debian")
    for name in D.RAW_FILES:
        D.check_raw_file(D.raw_dir(root) / name)
    assert D.provision(root, allow_download=False, debian_dir=src) == "existing"


def test_no_source_gives_one_clear_error_and_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:
        D.provision(root, allow_download=False, debian_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "--data-dir" in msg and "download" in msg and "\n" not in msg
    assert not D.raw_dir(root).exists()


def test_download_cleans_up_after_a_failure(tmp_path, monkeypatch):
    import torchvision.datasets

    class Failing:
        def __init__(self, root, train=True, download=False):
            d = D.raw_dir(root)
            d.mkdir(parents=True, exist_ok=True)
            (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"half")
            raise RuntimeError("Error downloading t10k-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Failing)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="download failed"):
        D.provision(root, allow_download=True, debian_dir=tmp_path / "nowhere")
    assert list(D.raw_dir(root).iterdir()) == []


@pytest.mark.parametrize("what", ["magic", "length"])
def test_corrupt_files_are_named(tmp_path, what):
    src = _fake_debian_dir(tmp_path, corrupt="train-labels-idx1-ubyte" if what == "length" else None)
    root = tmp_path / "root"
    if what == "magic":
        D.provision(root, allow_download=False, debian_dir=src)
        path = D.raw_dir(root) / "t10k-images-idx3-ubyte"
        path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="corrupt FashionMNIST file") as e:
        D.provision(root, allow_download=False, debian_dir=src)
    assert ("magic number" in str(e.value)) == (what == "magic")


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ECOMP_DATA_DIR", str(tmp_path / "env"))
    assert D.resolve_data_root(None) == tmp_path / "env"
    assert D.resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("ECOMP_DATA_DIR")
    assert D.resolve_data_root(None).name == "data"


def test_balanced_subset_on_unbalanced_labels_is_as_equal_as_possible():
    labels = torch.tensor([0] * 10 + [1] * 100 + [2] * 100)
    idx = D.balanced_indices(labels, 90, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx]).tolist() == [10, 40, 40]
    assert len(set(idx.tolist())) == 90
    with pytest.raises(DataError, match="only 210"):
        D.balanced_indices(labels, 300, torch.Generator())


def test_idx_files_read_as_torchvision_reads_them(tmp_path):
    """Our idx reader (no torchvision import at start-up) gives torchvision's arrays."""
    import numpy as np
    from torchvision.datasets import FashionMNIST

    rng = np.random.default_rng(0)
    src = tmp_path / "debian"
    src.mkdir()
    for name, (magic, items, item_bytes) in D.RAW_FILES.items():
        header = (magic.to_bytes(4, "big") + items.to_bytes(4, "big")
                  + ((28).to_bytes(4, "big") * 2 if magic == 2051 else b""))
        body = rng.integers(0, 256 if item_bytes > 1 else 10, items * item_bytes, dtype=np.uint8).tobytes()
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(header + body)
    root = tmp_path / "root"
    D.provision(root, allow_download=False, debian_dir=src)
    for train, images, labels in ((True, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                  (False, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        tv = FashionMNIST(str(root), train=train, download=False)
        assert torch.equal(D.read_idx(D.raw_dir(root) / images), tv.data)
        assert torch.equal(D.read_idx(D.raw_dir(root) / labels).long(), tv.targets)
    data = D.load_fashion_mnist(root, allow_download=False)
    tv = FashionMNIST(str(root), train=False, download=False)
    assert torch.equal(data.test_x, (tv.data.float() / 255.0).unsqueeze(1)) and data.test_x.shape == (10000, 1, 28, 28)

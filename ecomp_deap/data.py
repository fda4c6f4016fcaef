"""FashionMNIST: where it lives, how it gets there, and the in-memory batch streams.

Provisioning order for a data root ``ROOT`` (``--data-dir``, else ``$ECOMP_DATA_DIR``,
else ``~/.cache/ecomp_deap/data``):

1. the raw files already in ``ROOT/FashionMNIST/raw/``;
2. the Debian/Ubuntu package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``),
   gunzipped into ``ROOT/FashionMNIST/raw/``;
3. torchvision's own download.

The whole dataset is held in memory as float32 tensors in [0, 1] of shape
``(N, 1, 28, 28)`` (the ``ToTensor`` convention). Evolution draws its generations'
batches from a class-balanced training subset; a disjoint class-balanced validation
split is kept for final selection; the test set is used for reporting only.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, DataError
from .files import atomic_write
from .validation import validate_dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = {
    # name: (magic number, items, bytes per item)
    "train-images-idx3-ubyte": (2051, 60000, 28 * 28),
    "train-labels-idx1-ubyte": (2049, 60000, 1),
    "t10k-images-idx3-ubyte": (2051, 10000, 28 * 28),
    "t10k-labels-idx1-ubyte": (2049, 10000, 1),
}
N_CLASSES = 10

HOW_TO_GET_DATA = (
    "FashionMNIST is not available: install the Debian/Ubuntu package "
    "(sudo apt-get install dataset-fashion-mnist), or allow torchvision to download it "
    "(needs internet), or point --data-dir / ECOMP_DATA_DIR at a folder holding "
    "FashionMNIST/raw/ with the four idx files"
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ecomp_deap`` (default ``~/.cache/ecomp_deap``): the default home of
    the data (``data/``) and the trained parents (``parents/``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ecomp_deap"


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root ``ROOT``: ``data_dir``, else ``$ECOMP_DATA_DIR`` (``~`` expanded in
    both), else ``data/`` in :func:`default_cache_dir`."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("ECOMP_DATA_DIR"):
        return Path(os.environ["ECOMP_DATA_DIR"]).expanduser()
    return default_cache_dir() / "data"


def raw_dir(root: Path) -> Path:
    """``root/FashionMNIST/raw``: where the four idx files live."""
    return Path(root) / "FashionMNIST" / "raw"


def _header_bytes(magic: int) -> int:
    """An idx file's header: magic, count and, for images, rows and columns (4 bytes each)."""
    return 16 if magic == 2051 else 8


def check_raw_file(path: Path) -> None:
    """Raise DataError if an idx file has the wrong magic number or length."""
    magic, items, item_bytes = RAW_FILES[path.name]
    size = path.stat().st_size
    header = _header_bytes(magic)
    with open(path, "rb") as f:
        head = f.read(8)
    found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
    if found != magic:
        raise DataError(f"{path}: corrupt FashionMNIST file (magic number {found}, expected {magic}); "
                        f"delete it to provision the data again")
    expected = header + items * item_bytes
    if size != expected:
        raise DataError(f"{path}: corrupt FashionMNIST file ({size} bytes, expected {expected}); "
                        f"delete it to provision the data again")


def _present(root: Path) -> list[Path]:
    return [raw_dir(root) / name for name in RAW_FILES if (raw_dir(root) / name).exists()]


def _from_debian(root: Path, source_dir: Path) -> bool:
    sources = {name: source_dir / f"{name}.gz" for name in RAW_FILES}
    if not all(p.exists() for p in sources.values()):
        return False
    dest = raw_dir(root)
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        target = dest / name
        if target.exists():
            continue

        def gunzip(out, src=src):
            with gzip.open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)

        atomic_write(target, gunzip)  # never a half-extracted file; the umask's mode
    return True


def _download(root: Path) -> None:
    """torchvision's download; removes whatever a failed attempt left behind."""
    from torchvision.datasets import FashionMNIST

    dest = raw_dir(root)
    before = set(dest.iterdir()) if dest.exists() else set()
    try:
        FashionMNIST(str(root), train=True, download=True)
    except BaseException:
        if dest.exists():
            for p in set(dest.iterdir()) - before:
                if p.is_file():
                    p.unlink()
        raise


def provision(root: Path, allow_download: bool = True, debian_dir: Path | None = None) -> str:
    """Make the four raw files exist under ``root``; return where they came from."""
    root = Path(root)
    debian_dir = DEBIAN_DIR if debian_dir is None else Path(debian_dir)
    if len(_present(root)) == len(RAW_FILES):
        source = "existing"
    elif _from_debian(root, debian_dir):
        source = f"debian package ({debian_dir})"
    elif allow_download:
        try:
            _download(root)
        except Exception as e:  # network errors come in many types
            raise DataError(f"{HOW_TO_GET_DATA} (download failed: {type(e).__name__}: {e})".replace("\n", " ")) from None
        source = "torchvision download"
    else:
        raise DataError(HOW_TO_GET_DATA)
    for name in RAW_FILES:
        path = raw_dir(root) / name
        if not path.exists():
            raise DataError(f"{path}: missing; {HOW_TO_GET_DATA}")
        check_raw_file(path)
    return source


@dataclass
class FashionMNISTData:
    """The whole dataset in memory. Images (N, 1, 28, 28) float32 in [0, 1]; labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """Short hash of the training and test data (part of the parent cache key)."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (checked by :func:`check_raw_file`) as uint8: images (N, 28, 28) or
    labels (N,); what torchvision's FashionMNIST reads, without importing torchvision
    (over a second of every run's start)."""
    magic, items, item_bytes = RAW_FILES[path.name]
    raw = torch.frombuffer(bytearray(path.read_bytes()[_header_bytes(magic):]), dtype=torch.uint8)
    return raw.reshape(items, 28, 28) if item_bytes > 1 else raw


def load_fashion_mnist(data_dir=None, allow_download: bool = True) -> FashionMNISTData:
    """FashionMNIST in memory, provisioned under the data root of ``data_dir`` as the module
    docstring says (torchvision's download only with ``allow_download``). Missing or corrupt
    files, labels included, are a :class:`~ecomp_deap.errors.DataError`."""
    root = resolve_data_root(data_dir)
    source = provision(root, allow_download=allow_download)  # the four files exist and have their sizes
    raw = raw_dir(root)

    def images(name: str) -> torch.Tensor:
        return (read_idx(raw / name).to(torch.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]

    def labels(name: str) -> torch.Tensor:
        return read_idx(raw / name).long()  # (N,)

    data = FashionMNISTData(images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
                            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"), source=source)
    # the idx files' sizes are checked; their label bytes are not: a label >= 10 is a corrupt file
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        try:
            validate_dataset(f"FashionMNIST {name}", x, y, N_CLASSES, (1, 28, 28),
                             classes_from=f"FashionMNIST has {N_CLASSES} classes")
        except ConfigError as e:
            raise DataError(f"{e} (in {raw_dir(root)}; delete the files to provision the data again)") from None
    return data


def balanced_indices(labels: torch.Tensor, size: int, generator: torch.Generator,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``size`` indices drawn without replacement, as equal per class as the data
    allows (a class with too few images gives all it has, the others make up the
    rest), none from ``exclude``; shuffled."""
    n_classes = int(labels.max()) + 1
    available = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        available[exclude] = False
    pools = [torch.nonzero((labels == k) & available).flatten() for k in range(n_classes)]
    if size > sum(len(p) for p in pools):
        raise DataError(f"{size} images needed but only {sum(len(p) for p in pools)} are available")
    counts = [0] * n_classes
    remaining = size
    open_classes = [k for k in range(n_classes) if len(pools[k])]
    while remaining:  # water-filling: equal shares, capped by what each class has
        share, extra = divmod(remaining, len(open_classes))
        for i, k in enumerate(list(open_classes)):
            take = min(share + (1 if i < extra else 0), len(pools[k]) - counts[k])
            counts[k] += take
            remaining -= take
        open_classes = [k for k in open_classes if counts[k] < len(pools[k])]
    chosen = [pool[torch.randperm(len(pool), generator=generator)[:c]] for pool, c in zip(pools, counts)]
    idx = torch.cat(chosen)
    return idx[torch.randperm(len(idx), generator=generator)]


@dataclass
class Splits:
    """Index sets into the training data: the evolution subset and the validation split."""

    subset: torch.Tensor      # (S,) class-balanced, S = batches * batch_size
    validation: torch.Tensor  # (V,) class-balanced, disjoint from subset


def make_splits(train_y: torch.Tensor, subset_size: int, val_size: int, seed: int) -> Splits:
    """The evolution subset and the validation split of the training labels ``train_y``,
    both class-balanced (:func:`balanced_indices`), disjoint and drawn from ``seed``; a
    :class:`~ecomp_deap.errors.DataError` when together they exceed the data."""
    g = torch.Generator().manual_seed(int(seed))
    if subset_size + val_size > len(train_y):
        raise DataError(f"subset ({subset_size}) plus validation ({val_size}) exceed the "
                        f"{len(train_y)} training images")
    subset = balanced_indices(train_y, subset_size, g)
    validation = balanced_indices(train_y, val_size, g, exclude=subset) if val_size > 0 else subset[:0]
    return Splits(subset, validation)


class BatchStream:
    """The generations' batches: the subset cut into ``n_batches`` batches of ``batch_size``.

    Epoch 0 uses the subset's (seeded, shuffled) order; every later epoch a new seeded
    permutation, so a run is reproducible from its seed alone.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor, batch_size: int, seed: int):
        if len(subset) % batch_size:
            raise DataError(f"subset of {len(subset)} images is not a whole number of batches of {batch_size}")
        self.x, self.y, self.subset = x, y, subset
        self.batch_size = batch_size
        self.n_batches = len(subset) // batch_size
        self.seed = int(seed)

    def order(self, epoch: int) -> torch.Tensor:
        """The subset's indices in epoch ``epoch``'s order: as given for epoch 0, a permutation
        seeded by the stream's seed and the epoch after."""
        if epoch == 0:
            return self.subset
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self.subset[torch.randperm(len(self.subset), generator=g)]

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch``: images (batch_size, ...) and labels (batch_size,)."""
        idx = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[idx], self.y[idx]

    def all_batches(self):
        """The epoch-0 batches, in order: the final 'all training batches' pass."""
        for i in range(self.n_batches):
            yield self.batch(0, i)

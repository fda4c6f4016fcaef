"""compress() at its defaults on a user's own MLP, with and without the refit.

    python benchmarks/compress_defaults.py              # both variants, one torch thread
    python benchmarks/compress_defaults.py --variants default --threads 2

The network is not the default parent: 784-300-100-10 (ReLU) trained on FashionMNIST by
``ParentSpec(hidden=(300, 100), seed=3)``; compress() gets the first 50 000 training
images as ``train``, the last 10 000 as ``val`` and the test set as ``test``. For each
variant ('default': compress()'s defaults; 'norefit': the same with refit_images=0) it
prints the front's most accurate network at <= 25 % and <= 50 % of the units, and the
result of ``max_size=0.25`` and ``max_size=0.5``, with wall times.
"""
from __future__ import annotations

import argparse
import time

import torch

import ecomp_deap
from ecomp_deap.api import default_config
from ecomp_deap.data import load_fashion_mnist
from ecomp_deap.nets.parents import ParentSpec, accuracy, train_parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=("default", "norefit"), default=["norefit", "default"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", help="FashionMNIST root (default: the toolkit's cache)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(args.data_dir)
    model = train_parent(ParentSpec(hidden=(300, 100), seed=3, epochs=4), data.train_x, data.train_y, progress=False)
    print(f"own parent 784-300-100-10: test accuracy {accuracy(model, data.test_x, data.test_y):.4f}", flush=True)
    train = (data.train_x[:50000], data.train_y[:50000])
    val = (data.train_x[50000:], data.train_y[50000:])
    test = (data.test_x, data.test_y)
    for variant in args.variants:
        config = default_config(len(train[0]), val_size=0, **({"refit_images": 0} if variant == "norefit" else {}))
        t0 = time.perf_counter()
        res = ecomp_deap.compress(model, train=train, val=val, test=test, config=config, progress=False)
        front = [(c.compression, c.accuracy) for c in res.front]

        def best_at(size: float) -> str:
            acc = [a for c, a in front if c <= size + 1e-9]
            return f"{max(acc):.4f}" if acc else "-"

        print(f"{variant} (refit_images {config.refit_images}): front's best at <= 25 % {best_at(0.25)}, "
              f"<= 50 % {best_at(0.5)}; {time.perf_counter() - t0:.0f} s", flush=True)
        for size in (0.25, 0.5):
            t0 = time.perf_counter()
            r = ecomp_deap.compress(model, train=train, val=val, test=test, config=config, progress=False,
                                    max_size=size)
            print(f"  max_size {size}: {r.best.accuracy:.4f} at {r.best.compression:.3f}; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Pruning baselines at matched sizes, in the same harness as the evolved networks.

    python experiments/baselines.py                       # sizes 10 %, 15 %, ... 90 % -> results/baselines/
    python experiments/baselines.py --seeds 10 --out results --name baselines
    python experiments/baselines.py --arch cnn --name cnn_baselines          # the default CNN parent
    python experiments/baselines.py --arch resnet --name resnet_baselines    # Torch-Pruning's pruners, by MACs
    python plots/pareto.py results/pareto121 results/baselines   # drawn as lines against the fronts

For each size every hidden layer of the parent keeps that fraction of its units (or,
in a convolution, its channels), chosen by L1 norm of incoming weights (for a
convolution: of each filter, Li et al. 2017), at random (--seeds repetitions), or by
mean |activation| x outgoing weight norm (measured on the same class-balanced
training subset that evolution uses). No retraining. Writes OUT/NAME/baselines.json.

For a graph parent (--arch resnet, --model, or any residual/branching --parent) sizes
are fractions of the parent's multiply-adds, and the baselines are Torch-Pruning's
one-shot pruners (magnitude, group L1, BatchNorm scale, Taylor, activation, random) at
the largest uniform ratio within each size; Taylor and activation read the first
--calibration images of the subset.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ecomp_deap.errors import ConfigError
from ecomp_deap.study.cli import (
    HelpFormatter,
    OneLineParser,
    add_parent_arguments,
    finite_float,
    non_negative_int,
    positive_int,
    run_main,
)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="baselines.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--name", default="baselines", help="output folder name under --out")
    p.add_argument("--out", default="results", help="results folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing baselines.json")
    p.add_argument("--sizes", nargs=3, type=finite_float, metavar=("FROM", "TO", "STEP"),
                   help="fractions of hidden units kept (of multiply-adds for a graph parent): FROM to TO "
                        "inclusive in steps of STEP (default 0.10 0.90 0.05; 0.10 0.90 0.10 for a graph parent)")
    p.add_argument("--seeds", type=positive_int, default=5, help="repetitions of the random baseline")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random baseline and the subset")
    p.add_argument("--subset", type=positive_int, default=10000,
                   help="class-balanced training images for the activation statistics (the evolution subset)")
    p.add_argument("--data-dir", help="FashionMNIST root (default: $ECOMP_DATA_DIR or ~/.cache/ecomp_deap/data)")
    p.add_argument("--cache-dir", help="parent weights cache (default: ~/.cache/ecomp_deap)")
    p.add_argument("--norm-calibration", type=non_negative_int, default=0, metavar="IMAGES",
                   help="adaptive BatchNorm: re-estimate each pruned network's BatchNorm statistics on the first "
                        "IMAGES of the subset first (as run.py --norm-calibration does; 0: off)")
    p.add_argument("--refit", type=non_negative_int, default=0, metavar="IMAGES",
                   help="also measure every method refitted (l1+refit, ...): its Linear layers after the first "
                        "refitted to the parent's pre-activations on the first IMAGES of the subset by closed-form "
                        "ridge least squares, as run.py --refit does for evolved networks (0: off)")
    p.add_argument("--calibration", type=positive_int, default=1000, metavar="IMAGES",
                   help="graph parents: labelled subset images for the Taylor and activation importances")
    p.add_argument("--refit-ridge", type=finite_float, default=1e-4, metavar="LAMBDA",
                   help="the refit's ridge, relative to each layer's mean squared input")
    add_parent_arguments(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.sizes is not None:
        lo, hi, step = args.sizes
        if not (0 < lo <= hi <= 1 and step > 0):
            raise ConfigError(f"--sizes needs 0 < FROM <= TO <= 1 and STEP > 0, got {lo} {hi} {step}")
    if args.trust_parent_file and not args.parent:
        raise ConfigError("--trust-parent-file goes with --parent PATH")
    folder = Path(args.out) / args.name
    from ecomp_deap.study.experiment import check_output_folder

    check_output_folder(folder, overwrite=True)
    if (folder / "baselines.json").exists() and not args.overwrite:
        raise ConfigError(f"{folder / 'baselines.json'} exists; use --overwrite to replace it")

    from ecomp_deap.data import load_fashion_mnist, make_splits
    from ecomp_deap.files import save_json
    from ecomp_deap.study.cli import load_parent
    from ecomp_deap.study.pruning_baselines import BASELINES_SCHEMA, baseline_curves

    data = load_fashion_mnist(args.data_dir)
    parent, _, parent_acc = load_parent(args, data)
    lo, hi, step = args.sizes or ((0.10, 0.90, 0.10) if parent.is_graph else (0.10, 0.90, 0.05))
    sizes = [round(s, 6) for s in np.arange(lo, hi + step / 2, step)]
    if args.refit == 1 or args.refit > args.subset:
        raise ConfigError(f"--refit needs 0 (off) or 2 to --subset ({args.subset}) images, got {args.refit}")
    if not args.refit_ridge > 0:
        raise ConfigError(f"--refit-ridge must be > 0, got {args.refit_ridge}")
    subset = make_splits(data.train_y, args.subset, 0, args.seed).subset
    t0 = time.perf_counter()
    if parent.is_graph:
        if args.refit:
            raise ConfigError("--refit works on chain parents only; this parent is a graph")
        from ecomp_deap.study.tp_baselines import tp_baseline_curves

        calib = subset[:args.calibration]
        norm_x = data.train_x[subset[:args.norm_calibration]] if args.norm_calibration else None
        methods = tp_baseline_curves(parent, sizes, data.test_x, data.test_y, data.train_x[calib], data.train_y[calib],
                                     args.seeds, seed=args.seed, norm_x=norm_x, log=print)
        save_json(folder / "baselines.json", {"schema": BASELINES_SCHEMA, "parent": {"test_accuracy": parent_acc},
                                              "sizes": sizes, "size_measure": "macs", "random_seeds": args.seeds,
                                              "seed": args.seed, "subset": args.subset, "methods": methods,
                                              "calibration": args.calibration, "library": "torch-pruning",
                                              "norm_calibration": args.norm_calibration,
                                              "wall_time_s": time.perf_counter() - t0})
        return report(parent_acc, sizes, methods, folder)
    calibration = data.train_x[subset[:args.norm_calibration]] if args.norm_calibration else None
    methods = baseline_curves(parent, sizes, data.test_x, data.test_y, data.train_x[subset], args.seeds, seed=args.seed,
                              calibration_x=calibration,
                              refit_x=data.train_x[subset[:args.refit]] if args.refit else None,
                              refit_ridge=args.refit_ridge)
    save_json(folder / "baselines.json", {"schema": BASELINES_SCHEMA, "parent": {"test_accuracy": parent_acc},
                                          "sizes": sizes, "random_seeds": args.seeds, "seed": args.seed,
                                          "subset": args.subset, "methods": methods,
                                          "norm_calibration": args.norm_calibration,
                                          "refit_images": args.refit, "refit_ridge": args.refit_ridge,
                                          "wall_time_s": time.perf_counter() - t0})
    return report(parent_acc, sizes, methods, folder)


def report(parent_acc: float, sizes, methods: dict, folder: Path) -> int:
    print(f"parent test accuracy {parent_acc:.4f}")
    print("size   " + "  ".join(f"{m:>10}" for m in methods))
    for i, s in enumerate(sizes):
        print(f"{s:5.2f}  " + "  ".join(f"{methods[m][i]['test_accuracy']:10.4f}" for m in methods))
    print(folder / "baselines.json")
    return 0


if __name__ == "__main__":
    run_main(main)

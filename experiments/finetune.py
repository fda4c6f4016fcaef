"""Fine-tune the evolved networks and the pruning baselines with one recipe, for the size table.

    python experiments/finetune.py results/quality25 results/quality25_nosim --baselines results/baselines
    python experiments/finetune.py results/quality{12.5,25,50}{,_nosim} --baselines results/baselines \\
        --epochs 1 5 --sizes 0.125 0.25 0.5
    python experiments/compare.py results/quality{12.5,25,50}{,_nosim} --baselines results/baselines \\
        --sizes 0.125 0.25 0.5          # the size table, with "after N epochs of fine-tuning" columns

Pruned networks are usually fine-tuned afterwards; this asks whether the evolved ones
still beat pruning once both are. Every network gets the same recipe: Adam at the
parent's learning rate (--lr), cross-entropy, shuffled batches of the parent's batch
size (--batch-size), max(--epochs) epochs over the training images that are not in the
run's validation split, one --seed for every network; the test accuracy is recorded
before fine-tuning and after each of --epochs (1 and 5: one 5-epoch trajectory).

* each FOLDER (OUT/NAME of experiments/run.py): every run's exported network
  run_K.pt (loaded safely, weights only) is fine-tuned; physically smaller, so no
  gradient reaches a removed unit, and its size is kept. Writes OUT/NAME/finetune.json.
* --baselines FOLDER (experiments/baselines.py): its L1, random (all its seeds, mean)
  and activation prunings are rebuilt at --sizes from the parent, exported and
  fine-tuned on the training images outside the validation split of the first
  FOLDER's first run (the same number of images as every run). Writes
  FOLDER/finetune.json.
* the parent, fine-tuned by the same recipe on those images: the control, in every
  file written.

Existing finetune.json files are refused unless --overwrite. The parent must be the one
the runs were made with (the same --arch/--hidden/--parent as experiments/run.py).
"""
from __future__ import annotations

import time
from pathlib import Path

from ecomp_deap.errors import ConfigError
from ecomp_deap.study.cli import (
    HelpFormatter,
    OneLineParser,
    add_data_and_parent_arguments,
    finite_float,
    non_negative_int,
    positive_int,
    run_main,
)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="finetune.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="experiment results folders (OUT/NAME with run_K.json and run_K.pt)")
    p.add_argument("--baselines", metavar="FOLDER",
                   help="a baselines folder (experiments/baselines.py): fine-tune its prunings at --sizes too")
    p.add_argument("--epochs", nargs="+", type=positive_int, default=[1, 5], metavar="N",
                   help="record the test accuracy after each of these epochs of fine-tuning (trains max(N) epochs)")
    p.add_argument("--sizes", nargs="+", type=finite_float, default=[0.125, 0.25, 0.5], metavar="S",
                   help="sizes (fractions of the parent's hidden units) of the baseline prunings to fine-tune")
    p.add_argument("--lr", type=finite_float, default=1e-3,
                   help="Adam's learning rate: the parent's (the default parent: 1e-3)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per step: the parent's batch size")
    p.add_argument("--seed", type=non_negative_int, default=0, help="shuffling (and Dropout) seed, the same for all")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (results depend on it in the last bits)")
    p.add_argument("--overwrite", action="store_true", help="replace existing finetune.json files")
    add_data_and_parent_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (the one-line results stay)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def check_inputs(args):
    """Everything that needs no data: the recipe, the sizes, the folders and their files,
    and that nothing would be overwritten. Returns (recipe, experiments, baselines)."""
    from ecomp_deap.study.fine_tuning import FINETUNE_FILE, Recipe
    from ecomp_deap.study.plotting import load_baselines, load_experiments

    if not args.folders and not args.baselines:
        raise ConfigError("give experiment FOLDERs and/or --baselines FOLDER to fine-tune")
    if not all(0 < s <= 1 for s in args.sizes):
        raise ConfigError(f"--sizes must be fractions in (0, 1], got {args.sizes}")
    if args.trust_parent_file and not args.parent:
        raise ConfigError("--trust-parent-file goes with --parent PATH")
    recipe = Recipe(tuple(args.epochs), args.lr, args.batch_size, args.seed).validate()
    exps = load_experiments(args.folders) if args.folders else []
    for exp in exps:
        for run, path in zip(exp.runs, exp.files):
            weights = exp.folder / run.get("weights_file", f"{path.stem}.pt")
            if not weights.is_file():
                raise ConfigError(f"{path}: its network {weights.name} is missing (runs written by run.py have one)")
    baselines = load_baselines(args.baselines) if args.baselines else None
    outputs = [exp.folder / FINETUNE_FILE for exp in exps] + ([Path(args.baselines) / FINETUNE_FILE]
                                                               if args.baselines else [])
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{', '.join(existing)} exist(s); use --overwrite to replace")
    return recipe, exps, baselines


def load_parent(args, data, exps):
    """The parent (``--parent`` or the cached one), read once and checked against the runs' parent."""
    from ecomp_deap.study import cli
    from ecomp_deap.study.presets import preset_arch

    parent, _, acc = cli.load_parent(args, data, [preset_arch(e.name) for e in exps], progress=not args.quiet)
    widths = list(parent.net.hidden_widths)
    for exp in exps:
        made_with = exp.runs[0].get("parent") or {}
        if made_with.get("hidden_units") != widths or abs(float(made_with.get("test_accuracy", acc)) - acc) > 1e-6:
            raise ConfigError(f"{exp.folder}: its runs were made with another parent (hidden "
                              f"{made_with.get('hidden_units')}, test accuracy {made_with.get('test_accuracy')}; this one: "
                              f"{widths}, {acc:.4f}); give the same --arch/--hidden/--parent as experiments/run.py")
    return parent, acc


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    recipe, exps, baselines = check_inputs(args)  # before any work

    from ecomp_deap.config import EcompConfig
    from ecomp_deap.data import load_fashion_mnist
    from ecomp_deap.files import save_json
    from ecomp_deap.study.fine_tuning import (
        FINETUNE_FILE,
        finetune_baselines,
        finetune_body,
        finetune_indices,
        finetune_parent,
        finetune_runs,
    )
    from ecomp_deap.study.runner import torch_threads

    data = load_fashion_mnist(args.data_dir, allow_download=not args.no_download)
    print(f"data: FashionMNIST ({data.source}), {len(data.train_x)} train / {len(data.test_x)} test images")
    parent_net, parent_acc = load_parent(args, data, exps)
    print(f"recipe: {recipe.describe()}")
    # baselines and parent: the images outside the first run's validation split (none given: the defaults')
    reference = EcompConfig.from_dict(exps[0].runs[0]["config"]) if exps else EcompConfig()
    indices = finetune_indices(data.train_y, reference)
    t0 = time.perf_counter()
    written = []
    with torch_threads(args.threads):
        parent = finetune_parent(parent_net.model, data, indices, recipe, not args.quiet)
        for exp in exps:
            t = time.perf_counter()
            runs = finetune_runs(exp.folder, exp.name, exp.runs, data, recipe, not args.quiet)
            path = exp.folder / FINETUNE_FILE
            save_json(path, finetune_body("experiment", recipe, parent, name=exp.name, runs=runs,
                                          wall_time_s=time.perf_counter() - t))
            written.append(path)
        if baselines is not None:
            t = time.perf_counter()
            methods = finetune_baselines(parent_net, baselines, data, args.sizes, indices, recipe, not args.quiet)
            path = Path(args.baselines) / FINETUNE_FILE
            save_json(path, finetune_body("baselines", recipe, parent, sizes=[float(s) for s in args.sizes],
                                          methods=methods, wall_time_s=time.perf_counter() - t))
            written.append(path)
    print(f"done in {time.perf_counter() - t0:.1f} s; compare with experiments/compare.py "
          f"{' '.join(str(e.folder) for e in exps)}{' --baselines ' + args.baselines if args.baselines else ''}"
          f" --sizes {' '.join(f'{s:g}' for s in args.sizes)}")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_main(main, extra_errors=(OSError,))

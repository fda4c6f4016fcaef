"""Compare experiments: summary statistics and pairwise Mann-Whitney U tests.

    python experiments/compare.py OUT/weighting121 OUT/pareto121 [...] [--out DIR]
    python experiments/compare.py OUT/pareto121 --baselines OUT/baselines --sizes 0.25 0.5 0.75
    python experiments/compare.py OUT/weighting* OUT/ref-weighting* OUT/pareto* --against pareto121
    python experiments/compare.py OUT/quality25 OUT/quality25_nosim --baselines OUT/baselines --sizes 0.125 0.25 0.5

Each argument is one experiment folder (``OUT/NAME`` holding ``run_0.json``,
``run_1.json``, ...). Prints two Markdown tables and writes them, atomically, to
``DIR``:

* ``comparison.md``        both tables;
* ``comparison.csv``       one row per experiment: name, selection mode, runs,
                           median and interquartile range (q25-q75) of the best
                           network's test accuracy, compression and similarity,
                           median test hypervolume;
* ``comparison_pairs.csv`` one row per pair of experiments: two-sided
                           Mann-Whitney U p-values on test hypervolume and on
                           best test accuracy ("n/a" with fewer than 2 runs);
* ``comparison_sizes.csv`` one row per size budget (--sizes): per experiment the
                           median [q25-q75] test accuracy of each run's front
                           network of at most that size (chosen on validation
                           accuracy), the baselines at that size (--baselines)
                           and the parent (printed with one row per experiment
                           once there are more than two);
* ``comparison_finetune.csv`` (when experiments/finetune.py has written finetune.json
                           into the folders or the --baselines folder) one row per
                           size and epoch count N (0: not fine-tuned): per experiment
                           the median [q25-q75] test accuracy of the runs' fine-tuned
                           networks of at most that size, the baselines fine-tuned at
                           that size, the parent fine-tuned the same way; the Markdown
                           shows them as "after N epochs of fine-tuning" columns;
* ``comparison_published.csv`` (when experiments are named weightingABC or
                           ref-weightingABC) the reference study's published
                           median [min-max] of best test accuracy and final mean
                           compression beside ours, and whether ours is in range;
                           the Markdown adds Spearman's rank correlation of the
                           medians per family.

--against NAME tests every experiment against NAME only (not all pairs); with
more than one pair the p-values are also given Holm-adjusted.

The written paths are printed last, one per line. Only saved results are read.
"""
from __future__ import annotations

import os
from pathlib import Path

from ecomp_deap.errors import ConfigError
from ecomp_deap.files import save_csv, save_text
from ecomp_deap.study import comparison
from ecomp_deap.study.cli import finite_float
from ecomp_deap.study.plotting import add_common_args, load_baselines, load_experiments, make_parser, run_cli


def parent_folder(folder) -> Path:
    """``OUT`` for ``OUT/NAME`` (as typed, so printed paths stay relative)."""
    p = Path(os.path.normpath(folder))
    return p.resolve().parent if p.name in ("", ".", "..") else p.parent


def build_parser():
    parser = make_parser(__doc__, prog="experiments/compare.py")
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="experiment results folders (OUT/NAME with run_K.json files)")
    parser.add_argument("--sizes", nargs="+", type=finite_float, default=[0.25, 0.5, 0.75], metavar="S",
                        help="size budgets (fractions of the parent's hidden units) of the accuracy-at-size "
                             "table (default: 0.25 0.5 0.75)")
    parser.add_argument("--baselines", metavar="FOLDER",
                        help="a baselines folder (experiments/baselines.py) to put in the accuracy-at-size table")
    parser.add_argument("--against", metavar="NAME",
                        help="pairwise tests of every experiment against this one (its folder name) instead of "
                             "all pairs; with more than one pair, Holm-adjusted p-values are shown too")
    add_common_args(parser, "the parent folder of the first FOLDER", figures=False)
    return parser


def load_finetuned(exps, baselines_folder):
    """The fine-tuning results (``finetune.json``) of the experiments and the baselines:
    ``({name: body}, baselines body or None, the recipe in words or None when there are
    none)``. Results for other runs than the folder's, or made with different recipes,
    are refused: the comparison is only fair with one recipe."""
    from ecomp_deap.errors import ResultsError
    from ecomp_deap.study.fine_tuning import Recipe, check_against_runs, load_finetune

    tuned = {}
    for e in exps:
        body = load_finetune(e.folder)
        if body is not None:
            check_against_runs(body, e.runs, e.folder)
            tuned[e.name] = body
    baselines_tuned = load_finetune(baselines_folder) if baselines_folder else None
    bodies = [*tuned.values(), *([baselines_tuned] if baselines_tuned else [])]
    if not bodies:
        return tuned, baselines_tuned, None
    recipes = {repr(sorted((k, v) for k, v in b["recipe"].items() if k != "epochs")) for b in bodies}
    if len(recipes) > 1:
        raise ResultsError("the finetune.json files were made with different recipes (learning rate, batch size or "
                           "seed); rerun experiments/finetune.py on all folders with the same options")
    r = bodies[0]["recipe"]
    return tuned, baselines_tuned, Recipe(tuple(r["epochs"]), r["lr"], r["batch_size"], r["seed"]).describe()


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    if not all(0 < s <= 1 for s in args.sizes):
        raise ConfigError(f"--sizes must be fractions in (0, 1], got {args.sizes}")
    baselines = load_baselines(args.baselines) if args.baselines else None
    exps = load_experiments(args.folders)
    groups = [(e.name, e.runs) for e in exps]
    summary = comparison.summary_rows(groups)
    pairs = comparison.pairwise_rows(groups, args.against)
    sizes = comparison.size_rows(groups, args.sizes, baselines)
    published = comparison.published_rows(groups)
    correlations = comparison.rank_correlations(published)
    tuned, baselines_tuned, recipe = load_finetuned(exps, args.baselines)
    names = [e.name for e in exps if e.name in tuned]
    finetune = comparison.finetune_rows(names, tuned, baselines_tuned, args.sizes) if recipe is not None else []
    report = comparison.format_report(summary, pairs, sizes, published, correlations, args.against, finetune, names,
                                      recipe or "")

    out = Path(args.out) if args.out else parent_folder(args.folders[0])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison_pairs.csv", out / "comparison_sizes.csv"]
    save_text(paths[0], report)
    save_csv(paths[1], comparison.csv_rows(summary, comparison.SUMMARY_FIELDS), comparison.SUMMARY_FIELDS)
    fields = comparison.pairwise_fields(pairs)
    save_csv(paths[2], comparison.csv_rows(pairs, fields), fields)
    save_csv(paths[3], *comparison.size_csv_rows(sizes, [e.name for e in exps]))
    if published:  # experiments named after the reference's weightings
        paths.append(out / "comparison_published.csv")
        save_csv(paths[-1], comparison.csv_rows(published, comparison.PUBLISHED_FIELDS), comparison.PUBLISHED_FIELDS)
    if finetune:  # experiments/finetune.py has run
        paths.append(out / "comparison_finetune.csv")
        save_csv(paths[-1], *comparison.finetune_csv_rows(finetune, names))

    print(report)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Learning curves: population averages of accuracy, compression and similarity per generation.

    python plots/curves.py OUT/weighting121 OUT/pareto121 [...] [--max-runs 10] [--out DIR]

Draws a grid with one row per measure (accuracy, compression, similarity: the
population average of the logbook; for runs without labels the first row is their
fidelity, and the axis and legend say so) and one column per run index (run_0,
run_1, ...; at most ``--max-runs`` columns, the title says when runs were left
out), one line per experiment. Writes ``curves.png`` and ``curves.pdf`` into
``DIR`` (default: ``plots/`` inside the first FOLDER). Only saved results are
read; prints every path written, one per line.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ecomp_deap.study.plotting import (
    MEASURES,
    accuracy_axis_label,
    color_for,
    folders_parser,
    logbook_series,
    plot_experiments,
    positive_int,
    run_cli,
)

ROWS = ["accuracy", "compression", "similarity"]


def figure_curves(exps, max_runs: int):
    all_ids = sorted({k for e in exps for k in e.run_ids})
    shown = all_ids[:max_runs]
    ncols = len(shown)
    width = max((2.6 if ncols <= 5 else 2.2) * ncols + 1.2, 6.0)
    fig, axes = plt.subplots(len(ROWS), ncols, figsize=(width, 7.2), sharex="col", sharey="row", squeeze=False,
                             layout="constrained")
    for col, run_id in enumerate(shown):
        for i, exp in enumerate(exps):
            if run_id not in exp.run_ids:
                continue
            run = exp.runs[exp.run_ids.index(run_id)]
            for row, key in enumerate(ROWS):
                gens, vals = logbook_series(run, key, "avg")
                if np.isfinite(vals).any():
                    axes[row, col].plot(gens, vals, "-", color=color_for(i), lw=1.6,
                                        marker="o" if len(gens) <= 20 else None, ms=2.5,
                                        label=exp.label if (row == 0 and col == 0) else None)
        axes[0, col].set_title(f"run {run_id}")
        axes[-1, col].set_xlabel("generation")
    for row, key in enumerate(ROWS):
        label, better = MEASURES[key]
        label = accuracy_axis_label(exps) if key == "accuracy" else label
        axes[row, 0].set_ylabel(f"{label}\n({better})")
        for ax in axes[row]:
            ax.xaxis.get_major_locator().set_params(integer=True)

    handles, labels = [], []
    for i, exp in enumerate(exps):  # one legend entry per experiment, even if run 0 lacks it
        handles.append(matplotlib.lines.Line2D([], [], color=color_for(i), lw=1.6))
        labels.append(exp.label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    title = "Population mean per generation"
    if len(all_ids) > len(shown):
        title += f" (first {len(shown)} of {len(all_ids)} runs shown)"
    fig.suptitle(title)
    return fig


def build_parser():
    parser = folders_parser(__doc__, prog="plots/curves.py")
    parser.add_argument("--max-runs", type=positive_int, default=10, metavar="N",
                        help="draw at most N run columns (the first N run indices; default: 10)")
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return plot_experiments(args, ("logbook[]",), "curves", lambda exps: figure_curves(exps, args.max_runs))


if __name__ == "__main__":
    run_cli(main)

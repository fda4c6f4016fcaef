"""Hypervolume per generation: median across runs with the interquartile range shaded.

    python plots/hypervolume.py OUT/pareto121 OUT/weighting121 [...] [--runs] [--out DIR]

The hypervolume is the logbook's ``hypervolume``: the area dominated by the
population's (accuracy, compression) front on that generation's batch, with
reference point accuracy 0 / compression 1 (higher is better). One line per
experiment (median across runs, IQR band 25th-75th percentile); ``--runs`` also
draws every run thinly. Meant for Pareto-mode (NSGA-II) experiments, works for
any. Writes ``hypervolume.png`` and ``hypervolume.pdf`` into ``DIR`` (default:
``plots/`` inside the first FOLDER). Only saved results are read; prints every
path written, one per line.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ecomp_deap.study.plotting import (
    color_for,
    folders_parser,
    logbook_series,
    nan_quantiles,
    plot_experiments,
    run_cli,
)


def hypervolume_table(exp) -> tuple[np.ndarray, np.ndarray]:
    """(generations G, values (runs, G)); a run that lacks a generation has NaN there."""
    series = [logbook_series(run, "hypervolume", None) for run in exp.runs]
    gens = np.unique(np.concatenate([g for g, _ in series] or [np.empty(0)]))
    table = np.full((len(series), len(gens)), np.nan)
    for i, (g, v) in enumerate(series):
        for gen, value in zip(g, v):  # several entries for one generation: the last one counts
            table[i, np.searchsorted(gens, gen)] = value
    return gens, table


def figure_hypervolume(exps, show_runs: bool):
    fig, ax = plt.subplots(figsize=(6.8, 4.3), layout="constrained")
    drew = False
    for i, exp in enumerate(exps):
        colour = color_for(i)
        gens, table = hypervolume_table(exp)
        if len(gens) == 0 or not np.isfinite(table).any():
            ax.plot([], [], color=colour, lw=2, label=f"{exp.label} (no hypervolume recorded)")
            continue
        drew = True
        q25, med, q75 = nan_quantiles(table)
        if show_runs:
            for row in table:
                ax.plot(gens, row, color=colour, lw=0.6, alpha=0.35)
        n = len(exp.runs)
        ax.fill_between(gens, q25, q75, color=colour, alpha=0.2, linewidth=0)
        ax.plot(gens, med, color=colour, lw=2.0, label=f"{exp.label}, median of {n} run{'s' * (n != 1)}")
    if drew:
        ax.fill_between([], [], [], color="0.5", alpha=0.2, linewidth=0, label="interquartile range (q25–q75)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume (higher = better)\nreference: accuracy 0, compression 1")
    ax.set_title("Hypervolume of the population's accuracy–compression front")
    handles, labels = ax.get_legend_handles_labels()
    # below the axes: inside, the legend sat on the curves
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(labels) > 3 else 1)
    return fig


def build_parser():
    parser = folders_parser(__doc__, prog="plots/hypervolume.py")
    parser.add_argument("--runs", action="store_true", help="also draw every single run as a thin line")
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return plot_experiments(args, ("logbook[]",), "hypervolume", lambda exps: figure_hypervolume(exps, args.runs))


if __name__ == "__main__":
    run_cli(main)

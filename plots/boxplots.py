"""Box plots of the best network of each run: test accuracy and compression per experiment.

    python plots/boxplots.py OUT/weighting121 OUT/pareto121 [...] [--out DIR]

Two panels, one box per experiment (median, quartiles, whiskers at 1.5 IQR),
every run drawn as a dot on top; the parent's test accuracy is a dashed line.
Writes ``boxplots.png`` and ``boxplots.pdf`` into ``DIR`` (default: ``plots/``
inside the first FOLDER). Only saved results are read; prints every path
written, one per line.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ecomp_deap.study.plotting import color_for, folders_parser, get_path, num, plot_experiments, run_cli

PANELS = [  # (field of "best", axis label, title)
    ("test_accuracy", "test accuracy (higher = better)", "Best network: test accuracy"),
    ("compression", "compression: size relative to parent\n(lower = smaller)", "Best network: compression"),
]


def values(exp, field: str) -> np.ndarray:
    v = np.array([num(get_path(r, f"best.{field}")) for r in exp.runs], dtype=float)
    return v[np.isfinite(v)]


def figure_boxplots(exps):
    n = len(exps)
    width = max(7.0, 2 * (1.2 + 0.75 * n))
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.4), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: identical figures from identical results
    names = [e.name for e in exps]
    rotate = n > 3 or max(len(s) for s in names) > 14
    for ax, (field, ylabel, title) in zip(axes, PANELS):
        data = [values(e, field) for e in exps]
        pos = np.arange(1, n + 1)
        keep = [i for i, d in enumerate(data) if len(d)]
        if keep:
            bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=0.55, patch_artist=True,
                            showfliers=False, medianprops=dict(color="black", lw=1.6))
            for patch, i in zip(bp["boxes"], keep):
                patch.set_facecolor(color_for(i))
                patch.set_alpha(0.35)
                patch.set_edgecolor(color_for(i))
        for i, d in enumerate(data):
            if len(d):
                x = pos[i] + rng.uniform(-0.12, 0.12, size=len(d))
                ax.scatter(x, d, s=18, color=color_for(i), edgecolor="black", linewidth=0.4, zorder=3)
            else:
                ax.text(pos[i], 0.5, "no values", transform=ax.get_xaxis_transform(), ha="center",
                        va="center", fontsize=8, color="0.4")
        if field == "test_accuracy":
            parents = {round(e.parent_accuracy(), 9) for e in exps if math.isfinite(e.parent_accuracy())}
            for j, acc in enumerate(sorted(parents)):
                ax.axhline(acc, color="black", ls="--", lw=1.0, zorder=1,
                           label="parent network" if j == 0 else None)
            if parents:  # outside the axes: a legend inside may cover runs' dots
                fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center")
        ax.set_xticks(pos)
        ax.set_xticklabels(names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(0.4, n + 0.6)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
    counts = sorted({len(e.runs) for e in exps})
    runs = f"{counts[0]} runs" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} runs"
    fig.suptitle(f"Best network of each run ({runs} per experiment)")
    return fig


def build_parser():
    parser = folders_parser(__doc__, prog="plots/boxplots.py")
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return plot_experiments(args, ("best",), "boxplots", figure_boxplots)


if __name__ == "__main__":
    run_cli(main)

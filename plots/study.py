"""The study's figures: every preset grouped by weighting, the reference's operators beside ours.

    python plots/study.py OUT/weighting* OUT/ref-weighting* OUT/pareto* [--out DIR]

Experiments are grouped by their weighting (``weightingABC``, ``ref-weightingABC``
and ``paretoABC`` share the group ``A B C``; other names are groups of their own)
and coloured by family: the reference study's operators (``ref-weighting*``), ours
with weighted selection (``weighting*``), ours with NSGA-II (``pareto*``). Writes,
into ``DIR`` (default: ``plots/`` inside the first FOLDER):

* ``study_boxplots.png/.pdf``: per group, box plots (every run a dot) of the best
  network's test accuracy, its compression, and the final population's mean
  compression; the reference study's published median and [min-max] (black, from
  :mod:`ecomp_deap.study.published`) beside the first and the last;
* ``study_curves.png/.pdf``: one column per group, the population means of
  accuracy, compression and similarity per generation: median across runs, the
  interquartile range shaded.

Legends sit outside the axes. Only saved results are read; prints every path
written, one per line.
"""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ecomp_deap.study.plotting import (
    MEASURES,
    apply_style,
    default_plot_dir,
    folders_parser,
    get_path,
    load_experiments,
    logbook_series,
    nan_quantiles,
    num,
    render_figure,
    run_cli,
    save_figures,
)
from ecomp_deap.study.published import TABLE  # noqa: E402

# family -> (legend label, colour); the order is the order of the boxes in a group
FAMILIES = {
    "ref": ("reference operators (ref-weighting*)", "#D55E00"),
    "weighting": ("ours, weighted (weighting*)", "#0072B2"),
    "pareto": ("ours, NSGA-II (pareto*)", "#009E73"),
    "other": ("other experiments", "#CC79A7"),
}
_NAME = re.compile(r"^(ref-weighting|weighting|pareto)(\d{3})$")
PANELS = [  # (run field, axis label, published column or None)
    ("best.test_accuracy", "best network:\ntest accuracy", 0),
    ("best.compression", "best network:\ncompression", None),
    ("final_population.compression", "final population:\nmean compression", 1),
]


def family_and_group(name: str) -> tuple[str, str]:
    m = _NAME.match(name)
    if not m:
        return "other", name
    fam = {"ref-weighting": "ref", "weighting": "weighting", "pareto": "pareto"}[m.group(1)]
    return fam, " ".join(m.group(2))


def grouped(exps) -> tuple[list[str], dict[tuple[str, str], object]]:
    """Groups in a stable order (weightings sorted, then other names as given) and
    (group, family) -> experiment."""
    cells, groups = {}, []
    for e in exps:
        fam, grp = family_and_group(e.name)
        cells[(grp, fam)] = e
        if grp not in groups:
            groups.append(grp)
    codes = sorted(g for g in groups if g.replace(" ", "") in TABLE or re.fullmatch(r"\d \d \d", g))
    return codes + [g for g in groups if g not in codes], cells


def run_values(exp, field: str) -> np.ndarray:
    v = np.array([num(get_path(r, field)) for r in exp.runs], dtype=float)
    return v[np.isfinite(v)]


def figure_boxplots(exps):
    groups, cells = grouped(exps)
    fams = [f for f in FAMILIES if any((g, f) in cells for g in groups)]
    slots = ["published"] + fams
    w = 0.8 / len(slots)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(max(7.0, 1.1 * len(groups) * len(slots) / 2 + 2), 9.0),
                             sharex=True, layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: identical figures from identical results
    for ax, (field, ylabel, pub_col) in zip(axes, PANELS):
        for gi, grp in enumerate(groups):
            code = grp.replace(" ", "")
            for si, slot in enumerate(slots):
                x = gi + (si - (len(slots) - 1) / 2) * w
                if slot == "published":
                    if pub_col is not None and code in TABLE:
                        p = TABLE[code][pub_col]
                        ax.errorbar([x], [p.median], yerr=[[p.median - p.low], [p.high - p.median]], fmt="o",
                                    color="black", ms=4, capsize=3, lw=1.2, zorder=4)
                    continue
                exp = cells.get((grp, slot))
                if exp is None:
                    continue
                d = run_values(exp, field)
                if not len(d):
                    continue
                colour = FAMILIES[slot][1]
                bp = ax.boxplot([d], positions=[x], widths=w * 0.85, patch_artist=True, showfliers=False,
                                medianprops=dict(color="black", lw=1.4))
                bp["boxes"][0].set_facecolor(colour)
                bp["boxes"][0].set_alpha(0.35)
                bp["boxes"][0].set_edgecolor(colour)
                ax.scatter(x + rng.uniform(-w * 0.25, w * 0.25, size=len(d)), d, s=10, color=colour,
                           edgecolor="black", linewidth=0.3, zorder=3)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        for gi in range(1, len(groups)):
            ax.axvline(gi - 0.5, color="0.85", lw=0.8, zorder=0)
    axes[-1].set_xticks(range(len(groups)))
    axes[-1].set_xticklabels(groups)
    axes[-1].set_xlabel("weights (accuracy, similarity, compression)")
    axes[-1].set_xlim(-0.5, len(groups) - 0.5)
    handles = [Line2D([], [], color="black", marker="o", ms=4, lw=1.2,
                      label="published (reference study): median, [min–max]")]
    handles += [Patch(facecolor=FAMILIES[f][1], alpha=0.5, edgecolor=FAMILIES[f][1], label=FAMILIES[f][0])
                for f in fams]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    counts = sorted({len(e.runs) for e in exps})
    runs = f"{counts[0]} runs" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} runs"
    fig.suptitle(f"Study: every preset, {runs} per preset (each dot one run)")
    return fig


def curve_table(exp, key: str) -> tuple[np.ndarray, np.ndarray]:
    series = [logbook_series(r, key, "avg") for r in exp.runs]
    gens = np.unique(np.concatenate([g for g, _ in series] or [np.empty(0)]))
    table = np.full((len(series), len(gens)), np.nan)
    for i, (g, v) in enumerate(series):
        table[i, np.searchsorted(gens, g)] = v
    return gens, table


def figure_curves(exps):
    groups, cells = grouped(exps)
    rows = ["accuracy", "compression", "similarity"]
    fams = [f for f in FAMILIES if any((g, f) in cells for g in groups)]
    fig, axes = plt.subplots(len(rows), len(groups), figsize=(2.3 * len(groups) + 1.2, 7.0), sharex=True,
                             sharey="row", squeeze=False, layout="constrained")
    for gi, grp in enumerate(groups):
        for f in fams:
            exp = cells.get((grp, f))
            if exp is None:
                continue
            colour = FAMILIES[f][1]
            for ri, key in enumerate(rows):
                gens, table = curve_table(exp, key)
                if not len(gens) or not np.isfinite(table).any():
                    continue
                q25, med, q75 = nan_quantiles(table)
                ax = axes[ri, gi]
                ax.fill_between(gens, q25, q75, color=colour, alpha=0.2, linewidth=0)
                ax.plot(gens, med, color=colour, lw=1.5)
        axes[0, gi].set_title(grp if not re.fullmatch(r"\d \d \d", grp) else f"weights {grp}")
        axes[-1, gi].set_xlabel("generation")
    for ri, key in enumerate(rows):
        label, better = MEASURES[key]
        axes[ri, 0].set_ylabel(f"population mean\n{label}\n({better})")
    handles = [Line2D([], [], color=FAMILIES[f][1], lw=1.5, label=FAMILIES[f][0] + ": median of runs")
               for f in fams]
    handles.append(Patch(facecolor="0.5", alpha=0.2, label="interquartile range (q25–q75)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
    fig.suptitle("Population means per generation, per preset")
    return fig


def build_parser():
    return folders_parser(__doc__, prog="plots/study.py")


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    exps = load_experiments(args.folders, fields=("logbook[]", "best"))
    apply_style()
    rendered = {}
    for stem, make in [("study_boxplots", figure_boxplots), ("study_curves", figure_curves)]:
        fig = make(exps)
        try:
            rendered[stem] = render_figure(fig, args.dpi)
        finally:
            plt.close(fig)
    for path in save_figures(rendered, args.out or default_plot_dir(args.folders)):
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)

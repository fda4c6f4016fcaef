"""Pareto fronts: test accuracy against compression (network size relative to the parent).

    python plots/pareto.py OUT/weighting121 OUT/pareto121 [OUT/baselines] [--out DIR]

Each FOLDER is an experiment folder (``run_K.json`` files) or a baselines folder
(holding ``baselines.json`` and no run files; ``--baselines`` names one
explicitly). Writes, into ``DIR`` (default: ``plots/`` inside the first FOLDER):

* ``pareto_front.png/.pdf``: one colour per experiment; every run's front thin
  and light, the non-dominated union of all runs of the experiment bold, the
  best network of each run of a weighted-sum experiment as a diamond, the parent
  network as a star at compression 1.0; baselines (L1 / random / activation
  pruning) as grey lines, random pruning with a +-1 std band;
* ``pareto_similarity.png/.pdf``: one panel per experiment, the front points of
  all runs coloured by similarity to the parent (t-SNE KL divergence, lower =
  more similar; one shared colour bar).

Only saved results are read; prints every path written, one per line.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ecomp_deap.errors import ResultsError  # noqa: E402
from ecomp_deap.search.indicators import non_dominated_mask  # noqa: E402
from ecomp_deap.study.plotting import (
    apply_style,
    color_for,
    default_plot_dir,
    folders_parser,
    front_points,
    is_baselines_folder,
    load_baselines,
    load_experiments,
    num,
    render_figure,
    run_cli,
    save_figures,
)

BASELINE_STYLES = {  # method -> (label, colour, linestyle, marker)
    "l1": ("L1-norm pruning", "#222222", "--", "s"),
    "random": ("random pruning (±1 std)", "#777777", ":", "v"),
    "activation": ("activation pruning", "#4d4d4d", "-.", "^"),
}
FALLBACK_BASELINE = ("#555555", (0, (5, 1, 1, 1)), "x")


def union_front(exp) -> np.ndarray:
    """Non-dominated (accuracy max, compression min) points of all runs, by compression."""
    pts = [front_points(r) for r in exp.runs]
    pts = np.concatenate(pts) if pts else np.empty((0, 3))
    if len(pts) == 0:
        return pts
    u = pts[non_dominated_mask(pts[:, :2], (1, -1))]
    u = np.unique(u, axis=0)  # drop duplicated points
    return u[np.argsort(u[:, 1], kind="stable")]


def best_points(exp) -> np.ndarray:
    rows = []
    for r in exp.runs:
        best = r.get("best") or {}
        a, c = num(best.get("test_accuracy")), num(best.get("compression"))
        if math.isfinite(a) and math.isfinite(c):
            rows.append((a, c))
    return np.asarray(rows, dtype=float).reshape(-1, 2)


def parent_points(exps, baselines) -> list[tuple[float, str]]:
    """Distinct parent accuracies with the experiments they belong to."""
    found: dict[float, list[str]] = {}
    for e in exps:
        acc = e.parent_accuracy()
        if math.isfinite(acc):
            found.setdefault(round(acc, 9), []).append(e.name)
    for b in baselines:
        acc = num((b.get("parent") or {}).get("test_accuracy"))
        if math.isfinite(acc):
            found.setdefault(round(acc, 9), []).append("baselines")
    return [(acc, ", ".join(names)) for acc, names in found.items()]


def parent_units(exps) -> str:
    for e in exps:
        units = (e.runs[0].get("parent") or {}).get("hidden_units")
        if isinstance(units, list) and units:
            return "-".join(str(u) for u in units)
    return ""


def draw_parent(ax, parents, units: str, with_label: bool = True) -> None:
    for i, (acc, owners) in enumerate(parents):
        ax.scatter([1.0], [acc], marker="*", s=200, color="black", edgecolor="white", linewidth=0.8,
                   zorder=6, label="parent network" if (with_label and i == 0) else None)
        text = "parent" + (f" ({units})" if units else "") + f"\nacc. {acc:.3f}"
        if len(parents) > 1:
            text += f"\n[{owners}]"
        ax.annotate(text, (1.0, acc), xytext=(-6, -36 - 30 * i), textcoords="offset points",
                    ha="right", va="top", fontsize=8,
                    arrowprops=dict(arrowstyle="-", color="0.4", lw=0.6))


def draw_baselines(ax, baselines) -> None:
    for b in baselines:
        for method, points in b["methods"].items():
            rows = [(num(p.get("compression")), num(p.get("test_accuracy")), num(p.get("test_accuracy_std")))
                    for p in points if isinstance(p, dict)]
            rows = np.asarray([r for r in rows if math.isfinite(r[0]) and math.isfinite(r[1])], dtype=float)
            if len(rows) == 0:
                continue
            rows = rows[np.argsort(rows[:, 0])]
            label, colour, ls, marker = BASELINE_STYLES.get(method, (f"{method} (baseline)", *FALLBACK_BASELINE))
            ax.plot(rows[:, 0], rows[:, 1], linestyle=ls, marker=marker, ms=4, lw=1.3, color=colour,
                    label=label, zorder=2)
            std = np.nan_to_num(rows[:, 2])
            if method == "random" or std.any():
                ax.fill_between(rows[:, 0], rows[:, 1] - std, rows[:, 1] + std, color=colour, alpha=0.15,
                                linewidth=0, zorder=1)


def figure_front(exps, baselines, parents, units):
    fig, ax = plt.subplots(figsize=(7.5, 6.4), layout="constrained")
    for i, exp in enumerate(exps):
        colour = color_for(i)
        for run in exp.runs:
            pts = front_points(run)
            if len(pts):
                pts = pts[np.argsort(pts[:, 1], kind="stable")]
                ax.plot(pts[:, 1], pts[:, 0], "-o", color=colour, lw=0.7, ms=2.5, alpha=0.3, zorder=3)
        u = union_front(exp)
        if len(u):
            ax.plot(u[:, 1], u[:, 0], "-o", color=colour, lw=2.2, ms=4.5, zorder=4,
                    label=f"{exp.label}: non-dominated union of {len(exp.runs)} run(s)")
        if exp.selection == "weighted":
            b = best_points(exp)
            if len(b):
                ax.scatter(b[:, 1], b[:, 0], marker="D", s=42, color=colour, edgecolor="black", linewidth=0.7,
                           zorder=5, label=f"{exp.name}: best network of each run")
    draw_baselines(ax, baselines)
    draw_parent(ax, parents, units)

    handles, labels = ax.get_legend_handles_labels()
    if exps:
        handles.append(Line2D([], [], color="0.5", lw=0.7, marker="o", ms=2.5, alpha=0.5))
        labels.append("thin: front of a single run")
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(labels) > 3 else 1)
    ax.set_xlim(0.0, 1.05)
    ax.set_xlabel("compression: size relative to the parent (fraction of hidden units kept)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Pareto fronts: test accuracy vs. network size")
    return fig


def figure_similarity(exps, parents, units):
    n = max(len(exps), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 1.2, 3.3 * nrows + 0.5), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    all_sim = np.concatenate([front_points(r)[:, 2] for e in exps for r in e.runs] or [np.empty(0)])
    finite = all_sim[np.isfinite(all_sim)]
    norm = None
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        norm = matplotlib.colors.Normalize(lo, hi)
    cmap = matplotlib.colormaps["viridis"]
    missing = False
    for i, exp in enumerate(exps):
        ax = axes.flat[i]
        pts = [front_points(r) for r in exp.runs]
        pts = np.concatenate(pts) if pts else np.empty((0, 3))
        ok = np.isfinite(pts[:, 2])
        if (~ok).any():
            missing = True
            ax.scatter(pts[~ok, 1], pts[~ok, 0], s=18, facecolor="none", edgecolor="0.55", linewidth=0.7,
                       zorder=3)
        if ok.any():
            ax.scatter(pts[ok, 1], pts[ok, 0], c=pts[ok, 2], cmap=cmap, norm=norm, s=22, edgecolor="0.2",
                       linewidth=0.3, zorder=4)
        u = union_front(exp)
        if len(u):
            ax.plot(u[:, 1], u[:, 0], "-", color=color_for(i), lw=1.4, alpha=0.9, zorder=2)
        draw_parent(ax, parents, units, with_label=False)
        ax.set_title(exp.label, fontsize=10)
        ax.set_xlim(0.0, 1.08)
    for ax in axes.flat[len(exps):]:
        ax.set_visible(False)
    if not exps:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no experiment folders given", ha="center", va="center",
                          transform=axes.flat[0].transAxes)
    for ax in axes[-1, :]:
        ax.set_xlabel("compression (size relative to parent)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    if norm is not None:
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.9, pad=0.02)
        cbar.set_label("similarity: t-SNE KL divergence to parent\n(lower = more similar)")
    title = "Pareto-front networks coloured by similarity to the parent"
    if norm is None:
        title += "\n(no similarity recorded)"
    elif missing:
        title += "\n(hollow grey: similarity not recorded)"
    fig.suptitle(title)
    return fig


def build_parser():
    parser = folders_parser(__doc__, prog="plots/pareto.py",
                            folders_help="experiment results folders (OUT/NAME) and/or baselines folders")
    parser.add_argument("--baselines", metavar="DIR", action="append", default=[],
                        help="a baselines folder (holding baselines.json); may be repeated")
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    base_folders = list(args.baselines) + [f for f in args.folders if is_baselines_folder(f)]
    exp_folders = [f for f in args.folders if not is_baselines_folder(f)]
    baselines = [load_baselines(f) for f in base_folders]
    exps = load_experiments(exp_folders, fields=("front[]", "best", "parent"))
    if not exps and not baselines:
        raise ResultsError("nothing to plot")
    apply_style()
    parents = parent_points(exps, baselines)
    units = parent_units(exps)
    rendered = {"pareto_front": None, "pareto_similarity": None}
    for stem, make in [("pareto_front", lambda: figure_front(exps, baselines, parents, units)),
                       ("pareto_similarity", lambda: figure_similarity(exps, parents, units))]:
        fig = make()
        try:
            rendered[stem] = render_figure(fig, args.dpi)
        finally:
            plt.close(fig)
    out = args.out or default_plot_dir(args.folders)
    for path in save_figures(rendered, out):
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)

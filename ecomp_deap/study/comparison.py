"""Statistics behind ``experiments/compare.py``: summaries and pairwise tests.

Everything here takes plain data -- ``(name, runs)`` pairs where ``runs`` is the
list of run dictionaries of :func:`ecomp_deap.study.results.load_experiment` -- and
returns plain rows (dicts), so it is testable without files or subprocesses.

* :func:`summary_row` / :func:`summary_rows`: per experiment, its first objective
  (accuracy on labels, or fidelity to the parent's predictions for runs without
  labels), the median and interquartile range (25th-75th percentile, linear
  interpolation as ``numpy.percentile``) of the best network's test accuracy (on the
  test labels, whatever the objective), test fidelity (runs without labels), compression
  and similarity, and the median test hypervolume. Null values are left out.
* :func:`pairwise_rows`: for every pair of experiments, the two-sided
  Mann-Whitney U p-value on test hypervolume and on best test accuracy; ``None``
  (printed ``n/a``) when a group has fewer than two values.
* :func:`front_at_size` / :func:`size_rows`: per size budget (fraction of the parent's
  hidden units), the test accuracy of each run's front network chosen on validation
  accuracy, against the pruning baselines at that size.
* :func:`finetune_rows`: the same sizes before and after N epochs of fine-tuning, from
  the ``finetune.json`` files of ``experiments/finetune.py`` (:mod:`ecomp_deap.study.fine_tuning`).
* :func:`markdown_table`, :func:`format_report`: the tables as Markdown.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import SIZE_TOL

NA = "n/a"

# (row key prefix, path in the run dict, table heading)
BEST_MEASURES = [
    ("accuracy", ("best", "test_accuracy"), "best test accuracy"),
    ("fidelity", ("best", "test_fidelity"), "best test fidelity"),
    ("compression", ("best", "compression"), "best compression"),
    ("similarity", ("best", "similarity"), "best similarity"),
]

SUMMARY_FIELDS = [
    "name", "selection", "objective", "runs",
    "accuracy_median", "accuracy_q25", "accuracy_q75",
    "fidelity_median", "fidelity_q25", "fidelity_q75",
    "compression_median", "compression_q25", "compression_q75",
    "similarity_median", "similarity_q25", "similarity_q75",
    "hypervolume_median",
]

PAIRWISE_FIELDS = [
    "experiment_a", "experiment_b", "n_a", "n_b",
    "p_hypervolume", "p_accuracy",
]
HOLM_FIELDS = ["p_hypervolume_holm", "p_accuracy_holm"]  # with more than one pair


def _get(run: dict, path: Sequence[str]) -> Any:
    obj: Any = run
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def finite_values(values: Iterable[Any]) -> np.ndarray:
    """The finite numbers among ``values`` (None, NaN, inf and non-numbers dropped)."""
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return np.asarray(out, dtype=float)


def median_iqr(values: Iterable[Any]) -> tuple[float | None, float | None, float | None]:
    """``(median, q25, q75)`` of the finite values; ``(None, None, None)`` when there are none."""
    v = finite_values(values)
    if len(v) == 0:
        return None, None, None
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return float(med), float(q25), float(q75)


def run_values(runs: Sequence[dict], path: Sequence[str]) -> list[Any]:
    """Each run's value at ``path`` (keys into nested dicts); None where it is missing."""
    return [_get(r, path) for r in runs]


def selection_mode(runs: Sequence[dict]) -> str:
    """The runs' common ``selection`` ('weighted', 'nsga2'), or 'mixed'."""
    modes = {str(r.get("selection")) for r in runs}
    return modes.pop() if len(modes) == 1 else "mixed"


def objective_of(runs: Sequence[dict]) -> str:
    """The runs' common first objective ('accuracy', 'fidelity'; files without the setting
    are 'accuracy'), or 'mixed'."""
    found = {str(_get(r, ("config", "accuracy_objective")) or "accuracy") for r in runs}
    return found.pop() if len(found) == 1 else "mixed"


def summary_row(name: str, runs: Sequence[dict]) -> dict:
    """One experiment's row of :data:`SUMMARY_FIELDS`: its selection mode, its first
    objective, its number of runs, the median and quartiles of each best-network measure
    and the median test hypervolume."""
    row: dict[str, Any] = {"name": name, "selection": selection_mode(runs), "objective": objective_of(runs),
                           "runs": len(runs)}
    for key, path, _ in BEST_MEASURES:
        med, q25, q75 = median_iqr(run_values(runs, path))
        row[f"{key}_median"], row[f"{key}_q25"], row[f"{key}_q75"] = med, q25, q75
    row["hypervolume_median"] = median_iqr(run_values(runs, ("test_hypervolume",)))[0]
    return row


def summary_rows(experiments: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    """:func:`summary_row` of each ``(name, runs)`` pair."""
    return [summary_row(name, runs) for name, runs in experiments]


def mann_whitney_p(a: Iterable[Any], b: Iterable[Any]) -> float | None:
    """Two-sided Mann-Whitney U p-value, or ``None`` with fewer than 2 values in a group."""
    from scipy.stats import mannwhitneyu

    x, y = finite_values(a), finite_values(b)
    if len(x) < 2 or len(y) < 2:
        return None
    p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else None


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the given
    order; ``None`` entries are not tests and stay ``None``."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, running = len(idx), 0.0
    out: list[float | None] = [None] * len(pvalues)
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def experiment_pairs(experiments, against: str | None = None):
    """Every pair of experiments, or with ``against`` each other experiment paired with that one."""
    if against is None:
        return list(itertools.combinations(experiments, 2))
    named = [e for e in experiments if e[0] == against]
    if not named:
        from ..errors import ConfigError

        raise ConfigError(f"--against {against}: no such experiment among {', '.join(n for n, _ in experiments)}")
    return [(named[0], e) for e in experiments if e[0] != against]


def pairwise_rows(experiments: Sequence[tuple[str, Sequence[dict]]], against: str | None = None) -> list[dict]:
    """Mann-Whitney U p-values for every pair (or each experiment against ``against``);
    with more than one pair, Holm-adjusted p-values per measure too (``*_holm``)."""
    rows = []
    for (name_a, runs_a), (name_b, runs_b) in experiment_pairs(experiments, against):
        rows.append({
            "experiment_a": name_a,
            "experiment_b": name_b,
            "n_a": len(runs_a),
            "n_b": len(runs_b),
            "p_hypervolume": mann_whitney_p(run_values(runs_a, ("test_hypervolume",)),
                                            run_values(runs_b, ("test_hypervolume",))),
            "p_accuracy": mann_whitney_p(run_values(runs_a, ("best", "test_accuracy")),
                                         run_values(runs_b, ("best", "test_accuracy"))),
        })
    if len(rows) > 1:
        for key in ("p_hypervolume", "p_accuracy"):
            for row, adj in zip(rows, holm([r[key] for r in rows])):
                row[f"{key}_holm"] = adj
    return rows


# --------------------------------------------------------------------------- sizes


def front_at_size(run: dict, size: float) -> dict | None:
    """The run's front network for a budget of ``size`` (fraction of the parent's hidden
    units): among its front points with compression <= size, the one with the best
    validation accuracy (train accuracy when the run has no validation split; a run
    without labels: its validation, else train, fidelity; ties: the smaller network).
    The test set plays no part in the choice. None when no front point is that small."""
    points = [p for p in run.get("front") or [] if isinstance(p, dict)
              and p.get("compression") is not None and p["compression"] <= size + SIZE_TOL]
    if not points:
        return None
    measure = objective_of([run])
    key = f"val_{measure}" if all(p.get(f"val_{measure}") is not None for p in points) else f"train_{measure}"
    return max(points, key=lambda p: (p.get(key) or 0.0, -p["compression"]))


def baseline_at_size(baselines: dict, method: str, size: float) -> float | None:
    """A baseline method's test accuracy at exactly ``size`` (None when not measured)."""
    for point in baselines.get("methods", {}).get(method, []):
        if abs(float(point.get("size", -1)) - size) <= 1e-6:
            return point.get("test_accuracy")
    return None


def size_rows(experiments: Sequence[tuple[str, Sequence[dict]]], sizes: Sequence[float],
              baselines: dict | None = None) -> list[dict]:
    """Per size: each experiment's median [q25-q75] over runs of the test accuracy of
    :func:`front_at_size` (runs without so small a front point are counted as missing),
    the baselines' test accuracies at that size and the parent's."""
    parents = [_get(r, ("parent", "test_accuracy")) for _, runs in experiments for r in runs]
    parent = finite_values(parents)
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"size": float(size),
                               "parent_accuracy": float(np.median(parent)) if len(parent) else None}
        values = []
        for name, runs in experiments:
            picks = [front_at_size(r, size) for r in runs]
            values.append([p["test_accuracy"] for p in picks if p is not None])
            med, q25, q75 = median_iqr(values[-1])
            row[name] = {"median": med, "q25": q25, "q75": q75, "runs": sum(p is not None for p in picks)}
        if len(experiments) == 2:  # two experiments: are they different at this size?
            row["p_value"] = mann_whitney_p(*values)
        for method in (baselines or {}).get("methods", {}):
            row[f"baseline_{method}"] = baseline_at_size(baselines, method, size)
        rows.append(row)
    return rows


def size_markdown(rows: Sequence[dict], names: Sequence[str]) -> str:
    """One row per size budget for one or two experiments; with more, one row per
    experiment (then the baselines and the parent) and the sizes as columns."""
    if len(names) > 2:
        return size_markdown_by_experiment(rows, names)
    methods = [k[len("baseline_"):] for k in (rows[0] if rows else {}) if k.startswith("baseline_")]
    paired = bool(rows) and "p_value" in rows[0]
    headers = (["hidden units kept"] + [f"{n} median [q25–q75] (runs)" for n in names]
               + (["p (Mann–Whitney U)"] if paired else []) + [f"{m} pruning" for m in methods] + ["parent"])
    body = []
    for r in rows:
        cells = [f"≤ {100 * r['size']:g} %"]
        for n in names:
            e = r[n]
            cells.append(f"{fmt_median_iqr(e['median'], e['q25'], e['q75'])} ({e['runs']})")
        if paired:
            cells.append(fmt_p(r["p_value"]))
        cells += [fmt_number(r[f"baseline_{m}"]) for m in methods]
        cells.append(fmt_number(r["parent_accuracy"]))
        body.append(cells)
    return markdown_table(headers, body, ["l"] + ["r"] * (len(headers) - 1))


def size_markdown_by_experiment(rows: Sequence[dict], names: Sequence[str]) -> str:
    """The size table with the experiments as rows and the size budgets as columns
    (:func:`rows_as_columns_markdown`)."""
    return rows_as_columns_markdown(rows, names, "hidden units kept",
                                    [f"≤ {100 * r['size']:g} % median [q25–q75] (runs)" for r in rows])


def rows_as_columns_markdown(rows: Sequence[dict], names: Sequence[str], first: str, labels: Sequence[str]) -> str:
    """A table whose columns are ``rows`` (labelled ``labels``) and whose rows are the
    experiments (median [q25–q75] (runs)), the baseline methods and the parent."""
    methods = [k[len("baseline_"):] for k in (rows[0] if rows else {}) if k.startswith("baseline_")]
    body = [[n] + [f"{fmt_median_iqr(r[n]['median'], r[n]['q25'], r[n]['q75'])} ({r[n]['runs']})" for r in rows]
            for n in names]
    body += [[f"{m} pruning"] + [fmt_number(r[f"baseline_{m}"]) for r in rows] for m in methods]
    body.append(["parent"] + [fmt_number(r["parent_accuracy"]) for r in rows])
    return markdown_table([first, *labels], body, ["l"] + ["r"] * len(rows))


def flat_csv_rows(rows: Sequence[dict], names: Sequence[str], leading: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Flat rows for ``save_csv`` and their field names: the ``leading`` keys of each row
    (its size, and epochs), each experiment's median, quartiles and run count, the
    p-value when the rows have one, the baselines and the parent; ``None`` as ``n/a``."""
    methods = [k for k in (rows[0] if rows else {}) if k.startswith("baseline_")]
    paired = ["p_value"] if rows and "p_value" in rows[0] else []
    fields = (list(leading) + [f"{n}_{s}" for n in names for s in ("median", "q25", "q75", "runs")] + paired
              + methods + ["parent_accuracy"])
    out = []
    for r in rows:
        flat = {k: r.get(k) for k in (*leading, *paired, "parent_accuracy")}
        for n in names:
            flat.update({f"{n}_{s}": r[n][s] for s in ("median", "q25", "q75", "runs")})
        flat.update({m: r[m] for m in methods})
        out.append({f: (NA if flat.get(f) is None else flat[f]) for f in fields})
    return out, fields


def size_csv_rows(rows: Sequence[dict], names: Sequence[str]) -> tuple[list[dict], list[str]]:
    """:func:`flat_csv_rows` of the size table (one row per size)."""
    return flat_csv_rows(rows, names, ("size",))


# --------------------------------------------------------------------------- fine-tuning


def epoch_label(n: int) -> str:
    """A column label for ``n`` epochs of fine-tuning ('not fine-tuned' for 0)."""
    return "not fine-tuned" if n == 0 else f"after {n} epoch{'s' if n != 1 else ''} of fine-tuning"


def finetune_epochs(tuned: dict, baselines_tuned: dict | None) -> list[int]:
    """Every epoch count recorded in the fine-tuning results (0: before fine-tuning)."""
    entries = [e for body in tuned.values() for e in body.get("runs") or []]
    entries += [p for rows in (baselines_tuned or {}).get("methods", {}).values() for p in rows]
    entries += [body["parent"] for body in [*tuned.values(), baselines_tuned or {}] if body.get("parent")]
    return sorted({int(k) for e in entries for k in (e.get("after_epochs") or {})})


def finetune_rows(names: Sequence[str], tuned: dict, baselines_tuned: dict | None,
                  sizes: Sequence[float]) -> list[dict]:
    """Per size and epoch count N (0 = before fine-tuning): each experiment's median
    [q25-q75] over runs of the test accuracy of its fine-tuned network (``tuned[name]``,
    an experiment's ``finetune.json``), counting the runs whose network has at most that
    size; each baseline method's fine-tuned pruning at exactly that size (random: mean
    over its seeds); the parent fine-tuned by the same recipe."""
    epochs = finetune_epochs(tuned, baselines_tuned)
    parent = (baselines_tuned or {}).get("parent") or next(
        (b["parent"] for b in tuned.values() if b.get("parent")), None)
    methods = list((baselines_tuned or {}).get("methods", {}))
    rows = []
    for size in sizes:
        for n in epochs:
            row: dict[str, Any] = {"size": float(size), "epochs": n}
            for name in names:
                entries = [e for e in (tuned.get(name) or {}).get("runs") or []
                           if e.get("compression") is not None and e["compression"] <= size + SIZE_TOL]
                vals = finite_values((e.get("after_epochs") or {}).get(str(n)) for e in entries)
                med, q25, q75 = median_iqr(vals)
                row[name] = {"median": med, "q25": q25, "q75": q75, "runs": len(vals)}
            for method in methods:
                point = next((p for p in baselines_tuned["methods"][method]
                              if abs(float(p.get("size", -1)) - size) <= 1e-6), None)
                row[f"baseline_{method}"] = (point.get("after_epochs") or {}).get(str(n)) if point else None
            row["parent_accuracy"] = (parent.get("after_epochs") or {}).get(str(n)) if parent else None
            rows.append(row)
    return rows


def finetune_markdown(rows: Sequence[dict], names: Sequence[str]) -> str:
    """One row per experiment, baseline and the parent; per size, one column per epoch
    count: not fine-tuned, then after N epochs of fine-tuning."""
    return rows_as_columns_markdown(rows, names, "network",
                                    [f"≤ {100 * r['size']:g} %, {epoch_label(r['epochs'])}" for r in rows])


def finetune_csv_rows(rows: Sequence[dict], names: Sequence[str]) -> tuple[list[dict], list[str]]:
    """:func:`flat_csv_rows` of the fine-tuning table (one row per size and epoch count)."""
    return flat_csv_rows(rows, names, ("size", "epochs"))


# --------------------------------------------------------------------------- formatting


def fmt_number(x: Any, digits: int = 4) -> str:
    """A number for a table: an integer as it is, anything else with ``digits`` decimals;
    None, NaN and infinities as 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value for a table: 4 decimals, scientific notation below 0.001; None as 'n/a'."""
    if p is None:
        return NA
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def fmt_median_iqr(med, q25, q75, digits: int = 4) -> str:
    """'median [q25–q75]' with ``digits`` decimals; 'n/a' without a median."""
    if med is None:
        return NA
    return f"{fmt_number(med, digits)} [{fmt_number(q25, digits)}–{fmt_number(q75, digits)}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` items are ``"l"`` or ``"r"``."""
    align = list(align or ["l"] * len(headers))
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    heads = [str(h).replace("|", "\\|") for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]

    def line(items):
        out = []
        for i, item in enumerate(items):
            out.append(item.rjust(widths[i]) if align[i] == "r" else item.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(heads), rule] + [line(r) for r in cells])


def summary_markdown(rows: Sequence[dict]) -> str:
    """The summary table (:func:`summary_rows`) as Markdown; the test fidelity column only
    when some experiment has one (runs without labels)."""
    measures = [m for m in BEST_MEASURES if m[0] != "fidelity" or any(r["fidelity_median"] is not None for r in rows)]
    headers = ["experiment", "selection", "objective", "runs"] + [
        f"{heading} median [q25–q75]" for _, _, heading in measures] + ["median test hypervolume"]
    body = []
    for r in rows:
        body.append([r["name"], r["selection"], r["objective"], r["runs"]]
                    + [fmt_median_iqr(r[f"{k}_median"], r[f"{k}_q25"], r[f"{k}_q75"]) for k, _, _ in measures]
                    + [fmt_number(r["hypervolume_median"])])
    return markdown_table(headers, body, ["l", "l", "l"] + ["r"] * (len(headers) - 3))


def pairwise_markdown(rows: Sequence[dict]) -> str:
    """The pairwise tests (:func:`pairwise_rows`) as Markdown, with the Holm-adjusted
    columns when the rows have them."""
    headers = ["experiment A", "experiment B", "runs A", "runs B",
               "p (test hypervolume)", "p (best test accuracy)"]
    adjusted = bool(rows) and "p_accuracy_holm" in rows[0]
    if adjusted:
        headers += ["Holm p (test hypervolume)", "Holm p (best test accuracy)"]
    body = [[r["experiment_a"], r["experiment_b"], r["n_a"], r["n_b"],
             fmt_p(r["p_hypervolume"]), fmt_p(r["p_accuracy"])]
            + ([fmt_p(r["p_hypervolume_holm"]), fmt_p(r["p_accuracy_holm"])] if adjusted else []) for r in rows]
    return markdown_table(headers, body, ["l", "l"] + ["r"] * (len(headers) - 2))


def pairwise_fields(rows: Sequence[dict]) -> list[str]:
    """The CSV columns of :func:`pairwise_rows`'s rows: :data:`PAIRWISE_FIELDS`, and
    :data:`HOLM_FIELDS` when the rows have them."""
    return PAIRWISE_FIELDS + (HOLM_FIELDS if rows and "p_accuracy_holm" in rows[0] else [])


# ------------------------------------------------------------------ published table

PUBLISHED_FIELDS = [
    "weights", "name", "runs",
    "published_accuracy_median", "published_accuracy_min", "published_accuracy_max",
    "accuracy_median", "accuracy_min", "accuracy_max", "accuracy_in_range",
    "published_compression_median", "published_compression_min", "published_compression_max",
    "compression_median", "compression_min", "compression_max", "compression_in_range", "parent_accuracy",
]


def median_min_max(values: Iterable[Any]) -> tuple[float | None, float | None, float | None]:
    """``(median, min, max)`` of the finite values; ``(None, None, None)`` when there are none."""
    v = finite_values(values)
    if len(v) == 0:
        return None, None, None
    return float(np.median(v)), float(v.min()), float(v.max())


def published_rows(experiments: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    """For each experiment named ``weightingABC`` or ``ref-weightingABC``: the reference's
    published median [min-max] beside ours (best test accuracy; the final population's
    mean compression) and whether our median lies in the published range. Ordered by
    weighting, then as given."""
    from .published import published_for, weighting_code

    rows = []
    for name, runs in experiments:
        pub = published_for(name)
        if pub is None:
            continue
        row: dict[str, Any] = {"weights": " ".join(weighting_code(name)), "name": name, "runs": len(runs)}
        parent = finite_values(run_values(runs, ("parent", "test_accuracy")))
        row["parent_accuracy"] = float(np.median(parent)) if len(parent) else None
        for key, path, p in (("accuracy", ("best", "test_accuracy"), pub[0]),
                             ("compression", ("final_population", "compression"), pub[1])):
            med, lo, hi = median_min_max(run_values(runs, path))
            row.update({f"published_{key}_median": p.median, f"published_{key}_min": p.low,
                        f"published_{key}_max": p.high, f"{key}_median": med, f"{key}_min": lo,
                        f"{key}_max": hi, f"{key}_in_range": p.contains(med)})
        rows.append(row)
    order = {code: i for i, code in enumerate(sorted({r["weights"] for r in rows}))}
    return sorted(rows, key=lambda r: order[r["weights"]])  # stable: as given within a weighting


def family(name: str) -> str:
    """An experiment's family for the rank correlations: 'ref-weighting*' for a ``ref-``
    name, else 'weighting*'."""
    return "ref-weighting*" if name.startswith("ref-") else "weighting*"


def rank_correlations(rows: Sequence[dict]) -> list[dict]:
    """Per family of experiments (``ref-weighting*``, ``weighting*``) with at least three
    weightings: Spearman's rank correlation between our medians and the published ones,
    for best test accuracy and final mean compression (with scipy's p-value)."""
    from scipy.stats import spearmanr

    out = []
    for fam in ("ref-weighting*", "weighting*"):
        members = [r for r in rows if family(r["name"]) == fam]
        entry: dict[str, Any] = {"family": fam, "weightings": len(members)}
        if len(members) < 3:
            continue
        for key in ("accuracy", "compression"):
            pairs = [(r[f"{key}_median"], r[f"published_{key}_median"]) for r in members
                     if r[f"{key}_median"] is not None]
            rho = p = None
            if len(pairs) >= 3:
                res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
                rho, p = float(res.statistic), float(res.pvalue)
                rho, p = (rho, p) if math.isfinite(rho) else (None, None)
            entry[f"{key}_rho"], entry[f"{key}_p"] = rho, p
        entry["in_range"] = sum(bool(r["accuracy_in_range"]) and bool(r["compression_in_range"]) for r in members)
        out.append(entry)
    return out


def fmt_range(med, lo, hi, digits: int = 3) -> str:
    """'median [min–max]' with ``digits`` decimals; 'n/a' without a median."""
    if med is None:
        return NA
    return f"{med:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def fmt_in(flag: bool | None) -> str:
    """'yes', 'no', or 'n/a' for None."""
    return NA if flag is None else ("yes" if flag else "no")


def published_markdown(rows: Sequence[dict], correlations: Sequence[dict] = ()) -> str:
    """The reference's published table beside ours (:func:`published_rows`) in Markdown,
    after a paragraph that explains it; with ``correlations`` (:func:`rank_correlations`),
    their table follows."""
    from .published import PARENT, RUNS

    headers = ["weights (a s c)", "experiment", "runs",
               "best test accuracy: published", "ours", "in range",
               "final mean compression: published", "ours", "in range"]
    body = []
    for r in rows:
        cells = [r["weights"], r["name"], r["runs"]]
        for key in ("accuracy", "compression"):
            cells += [fmt_range(r[f"published_{key}_median"], r[f"published_{key}_min"], r[f"published_{key}_max"]),
                      fmt_range(r[f"{key}_median"], r[f"{key}_min"], r[f"{key}_max"]), fmt_in(r[f"{key}_in_range"])]
        body.append(cells)
    ours = sorted({round(r["parent_accuracy"], 4) for r in rows if r.get("parent_accuracy") is not None})
    parts = [f"The reference's {RUNS} runs per weighting (its parent {PARENT['architecture']}, test accuracy "
             f"{PARENT['test_accuracy']}; ours: {', '.join(f'{a:.4f}' for a in ours) or NA}) beside ours: median [min–max] over the runs of the best network's test "
             "accuracy and of the final population's mean compression (fraction of the parent's hidden units). "
             "In range: our median lies inside the published [min–max] (at its 3 decimals).",
             "", markdown_table(headers, body, ["l", "l"] + ["r"] * 7)]
    if correlations:
        ch = ["experiments", "weightings", "both medians in range", "Spearman ρ accuracy (p)",
              "Spearman ρ compression (p)"]
        cb = [[c["family"], c["weightings"], c["in_range"]]
              + [NA if c[f"{k}_rho"] is None else f"{c[f'{k}_rho']:.3f} ({fmt_p(c[f'{k}_p'])})"
                 for k in ("accuracy", "compression")] for c in correlations]
        parts += ["", "Rank correlation of our medians with the published medians, over the weightings shown:",
                  "", markdown_table(ch, cb, ["l", "r", "r", "r", "r"])]
    return "\n".join(parts)


def format_report(summary: Sequence[dict], pairs: Sequence[dict], sizes: Sequence[dict] = (),
                  published: Sequence[dict] = (), correlations: Sequence[dict] = (),
                  against: str | None = None, finetune: Sequence[dict] = (), finetune_names: Sequence[str] = (),
                  recipe: str = "") -> str:
    """The whole comparison as Markdown (summary table, the pairwise tests, the
    accuracy-at-size table when ``sizes`` rows are given, the same sizes before and
    after fine-tuning when ``finetune`` rows (:func:`finetune_rows`) are given, and the
    reference's published table beside ours when ``published`` rows are given)."""
    parts = [
        "## Experiments",
        "",
        "Best network of each run: median and interquartile range [25th–75th percentile] "
        "across runs. Objective: what the search's first objective measured, accuracy (the "
        "labels) or fidelity (agreement with the parent's top-1 predictions: no training or "
        "validation label read); test accuracy is on the test labels either way. Accuracy and "
        "fidelity: higher is better; compression (fraction of the parent's "
        "hidden units kept) and similarity (t-SNE KL divergence): lower is better.",
        "",
        summary_markdown(summary),
        "",
        "## Pairwise tests",
        "",
    ]
    if pairs:
        parts += [
            "Two-sided Mann–Whitney U test p-values (scipy.stats.mannwhitneyu); "
            f"{NA} where a group has fewer than 2 runs"
            + (f"; every experiment against {against}" if against else "")
            + ("; Holm's step-down correction over the rows shown, per measure." if "p_accuracy_holm" in pairs[0]
               else "."),
            "",
            pairwise_markdown(pairs),
        ]
    else:
        parts.append("Only one experiment given: no pairwise tests.")
    if sizes:
        names = [r["name"] for r in summary]
        parts += [
            "",
            "## Test accuracy at a size budget",
            "",
            "Per run, the front network with at most that fraction of the parent's hidden units "
            "and the best validation accuracy (runs without labels: fidelity; chosen without the "
            "test set); median and "
            "interquartile range of its test accuracy across runs (runs with such a network in "
            "brackets); with two experiments, the two-sided Mann–Whitney U p-value between them. "
            "Baselines: structured pruning to exactly that size, no retraining"
            + ("; '+refit': its Linear layers then refitted to the parent by closed-form least squares "
               "(ecomp_deap.nets.refit, no gradient), as evolved runs with refit_images are."
               if any(k.endswith("+refit") for k in (sizes[0] if sizes else {})) else "."),
            "",
            size_markdown(sizes, names),
        ]
    if finetune:
        parts += [
            "",
            "## Test accuracy at a size budget, before and after fine-tuning",
            "",
            "Each run's exported network (run_K.pt, counted at every size it fits) and the baseline prunings at "
            "exactly that size, each fine-tuned by one recipe"
            + (f" ({recipe})" if recipe else "")
            + " on the training images outside the validation split; median and interquartile range of the "
            "test accuracy across runs (runs in brackets). Baselines: L1 and activation one network each, random "
            "the mean over its seeds. Parent: fine-tuned by the same recipe (the control).",
            "",
            finetune_markdown(finetune, finetune_names),
        ]
    if published:
        parts += ["", "## The reference study's published table", "", published_markdown(published, correlations)]
    return "\n".join(parts) + "\n"


def csv_rows(rows: Sequence[dict], fields: Sequence[str]) -> list[dict]:
    """Rows for ``save_csv``: numbers at full precision, ``None`` as ``n/a``."""
    out = []
    for r in rows:
        out.append({f: (NA if r.get(f) is None else r.get(f)) for f in fields})
    return out

"""Statistics behind ``experiments/compare.py``: summaries and pairwise tests.

Everything here takes plain data -- ``(name, runs)`` pairs where ``runs`` is the
list of run dictionaries of :func:`ecomp_deap.results.load_experiment` -- and
returns plain rows (dicts), so it is testable without files or subprocesses.

* :func:`summary_row` / :func:`summary_rows`: per experiment, the median and
  interquartile range (25th-75th percentile, linear interpolation as
  ``numpy.percentile``) of the best network's test accuracy, compression and
  similarity, and the median test hypervolume. Null values are left out.
* :func:`pairwise_rows`: for every pair of experiments, the two-sided
  Mann-Whitney U p-value on test hypervolume and on best test accuracy; ``None``
  (printed ``n/a``) when a group has fewer than two values.
* :func:`markdown_table`, :func:`format_report`: the tables as Markdown.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import numpy as np

NA = "n/a"

# (row key prefix, path in the run dict, table heading)
BEST_MEASURES = [
    ("accuracy", ("best", "test_accuracy"), "best test accuracy"),
    ("compression", ("best", "compression"), "best compression"),
    ("similarity", ("best", "similarity"), "best similarity"),
]

SUMMARY_FIELDS = [
    "name", "selection", "runs",
    "accuracy_median", "accuracy_q25", "accuracy_q75",
    "compression_median", "compression_q25", "compression_q75",
    "similarity_median", "similarity_q25", "similarity_q75",
    "hypervolume_median",
]

PAIRWISE_FIELDS = [
    "experiment_a", "experiment_b", "n_a", "n_b",
    "p_hypervolume", "p_accuracy",
]


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
    return [_get(r, path) for r in runs]


def selection_mode(runs: Sequence[dict]) -> str:
    modes = {str(r.get("selection")) for r in runs}
    return modes.pop() if len(modes) == 1 else "mixed"


def summary_row(name: str, runs: Sequence[dict]) -> dict:
    row: dict[str, Any] = {"name": name, "selection": selection_mode(runs), "runs": len(runs)}
    for key, path, _ in BEST_MEASURES:
        med, q25, q75 = median_iqr(run_values(runs, path))
        row[f"{key}_median"], row[f"{key}_q25"], row[f"{key}_q75"] = med, q25, q75
    row["hypervolume_median"] = median_iqr(run_values(runs, ("test_hypervolume",)))[0]
    return row


def summary_rows(experiments: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    return [summary_row(name, runs) for name, runs in experiments]


def mann_whitney_p(a: Iterable[Any], b: Iterable[Any]) -> float | None:
    """Two-sided Mann-Whitney U p-value, or ``None`` with fewer than 2 values in a group."""
    from scipy.stats import mannwhitneyu

    x, y = finite_values(a), finite_values(b)
    if len(x) < 2 or len(y) < 2:
        return None
    p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else None


def pairwise_rows(experiments: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    rows = []
    for (name_a, runs_a), (name_b, runs_b) in itertools.combinations(experiments, 2):
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
    return rows


# --------------------------------------------------------------------------- formatting


def fmt_number(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return NA
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def fmt_median_iqr(med, q25, q75, digits: int = 4) -> str:
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
    headers = ["experiment", "selection", "runs"] + [
        f"{heading} median [q25–q75]" for _, _, heading in BEST_MEASURES] + ["median test hypervolume"]
    body = []
    for r in rows:
        body.append([r["name"], r["selection"], r["runs"]]
                    + [fmt_median_iqr(r[f"{k}_median"], r[f"{k}_q25"], r[f"{k}_q75"]) for k, _, _ in BEST_MEASURES]
                    + [fmt_number(r["hypervolume_median"])])
    return markdown_table(headers, body, ["l", "l", "r", "r", "r", "r", "r"])


def pairwise_markdown(rows: Sequence[dict]) -> str:
    headers = ["experiment A", "experiment B", "runs A", "runs B",
               "p (test hypervolume)", "p (best test accuracy)"]
    body = [[r["experiment_a"], r["experiment_b"], r["n_a"], r["n_b"],
             fmt_p(r["p_hypervolume"]), fmt_p(r["p_accuracy"])] for r in rows]
    return markdown_table(headers, body, ["l", "l", "r", "r", "r", "r"])


def format_report(summary: Sequence[dict], pairs: Sequence[dict]) -> str:
    """The whole comparison as Markdown (summary table, then the pairwise tests)."""
    parts = [
        "## Experiments",
        "",
        "Best network of each run: median and interquartile range [25th–75th percentile] "
        "across runs. Accuracy: higher is better; compression (fraction of the parent's "
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
            f"{NA} where a group has fewer than 2 runs.",
            "",
            pairwise_markdown(pairs),
        ]
    else:
        parts.append("Only one experiment given: no pairwise tests.")
    return "\n".join(parts) + "\n"


def csv_rows(rows: Sequence[dict], fields: Sequence[str]) -> list[dict]:
    """Rows for ``save_csv``: numbers at full precision, ``None`` as ``n/a``."""
    out = []
    for r in rows:
        out.append({f: (NA if r.get(f) is None else r.get(f)) for f in fields})
    return out

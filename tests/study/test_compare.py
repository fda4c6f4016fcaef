"""experiments/compare.py and the statistics in ecomp_deap.study.comparison."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

try:
    from fixtures_results import make_all, make_experiment
except ImportError:  # tests/ imported as a package
    from tests.fixtures_results import make_all, make_experiment

from ecomp_deap.files import save_json
from ecomp_deap.study import comparison
from ecomp_deap.study.results import load_experiment

REPO = Path(__file__).resolve().parents[2]


def run_compare(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "experiments/compare.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def fake_run(acc, comp=0.5, sim=1.0, hv=0.5, selection="nsga2"):
    return {"selection": selection, "best": {"test_accuracy": acc, "compression": comp, "similarity": sim},
            "test_hypervolume": hv}


# --------------------------------------------------------------------------- functions


def test_median_iqr_known_values():
    assert comparison.median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0, 4.0)
    assert comparison.median_iqr([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.75, 3.25)
    assert comparison.median_iqr([7.0]) == (7.0, 7.0, 7.0)
    # null / non-finite values are left out
    assert comparison.median_iqr([None, 1.0, float("nan"), 3.0, float("inf")]) == (2.0, 1.5, 2.5)
    assert comparison.median_iqr([]) == (None, None, None)
    assert comparison.median_iqr([None, None]) == (None, None, None)


def test_summary_row_known_values():
    runs = [fake_run(0.80, 0.2, 1.0, 0.4), fake_run(0.84, 0.4, 2.0, 0.5), fake_run(0.82, 0.3, None, 0.6),
            fake_run(None, 0.1, 3.0, None)]
    row = comparison.summary_row("exp", runs)
    assert row["name"] == "exp" and row["selection"] == "nsga2" and row["runs"] == 4
    assert row["accuracy_median"] == pytest.approx(0.82)
    assert row["accuracy_q25"] == pytest.approx(0.81)
    assert row["accuracy_q75"] == pytest.approx(0.83)
    assert (row["compression_median"], row["compression_q25"], row["compression_q75"]) == pytest.approx(
        (0.25, 0.175, 0.325))
    assert (row["similarity_median"], row["similarity_q25"], row["similarity_q75"]) == pytest.approx(
        (2.0, 1.5, 2.5))
    assert row["hypervolume_median"] == pytest.approx(0.5)
    assert set(comparison.SUMMARY_FIELDS) == set(row)


def test_mixed_selection_and_empty_measures():
    row = comparison.summary_row("x", [fake_run(None, None, None, None, "weighted"), fake_run(None, None, None,
                                                                                                 None, "nsga2")])
    assert row["selection"] == "mixed"
    assert row["accuracy_median"] is None and row["hypervolume_median"] is None
    md = comparison.summary_markdown([row])
    assert "n/a" in md


def test_pairwise_p_values_match_scipy():
    a = [fake_run(x, hv=h) for x, h in [(0.80, 0.41), (0.81, 0.45), (0.79, 0.43), (0.83, 0.40)]]
    b = [fake_run(x, hv=h) for x, h in [(0.85, 0.52), (0.86, 0.50), (0.84, 0.47)]]
    c = [fake_run(0.9, hv=0.6)]  # a single run: no test
    rows = comparison.pairwise_rows([("a", a), ("b", b), ("c", c)])
    assert [(r["experiment_a"], r["experiment_b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = rows[0]
    assert ab["n_a"] == 4 and ab["n_b"] == 3
    assert ab["p_accuracy"] == mannwhitneyu([0.80, 0.81, 0.79, 0.83], [0.85, 0.86, 0.84],
                                            alternative="two-sided").pvalue
    assert ab["p_hypervolume"] == mannwhitneyu([0.41, 0.45, 0.43, 0.40], [0.52, 0.50, 0.47],
                                               alternative="two-sided").pvalue
    for r in rows[1:]:
        assert r["p_accuracy"] is None and r["p_hypervolume"] is None
    md = comparison.pairwise_markdown(rows)
    assert md.count("n/a") == 8  # raw and Holm-adjusted, two measures, two untestable pairs
    assert ab["p_accuracy_holm"] == ab["p_accuracy"]  # the only test: nothing to correct
    assert comparison.mann_whitney_p([1.0, None], [2.0, 3.0]) is None  # one finite value left


def test_markdown_table_layout():
    text = comparison.markdown_table(["a", "bb"], [["x|y", 1], ["long text", 22]], ["l", "r"])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[1].endswith(":|") and "x\\|y" in lines[2]
    assert comparison.fmt_p(None) == "n/a" and comparison.fmt_p(0.5) == "0.5000"
    assert comparison.fmt_p(1.234e-5) == "1.23e-05"


def test_report_single_experiment():
    rows = comparison.summary_rows([("only", [fake_run(0.8)])])
    text = comparison.format_report(rows, comparison.pairwise_rows([("only", [fake_run(0.8)])]))
    assert "only" in text and "no pairwise tests" in text


# --------------------------------------------------------------------------- script


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    res = make_all(root)
    res["single"] = make_experiment(root, "single", "weighted", runs=1, seed=7)
    return res


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_script(results, tmp_path):
    out = tmp_path / "cmp"
    proc = run_compare(results["weighted"], results["nsga2"], results["single"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison_pairs.csv", out / "comparison_sizes.csv"]
    paths.append(out / "comparison_published.csv")  # weighting121 is a published weighting
    printed = proc.stdout.strip().splitlines()[-5:]
    assert printed == [str(p) for p in paths]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    md = paths[0].read_text()
    assert md in proc.stdout  # the printed tables are the written ones
    for name in ("weighting121", "pareto121", "single", "weighted", "nsga2"):
        assert name in md

    summary = read_csv(paths[1])
    assert [r["name"] for r in summary] == ["weighting121", "pareto121", "single"]
    assert list(summary[0]) == comparison.SUMMARY_FIELDS
    runs = {name: load_experiment(results[key]) for name, key in
            [("weighting121", "weighted"), ("pareto121", "nsga2"), ("single", "single")]}
    for row in summary:
        accs = [r["best"]["test_accuracy"] for r in runs[row["name"]]]
        assert int(row["runs"]) == len(accs)
        assert float(row["accuracy_median"]) == pytest.approx(np.median(accs))
        assert float(row["accuracy_q25"]) == pytest.approx(np.percentile(accs, 25))
        assert float(row["accuracy_q75"]) == pytest.approx(np.percentile(accs, 75))
        hvs = [r["test_hypervolume"] for r in runs[row["name"]]]
        assert float(row["hypervolume_median"]) == pytest.approx(np.median(hvs))

    pairs = read_csv(paths[2])
    assert [(r["experiment_a"], r["experiment_b"]) for r in pairs] == [
        ("weighting121", "pareto121"), ("weighting121", "single"), ("pareto121", "single")]
    w, n = runs["weighting121"], runs["pareto121"]
    p_acc = mannwhitneyu([r["best"]["test_accuracy"] for r in w], [r["best"]["test_accuracy"] for r in n],
                         alternative="two-sided").pvalue
    p_hv = mannwhitneyu([r["test_hypervolume"] for r in w], [r["test_hypervolume"] for r in n],
                        alternative="two-sided").pvalue
    assert float(pairs[0]["p_accuracy"]) == p_acc
    assert float(pairs[0]["p_hypervolume"]) == p_hv
    for r in pairs[1:]:  # "single" has one run
        assert r["p_accuracy"] == "n/a" and r["p_hypervolume"] == "n/a"


def sized_run(points, parent=0.87):
    """A run whose front holds (compression, val_accuracy, test_accuracy) points."""
    return {"parent": {"test_accuracy": parent},
            "front": [{"compression": c, "val_accuracy": v, "test_accuracy": t} for c, v, t in points]}


def test_front_at_size_picks_on_validation_never_on_test():
    run = sized_run([(0.20, 0.80, 0.70), (0.24, 0.82, 0.60), (0.30, 0.90, 0.95), (0.50, 0.86, 0.99)])
    assert comparison.front_at_size(run, 0.25)["test_accuracy"] == 0.60  # best validation, not best test
    assert comparison.front_at_size(run, 0.5)["test_accuracy"] == 0.95
    assert comparison.front_at_size(run, 0.1) is None
    no_val = {"front": [{"compression": 0.2, "train_accuracy": 0.5, "test_accuracy": 0.4},
                        {"compression": 0.2, "train_accuracy": 0.7, "test_accuracy": 0.3}]}
    assert comparison.front_at_size(no_val, 0.25)["test_accuracy"] == 0.3


def test_size_rows_medians_baselines_and_missing_runs():
    runs = [sized_run([(0.25, 0.8, a), (0.5, 0.9, a + 0.05)]) for a in (0.80, 0.82, 0.84)]
    runs.append(sized_run([(0.5, 0.9, 0.70)]))  # no network of 25 %
    baselines = {"methods": {"l1": [{"size": 0.25, "test_accuracy": 0.5}, {"size": 0.5, "test_accuracy": 0.8}]}}
    rows = comparison.size_rows([("evo", runs)], [0.25, 0.5, 0.75], baselines)
    assert rows[0]["evo"]["median"] == pytest.approx(0.82) and rows[0]["evo"]["runs"] == 3
    assert rows[1]["evo"]["median"] == pytest.approx(np.median([0.85, 0.87, 0.89, 0.70]))
    assert rows[1]["evo"]["runs"] == 4
    assert rows[0]["baseline_l1"] == 0.5 and rows[2]["baseline_l1"] is None
    assert rows[0]["parent_accuracy"] == pytest.approx(0.87)
    md = comparison.size_markdown(rows, ["evo"])
    assert "≤ 25 %" in md and "0.8200 [0.8100–0.8300] (3)" in md and "l1 pruning" in md
    assert "p_value" not in rows[0] and "Mann" not in md  # one experiment: nothing to test
    other = [sized_run([(0.25, 0.8, a)]) for a in (0.70, 0.71, 0.72, 0.73)]
    two = comparison.size_rows([("evo", runs), ("other", other)], [0.25])
    assert two[0]["p_value"] == pytest.approx(mannwhitneyu([0.80, 0.82, 0.84], [0.70, 0.71, 0.72, 0.73],
                                                           alternative="two-sided").pvalue)
    assert "p (Mann–Whitney U)" in comparison.size_markdown(two, ["evo", "other"])


def test_compare_sizes_table_with_baselines(results, tmp_path):
    out = tmp_path / "cmp"
    proc = run_compare(results["nsga2"], "--baselines", results["baselines"], "--sizes", 0.3, 0.6, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "## Test accuracy at a size budget" in proc.stdout and "activation pruning" in proc.stdout
    rows = read_csv(out / "comparison_sizes.csv")
    assert [float(r["size"]) for r in rows] == [0.3, 0.6]
    assert float(rows[0]["baseline_l1"]) > 0
    bad = run_compare(results["nsga2"], "--sizes", 1.5, "--out", out)
    assert bad.returncode == 2 and "--sizes" in bad.stderr


def test_compare_default_out_is_parent_of_first(tmp_path):
    res = make_all(tmp_path)
    proc = run_compare(res["nsga2"], res["weighted"])
    assert proc.returncode == 0, proc.stderr
    for name in ("comparison.md", "comparison.csv", "comparison_pairs.csv"):
        assert (tmp_path / name).is_file()


def test_compare_help():
    proc = run_compare("--help")
    assert proc.returncode == 0 and "--out" in proc.stdout and "python experiments/compare.py" in proc.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "schema", "field"])
def test_compare_errors(results, tmp_path, case):
    bad = tmp_path / "bad"
    if case == "empty":
        bad.mkdir()
    elif case == "schema":
        save_json(bad / "run_0.json", {"schema": "nope"})
    elif case == "field":  # pareto.py needs "front"
        run = json.loads((results["nsga2"] / "run_0.json").read_text())
        del run["front"]
        save_json(bad / "run_0.json", run)
    out = tmp_path / "out"
    if case == "field":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "plots/pareto.py", str(bad), "--out", str(out)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
    else:
        proc = run_compare(results["nsga2"], bad, "--out", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not out.exists()
    assert not list(tmp_path.glob("comparison*"))


def test_a_run_without_labels_is_chosen_at_a_size_by_its_validation_fidelity():
    run = {"config": {"accuracy_objective": "fidelity"},
           "front": [{"compression": 0.1, "val_fidelity": 0.7, "train_fidelity": 0.95, "test_accuracy": 0.85},
                     {"compression": 0.2, "val_fidelity": 0.9, "train_fidelity": 0.80, "test_accuracy": 0.80},
                     {"compression": 0.5, "val_fidelity": 0.99, "train_fidelity": 0.99, "test_accuracy": 0.90}]}
    assert comparison.front_at_size(run, 0.25)["compression"] == 0.2  # val, not train, not the test set
    for p in run["front"]:
        del p["val_fidelity"]
    assert comparison.front_at_size(run, 0.25)["compression"] == 0.1  # no validation split: train fidelity
    labeled = fake_run(0.8)
    row, other = comparison.summary_row("a", [labeled]), comparison.summary_row("b", [run, labeled])
    assert (row["objective"], other["objective"]) == ("accuracy", "mixed") and row["fidelity_median"] is None
    assert "objective" in comparison.summary_markdown([row]) and "fidelity" not in comparison.summary_markdown([row])

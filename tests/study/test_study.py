"""The study's comparison: --against with Holm, the size table for many experiments,
the reference's published table beside ours, and the study's figures."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import spearmanr

try:
    from fixtures_results import make_baselines, make_experiment
except ImportError:  # tests/ imported as a package
    from tests.fixtures_results import make_baselines, make_experiment

from ecomp_deap.errors import ConfigError
from ecomp_deap.files import save_json
from ecomp_deap.study import comparison
from ecomp_deap.study.published import TABLE, published_for, weighting_code

REPO = Path(__file__).resolve().parents[2]


def run_script(script, *args):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def fake(acc, final_comp=0.5, hv=0.5):
    return {"selection": "weighted", "best": {"test_accuracy": acc, "compression": 0.4, "similarity": 1.0},
            "final_population": {"compression": final_comp}, "test_hypervolume": hv}


# --------------------------------------------------------------------------- Holm, --against


def test_holm_known_values_and_untestable_pairs():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(1 * 0.04, 0.06): step-down and monotone
    assert comparison.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert comparison.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert comparison.holm([None]) == [None]


def test_pairwise_against_one_experiment_with_holm():
    exps = [("a", [fake(0.80), fake(0.81), fake(0.79)]), ("b", [fake(0.85), fake(0.86), fake(0.84)]),
            ("c", [fake(0.70), fake(0.71), fake(0.72)]), ("d", [fake(0.90)])]
    rows = comparison.pairwise_rows(exps, against="b")
    assert [(r["experiment_a"], r["experiment_b"]) for r in rows] == [("b", "a"), ("b", "c"), ("b", "d")]
    raw = [r["p_accuracy"] for r in rows]
    assert raw[2] is None  # d has one run
    assert [r["p_accuracy_holm"] for r in rows] == pytest.approx(comparison.holm(raw))
    assert rows[0]["p_accuracy_holm"] > rows[0]["p_accuracy"]  # two tests: corrected upwards
    md = comparison.pairwise_markdown(rows)
    assert "Holm p (best test accuracy)" in md
    with pytest.raises(ConfigError, match="--against e: no such experiment among a, b, c, d"):
        comparison.pairwise_rows(exps, against="e")


def test_one_pair_has_no_holm_columns():
    rows = comparison.pairwise_rows([("a", [fake(0.8), fake(0.7)]), ("b", [fake(0.9), fake(0.95)])])
    assert "p_accuracy_holm" not in rows[0]
    assert "Holm" not in comparison.pairwise_markdown(rows)
    assert comparison.pairwise_fields(rows) == comparison.PAIRWISE_FIELDS


# --------------------------------------------------------------------------- size table


def sized(points, parent=0.87):
    return {"parent": {"test_accuracy": parent},
            "front": [{"compression": c, "val_accuracy": v, "test_accuracy": t} for c, v, t in points]}


def test_size_table_has_one_row_per_experiment_beyond_two():
    runs = [sized([(0.2, 0.8, 0.70 + i / 100), (0.5, 0.85, 0.80)]) for i in range(3)]
    exps = [(f"e{i}", runs) for i in range(4)]
    baselines = {"methods": {"l1": [{"size": 0.25, "test_accuracy": 0.5}, {"size": 0.5, "test_accuracy": 0.8}]}}
    rows = comparison.size_rows(exps, [0.25, 0.5], baselines)
    md = comparison.size_markdown(rows, [n for n, _ in exps]).splitlines()
    assert "≤ 25 %" in md[0] and "≤ 50 %" in md[0]
    assert len(md) == 2 + 4 + 2  # header, rule, four experiments, L1 pruning, parent
    assert md[2].startswith("| e0") and "0.7100 [0.7050–0.7150] (3)" in md[2]
    assert md[-2].startswith("| l1 pruning") and "0.5000" in md[-2] and "0.8000" in md[-2]
    assert md[-1].startswith("| parent")
    two = comparison.size_markdown(rows, ["e0", "e1"]).splitlines()
    assert two[2].startswith("| ≤ 25 %")  # two experiments: sizes stay rows


# --------------------------------------------------------------------------- published table


def test_published_table_is_the_issues_table():
    assert set(TABLE) == {"001", "020", "021", "100", "101", "120", "121"}
    acc, comp = published_for("ref-weighting121")
    assert (acc.median, acc.low, acc.high) == (0.847, 0.819, 0.855)
    assert (comp.median, comp.low, comp.high) == (0.748, 0.637, 0.859)
    assert published_for("weighting001")[0].median == 0.131
    assert weighting_code("pareto121") is None and weighting_code("weighting122") is None
    assert acc.contains(0.8195) and acc.contains(0.855) and not acc.contains(0.86) and acc.contains(None) is None


def test_published_rows_ranges_and_rank_correlation():
    exps = []
    for code, (acc, comp) in TABLE.items():
        # ours at the published medians for the reference family, shifted out of range for ours
        exps.append((f"ref-weighting{code}", [fake(acc.median, comp.median)] * 3))
        exps.append((f"weighting{code}", [fake(acc.high + 0.01, comp.low - 0.01)] * 2))
    exps.append(("pareto121", [fake(0.8)]))
    rows = comparison.published_rows(exps)
    assert len(rows) == 14 and [r["weights"] for r in rows[:2]] == ["0 0 1", "0 0 1"]
    assert [r["name"] for r in rows[:2]] == ["ref-weighting001", "weighting001"]
    ref = [r for r in rows if r["name"].startswith("ref-")]
    assert all(r["accuracy_in_range"] and r["compression_in_range"] for r in ref)
    assert not any(r["accuracy_in_range"] or r["compression_in_range"] for r in rows if r not in ref)
    corr = {c["family"]: c for c in comparison.rank_correlations(rows)}
    assert corr["ref-weighting*"]["accuracy_rho"] == pytest.approx(1.0)
    assert corr["ref-weighting*"]["in_range"] == 7 and corr["weighting*"]["in_range"] == 0
    ours = [r for r in rows if r not in ref]
    expected = spearmanr([r["compression_median"] for r in ours], [r["published_compression_median"] for r in ours])
    assert corr["weighting*"]["compression_rho"] == pytest.approx(expected.statistic)
    md = comparison.published_markdown(rows, list(corr.values()))
    assert "0.847 [0.819–0.855]" in md and "Spearman ρ accuracy" in md and "1.000" in md


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    folders = []
    for i, code in enumerate(("001", "121")):
        for prefix in ("weighting", "ref-weighting"):
            folder = make_experiment(root, f"{prefix}{code}", "weighted", runs=3, gens=6, seed=10 * i + len(prefix))
            for p in folder.glob("run_*.json"):
                run = json.loads(p.read_text())
                run["final_population"] = {"accuracy": 0.5, "compression": 0.2 + 0.5 * i, "similarity": 1.0,
                                           "size": 20}
                save_json(p, run)
            folders.append(folder)
    folders.append(make_experiment(root, "pareto121", "nsga2", runs=3, gens=6, seed=7))
    return root, folders, make_baselines(root)


def test_compare_against_shows_published_table_and_holm(study, tmp_path):
    root, folders, baselines = study
    out = tmp_path / "cmp"
    proc = run_script("experiments/compare.py", *folders, "--baselines", baselines, "--against", "pareto121",
                      "--out", out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "comparison.md").read_text()
    assert md in proc.stdout
    assert "## The reference study's published table" in md and "0.131 [0.046–0.199]" in md
    assert "every experiment against pareto121" in md and "Holm" in md
    with open(out / "comparison_pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    assert {r["experiment_a"] for r in pairs} == {"pareto121"} and len(pairs) == 4
    assert all(float(r["p_accuracy_holm"]) >= float(r["p_accuracy"]) for r in pairs)
    with open(out / "comparison_published.csv", newline="") as f:
        pub = list(csv.DictReader(f))
    assert [r["name"] for r in pub] == ["weighting001", "ref-weighting001", "weighting121", "ref-weighting121"]
    assert float(pub[0]["compression_median"]) == pytest.approx(0.2)
    assert float(pub[0]["published_accuracy_median"]) == 0.131
    # five experiments: the size table has one row per experiment
    sizes_md = md.split("## Test accuracy at a size budget")[1].split("##")[0]
    assert "| ref-weighting121" in sizes_md and "| parent" in sizes_md

    bad = run_script("experiments/compare.py", *folders, "--against", "nosuch", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --against nosuch") and not (tmp_path / "bad").exists()


def test_study_figures_and_legends_outside_the_axes(study, tmp_path):
    root, folders, _ = study
    out = tmp_path / "plots"
    proc = run_script("plots/study.py", *folders, "--out", out)
    assert proc.returncode == 0, proc.stderr
    stems = {Path(p).name for p in proc.stdout.split()}
    assert stems == {f"{s}.{f}" for s in ("study_boxplots", "study_curves") for f in ("png", "pdf")}
    for name in stems:
        assert (out / name).stat().st_size > 1000

    # the figures' legends are figure legends (outside), none inside an axes
    sys.path.insert(0, str(REPO / "plots"))
    try:
        import hypervolume
        import study as study_plot

        from ecomp_deap.study.plotting import load_experiments

        exps = load_experiments(folders)
        for fig in (hypervolume.figure_hypervolume(exps, False), study_plot.figure_boxplots(exps),
                    study_plot.figure_curves(exps)):
            assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
        groups, cells = study_plot.grouped(exps)
        assert groups == ["0 0 1", "1 2 1"] and set(cells) == {
            ("0 0 1", "weighting"), ("0 0 1", "ref"), ("1 2 1", "weighting"), ("1 2 1", "ref"), ("1 2 1", "pareto")}
    finally:
        sys.path.remove(str(REPO / "plots"))
        import matplotlib.pyplot as plt

        plt.close("all")

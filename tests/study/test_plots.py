"""The plot scripts, run as a user would (subprocess), on synthetic result folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from fixtures_results import make_all, make_experiment
except ImportError:  # tests/ imported as a package
    from tests.fixtures_results import make_all, make_experiment

from ecomp_deap.files import save_json

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SCRIPTS = {
    "plots/pareto.py": ["pareto_front", "pareto_similarity"],
    "plots/curves.py": ["curves"],
    "plots/boxplots.py": ["boxplots"],
    "plots/hypervolume.py": ["hypervolume"],
}


def run_script(script, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("results"))


def check_png(path: Path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    assert img.shape[0] >= 100 and img.shape[1] >= 100, img.shape
    assert img.std() > 0.01  # not a blank image


def check_outputs(proc, out: Path, stems):
    assert proc.returncode == 0, proc.stderr
    expected = [out / f"{stem}.{fmt}" for stem in stems for fmt in ("png", "pdf")]
    printed = [Path(line) for line in proc.stdout.split()]
    assert sorted(map(str, printed)) == sorted(map(str, expected))
    for path in expected:
        assert path.is_file() and path.stat().st_size > 1000, path
        if path.suffix == ".png":
            check_png(path)
        else:
            assert path.read_bytes()[:5] == b"%PDF-"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_writes_figures(results, tmp_path, script):
    out = tmp_path / "figs"
    proc = run_script(script, results["weighted"], results["nsga2"], "--out", out, "--dpi", 60)
    check_outputs(proc, out, SCRIPTS[script])


def test_pareto_with_baselines_and_default_out(tmp_path):
    res = make_all(tmp_path)
    proc = run_script("plots/pareto.py", res["nsga2"], res["weighted"], res["baselines"], "--dpi", 60)
    check_outputs(proc, res["nsga2"] / "plots", SCRIPTS["plots/pareto.py"])
    # --baselines names the folder explicitly; the baselines folder alone is also enough
    proc = run_script("plots/pareto.py", res["nsga2"], "--baselines", res["baselines"], "--out", tmp_path / "a",
                      "--dpi", 60)
    check_outputs(proc, tmp_path / "a", SCRIPTS["plots/pareto.py"])
    proc = run_script("plots/pareto.py", res["baselines"], "--out", tmp_path / "b", "--dpi", 60)
    check_outputs(proc, tmp_path / "b", SCRIPTS["plots/pareto.py"])


def test_curves_caps_columns_and_handles_nulls(tmp_path):
    folder = make_experiment(tmp_path, "many", "nsga2", runs=12, gens=4)
    # a run with null values in the logbook and front (non-finite numbers are stored as null)
    import json

    run = json.loads((folder / "run_0.json").read_text())
    run["logbook"][1]["accuracy"]["avg"] = None
    run["logbook"][2]["hypervolume"] = None
    run["front"][0]["similarity"] = None
    run["best"]["test_accuracy"] = None
    save_json(folder / "run_0.json", run)
    for script, stems in SCRIPTS.items():
        out = tmp_path / Path(script).stem
        proc = run_script(script, folder, "--out", out, "--dpi", 50, "--max-runs", 4) if script.endswith(
            "curves.py") else run_script(script, folder, "--out", out, "--dpi", 50)
        check_outputs(proc, out, stems)


def test_help(tmp_path):
    for script in SCRIPTS:
        proc = run_script(script, "--help")
        assert proc.returncode == 0
        assert "--out" in proc.stdout and "--debug" in proc.stdout and f"python {script}" in proc.stdout


def _single_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_errors_one_line_exit_2_nothing_written(results, tmp_path, script):
    out = tmp_path / "figs"
    missing = tmp_path / "does_not_exist"
    line = _single_error(run_script(script, missing, "--out", out))
    assert str(missing) in line and "no such" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    line = _single_error(run_script(script, results["nsga2"], empty, "--out", out))
    assert str(empty) in line and "no run_K.json" in line

    if script != "plots/pareto.py":  # the loaders are shared: the remaining cases once are enough
        assert not out.exists()
        return
    wrong = tmp_path / "wrong"
    save_json(wrong / "run_0.json", {"schema": "something/else"})
    line = _single_error(run_script(script, wrong, "--out", out))
    assert "schema" in line and "run_0.json" in line

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run_0.json").write_text("{not json")
    line = _single_error(run_script(script, broken, "--out", out))
    assert "not valid JSON" in line

    assert not out.exists()
    assert not (empty / "plots").exists() and not (results["nsga2"] / "plots").exists()


def test_debug_shows_traceback(tmp_path):
    proc = run_script("plots/boxplots.py", tmp_path / "nope", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ResultsError" in proc.stderr


def test_plots_read_and_name_the_fidelity_of_runs_without_labels(tmp_path):
    import json

    from ecomp_deap.study.plotting import accuracy_axis_label, load_experiments, logbook_series

    labeled = make_experiment(tmp_path, "quality25", "nsga2")
    unlabeled = make_experiment(tmp_path, "unlabeled25", "nsga2", seed=1)
    for path in unlabeled.glob("run_*.json"):  # as a run without labels writes it
        r = json.loads(path.read_text())
        r["config"]["accuracy_objective"] = "fidelity"
        for row in r["logbook"]:
            row["fidelity"] = row.pop("accuracy")
        path.write_text(json.dumps(r))
    exps = load_experiments([labeled, unlabeled])
    assert [e.label for e in exps] == ["quality25 (NSGA-II)", "unlabeled25 (NSGA-II, fidelity)"]
    assert accuracy_axis_label(exps) == "accuracy or fidelity" and accuracy_axis_label(exps[1:]) == "fidelity"
    run = exps[1].runs[0]
    assert list(logbook_series(run, "accuracy")[1]) == [row["fidelity"]["avg"] for row in run["logbook"]]

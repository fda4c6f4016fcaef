"""experiments/run.py through a subprocess: bad input, a tiny end-to-end run, and
the scripts that read its results."""
from __future__ import annotations

import json

import pytest
from helpers import SMALL, run_script

BAD = [
    (["--name", "nosuchpreset"], "unknown preset"),
    (["--name", "weighting121", "--runs", "0"], "--runs"),
    (["--name", "weighting121", "--runs", "-3"], "--runs"),
    (["--name", "weighting121", "--pop-size", "many"], "--pop-size"),
    (["--name", "x", "--weights", "0", "0", "0"], "all zero"),
    (["--name", "x", "--weights", "1", "-1", "0"], "non-negative"),
    (["--name", "x", "--weights", "1", "nan", "0"], "finite"),
    (["--name", "weighting121", "--selection", "tournament"], "--selection"),
    (["--name", "pareto121", "--pop-size", "10"], "multiple of 4"),
    (["--name", "weighting121", "--pop-size", "1"], "pop_size"),
    (["--name", "weighting121", "--mutation-rate", "1.5"], "mutation_rate"),
    (["--name", "weighting121", "--mask-flip-prob", "-0.1"], "mask_flip_prob"),
    (["--name", "weighting121", "--perplexity", "60", "--batch-size", "50"], "smaller than the batch size"),
    (["--name", "pareto121", "--val-size", "10"], "val_size"),
    (["--name", "weighting121", "--elitism", "100"], "elitism"),
    (["--name", "weighting121", "--temperature", "0"], "selection_temperature"),
    (["--name", "weighting121", "--out", "/proc/forbidden"], "not writable"),
    (["--name", "weighting121", "--resume", "--overwrite"], "exclude each other"),
    (["--name", "weighting121", "weighting121"], "once"),
    ([], "--name"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a) or "no-args" for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, expected):
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    p = run_script("experiments/run.py", *args, *out)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and expected in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_an_error_not_a_fallback(tmp_path):
    p = run_script("experiments/run.py", "--name", "weighting121", "--device", "cuda", "--out", tmp_path / "o")
    assert p.returncode == 2 and "no CUDA device" in p.stderr and not (tmp_path / "o").exists()


def test_layer_names_and_data_sizes_are_checked_against_parent_and_data(tmp_path, cache_dir):
    common = [*SMALL, "--cache-dir", cache_dir, "--out", tmp_path / "o"]
    p = run_script("experiments/run.py", "--name", "weighting121", *common, "--embedding-layers", "layer_9_act")
    assert p.returncode == 2 and "layer_9_act" in p.stderr and "layer_1_linear" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run_script("experiments/run.py", "--name", "weighting121", *common, "--generations", "2000")
    assert p.returncode == 2 and "exceed the 60000 training images" in p.stderr
    p = run_script("experiments/run.py", "--name", "weighting121", *common, "--parent", tmp_path / "nothing.pt")
    assert p.returncode == 2 and "not found" in p.stderr
    assert not (tmp_path / "o").exists()


def test_list_presets_and_help():
    p = run_script("experiments/run.py", "--list-presets")
    assert p.returncode == 0
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == ["weighting001", "weighting020", "weighting021", "weighting100", "weighting101", "weighting120",
                     "weighting121", "ref-weighting001", "ref-weighting020", "ref-weighting021", "ref-weighting100",
                     "ref-weighting101", "ref-weighting120", "ref-weighting121", "pareto101", "pareto120", "pareto121", "quality121", "quality101",
                     "quality12.5", "quality25", "quality50", "quality12.5_nosim", "quality25_nosim", "quality50_nosim",
                     "cnn_weighting121", "cnn_pareto121", "cnn_quality121", "cnn_quality101", "cnn_quality50",
                     "cnn_quality50_nosim", "resnet_weighting121", "resnet_pareto121", "resnet_macs25", "resnet_macs50",
                     "resnet_macs75", "resnet_macs25_nosim", "resnet_macs50_nosim", "resnet_macs75_nosim", "unlabeled121", "unlabeled101", "unlabeled25", "unlabeled25_nosim",
                     "cnn_unlabeled50", "cnn_unlabeled50_nosim"]
    h = run_script("experiments/run.py", "--help")
    assert h.returncode == 0 and "--runs 10 --name weighting121" in h.stdout and "--crossover" in h.stdout


def test_quality_presets_are_valid_and_differ_only_in_the_similarity_weight():
    from ecomp_deap.study.presets import preset_config

    with_sim, without = preset_config("quality121"), preset_config("quality101")
    for cfg in (with_sim, without):
        cfg.validate()
        cfg.validate_data(60000)  # fits FashionMNIST's training set with the validation split
        assert cfg.selection == "nsga2" and cfg.mutation == "units" and cfg.init_scores == "activation"
    assert with_sim.weights == (1.0, 2.0, 1.0) and without.weights == (1.0, 0.0, 1.0)
    assert with_sim.replace(weights=without.weights) == without


def test_end_to_end_run_compare_and_every_plot(tmp_path, cache_dir):
    out = tmp_path / "results"
    p = run_script("experiments/run.py", "--name", "weighting121", "pareto121", "--runs", "2", *SMALL,
                   "--cache-dir", cache_dir, "--out", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("best test accuracy") == 4
    for name, mode in (("weighting121", "weighted"), ("pareto121", "nsga2")):
        folder = out / name
        for k in range(2):
            r = json.loads((folder / f"run_{k}.json").read_text())
            assert r["schema"] == "ecomp_deap.run/1" and r["selection"] == mode and r["run"] == k
            assert r["config"]["seed"] == k and r["versions"]["torch"] and r["versions"]["deap"]
            assert len(r["logbook"]) == 3 and {"avg", "best", "worst"} <= set(r["logbook"][0]["similarity"])
            assert r["best"]["hidden_units"] and r["front"] and r["test_hypervolume"] > 0
            assert r["hypervolume_reference"] == {"accuracy": 0.0, "compression": 1.0}
            from ecomp_deap.nets.export import load_exported

            net = load_exported(folder / f"run_{k}.pt")
            widths = [m.out_features for m in net if hasattr(m, "out_features")]
            assert widths[:-1] == r["best"]["hidden_units"]
        summary = json.loads((folder / "summary.json").read_text())
        assert len(summary["runs"]) == 2 and (folder / "summary.csv").read_text().count("\n") == 3

    # a resume with other settings is refused instead of mixing configurations
    mixed = run_script("experiments/run.py", "--name", "weighting121", "--runs", "2", *SMALL, "--mutation-rate",
                       "0.5", "--cache-dir", cache_dir, "--out", out, "--resume")
    assert mixed.returncode == 2 and "other settings (mutation_rate)" in mixed.stderr, mixed.stderr
    # a result written before a setting existed counts it at its default
    run0 = out / "weighting121" / "run_0.json"
    old = json.loads(run0.read_text())
    del old["config"]["mutation"], old["config"]["init_scores"]
    run0.write_text(json.dumps(old))
    same = run_script("experiments/run.py", "--name", "weighting121", "--runs", "2", *SMALL, "--cache-dir", cache_dir,
                      "--out", out, "--resume")
    assert same.returncode == 0 and same.stdout.count("already finished") == 2, same.stderr

    # existing results are refused without --overwrite
    again = run_script("experiments/run.py", "--name", "weighting121", *SMALL, "--cache-dir", cache_dir, "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    c = run_script("experiments/compare.py", out / "weighting121", out / "pareto121")
    assert c.returncode == 0, c.stderr
    assert (out / "comparison.md").stat().st_size > 0 and (out / "comparison.csv").stat().st_size > 0
    for script in ("plots/pareto.py", "plots/curves.py", "plots/boxplots.py", "plots/hypervolume.py"):
        q = run_script(script, out / "weighting121", out / "pareto121")
        assert q.returncode == 0, q.stderr
        pngs = [line for line in q.stdout.splitlines() if line.endswith(".png")]
        assert pngs
        for png in pngs:
            data = open(png, "rb").read()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


CNN_SMALL = ["--arch", "cnn", "--channels", "4", "8", "--hidden", "16", "--parent-epochs", "1", "--pop-size", "8",
             "--generations", "3", "--batch-size", "50", "--val-size", "100", "--device", "cpu", "--quiet"]


def test_cnn_end_to_end_run_compare_baselines_and_every_plot(tmp_path, cache_dir):
    out = tmp_path / "results"
    p = run_script("experiments/run.py", "--name", "cnn_weighting121", "cnn_pareto121", "--runs", "1", *CNN_SMALL,
                   "--cache-dir", cache_dir, "--out", out, timeout=900)  # trains the tiny CNN parent too
    assert p.returncode == 0, p.stderr
    assert "conv 1->4 | conv 4->8 | linear 392->16 | linear 16->10" in p.stdout
    for name in ("cnn_weighting121", "cnn_pareto121"):
        r = json.loads((out / name / "run_0.json").read_text())
        best = r["best"]
        assert len(best["hidden_units"]) == 3 and r["parent"]["hidden_units"] == [4, 8, 16]
        assert 0 < best["macs_kept"] <= 1 and 0 < best["parameters_kept"] <= 1
        from ecomp_deap.nets.export import load_exported

        net = load_exported(out / name / "run_0.pt")
        convs = [m.out_channels for m in net if hasattr(m, "out_channels")]
        assert convs == best["hidden_units"][:2]
    b = run_script("experiments/baselines.py", *CNN_SMALL[:9], "--cache-dir", cache_dir, "--out", out,
                   "--sizes", "0.25", "0.75", "0.25", "--seeds", "2")
    assert b.returncode == 0, b.stderr
    base = json.loads((out / "baselines" / "baselines.json").read_text())
    assert [row["hidden_units"] for row in base["methods"]["l1"]] == [[1, 2, 4], [2, 4, 8], [3, 6, 12]]
    c = run_script("experiments/compare.py", out / "cnn_weighting121", out / "cnn_pareto121",
                   "--baselines", out / "baselines")
    assert c.returncode == 0, c.stderr
    assert "cnn_pareto121" in (out / "comparison.md").read_text()
    for script in ("plots/pareto.py", "plots/curves.py", "plots/boxplots.py", "plots/hypervolume.py"):
        extra = [out / "baselines"] if script == "plots/pareto.py" else []
        q = run_script(script, out / "cnn_weighting121", out / "cnn_pareto121", *extra)
        assert q.returncode == 0, q.stderr
        assert any(line.endswith(".png") for line in q.stdout.splitlines())


def test_cnn_presets_refuse_an_mlp_arch(tmp_path):
    p = run_script("experiments/run.py", "--name", "cnn_weighting121", "--arch", "mlp", "--out", tmp_path / "o")
    assert p.returncode == 2 and "for a cnn parent" in p.stderr and not (tmp_path / "o").exists()

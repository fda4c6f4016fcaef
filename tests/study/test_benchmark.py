"""Smoke test of the generation benchmark: ``benchmarks/bench_generation.py --tiny --reps 1``
runs end to end (ours, the per-network reference, the compute bound, the tiny scale
subprocesses), prints its ratio lines, and the reference agrees with ours. No timing
assertions: the numbers depend on the machine."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_generation.py"


def test_bench_generation_tiny(tmp_path):
    pytest.importorskip("sklearn")
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--reps", "1", "--device", "cpu",
                           "--json", str(out_json)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert any(l.startswith("ratio reference / ours (generation):") for l in lines), proc.stdout
    assert any(l.startswith("ratio ours / bound (generation):") for l in lines), proc.stdout
    check = [l for l in lines if l.startswith("agreement check")]
    assert len(check) == 1 and check[0].endswith("PASSED"), proc.stdout
    assert "threads" in lines[1] and "device cpu" in lines[1]
    assert any(l.lstrip().startswith("pop") and "N/" in l for l in lines), "scale table missing"

    report = json.loads(out_json.read_text())
    assert report["agreement"]["passed"] is True
    for key in ("reference_over_ours_generation", "ours_over_bound_generation"):
        assert report["ratios"][key] > 0
    assert set(report["ours"]["parts"]) == {"forward", "similarity", "variation", "selection", "bookkeeping"}
    assert [(r["pop"], r["hidden"]) for r in report["scale"]] == [(8, [16, 16]), (8, [64, 64])]
    assert all(r["rss_peak_bytes"] > 0 and r["median_s"] > 0 for r in report["scale"])


def test_bench_generation_options(monkeypatch):
    """The command line, parsed in this process (no second torch start-up); the script's
    shared modules (benchmarks/common.py) are found as when it runs as a script."""
    import importlib.util

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "common", raising=False)  # not another project's module of that name
    spec = importlib.util.spec_from_file_location("bench_generation", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    assert (args.reps, args.device, args.full, args.no_scale, args.tiny, args.json) == (5, "auto", False, False,
                                                                                      False, None)
    args = bench.parse_args(["--tiny", "--reps", "2", "--device", "cpu", "--full", "--no-scale",
                             "--scale-pops", "100", "300", "--json", "x.json"])
    assert (args.reps, args.device, args.scale_pops, args.json) == (2, "cpu", [100, 300], "x.json")
    with pytest.raises(SystemExit):
        bench.parse_args(["--reps", "0"])


def test_bench_cnn_tiny(tmp_path):
    pytest.importorskip("sklearn")
    out_json = tmp_path / "cnn.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cnn.py"), "--tiny", "--reps", "1",
                           "--device", "cpu", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert any(l.startswith("ratio reference / ours (generation):") for l in lines), proc.stdout
    assert any(l.startswith("ratio ours / dense bound (generation):") for l in lines), proc.stdout
    assert any(l.startswith("agreement") and l.endswith("PASSED") for l in lines), proc.stdout
    report = json.loads(out_json.read_text())
    assert report["agreement"]["accuracy_equal"] == report["pop"] == 8
    assert [l["best"] for l in report["bound"]["layers"]][2:] == ["baddbmm", "baddbmm"]


def test_bench_devices_refuses_bad_sizes_and_a_missing_gpu():
    script = REPO / "benchmarks" / "bench_devices.py"
    bad = subprocess.run([sys.executable, str(script), "--pops", "1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--pops must be at least 2" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        p = subprocess.run([sys.executable, str(script), "--devices", "cuda", "--pops", "4"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode != 0 and "no CUDA device" in p.stderr and "Traceback" not in p.stderr


def test_benchmark_scripts_import_no_script():
    """What the scripts share lives in modules (common.py, reference.py); no file of
    benchmarks/ imports a script (a file run as ``__main__``), even inside a function,
    and the shared modules import no script and not each other in a cycle."""
    folder = REPO / "benchmarks"
    files = {p.stem: p for p in folder.glob("*.py")}
    scripts = {name for name, p in files.items() if '__name__ == "__main__"' in p.read_text()}
    assert {"bench_generation", "bench_cnn", "bench_devices", "compress_defaults"} <= scripts
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                deps.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                deps.update(alias.name.split(".")[0] for alias in node.names)
        graph[name] = deps & set(files) - {name}
    assert {name: sorted(deps & scripts) for name, deps in graph.items() if deps & scripts} == {}
    assert "common" in graph["bench_generation"] and "common" in graph["bench_cnn"]

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph[start])

    assert [name for name in graph if reaches(name, name)] == []

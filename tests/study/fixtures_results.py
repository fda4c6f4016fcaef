"""Synthetic, schema-valid result folders for the plot and comparison tests.

``make_experiment(root, "weighting121", "weighted")`` writes
``root/weighting121/run_0.json .. run_{runs-1}.json`` with random but plausible
numbers (fronts that are non-dominated in (accuracy, compression), logbooks whose
population improves over the generations), using :func:`ecomp_deap.study.results.save_json`
exactly as the experiment runner does. ``make_baselines(root)`` writes a
``baselines.json`` folder. Everything is deterministic given ``seed``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ecomp_deap.files import save_json
from ecomp_deap.search.indicators import hypervolume_2d
from ecomp_deap.study.results import RUN_SCHEMA

PARENT = {"test_accuracy": 0.87, "hidden_units": [256, 256], "parameters": 269322, "macs": 268800}
BASELINES_SCHEMA = "ecomp_deap.baselines/1"


def _params(units) -> int:
    sizes = [784, *units, 10]
    return int(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])))


def _network(rng, compression: float, accuracy: float, similarity: float) -> dict:
    units = [max(1, int(round(256 * compression * f))) for f in rng.uniform(0.8, 1.2, size=2)]
    return {"test_accuracy": accuracy, "compression": compression, "similarity": similarity,
            "hidden_units": units, "parameters": _params(units)}


def _front(rng, size: int) -> list[dict]:
    comp = np.sort(rng.uniform(0.03, 0.95, size=size))
    # accuracy rises with size (strictly, so the front is non-dominated)
    acc = 0.87 * (1 - np.exp(-comp / rng.uniform(0.05, 0.15))) + np.linspace(0, 0.01, size)
    acc = np.clip(acc - rng.uniform(0, 0.02), 0.1, 0.9)
    acc = np.maximum.accumulate(acc + np.arange(size) * 1e-6)
    sim = rng.uniform(0.2, 2.0, size=size) * (1.2 - comp)
    return [_network(rng, float(c), float(a), float(s)) for c, a, s in zip(comp, acc, sim)]


def _stats(rng, centre: float, spread: float, maximise: bool) -> dict:
    values = rng.normal(centre, spread, size=20)
    return {"avg": float(values.mean()), "best": float(values.max() if maximise else values.min()),
            "worst": float(values.min() if maximise else values.max()), "std": float(values.std())}


def make_run(name: str, selection: str, run: int, gens: int = 5, seed: int = 0,
             weights=(1.0, 2.0, 1.0), pop_size: int = 20) -> dict:
    rng = np.random.default_rng([seed, run])
    logbook = []
    for g in range(gens):
        t = g / max(gens - 1, 1)
        logbook.append({
            "gen": g, "epoch": 0, "batch": g, "evals": pop_size,
            "accuracy": _stats(rng, 0.55 + 0.2 * t, 0.05, True),
            "compression": _stats(rng, 0.6 - 0.3 * t, 0.08, False),
            "similarity": _stats(rng, 1.5 - 0.6 * t, 0.2, False),
            "fitness": _stats(rng, 0.3 + 0.3 * t, 0.05, True),
            "hypervolume": float(0.3 + 0.3 * t + rng.uniform(-0.03, 0.03)),
            "front_size": int(rng.integers(3, 12)),
        })
    front = _front(rng, int(rng.integers(4, 10)))
    best = dict(front[int(rng.integers(len(front)))])
    best["macs"] = best["parameters"] - sum(best["hidden_units"]) - 10
    best["selected_by"] = "max weighted fitness" if selection == "weighted" else "knee point"
    pts = np.array([[p["test_accuracy"], p["compression"]] for p in front])
    active = [o for o, w in zip(["accuracy", "similarity", "compression"], weights) if w]
    return {
        "schema": RUN_SCHEMA, "name": name, "run": run, "seed": 1000 + run,
        "selection": selection, "objectives": active,
        "config": {"weights": list(weights), "pop_size": pop_size, "generations": gens},
        "versions": {"torch": "test", "deap": "test", "ecomp_deap": "test"},
        "logbook": logbook,
        "parent": dict(PARENT),
        "best": best,
        "front": front,
        "test_hypervolume": hypervolume_2d(pts, (0.0, 1.0)),
        "hypervolume_reference": {"accuracy": 0.0, "compression": 1.0},
        "wall_time_s": float(rng.uniform(5, 20)),
        "weights_file": f"run_{run}.pt",
    }


def make_experiment(root, name: str, selection: str, runs: int = 3, gens: int = 5, seed: int = 0,
                    **kwargs) -> Path:
    """Write ``root/name/run_K.json`` for K < runs; returns the folder."""
    folder = Path(root) / name
    for k in range(runs):
        save_json(folder / f"run_{k}.json", make_run(name, selection, k, gens=gens, seed=seed, **kwargs))
    return folder


def make_baselines(root, name: str = "baselines", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sizes = np.round(np.arange(0.1, 0.91, 0.1), 2)
    methods = {}
    for method, scale in [("l1", 0.08), ("random", 0.2), ("activation", 0.1)]:
        acc = 0.87 * (1 - np.exp(-sizes / scale))
        std = rng.uniform(0.005, 0.03, size=len(sizes)) if method == "random" else np.zeros(len(sizes))
        methods[method] = [{"size": float(c), "compression": float(c), "test_accuracy": float(a),
                            "test_accuracy_std": float(s)} for c, a, s in zip(sizes, acc, std)]
    folder = Path(root) / name
    save_json(folder / "baselines.json", {"schema": BASELINES_SCHEMA,
                                          "parent": {"test_accuracy": PARENT["test_accuracy"]},
                                          "methods": methods})
    return folder


def _after(rng, before: float, epochs) -> dict:
    """Test accuracy before (``"0"``) and after each epoch count, rising towards 0.89."""
    out, acc = {"0": before}, before
    for n in epochs:
        acc = acc + (0.89 - acc) * rng.uniform(0.3, 0.7)
        out[str(n)] = float(acc)
    return out


def make_finetune(folder, epochs=(1, 5), seed: int = 0) -> Path:
    """``folder/finetune.json`` for an experiment written by :func:`make_experiment`, as
    ``experiments/finetune.py`` writes it: one entry per run (its best network)."""
    from ecomp_deap.study.fine_tuning import FINETUNE_SCHEMA, Recipe
    from ecomp_deap.study.results import load_experiment

    rng = np.random.default_rng([seed, 15])
    folder = Path(folder)
    runs = []
    for r in load_experiment(folder):
        best = r["best"]
        runs.append({"run": r["run"], "seed": r["seed"], "compression": best["compression"],
                     "hidden_units": best["hidden_units"], "parameters": best["parameters"],
                     "reported_test_accuracy": best["test_accuracy"],
                     "after_epochs": _after(rng, best["test_accuracy"], epochs), "wall_time_s": 1.0})
    save_json(folder / "finetune.json", {"schema": FINETUNE_SCHEMA, "kind": "experiment", "name": folder.name,
                                         "recipe": Recipe(tuple(epochs)).to_dict(),
                                         "parent": {"after_epochs": _after(rng, PARENT["test_accuracy"], epochs)},
                                         "runs": runs})
    return folder / "finetune.json"


def make_baselines_finetune(folder, sizes=(0.125, 0.25, 0.5), epochs=(1, 5), seed: int = 0) -> Path:
    """``folder/finetune.json`` for a baselines folder: every method at every size."""
    from ecomp_deap.study.fine_tuning import FINETUNE_SCHEMA, Recipe

    rng = np.random.default_rng([seed, 16])
    methods = {m: [{"size": float(s), "compression": float(s), "hidden_units": [round(256 * s)] * 2,
                    "repeats": 5 if m == "random" else 1,
                    "after_epochs": _after(rng, float(0.87 * (1 - np.exp(-s / scale))), epochs)} for s in sizes]
               for m, scale in (("l1", 0.08), ("random", 0.2), ("activation", 0.1))}
    path = Path(folder) / "finetune.json"
    save_json(path, {"schema": FINETUNE_SCHEMA, "kind": "baselines", "recipe": Recipe(tuple(epochs)).to_dict(),
                     "parent": {"after_epochs": _after(rng, PARENT["test_accuracy"], epochs)},
                     "sizes": list(sizes), "methods": methods})
    return path


def make_all(root, runs: int = 3, gens: int = 5) -> dict[str, Path]:
    """A weighted experiment, an NSGA-II experiment and a baselines folder."""
    return {
        "weighted": make_experiment(root, "weighting121", "weighted", runs=runs, gens=gens, seed=1),
        "nsga2": make_experiment(root, "pareto121", "nsga2", runs=runs, gens=gens, seed=2),
        "baselines": make_baselines(root),
    }


if __name__ == "__main__":  # write a demo set: python tests/fixtures_results.py DIR
    import sys

    for path in make_all(sys.argv[1] if len(sys.argv) > 1 else "demo_results").values():
        print(path)

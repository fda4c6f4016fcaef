"""An experiment: N runs of one config with derived seeds, written as result files.

``OUT/NAME/run_K.json`` (the run's results, see :mod:`ecomp_deap.results`) and
``OUT/NAME/run_K.pt`` (the chosen network, exported; load it with
:func:`ecomp_deap.export.load_exported`), plus ``summary.json`` / ``summary.csv``.
A run's JSON is written last, so its presence marks the run complete.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import EcompConfig
from .ecomp import EcompRun
from .errors import ConfigError
from .export import save_exported
from .results import RUN_SCHEMA, SUMMARY_SCHEMA, run_files, save_csv, save_json

SUMMARY_FIELDS = ["run", "seed", "test_accuracy", "compression", "similarity", "parameters",
                  "hidden_units", "test_hypervolume", "front_size", "wall_time_s"]


def run_seed(base_seed: int, k: int) -> int:
    """Seed of run ``k`` of an experiment started with ``--seed base_seed``."""
    return 1000 * base_seed + k


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output_folder(folder: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse (ConfigError) an unwritable folder, or one holding results unless told
    to overwrite or resume. Creates nothing."""
    anchor = nearest_existing(folder)
    if not anchor.is_dir():
        raise ConfigError(f"output folder {folder}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {folder} is not writable (no write permission on {anchor})")
    if folder.exists() and run_files(folder) and not (overwrite or resume):
        raise ConfigError(f"{folder} already holds results ({len(run_files(folder))} runs); "
                          "use --overwrite to replace them or another --name/--out")


def clear_results(folder: Path) -> None:
    for pattern in ("run_*.json", "run_*.pt", "summary.json", "summary.csv"):
        for p in folder.glob(pattern):
            p.unlink()


def summarise_run(k: int, seed: int, result: dict) -> dict:
    best = result["best"]
    return {"run": k, "seed": seed, "test_accuracy": best["test_accuracy"], "compression": best["compression"],
            "similarity": best["similarity"], "parameters": best["parameters"],
            "hidden_units": "-".join(map(str, best["hidden_units"])), "test_hypervolume": result["test_hypervolume"],
            "front_size": len(result["front"]), "wall_time_s": result["wall_time_s"]}


def write_summary(folder: Path, name: str, rows: list[dict], parent: dict | None) -> None:
    def med(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.median(vals) if vals else None

    save_csv(folder / "summary.csv", rows, SUMMARY_FIELDS)
    save_json(folder / "summary.json", {
        "schema": SUMMARY_SCHEMA, "name": name, "runs": rows, "parent": parent,
        "median": {k: med(k) for k in ("test_accuracy", "compression", "similarity", "test_hypervolume", "wall_time_s")}})


@dataclass
class Experiment:
    name: str
    config: EcompConfig
    runs: int
    seed: int
    out: Path

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def run(self, parent_model, data, parent_test_accuracy: float | None = None, overwrite: bool = False,
            progress: bool = True, log: Callable[[str], None] = print) -> list[dict]:
        folder = self.folder
        check_output_folder(folder, overwrite)
        if overwrite and folder.exists():
            clear_results(folder)
        results, rows = [], []
        for k in range(self.runs):
            seed = run_seed(self.seed, k)
            run = EcompRun(self.config.replace(seed=seed), parent_model, data, progress, parent_test_accuracy)
            r = run.run()
            parent_test_accuracy = r.parent["test_accuracy"]
            body = {"schema": RUN_SCHEMA, "name": self.name, "run": k, **r.to_json(), "weights_file": f"run_{k}.pt"}
            save_exported(folder / f"run_{k}.pt", r.best_module, {"measures": r.best, "name": self.name, "run": k})
            save_json(folder / f"run_{k}.json", body)
            rows.append(summarise_run(k, seed, body))
            results.append(body)
            b = r.best
            log(f"{self.name} run {k + 1}/{self.runs} (seed {seed}): best test accuracy {b['test_accuracy']:.4f}, "
                f"compression {b['compression']:.3f}, similarity {b['similarity']:.4f}, "
                f"hidden {'-'.join(map(str, b['hidden_units']))}, {r.wall_time_s:.1f} s")
        write_summary(folder, self.name, rows, results[0]["parent"] if results else None)
        return results

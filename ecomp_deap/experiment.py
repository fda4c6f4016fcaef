"""An experiment: N runs of one config with derived seeds, written as result files.

``OUT/NAME/run_K.json`` (the run's results, see :mod:`ecomp_deap.results`) and
``OUT/NAME/run_K.pt`` (the chosen network, exported; load it with
:func:`ecomp_deap.export.load_exported`), plus ``summary.json`` / ``summary.csv``.
A run's JSON is written last, so its presence marks the run complete.
"""
from __future__ import annotations

import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import load_checkpoint, save_checkpoint
from .config import EcompConfig
from .ecomp import EcompRun
from .errors import ConfigError
from .export import save_exported
from .genome import fitness_weights, make_types
from .results import RUN_SCHEMA, SUMMARY_SCHEMA, load_run, run_files, save_csv, save_json
from .rng import rng_snapshot

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
    try:  # a real probe: permissions alone miss read-only and pseudo file systems
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as e:
        raise ConfigError(f"output folder {folder} is not writable ({anchor}: {e.strerror})") from None
    if overwrite or resume or not folder.exists():
        return
    if run_files(folder):
        raise ConfigError(f"{folder} already holds results ({len(run_files(folder))} runs); "
                          "use --resume to finish them, --overwrite to replace them, or another --name/--out")
    if list(folder.glob("run_*.ckpt")):
        raise ConfigError(f"{folder} holds an unfinished run (a checkpoint); use --resume to continue it "
                          "or --overwrite to start again")


def clear_results(folder: Path) -> None:
    for pattern in ("run_*.json", "run_*.pt", "run_*.ckpt", "summary.json", "summary.csv"):
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


class RunInterrupted(Exception):
    """A run stopped on SIGINT/SIGTERM after writing its checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {message}")
        self.signum = signum


class StopRequest:
    """While active, SIGINT/SIGTERM only set a flag (the loop checkpoints and stops at
    the end of the generation); a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class Experiment:
    name: str
    config: EcompConfig
    runs: int
    seed: int
    out: Path
    checkpoint_every: int = 25
    """Generations between checkpoints (0: only on interruption)."""

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def run(self, parent_model, data, parent_test_accuracy: float | None = None, overwrite: bool = False,
            resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> list[dict]:
        """Run (or, with ``resume``, finish) every run; write results as they complete."""
        folder = self.folder
        check_output_folder(folder, overwrite, resume)
        if overwrite and folder.exists():
            clear_results(folder)
        results, rows = [], []
        with StopRequest() as stop:
            for k in range(self.runs):
                seed = run_seed(self.seed, k)
                done = folder / f"run_{k}.json"
                if resume and done.exists():
                    body = load_run(done)
                    log(f"{self.name} run {k + 1}/{self.runs}: already finished, skipped")
                else:
                    body = self._run_one(k, seed, parent_model, data, parent_test_accuracy, resume, progress, stop, log)
                parent_test_accuracy = body["parent"]["test_accuracy"]
                rows.append(summarise_run(k, seed, body))
                results.append(body)
                if stop.signum is not None and k + 1 < self.runs:
                    raise RunInterrupted(f"{self.name}: {k + 1} of {self.runs} runs finished", stop.signum)
        write_summary(folder, self.name, rows, results[0]["parent"] if results else None)
        return results

    def _run_one(self, k, seed, parent_model, data, parent_test_accuracy, resume, progress, stop, log) -> dict:
        folder = self.folder
        cfg = self.config.replace(seed=seed)
        ckpt = folder / f"run_{k}.ckpt"
        run = EcompRun(cfg, parent_model, data, progress, parent_test_accuracy)
        total = run.evolution.total
        state, elapsed_before = None, 0.0
        if resume and ckpt.exists():
            _, ind_cls = make_types(fitness_weights(cfg.selection, cfg.weights))
            state, elapsed_before = load_checkpoint(ckpt, cfg, ind_cls, run.gen)
            log(f"{self.name} run {k + 1}/{self.runs}: resuming from generation {state.t}/{total}")
        started = time.perf_counter()

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - started

        def on_generation(st) -> None:
            due = self.checkpoint_every and st.t % self.checkpoint_every == 0 and st.t < total
            if due or stop.signum is not None:
                save_checkpoint(ckpt, st, cfg, rng_snapshot(run.gen), elapsed())
            if stop.signum is not None:
                raise RunInterrupted(f"{self.name} run {k + 1}/{self.runs} stopped after generation {st.t}/{total}; "
                                     f"checkpoint {ckpt}", stop.signum)

        def on_failure(st, rng) -> None:
            save_checkpoint(ckpt, st, cfg, rng, elapsed())
            log(f"{self.name} run {k + 1}/{self.runs}: non-finite measure at generation {st.t}; checkpoint {ckpt}")

        r = run.run(state, on_generation, on_failure, elapsed_before_s=elapsed_before)
        body = {"schema": RUN_SCHEMA, "name": self.name, "run": k, **r.to_json(), "weights_file": f"run_{k}.pt"}
        save_exported(folder / f"run_{k}.pt", r.best_module, {"measures": r.best, "name": self.name, "run": k})
        save_json(folder / f"run_{k}.json", body)
        ckpt.unlink(missing_ok=True)
        b = r.best
        log(f"{self.name} run {k + 1}/{self.runs} (seed {seed}): best test accuracy {b['test_accuracy']:.4f}, "
            f"compression {b['compression']:.3f}, similarity {b['similarity']:.4f}, "
            f"hidden {'-'.join(map(str, b['hidden_units']))}, {r.wall_time_s:.1f} s")
        return body

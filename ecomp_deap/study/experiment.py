"""An experiment: N runs of one config with derived seeds, written as result files.

``OUT/NAME/run_K.json`` (the run's results, see :mod:`ecomp_deap.study.results`) and
``OUT/NAME/run_K.pt`` (the chosen network, exported; load it with
:func:`ecomp_deap.nets.export.load_exported`), plus ``summary.json`` / ``summary.csv``.
A run's JSON is written last, so its presence marks the run complete.
"""
from __future__ import annotations

import json
import signal
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..nets.chain import Chain, parent_input_shape
from .checkpoint import load_checkpoint, save_checkpoint
from ..config import EcompConfig
from ..search.run import EcompRun
from ..errors import ConfigError
from ..nets.export import save_exported
from ..search.genome import fitness_weights, make_types
from .results import RUN_SCHEMA, SUMMARY_SCHEMA, load_run, run_files
from ..files import save_csv, save_json
from ..rng import rng_snapshot
from ..validation import validate_parent_weights, validate_run_data

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
        raise ConfigError(f"output folder {folder} is not writable (cannot create a file in {anchor}: {e.strerror})") from None
    if overwrite or resume or not folder.exists():
        return
    if run_files(folder):
        raise ConfigError(f"{folder} already holds results ({len(run_files(folder))} runs); "
                          "use --resume to finish them, --overwrite to replace them, or another --name/--out")
    if list(folder.glob("run_*.ckpt")):
        raise ConfigError(f"{folder} holds an unfinished run (a checkpoint); use --resume to continue it "
                          "or --overwrite to start again")


def clear_results(folder: Path) -> None:
    # finetune.json (experiments/finetune.py) belongs to the runs it was made from
    for pattern in ("run_*.json", "run_*.pt", "run_*.ckpt", "summary.json", "summary.csv", "finetune.json"):
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


def run_line(name: str, k: int, runs: int, body: dict) -> str:
    """The one-line summary of a finished run (the progress line of every executor)."""
    b = body["best"]
    return (f"{name} run {k + 1}/{runs} (seed {body['seed']}): best test accuracy {b['test_accuracy']:.4f}, "
            f"compression {b['compression']:.3f}, similarity {b['similarity']:.4f}, "
            f"hidden {'-'.join(map(str, b['hidden_units']))}, {body['wall_time_s']:.1f} s")


def write_run(folder: Path, name: str, k: int, result_json: dict, best_module) -> dict:
    """Write one finished run: ``run_K.pt`` (the chosen network), then ``run_K.json``
    (its presence marks the run complete), both atomically; drop its checkpoint.
    ``result_json`` is :meth:`RunResult.to_json`. Every executor writes through here."""
    folder = Path(folder)
    body = {"schema": RUN_SCHEMA, "name": name, "run": k, **result_json, "weights_file": f"run_{k}.pt"}
    save_exported(folder / f"run_{k}.pt", best_module, {"measures": result_json["best"], "name": name, "run": k})
    save_json(folder / f"run_{k}.json", body)
    (folder / f"run_{k}.ckpt").unlink(missing_ok=True)
    return body


@contextmanager
def torch_threads(n: int | None):
    """Torch's intra-op threads set to ``n`` inside (None: unchanged), restored after.
    Parallel reductions split their sums by thread, so the last bits of a run's
    measures (and from there its selections) depend on this number."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    threads: int | None = 1
    """Torch threads of each run, on every executor (None: leave torch's setting).
    Results are bit-identical between executors for the same value."""

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    def run_config(self, k: int) -> EcompConfig:
        """The config of run ``k``: the experiment's, with the run's derived seed."""
        return self.config.replace(seed=run_seed(self.seed, k))

    def prepare(self, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse a folder holding results (unless told otherwise); clear it on ``overwrite``."""
        check_output_folder(self.folder, overwrite, resume)
        if overwrite and self.folder.exists():
            clear_results(self.folder)

    def finished(self, k: int) -> bool:
        """Whether run ``k`` has its result file; a result written with other settings
        is an error (a resume must not mix configurations)."""
        path = self.folder / f"run_{k}.json"
        if not path.exists():
            return False
        stored = load_run(path).get("config") or {}
        expected = json.loads(json.dumps(self.run_config(k).to_dict()))
        # a setting added after the file was written counts as its default
        defaults = json.loads(json.dumps(EcompConfig().to_dict()))
        changed = sorted(key for key in expected if stored.get(key, defaults[key]) != expected[key])
        if changed:
            raise ConfigError(f"{path} was written with other settings ({', '.join(changed)}); resume with the "
                              "same options, or use --overwrite or another --name")
        return True

    def write_summary_from_files(self) -> None:
        """``summary.json``/``summary.csv`` from the runs' result files (all must exist)."""
        bodies = [load_run(self.folder / f"run_{k}.json") for k in range(self.runs)]
        rows = [summarise_run(k, run_seed(self.seed, k), b) for k, b in enumerate(bodies)]
        write_summary(self.folder, self.name, rows, bodies[0]["parent"] if bodies else None)

    def run(self, parent_model, data, parent_test_accuracy: float | None = None, overwrite: bool = False,
            resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
            check_data: bool = True) -> list[dict]:
        """Run (or, with ``resume``, finish) every run; write results as they complete.
        The data are checked against the parent once, before anything is written or
        cleared (``check_data=False``: the caller has done it)."""
        folder = self.folder
        if check_data:
            validate_parent_weights(parent_model)
            validate_run_data(data, Chain.from_module(parent_model, parent_input_shape(parent_model, data.train_x)))
        self.prepare(overwrite, resume)
        results, rows = [], []
        with StopRequest() as stop, torch_threads(self.threads):
            for k in range(self.runs):
                seed = run_seed(self.seed, k)
                if resume and self.finished(k):
                    body = load_run(folder / f"run_{k}.json")
                    log(f"{self.name} run {k + 1}/{self.runs}: already finished, skipped")
                else:
                    body = self._run_one(k, parent_model, data, parent_test_accuracy, resume, progress, stop, log)
                parent_test_accuracy = body["parent"]["test_accuracy"]
                rows.append(summarise_run(k, seed, body))
                results.append(body)
                if stop.signum is not None and k + 1 < self.runs:
                    raise RunInterrupted(f"{self.name}: {k + 1} of {self.runs} runs finished", stop.signum)
        write_summary(folder, self.name, rows, results[0]["parent"] if results else None)
        return results

    def _run_one(self, k, parent_model, data, parent_test_accuracy, resume, progress, stop, log) -> dict:
        folder = self.folder
        cfg = self.run_config(k)
        ckpt = folder / f"run_{k}.ckpt"
        run = EcompRun(cfg, parent_model, data, progress, parent_test_accuracy, check_data=False)  # checked in run()
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
        body = write_run(folder, self.name, k, r.to_json(), r.best_module)
        log(run_line(self.name, k, self.runs, body))
        return body

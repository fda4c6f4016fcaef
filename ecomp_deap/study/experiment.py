"""An experiment: N runs of one config with derived seeds, and the files they are written to.

``OUT/NAME/run_K.json`` (the run's results, see :mod:`ecomp_deap.study.results`) and
``OUT/NAME/run_K.pt`` (the chosen network, exported; load it with
:func:`ecomp_deap.nets.export.load_exported`), plus ``summary.json`` / ``summary.csv``.
A run's JSON is written last, so its presence marks the run complete. How runs are
executed (here or on a cluster) is :mod:`.runner`'s business; every executor writes
through :func:`write_run`.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import EcompConfig
from ..errors import ConfigError
from ..files import save_csv, save_json
from ..nets.export import save_network
from .lock import busy, folder_holder
from .results import RUN_SCHEMA, SUMMARY_SCHEMA, load_run, run_files

SUMMARY_FIELDS = ["run", "seed", "test_accuracy", "compression", "similarity", "parameters",
                  "hidden_units", "test_hypervolume", "front_size", "wall_time_s"]


def run_seed(base_seed: int, k: int) -> int:
    """Seed of run ``k`` of an experiment started with ``--seed base_seed``."""
    return 1000 * base_seed + k


def nearest_existing(path: Path) -> Path:
    """``path``, made absolute, or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output_folder(folder: Path, overwrite: bool, resume: bool = False, held: bool = False) -> None:
    """Refuse (ConfigError) an unwritable folder, or one holding results unless told
    to overwrite or resume; refuse (:class:`~.lock.FolderBusy`) a folder another run
    holds, unless ``held`` (this process holds its lock). Creates nothing."""
    holder = None if held else folder_holder(folder)
    if holder is not None:
        raise busy(folder, holder)
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
    """Delete an experiment folder's results: the runs' ``run_K.json``, ``.pt`` and
    ``.ckpt`` files, the summaries and ``finetune.json``."""
    # finetune.json (experiments/finetune.py) belongs to the runs it was made from
    for pattern in ("run_*.json", "run_*.pt", "run_*.ckpt", "summary.json", "summary.csv", "finetune.json"):
        for p in folder.glob(pattern):
            p.unlink()


def summarise_run(k: int, seed: int, result: dict) -> dict:
    """Run ``k``'s row of ``summary.csv`` (:data:`SUMMARY_FIELDS`) from its result body:
    its best network's measures, the test hypervolume, the front's size and the wall time."""
    best = result["best"]
    return {"run": k, "seed": seed, "test_accuracy": best["test_accuracy"], "compression": best["compression"],
            "similarity": best["similarity"], "parameters": best["parameters"],
            "hidden_units": "-".join(map(str, best["hidden_units"])), "test_hypervolume": result["test_hypervolume"],
            "front_size": len(result["front"]), "wall_time_s": result["wall_time_s"]}


def write_summary(folder: Path, name: str, rows: list[dict], parent: dict | None) -> None:
    """Write ``summary.csv`` (``rows``) and ``summary.json`` (the rows, the ``parent`` and
    each measure's median over the runs, nulls left out), atomically."""
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
    accuracy = "n/a" if b["test_accuracy"] is None else f"{b['test_accuracy']:.4f}"
    fidelity = f", test fidelity {b['test_fidelity']:.4f}" if b.get("test_fidelity") is not None else ""
    return (f"{name} run {k + 1}/{runs} (seed {body['seed']}): best test accuracy {accuracy}{fidelity}, "
            f"compression {b['compression']:.3f}, similarity {b['similarity']:.4f}, "
            f"hidden {'-'.join(map(str, b['hidden_units']))}, {body['wall_time_s']:.1f} s")


def write_run(folder: Path, name: str, k: int, result_json: dict, best_module) -> dict:
    """Write one finished run: ``run_K.pt`` (the chosen network), then ``run_K.json``
    (its presence marks the run complete), both atomically; drop its checkpoint.
    ``result_json`` is :meth:`RunResult.to_json`. Every executor writes through here."""
    folder = Path(folder)
    body = {"schema": RUN_SCHEMA, "name": name, "run": k, **result_json, "weights_file": f"run_{k}.pt"}
    save_network(folder / f"run_{k}.pt", best_module, {"measures": result_json["best"], "name": name, "run": k})
    save_json(folder / f"run_{k}.json", body)
    (folder / f"run_{k}.ckpt").unlink(missing_ok=True)
    return body


@dataclass(frozen=True)
class RunJob:
    """One run of an experiment: everything an executor needs to run it
    (:func:`ecomp_deap.study.runner.execute_run`)."""

    name: str
    k: int
    runs: int
    config: EcompConfig  # with the run's seed
    threads: int | None = 1  # torch threads (None: leave torch's setting)
    checkpoint_every: int = 25  # generations between checkpoints (0: only on interruption)

    @property
    def label(self) -> str:
        """``NAME run K/RUNS`` with K counted from 1, for messages."""
        return f"{self.name} run {self.k + 1}/{self.runs}"


@dataclass
class Experiment:
    """N runs of one config (run ``k`` with seed ``1000 * seed + k``), written to ``OUT/NAME/``."""

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

    def job(self, k: int) -> "RunJob":
        """Run ``k`` as a :class:`RunJob`."""
        return RunJob(self.name, k, self.runs, self.run_config(k), self.threads, self.checkpoint_every)

    def checkpoint_path(self, k: int) -> Path:
        """Run ``k``'s checkpoint file, ``OUT/NAME/run_K.ckpt``."""
        return self.folder / f"run_{k}.ckpt"

    @property
    def folder(self) -> Path:
        """``OUT/NAME``, where the runs are written."""
        return Path(self.out) / self.name

    def run_config(self, k: int) -> EcompConfig:
        """The config of run ``k``: the experiment's, with the run's derived seed."""
        return self.config.replace(seed=run_seed(self.seed, k))

    def prepare(self, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse a folder holding results (unless told otherwise); clear it on ``overwrite``.
        The caller holds the folder's lock (:class:`~.lock.FolderLock`)."""
        check_output_folder(self.folder, overwrite, resume, held=True)
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

"""Result files of experiments: their schemas and the loaders that plots and comparisons use
(written atomically through :mod:`ecomp_deap.files`).

One run of an experiment is ``OUT/NAME/run_K.json`` (schema ``RUN_SCHEMA``) plus
the chosen network's weights ``run_K.pt``; ``summary.json``/``summary.csv``
aggregate the runs of one experiment.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ResultsError
from ..files import load_json

RUN_SCHEMA = "ecomp_deap.run/1"
SUMMARY_SCHEMA = "ecomp_deap.summary/1"


def run_files(folder) -> list[Path]:
    """The ``run_K.json`` files of one experiment folder, ordered by K."""
    folder = Path(folder)
    files = [p for p in folder.glob("run_*.json") if p.stem[4:].isdigit()]
    return sorted(files, key=lambda p: int(p.stem[4:]))


RESTART = "delete it to restart this run (run.py --resume runs it again)"
NUMBER = (int, float, type(None))  # JSON stores NaN and infinities as null
RUN_FIELDS = {"run": (int,), "seed": (int,), "best": (dict,), "front": (list,), "parent": (dict,),
              "test_hypervolume": NUMBER, "wall_time_s": NUMBER}
"""Fields every run file has had since ``RUN_SCHEMA`` 1, and their JSON types (what the
summaries, the comparison and a resume read without asking)."""
BEST_FIELDS = {"test_accuracy": NUMBER, "compression": NUMBER, "similarity": NUMBER, "hidden_units": (list,),
               "parameters": (int,)}


def run_damage(data: dict) -> str | None:
    """What a run result of ``RUN_SCHEMA`` lacks or holds of the wrong type (None: nothing)."""
    for fields, where, prefix in ((RUN_FIELDS, data, ""), (BEST_FIELDS, data.get("best"), "best.")):
        for name, kinds in fields.items():
            if not isinstance(where, dict) or name not in where:
                return f"no field {prefix + name!r}"
            value = where[name]
            if not isinstance(value, kinds) or isinstance(value, bool):
                return f"field {prefix + name!r} is {type(value).__name__}"
    return None


def load_run(path) -> dict:
    """A run's result file as a dict; a one-line :class:`~ecomp_deap.errors.ResultsError`
    when it is missing, not JSON, not of ``RUN_SCHEMA`` or lacks a field of
    :data:`RUN_FIELDS` (a damaged file: the message says to delete it, so that
    ``run.py --resume`` runs that run again)."""
    data = load_json(path, if_damaged=f"; if it is a damaged run result, {RESTART}")
    if not isinstance(data, dict) or data.get("schema") != RUN_SCHEMA:
        raise ResultsError(f"{path}: not an ecomp_deap run result (expected schema {RUN_SCHEMA!r})")
    damage = run_damage(data)
    if damage is not None:
        raise ResultsError(f"{path}: damaged run result ({damage}); {RESTART}")
    return data


def load_experiment(folder) -> list[dict]:
    """All runs of one experiment folder; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such results folder")
    files = run_files(folder)
    if not files:
        raise ResultsError(f"{folder}: no run_K.json results in this folder (run experiments/run.py first)")
    return [load_run(p) for p in files]


def experiment_name(folder, runs: list[dict] | None = None) -> str:
    """An experiment's name: its first run's ``name``, else the folder's name."""
    if runs:
        return str(runs[0].get("name") or Path(folder).name)
    return Path(folder).resolve().name

"""Checkpoints of a run in progress: population, logbook, generation index and every
random state, written atomically, so that a resumed run continues bit for bit.

A checkpoint holds only tensors and plain data (the Logbook as rows, numpy's random
state as a tensor), so it loads with ``torch.load(weights_only=True)``: a checkpoint
file cannot run code when resumed. Format 1 (earlier versions) pickled
the Logbook and numpy arrays; it is refused with a message saying so."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from deap import tools

from ..search.loops import EvolutionState, logbook_rows
from ..config import EcompConfig
from ..errors import UnsafeFileError, UserError
from ..files import save_torch
from ..rng import plain_rng, restore_rng
from ..nets.safe_load import load_untrusted

FORMAT = "ecomp_deap.checkpoint/2"
OLD_FORMATS = ("ecomp_deap.checkpoint/1",)


def plain(obj):
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists
    (tensors, str, int, float, bool, None, lists, tuples and dicts stay)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def logbook_from_rows(rows: list[dict]) -> tools.Logbook:
    """The Logbook that :func:`ecomp_deap.search.loops.logbook_rows` turned into ``rows``
    (each chapter is a dict in its row, recorded back as the chapter)."""
    logbook = tools.Logbook()
    for row in rows:
        logbook.record(**row)
    return logbook


def save_checkpoint(path, state: EvolutionState, config: EcompConfig, rng: dict, elapsed_s: float) -> None:
    """``rng`` is the snapshot that belongs to ``state`` (taken when the state was current).
    Individuals keep sharing their tensors in the file (``torch.save`` stores a storage once)."""
    population = [{"masks": ind.masks, "weights": list(ind.weights), "biases": ind.biases, "norms": ind.norms,
                   "fitness": plain(tuple(ind.fitness.values)) if ind.fitness.valid else None,
                   "measures": plain(ind.measures)} for ind in state.population]
    save_torch(path, {"format": FORMAT, "t": int(state.t), "config": plain(config.to_dict()),
                      "population": population, "logbook": plain(logbook_rows(state.logbook)),
                      "rng": plain_rng(rng), "elapsed_s": float(elapsed_s)})


def _written_format(path: Path) -> str | None:
    """The format string of an older checkpoint, read from the archive's pickle bytes
    without unpickling them; None if none is found."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("data.pkl"):
                    data = z.read(name)
                    return next((f for f in OLD_FORMATS if f.encode() in data), None)
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def load_checkpoint(path, config: EcompConfig, ind_cls, gen: torch.Generator) -> tuple[EvolutionState, float]:
    """Restore a state (and the random states) saved for the same config."""
    path = Path(path)
    restart = f"delete {path} to restart this run from generation 0 (finished runs are kept)"
    try:
        blob = load_untrusted(path, opt_in=None, what="checkpoint")
    except UnsafeFileError as e:
        old = _written_format(path)
        if old is not None:
            raise UserError(f"{path}: checkpoint in an older format ({old}) that can only be read by unpickling "
                            f"arbitrary objects, which this version refuses; {restart}") from None
        raise UserError(f"{e}; {restart}") from None
    except Exception as e:
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); {restart}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        raise UserError(f"{path}: not an ecomp_deap checkpoint of format {FORMAT}"
                        + (f" (found {found!r})" if isinstance(found, str) else "") + f"; {restart}")
    if blob["config"] != plain(config.to_dict()):
        raise UserError(f"{path}: checkpoint was written with other settings; resume with the same options "
                        "or use --overwrite to start again")
    population = []
    for item in blob["population"]:
        ind = ind_cls(item["masks"], item["weights"], item["biases"], item.get("norms"))
        if item["fitness"] is not None:
            ind.fitness.values = tuple(item["fitness"])
        ind.measures = tuple(item["measures"]) if item["measures"] is not None else None
        population.append(ind)
    restore_rng(blob["rng"], gen)
    return EvolutionState(blob["t"], population, logbook_from_rows(blob["logbook"]), gen), float(blob["elapsed_s"])

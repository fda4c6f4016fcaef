"""Checkpoints of a run in progress: population, logbook, generation index and every
random state, so that a resumed run continues bit for bit.

A checkpoint holds only tensors and plain data (the Logbook as rows, numpy's random
state as a tensor), so it loads with ``torch.load(weights_only=True)``: a checkpoint
cannot run code when resumed. Format 1 (earlier versions) pickled the Logbook and numpy
arrays; it is refused with a message saying so.

Where checkpoints live is a :class:`CheckpointStore`: :class:`FileStore` (``OUT/NAME/run_K.ckpt``,
written atomically: a serial run) or, on a cluster, a store in the scheduler that the
driver mirrors to the same file (:mod:`.executors`); both hold the same bytes.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from deap import tools

from ..config import EcompConfig
from ..errors import UnsafeFileError, UserError
from ..files import write_bytes
from ..fitness.measures import IndividualMeasures
from ..nets.safe_load import archive_damage, load_untrusted
from ..rng import plain_rng, restore_rng
from ..search.loops import EvolutionState, logbook_rows

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


def checkpoint_bytes(state: EvolutionState, config: EcompConfig, rng: dict, elapsed_s: float) -> bytes:
    """The checkpoint of ``state`` as the bytes of a torch file. ``rng`` is the snapshot that
    belongs to ``state`` (taken when the state was current). Individuals keep sharing their
    tensors in the file (``torch.save`` stores a storage once)."""
    population = [{"masks": ind.masks, "weights": list(ind.weights), "biases": ind.biases, "norms": ind.norms,
                   "fitness": plain(tuple(ind.fitness.values)) if ind.fitness.valid else None,
                   "measures": plain(tuple(ind.measures)) if ind.measures is not None else None}
                  for ind in state.population]
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "t": int(state.t), "config": plain(config.to_dict()),
                "population": population, "logbook": plain(logbook_rows(state.logbook)),
                "rng": plain_rng(rng), "elapsed_s": float(elapsed_s)}, buffer)
    return buffer.getvalue()


def save_checkpoint(path, state: EvolutionState, config: EcompConfig, rng: dict, elapsed_s: float) -> None:
    """:func:`checkpoint_bytes` written to ``path`` atomically."""
    write_bytes(path, checkpoint_bytes(state, config, rng, elapsed_s))


def _written_format(data: bytes) -> str | None:
    """The format string of an older checkpoint, read from the archive's pickle bytes
    without unpickling them; None if none is found."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                if name.endswith("data.pkl"):
                    pickled = z.read(name)
                    return next((f for f in OLD_FORMATS if f.encode() in pickled), None)
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def read_checkpoint(data: bytes, config: EcompConfig, where: str) -> dict:
    """The checkpoint in ``data`` (the bytes of a checkpoint file; ``where`` names it in
    errors), checked: loadable without running code, of this format, written for
    ``config`` (settings it lacks count as their defaults); else one
    :class:`~ecomp_deap.errors.UserError` line saying what to do."""
    restart = f"delete {where} to restart this run from generation 0 (finished runs are kept)"
    damage = archive_damage(data)
    if damage is not None:
        raise UserError(f"{where}: damaged checkpoint ({damage}); {restart}")
    try:
        blob = load_untrusted(io.BytesIO(data), opt_in=None, what="checkpoint", name=where)
    except UnsafeFileError as e:
        old = _written_format(data)
        if old is not None:
            raise UserError(f"{where}: checkpoint in an older format ({old}) that can only be read by unpickling "
                            f"arbitrary objects, which this version refuses; {restart}") from None
        raise UserError(f"{e}; {restart}") from None
    except Exception as e:
        raise UserError(f"{where}: unreadable checkpoint ({type(e).__name__}); {restart}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        raise UserError(f"{where}: not an ecomp_deap checkpoint of format {FORMAT}"
                        + (f" (found {found!r})" if isinstance(found, str) else "") + f"; {restart}")
    missing = _missing_field(blob)
    if missing is not None:
        raise UserError(f"{where}: damaged checkpoint ({missing}); {restart}")
    defaults = plain(EcompConfig().to_dict())  # a setting added after the checkpoint was written: its default
    if {**defaults, **blob["config"]} != plain(config.to_dict()):
        raise UserError(f"{where}: checkpoint was written with other settings; resume with the same options "
                        "or use --overwrite to start again")
    if len(blob["population"]) != config.pop_size:
        raise UserError(f"{where}: damaged checkpoint ({len(blob['population'])} individuals for a population of "
                        f"{config.pop_size}); {restart}")
    return blob


def _missing_field(blob: dict) -> str | None:
    """What a checkpoint of this format lacks or holds of the wrong type (None: nothing)."""
    top = {"t": (int,), "config": (dict,), "population": (list,), "logbook": (list,), "rng": (dict,),
           "elapsed_s": (float, int)}
    for name, kinds in top.items():
        if name not in blob:
            return f"no field {name!r}"
        value = blob[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"field {name!r} is {type(value).__name__}, not {kinds[0].__name__}"
    for i, item in enumerate(blob["population"]):
        if not isinstance(item, dict):
            return f"individual {i} is {type(item).__name__}, not dict"
        for name in ("masks", "weights", "biases"):
            value = item.get(name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in value):
                return f"individual {i} has no list of tensors {name!r}"
        for name in ("fitness", "measures"):
            if name not in item:
                return f"individual {i} has no field {name!r}"
    for name in ("random", "numpy", "torch", "gen"):
        if name not in blob["rng"]:
            return f"no random state {name!r}"
    if not all(isinstance(row, dict) for row in blob["logbook"]):
        return "a logbook row is not a dict"
    return None


def restore_state(blob: dict, ind_cls, rng: torch.Generator, where: str = "the checkpoint") -> tuple[EvolutionState, float]:
    """The state a checkpoint (:func:`read_checkpoint`) holds, with every random state
    restored (``rng``: the run's generator); and the run's wall time before it. A value
    that cannot be restored is one :class:`~ecomp_deap.errors.UserError` line naming
    ``where`` and saying to delete it."""
    try:
        return _restore(blob, ind_cls, rng)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"{where}: damaged checkpoint (cannot restore it: {type(e).__name__}); delete {where} to "
                        "restart this run from generation 0 (finished runs are kept)") from None


def _restore(blob: dict, ind_cls, rng: torch.Generator) -> tuple[EvolutionState, float]:
    population = []
    for item in blob["population"]:
        ind = ind_cls(item["masks"], item["weights"], item["biases"], item.get("norms"))
        if item["fitness"] is not None:
            ind.fitness.values = tuple(item["fitness"])
        ind.measures = IndividualMeasures(*item["measures"]) if item["measures"] is not None else None
        population.append(ind)
    restore_rng(blob["rng"], rng)
    return EvolutionState(blob["t"], population, logbook_from_rows(blob["logbook"]), rng), float(blob["elapsed_s"])


def load_checkpoint(path, config: EcompConfig, ind_cls, rng: torch.Generator) -> tuple[EvolutionState, float]:
    """Restore a state (and the random states) saved in ``path`` for the same config."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    return restore_state(read_checkpoint(data, config, str(path)), ind_cls, rng, str(path))


class CheckpointStore:
    """Where one run's checkpoints go: :meth:`save` the latest, :meth:`load` it (None: the
    run starts from generation 0), :meth:`clear` it once the run is written."""

    def save(self, data: bytes) -> None:
        """Keep ``data``, a serialised checkpoint, as the run's latest (replacing the one before)."""
        raise NotImplementedError

    def load(self) -> bytes | None:
        """The latest checkpoint's bytes, or None when there is none."""
        raise NotImplementedError

    def clear(self) -> None:
        """Drop the checkpoint (there may be none)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the checkpoints are, for messages."""
        raise NotImplementedError


class FileStore(CheckpointStore):
    """Checkpoints in a file (``OUT/NAME/run_K.ckpt``), written atomically."""

    def __init__(self, path):
        self.path = Path(path)

    def save(self, data: bytes) -> None:
        write_bytes(self.path, data)

    def load(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UserError(f"{self.path}: cannot read the checkpoint ({e.strerror})") from None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.path)


class MemoryStore(CheckpointStore):
    """Checkpoints held in memory (tests, and a run that must not touch the disk)."""

    def __init__(self, data: bytes | None = None):
        self.data = data

    def save(self, data: bytes) -> None:
        self.data = data

    def load(self) -> bytes | None:
        return self.data

    def clear(self) -> None:
        self.data = None

    def describe(self) -> str:
        return "the checkpoint held in memory"

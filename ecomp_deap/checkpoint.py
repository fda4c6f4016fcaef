"""Checkpoints of a run in progress: population, logbook, generation index and every
random state, written atomically, so that a resumed run continues bit for bit."""
from __future__ import annotations

from pathlib import Path

import torch

from .algorithm import EvolutionState
from .config import EcompConfig
from .errors import UserError
from .results import save_torch
from .rng import restore_rng

FORMAT = "ecomp_deap.checkpoint/1"


def save_checkpoint(path, state: EvolutionState, config: EcompConfig, rng: dict, elapsed_s: float) -> None:
    """``rng`` is the snapshot that belongs to ``state`` (taken when the state was current)."""
    population = [{"masks": ind.masks, "weights": ind.weights, "biases": ind.biases,
                   "fitness": tuple(ind.fitness.values) if ind.fitness.valid else None,
                   "measures": ind.measures} for ind in state.population]
    save_torch(path, {"format": FORMAT, "t": state.t, "config": config.to_dict(), "population": population,
                      "logbook": state.logbook, "rng": rng, "elapsed_s": elapsed_s})


def load_checkpoint(path, config: EcompConfig, ind_cls, gen: torch.Generator) -> tuple[EvolutionState, float]:
    """Restore a state (and the random states) saved for the same config."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start the run afresh") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path}: not an ecomp_deap checkpoint")
    if blob["config"] != config.to_dict():
        raise UserError(f"{path}: checkpoint was written with other settings; resume with the same options "
                        "or use --overwrite to start again")
    population = []
    for item in blob["population"]:
        ind = ind_cls(item["masks"], item["weights"], item["biases"])
        if item["fitness"] is not None:
            ind.fitness.values = item["fitness"]
        ind.measures = item["measures"]
        population.append(ind)
    restore_rng(blob["rng"], gen)
    return EvolutionState(blob["t"], population, blob["logbook"], gen), float(blob["elapsed_s"])

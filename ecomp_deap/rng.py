"""Random state: seeded once per run, captured and restored for checkpoints.

DEAP's own operators (``selTournamentDCD``, ``selNSGA2``'s ties) draw from ``random``;
ours draw from the run's explicit ``torch.Generator``; numpy and torch's global
generators are seeded too, for anything else.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed random, numpy and torch once per run; return the run's own torch generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_snapshot(gen: torch.Generator) -> dict:
    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "gen": gen.get_state()}


def restore_rng(snapshot: dict, gen: torch.Generator) -> None:
    random.setstate(snapshot["random"])
    np.random.set_state(snapshot["numpy"])
    torch.set_rng_state(snapshot["torch"])
    gen.set_state(snapshot["gen"])

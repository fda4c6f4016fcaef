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


def rng_snapshot(rng: torch.Generator) -> dict:
    """The states of ``random``, numpy, torch's global generator and the run's ``rng``, for
    :func:`restore_rng` (:func:`plain_rng` makes it loadable with ``weights_only=True``)."""
    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "gen": rng.get_state()}


def plain_rng(snapshot: dict) -> dict:
    """The snapshot as tensors and plain data only (numpy's key array as an int64
    tensor), so a checkpoint holding it loads with ``weights_only=True``."""
    name, key, pos, has_gauss, gauss = snapshot["numpy"]
    numpy_state = (str(name), torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))
    return {**snapshot, "numpy": numpy_state}


def restore_rng(snapshot: dict, rng: torch.Generator) -> None:
    """Restore a :func:`rng_snapshot` or its :func:`plain_rng` form."""
    random.setstate(snapshot["random"])
    name, key, pos, has_gauss, gauss = snapshot["numpy"]
    if isinstance(key, torch.Tensor):
        key = key.numpy()
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(snapshot["torch"])
    rng.set_state(snapshot["gen"])

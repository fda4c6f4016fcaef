"""Honest baselines in the same harness: structured pruning to matched sizes, no retraining.

At size ``s`` every hidden layer ``l`` keeps ``max(1, round(s * H_l))`` units chosen by

* ``l1``: the largest L1 norm of the unit's incoming weights;
* ``random``: uniformly at random (several seeds: mean and standard deviation);
* ``activation``: the largest mean |activation| on the evolution subset times the L2
  norm of the unit's outgoing weights (what the unit actually sends downstream).

The pruned networks are masked individuals of the parent, measured by the same
evaluator as the evolved ones.
"""
from __future__ import annotations

import numpy as np
import torch

from .architecture import MLPArchitecture, parent_tensors
from .config import EcompConfig
from .evaluate import PopulationEvaluator
from .genome import Genome
from .operators import l1_unit_scores, top_units_mask

METHODS = ("l1", "random", "activation")
BASELINES_SCHEMA = "ecomp_deap.baselines/1"


def keep_counts(arch: MLPArchitecture, size: float) -> list[int]:
    return [max(1, int(round(size * h))) for h in arch.hidden_widths]


def unit_scores(method: str, arch: MLPArchitecture, weights, biases, x: torch.Tensor | None = None,
                gen: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per hidden layer, a (H_l,) score: higher is kept first."""
    if method == "l1":
        return l1_unit_scores(weights)
    if method == "random":
        return [torch.rand(h, generator=gen) for h in arch.hidden_widths]
    if method == "activation":
        ev = PopulationEvaluator(arch, weights, biases, EcompConfig(embedding_layers=None, recombination_layers=None))
        full = Genome([torch.ones(h, dtype=torch.bool) for h in arch.hidden_widths], weights, biases)
        mean_abs = [torch.zeros(h, dtype=torch.float64) for h in arch.hidden_widths]
        with torch.inference_mode():
            w, b, m = ev._stack([full])
            for i in range(0, len(x), 1000):
                _, _, post = ev.forward(w, b, m, x[i:i + 1000], keep_pre=False)
                for l, a in enumerate(post):
                    mean_abs[l] += a[0].abs().sum(0, dtype=torch.float64)
        return [(mean_abs[l] / len(x)).float() * weights[l + 1].norm(dim=0) for l in range(arch.n_hidden)]
    raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")


def pruned(arch: MLPArchitecture, weights, biases, scores, size: float) -> Genome:
    masks = [top_units_mask(s, k) for s, k in zip(scores, keep_counts(arch, size))]
    return Genome(masks, weights, biases)


def baseline_curves(parent: torch.nn.Module, sizes, test_x, test_y, activation_x=None, seeds: int = 5,
                    methods=METHODS, seed: int = 0) -> dict:
    """Test accuracy of every method at every size: ``{method: [{size, compression,
    hidden_units, test_accuracy, test_accuracy_std}, ...]}``."""
    arch = MLPArchitecture.from_module(parent)
    weights, biases = parent_tensors(parent, arch)
    ev = PopulationEvaluator(arch, weights, biases, EcompConfig(embedding_layers=None, recombination_layers=None))
    total = sum(arch.hidden_widths)
    out = {}
    for method in methods:
        repeats = seeds if method == "random" else 1
        gen = torch.Generator().manual_seed(seed)
        score_sets = [unit_scores(method, arch, weights, biases, activation_x, gen) for _ in range(repeats)]
        population = [pruned(arch, weights, biases, sc, s) for s in sizes for sc in score_sets]
        acc = ev.accuracy(population, test_x, test_y).reshape(len(sizes), repeats)  # (sizes, repeats)
        out[method] = [{"size": float(s), "compression": sum(keep_counts(arch, s)) / total,
                        "hidden_units": keep_counts(arch, s), "test_accuracy": float(np.mean(acc[i])),
                        "test_accuracy_std": float(np.std(acc[i])), "repeats": repeats}
                       for i, s in enumerate(sizes)]
    return out

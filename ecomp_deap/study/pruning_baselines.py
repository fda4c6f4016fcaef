"""Honest baselines in the same harness: structured pruning to matched sizes, no retraining.

At size ``s`` every hidden stage ``l`` keeps ``max(1, round(s * H_l))`` groups (units
or channels) chosen by

* ``l1``: the largest L1 norm of the group's incoming weights (for a convolution, the
  filter: Li et al. 2017);
* ``random``: uniformly at random (several seeds: mean and standard deviation);
* ``activation``: the largest mean |output| on the evolution subset (over images and
  feature-map positions) times the L2 norm of the group's outgoing weights (what the
  group actually sends downstream).

The pruned networks are masked individuals of the parent, measured by the same
evaluator as the evolved ones. With calibration images for the refit, each method also
appears refitted (``l1+refit``, ...): the same pruning, then the closed-form refit of
its Linear layers to the parent that evolved runs with ``refit_images`` get
(:mod:`ecomp_deap.nets.refit`), so that the comparison stays fair.
"""
from __future__ import annotations

import numpy as np
import torch

from ..nets.chain import Chain, parent_input_shape, parent_tensors
from ..nets.forward import as_input, run_stage
from ..config import EcompConfig
from ..fitness.evaluator import PopulationEvaluator
from ..search.genome import Genome
from ..search.operators import l1_unit_scores, recalibrate_norms, top_units_mask
from ..nets.refit import Refit

METHODS = ("l1", "random", "activation")
REFIT_SUFFIX = "+refit"


def split_method(name: str) -> tuple[str, bool]:
    """'l1+refit' -> ('l1', True); 'l1' -> ('l1', False)."""
    if name.endswith(REFIT_SUFFIX):
        return name[:-len(REFIT_SUFFIX)], True
    return name, False
BASELINES_SCHEMA = "ecomp_deap.baselines/1"


def keep_counts(arch: Chain, size: float) -> list[int]:
    return [max(1, int(round(size * h))) for h in arch.hidden_widths]


def unit_scores(method: str, arch: Chain, weights, biases, x: torch.Tensor | None = None,
                gen: torch.Generator | None = None, norms=None) -> list[torch.Tensor]:
    """Per hidden stage, a (H_l,) score: higher is kept first."""
    if method == "l1":
        return l1_unit_scores(weights)
    if method == "random":
        return [torch.rand(h, generator=gen) for h in arch.hidden_widths]
    if method == "activation":
        return activation_scores(arch, weights, biases, norms, x)
    raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")


def activation_scores(arch: Chain, weights, biases, norms, x: torch.Tensor, batch: int = 1000) -> list[torch.Tensor]:
    """Per hidden stage, each group's mean |output| over ``x`` (over images and, for a
    feature map, its H*W positions; the output the next layer reads) times the L2 norm
    of its outgoing weights (the next stage's input slice for that group)."""
    norms = norms if norms is not None else [None] * len(weights)
    mean_abs = [torch.zeros(h, dtype=torch.float64) for h in arch.hidden_widths]
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            h = as_input(arch, x[i:i + batch])
            for l, st in enumerate(arch.stages[:-1]):
                h, _ = run_stage(st, h, weights[l], biases[l], norms[l])
                dims = [0, *range(2, h.dim())]  # all but the group dim
                mean_abs[l] += h.abs().sum(dims, dtype=torch.float64) / (h[0, 0].numel())
    scores = []
    for l, st in enumerate(arch.stages[:-1]):
        w = weights[l + 1].transpose(0, 1)  # (in, out[, kh, kw])
        w = w.reshape(st.out_size, -1)  # (groups, everything a group feeds)
        scores.append((mean_abs[l] / len(x)).float() * w.norm(dim=1))
    return scores


def pruned(arch: Chain, weights, biases, scores, size: float, norms=None) -> Genome:
    masks = [top_units_mask(s, k) for s, k in zip(scores, keep_counts(arch, size))]
    return Genome(masks, weights, biases, norms)


def baseline_prunings(arch: Chain, weights, biases, norms, method: str, sizes, activation_x=None, seeds: int = 5,
                      seed: int = 0, calibration_x=None, refit_x=None, refit_ridge: float = 1e-4) -> list[Genome]:
    """One method's pruned networks, size-major: for each size, ``seeds`` networks for
    'random' (scores drawn in turn from one generator seeded with ``seed``), one for the
    others. With ``calibration_x`` every network's BatchNorm statistics are re-estimated
    on it (adaptive BatchNorm, as ``EcompConfig.norm_calibration`` does for evolved
    networks). A method named ``M+refit`` is ``M`` followed by the refit on ``refit_x``
    (:class:`ecomp_deap.nets.refit.Refit`). :func:`baseline_curves` measures these;
    ``experiments/finetune.py`` rebuilds and fine-tunes the same ones."""
    method, refit = split_method(method)
    if refit and refit_x is None:
        raise ValueError(f"baseline {method}{REFIT_SUFFIX} needs calibration images for the refit")
    repeats = seeds if method == "random" else 1
    gen = torch.Generator().manual_seed(seed)
    score_sets = [unit_scores(method, arch, weights, biases, activation_x, gen, norms) for _ in range(repeats)]
    population = [pruned(arch, weights, biases, sc, s, norms) for s in sizes for sc in score_sets]
    refitter = Refit(arch, weights, biases, norms, refit_x, refit_ridge) if refit else None
    for ind in population:
        if refitter is not None:
            refitter(ind)
        if calibration_x is not None:
            recalibrate_norms(ind, arch, calibration_x)
    return population


def baseline_curves(parent: torch.nn.Module, sizes, test_x, test_y, activation_x=None, seeds: int = 5,
                    methods=METHODS, seed: int = 0, calibration_x=None, refit_x=None,
                    refit_ridge: float = 1e-4) -> dict:
    """Test accuracy of every method at every size: ``{method: [{size, compression,
    hidden_units, test_accuracy, test_accuracy_std}, ...]}``, the networks of
    :func:`baseline_prunings`; with ``refit_x``, every method refitted too
    (``{method}+refit``)."""
    if refit_x is not None:
        methods = [*methods, *(m + REFIT_SUFFIX for m in methods if not m.endswith(REFIT_SUFFIX))]
    arch = Chain.from_module(parent, input_shape=parent_input_shape(parent, test_x))
    weights, biases, norms = parent_tensors(parent, arch)
    ev = PopulationEvaluator(arch, weights, biases, EcompConfig(embedding_layers=None, recombination_layers=None),
                             parent_norms=norms)
    total = sum(arch.hidden_widths)
    out = {}
    for method in methods:
        repeats = seeds if split_method(method)[0] == "random" else 1
        population = baseline_prunings(arch, weights, biases, norms, method, sizes, activation_x, seeds, seed,
                                       calibration_x, refit_x, refit_ridge)
        acc = ev.accuracy(population, test_x, test_y).reshape(len(sizes), repeats)  # (sizes, repeats)
        out[method] = [{"size": float(s), "compression": sum(keep_counts(arch, s)) / total,
                        "hidden_units": keep_counts(arch, s), "test_accuracy": float(np.mean(acc[i])),
                        "test_accuracy_std": float(np.std(acc[i])), "repeats": repeats}
                       for i, s in enumerate(sizes)]
    return out

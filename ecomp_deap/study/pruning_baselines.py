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

from ..config import EcompConfig
from ..fitness.evaluator import PopulationEvaluator
from ..nets.chain import Chain
from ..nets.masked import MaskedNetwork
from ..nets.reader import Parent, read_parent
from ..nets.refit import Refit
from ..search.operators import recalibrate_norms
from ..search.scores import METHODS, top_units_mask, unit_scores

BASELINES_SCHEMA = "ecomp_deap.baselines/1"
REFIT_SUFFIX = "+refit"


def split_method(name: str) -> tuple[str, bool]:
    """'l1+refit' -> ('l1', True); 'l1' -> ('l1', False)."""
    if name.endswith(REFIT_SUFFIX):
        return name[:-len(REFIT_SUFFIX)], True
    return name, False


def keep_counts(chain: Chain, size: float) -> list[int]:
    """Groups each hidden stage keeps at size ``size``: ``max(1, round(size * H_l))``."""
    return [max(1, int(round(size * h))) for h in chain.hidden_widths]


def pruned(parent: Parent, scores, size: float) -> MaskedNetwork:
    """The parent pruned to ``size``: each hidden stage keeps its best-scored groups."""
    masks = [top_units_mask(s, k) for s, k in zip(scores, keep_counts(parent.net, size))]
    return MaskedNetwork(masks, parent.weights, parent.biases, parent.norms)


def baseline_prunings(parent: Parent, method: str, sizes, activation_x=None, seeds: int = 5, seed: int = 0,
                      calibration_x=None, refit_x=None, refit_ridge: float = 1e-4) -> list[MaskedNetwork]:
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
    chain, weights, biases, norms = parent.net, parent.weights, parent.biases, parent.norms
    repeats = seeds if method == "random" else 1
    rng = torch.Generator().manual_seed(seed)
    score_sets = [unit_scores(method, chain, weights, biases, activation_x, rng, norms) for _ in range(repeats)]
    population = [pruned(parent, sc, s) for s in sizes for sc in score_sets]
    refitter = Refit(chain, weights, biases, norms, refit_x, refit_ridge) if refit else None
    for ind in population:
        if refitter is not None:
            refitter(ind)
        if calibration_x is not None:
            recalibrate_norms(ind, chain, calibration_x)
    return population


def baseline_curves(parent, sizes, test_x, test_y, activation_x=None, seeds: int = 5,
                    methods=METHODS, seed: int = 0, calibration_x=None, refit_x=None,
                    refit_ridge: float = 1e-4) -> dict:
    """Test accuracy of every method at every size: ``{method: [{size, compression,
    hidden_units, test_accuracy, test_accuracy_std}, ...]}``, the networks of
    :func:`baseline_prunings`; with ``refit_x``, every method refitted too
    (``{method}+refit``). ``parent``: a :class:`~ecomp_deap.nets.reader.Parent`, or a module
    to read."""
    parent = read_parent(parent, test_x)
    if refit_x is not None:
        methods = [*methods, *(m + REFIT_SUFFIX for m in methods if not m.endswith(REFIT_SUFFIX))]
    chain = parent.net
    ev = PopulationEvaluator(parent, EcompConfig(embedding_layers=None, recombination_layers=None))
    total = sum(chain.hidden_widths)
    out = {}
    for method in methods:
        repeats = seeds if split_method(method)[0] == "random" else 1
        population = baseline_prunings(parent, method, sizes, activation_x, seeds, seed, calibration_x, refit_x,
                                       refit_ridge)
        acc = ev.accuracy(population, test_x, test_y).reshape(len(sizes), repeats)  # (sizes, repeats)
        out[method] = [{"size": float(s), "compression": sum(keep_counts(chain, s)) / total,
                        "hidden_units": keep_counts(chain, s), "test_accuracy": float(np.mean(acc[i])),
                        "test_accuracy_std": float(np.std(acc[i])), "repeats": repeats}
                       for i, s in enumerate(sizes)]
    return out

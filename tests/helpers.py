"""Helpers the test modules share: small populations of MLPs and CNNs, the command-line
scripts through a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import torch
from conftest import REPO
from torch import nn

from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import (
    cx_layerwise,
    init_pruned_population,
    mut_flip_units,
    mut_scale_units,
    mut_scale_weights,
)
from ecomp_deap.search.run import EcompRun, check_data

# A small parent and budget: the whole chain in seconds.
SMALL = ["--hidden", "32", "32", "--parent-epochs", "1", "--pop-size", "8", "--generations", "3",
         "--batch-size", "50", "--val-size", "100", "--device", "cpu", "--quiet"]


def run_script(script, *args, env=None, timeout=300):
    """A script of the repository (``experiments/run.py``, ...) run in a subprocess."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})



def setup(hidden=(16, 12, 8), seed=0):
    """A small MLP parent's chain, weights, biases and the NSGA-II individual type."""
    torch.manual_seed(seed)
    parent = read_parent(build_mlp(hidden, in_features=10, n_classes=5))
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    return parent.net, list(parent.weights), list(parent.biases), ind_cls


def varied_population(model, n=6, seed=0, mutate=True):
    """L1 prunings, recombined, weight-mutated (unless ``mutate`` is False: then the
    individuals keep sharing the parent's tensors) and mask-flipped."""
    parent = read_parent(model)
    w, b = parent.weights, parent.biases
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    pop = init_pruned_population(ind_cls, w, b, n)
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n - 1, 2):
        cx_layerwise(pop[i], pop[i + 1], range(len(w)), g)
    for ind in pop:
        if mutate:
            mut_scale_weights(ind, range(len(w)), 0.9, 1.1, g)
        mut_flip_units(ind, 0.1, g)
    return parent, pop


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def seq(*layers):
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


# (model factory, input shape): stride 2, padding, no bias, dilation, non-square kernels,
# average / max / adaptive pooling, BatchNorm 2d and 1d, Dropout, several activations
CNNS = {
    "stride2-nobias-bn-avgpool": (lambda: seq(
        nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.GELU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 12), nn.Tanh(), nn.Linear(12, 4)), (3, 12, 12)),
    "dilation-maxpool-adaptive": (lambda: seq(
        nn.Conv2d(1, 5, (3, 2), dilation=2), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.3),
        nn.Conv2d(5, 7, 3, padding=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 3)),
     (1, 14, 13)),
    "conv-then-mlp-with-bn1d": (lambda: seq(
        nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
        nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5), nn.Linear(10, 3)), (2, 6, 6)),
}


def population(model, shape, n=6, seed=0, mutate=True):
    """L1 prunings, recombined on every stage, mutated (weights or channel gains) and
    mask-flipped: individuals with their own filters, BatchNorm entries and masks."""
    parent = read_parent(model, torch.zeros(1, *shape))
    chain, w, b, norms = parent.net, parent.weights, parent.biases, parent.norms
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    pop = init_pruned_population(ind_cls, w, b, n, norms=norms)
    g = torch.Generator().manual_seed(seed)
    layers = range(len(w))
    for i in range(0, n - 1, 2):
        cx_layerwise(pop[i], pop[i + 1], layers, g)
    for j, ind in enumerate(pop):
        if mutate:
            if j % 2:
                mut_scale_weights(ind, layers, 0.8, 1.2, g)
            else:
                mut_scale_units(ind, layers, 0.8, 1.2, g, repeats=[st.in_repeat for st in chain.stages])
        mut_flip_units(ind, 0.2, g)
    return parent, pop


def ecomp_run(config, model, data, progress: bool = False, **kwargs) -> EcompRun:
    """An :class:`EcompRun` on ``model`` and ``data``, read and checked as the entry points do."""
    parent = read_parent(model, data.train_x)
    return EcompRun(config, parent, check_data(parent, data), progress=progress, **kwargs)


def run_here(experiments, parent, data, **kwargs):
    """Every run of ``experiments`` in this process, one after the other (the runner's serial path)."""
    from ecomp_deap.study.runner import SerialExecutor, run_experiments

    kwargs.setdefault("log", lambda s: None)
    report = run_experiments(list(experiments), parent, data, SerialExecutor(progress=False), **kwargs)
    report.raise_first_failure()
    return report

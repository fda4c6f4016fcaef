"""Baselines for graph parents: Torch-Pruning's one-shot pruners at matched multiply-adds.

For a graph parent (:class:`~ecomp_deap.nets.graph.Graph`: a ResNet, a MobileNet, a
user's own module) the budget users give is multiply-adds, and the pruners they know
are Torch-Pruning's. Each baseline is the library's ``MetaPruner`` with one of its
importance criteria, pruning every coupled group by the same ratio (its default, local
pruning), the classifier left whole, no fine-tuning:

* ``magnitude``: ``GroupMagnitudeImportance(p=2)``, the library's default (the L2 norm
  of each channel's slices over every layer of its group);
* ``l1``: the same with ``p=1`` (group L1, Li et al. 2017 over the coupled group);
* ``bn_scale``: ``BNScaleImportance`` (|gamma| of the group's BatchNorm, Network Slimming);
* ``taylor``: ``GroupTaylorImportance`` (first-order Taylor: weight times gradient of the
  cross-entropy on the labelled calibration images);
* ``activation``: ``ActivationImportance`` (mean |input| each consumer reads, on the
  calibration images);
* ``random``: ``RandomImportance`` (``seeds`` repetitions: mean and standard deviation).

Sizes are fractions ``F`` of the parent's multiply-adds (Conv and Linear layers, as
:meth:`Graph.sizes <ecomp_deap.nets.graph.Graph.sizes>` counts them): the ratio is the
smallest (found once by bisection, the same for every criterion: which channels go
does not change how many) whose pruned network has at most ``F`` of them. Each pruned
network is a physically smaller copy of the parent's own class, run by its own forward.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

TP_METHODS = ("magnitude", "l1", "bn_scale", "taylor", "activation", "random")
BISECTION_STEPS = 14  # ratio resolution 2**-14: far below one channel of any group


def layer_sizes(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(parameters, multiply-adds per example of the Conv and Linear layers) of ``model``,
    counted by hooks on one forward of a zero input of ``input_shape`` (C, ...)."""
    macs = []

    def count(module, _inputs, out):
        positions = math.prod(out.shape[2:]) if isinstance(module, nn.modules.conv._ConvNd) else 1
        macs.append(module.weight.numel() * positions)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for p in model.parameters()), sum(macs)


def _importance(method: str):
    import torch_pruning as tp

    imp = tp.importance
    if method == "magnitude":
        return imp.GroupMagnitudeImportance(p=2)
    if method == "l1":
        return imp.GroupMagnitudeImportance(p=1)
    if method == "bn_scale":
        return imp.BNScaleImportance()
    if method == "taylor":
        return imp.GroupTaylorImportance()
    if method == "activation":
        return imp.ActivationImportance()
    if method == "random":
        return imp.RandomImportance()
    raise ValueError(f"unknown Torch-Pruning baseline {method!r}; choose from {', '.join(TP_METHODS)}")


def tp_prune(graph, method: str, ratio: float, calib_x: torch.Tensor | None = None,
             calib_y: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """A pruned deep copy of ``graph.model``: every group pruned by ``ratio`` by
    Torch-Pruning's ``MetaPruner`` with ``method``'s importance (the output layer is
    never pruned). ``taylor`` needs labelled ``calib_x``/``calib_y``, ``activation``
    ``calib_x``; ``random`` draws from a generator seeded with ``seed``."""
    import torch_pruning as tp

    model = copy.deepcopy(graph.model).eval()
    if method in ("taylor", "activation") and calib_x is None:
        raise ValueError(f"the {method} baseline needs calibration images")
    if method == "taylor" and calib_y is None:
        raise ValueError("the taylor baseline needs the calibration images' labels")
    output = model.get_submodule(graph.output_layer)
    example = torch.zeros(1, *graph.input_shape)
    importance = _importance(method)
    with torch.random.fork_rng(devices=[]):  # RandomImportance draws from the global generator
        torch.manual_seed(seed)
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=float(ratio),
                                      ignored_layers=[output])
        if method == "taylor":
            model.zero_grad(set_to_none=True)
            for i in range(0, len(calib_x), 500):
                nn.functional.cross_entropy(model(calib_x[i:i + 500]), calib_y[i:i + 500],
                                            reduction="sum").backward()
        if method == "activation":
            with importance.compute_importance(model), torch.no_grad():
                for i in range(0, len(calib_x), 500):
                    model(calib_x[i:i + 500])
                pruner.step()
        else:
            pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def recalibrate_module(model: nn.Module, x: torch.Tensor, batch: int = 500) -> nn.Module:
    """Adaptive BatchNorm on a (pruned) module, in place: every BatchNorm's running
    statistics re-estimated on ``x`` (a cumulative average over batches of ``batch``,
    the other modules in evaluation mode; forward only)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def ratio_for_macs(graph, fraction: float) -> float:
    """The smallest uniform pruning ratio whose pruned network has at most ``fraction``
    of the parent's multiply-adds (bisection over [0, 1); by magnitude: how many channels
    a ratio drops does not depend on the criterion)."""
    full = graph.sizes()[1]
    if layer_sizes(graph.model, graph.input_shape)[1] <= fraction * full:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if layer_sizes(tp_prune(graph, "magnitude", mid), graph.input_shape)[1] <= fraction * full:
            high = mid
        else:
            low = mid
    return high


def tp_prunings(parent, method: str, sizes: Sequence[float], calib_x=None, calib_y=None, seeds: int = 5,
                seed: int = 0, ratios: Sequence[float] | None = None, norm_x=None) -> list[nn.Module]:
    """``method``'s pruned networks, size-major: for each multiply-add fraction of
    ``sizes``, ``seeds`` networks for 'random' (seeds ``seed``, ``seed + 1``, ...), one for
    the others. ``ratios``: the pruning ratio of each size (default :func:`ratio_for_macs`);
    with ``norm_x``, each network's BatchNorm statistics re-estimated on those images
    (:func:`recalibrate_module`, as ``EcompConfig.norm_calibration`` does for evolved ones)."""
    graph = parent.net
    ratios = list(ratios) if ratios is not None else [ratio_for_macs(graph, s) for s in sizes]
    repeats = seeds if method == "random" else 1
    nets = [tp_prune(graph, method, r, calib_x, calib_y, seed + k) for r in ratios for k in range(repeats)]
    return [recalibrate_module(m, norm_x) for m in nets] if norm_x is not None else nets


def group_widths(graph, model: nn.Module) -> list[int]:
    """Channels each of ``graph``'s groups keeps in a pruned copy: its root layer's outputs."""
    out = []
    for g in graph.groups:
        m = model.get_submodule(g.name)
        out.append(int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features))
    return out


def tp_baseline_curves(parent, sizes: Sequence[float], test_x: torch.Tensor, test_y: torch.Tensor,
                       calib_x: torch.Tensor | None = None, calib_y: torch.Tensor | None = None,
                       seeds: int = 5, methods: Sequence[str] = TP_METHODS, seed: int = 0,
                       norm_x: torch.Tensor | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Test accuracy of every method at every multiply-add fraction: ``{method: [{size,
    macs_kept, parameters_kept, compression (groups' channels kept), hidden_units,
    pruning_ratio, test_accuracy, test_accuracy_std, repeats}, ...]}``. Methods that need
    calibration images are skipped (with a line to ``log``) when none are given; with
    ``norm_x``, every pruned network gets adaptive BatchNorm on those images."""
    from ..nets.parents import accuracy

    graph = parent.net
    full_params, full_macs = graph.sizes()
    total = sum(graph.hidden_widths)
    ratios = [ratio_for_macs(graph, s) for s in sizes]
    out = {}
    for method in methods:
        if method in ("taylor", "activation") and (calib_x is None or (method == "taylor" and calib_y is None)):
            if log:
                log(f"baseline {method}: skipped (needs labelled calibration images)")
            continue
        nets = tp_prunings(parent, method, sizes, calib_x, calib_y, seeds, seed, ratios, norm_x)
        repeats = len(nets) // len(sizes)
        rows = []
        for i, (size, ratio) in enumerate(zip(sizes, ratios)):
            group = nets[i * repeats:(i + 1) * repeats]
            acc = [accuracy(m, test_x, test_y) for m in group]
            params, macs = layer_sizes(group[0], graph.input_shape)
            widths = group_widths(graph, group[0])
            rows.append({"size": float(size), "macs_kept": macs / full_macs, "parameters_kept": params / full_params,
                         "compression": sum(widths) / total, "hidden_units": widths, "pruning_ratio": ratio,
                         "test_accuracy": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc)),
                         "repeats": repeats})
        out[method] = rows
        if log:
            log(f"baseline {method}: " + ", ".join(f"{100 * r['size']:g} % {r['test_accuracy']:.4f}" for r in rows))
    return out

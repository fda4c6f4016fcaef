"""Genome -> a physically smaller ``nn.Sequential``, its sizes, and its saved form.

Compression is real slicing: hidden layer ``l``'s kept output rows and layer
``l+1``'s matching input columns are cut together, so the exported module computes
exactly what the masked forward computes.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .architecture import MLPArchitecture
from .errors import ParentError
from .results import save_torch
from .safe_load import load_untrusted


def export_individual(ind, arch: MLPArchitecture) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    if arch.flatten_name:
        layers.append((arch.flatten_name, nn.Flatten()))
    keep_in = torch.ones(arch.in_features, dtype=torch.bool)
    for k, name in enumerate(arch.linear_names):
        keep_out = ind.masks[k] if k < arch.n_hidden else torch.ones(arch.n_classes, dtype=torch.bool)
        w = ind.weights[k][keep_out][:, keep_in]  # (kept out, kept in)
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(ind.biases[k][keep_out])
        layers.append((name, lin))
        if k < arch.n_hidden:
            layers.append((arch.act_names[k], copy.deepcopy(arch.activations[k])))
        keep_in = keep_out
    return nn.Sequential(OrderedDict(layers)).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_sizes(widths) -> tuple[int, int]:
    """(parameters, multiply-adds per input) of an MLP with these layer widths."""
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return params, macs


def individual_widths(ind, arch: MLPArchitecture) -> list[int]:
    return [arch.in_features, *ind.hidden_units(), arch.n_classes]


def save_exported(path, model: nn.Sequential, extra: dict | None = None) -> None:
    """Save an exported module as its state dict plus the layer widths and names."""
    arch = MLPArchitecture.from_module(model)
    blob = {"format": "ecomp_deap.exported/1", "state_dict": model.state_dict(), "widths": list(arch.widths),
            "layer_names": list(arch.layer_names),
            "activations": [type(a).__name__ for a in arch.activations], **(extra or {})}
    save_torch(path, blob)


def load_exported(path) -> nn.Sequential:
    """Rebuild a module written by :func:`save_exported` (e.g. ``OUT/NAME/run_0.pt``)."""
    blob = load_untrusted(Path(path), opt_in=None, what="exported network")  # tensors and plain data only
    if not isinstance(blob, dict) or blob.get("format") != "ecomp_deap.exported/1":
        raise ParentError(f"{path}: not an exported ecomp_deap network")
    widths, names, acts = blob["widths"], blob["layer_names"], blob["activations"]
    layers: list[tuple[str, nn.Module]] = []
    it = iter(names)
    if len(names) == 2 * (len(widths) - 1):  # leading Flatten
        layers.append((next(it), nn.Flatten()))
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append((next(it), nn.Linear(a, b)))
        if k < len(widths) - 2:
            layers.append((next(it), getattr(nn, acts[k])()))
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict(blob["state_dict"])
    return model.eval()

"""Reading a parent, once: the module, how it is cut and its tensors, checked.

Where the user enters (``ecomp_deap.compress``, ``run_ecomp``, ``experiments/run.py``) the
parent is read into one :class:`Parent` and handed down; nothing below reads or checks
it again. An ``nn.Sequential`` of the layers a chain holds is read as a
:class:`~ecomp_deap.nets.chain.Chain` (stages cut by a walk); any other traceable
classifier as a :class:`~ecomp_deap.nets.graph.Graph` (channels coupled by Torch-Pruning).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParentError
from ..validation import validate_parent_weights
from .chain import Chain, check_layers, parent_input_shape, parent_tensors
from .graph import Graph, graph_tensors, read_graph
from .masked import MaskedNetwork


@dataclass(frozen=True, eq=False)
class Parent:
    """A trained network read once: ``model`` (in evaluation mode, on the CPU), ``net``
    (how it is cut into groups: a :class:`~ecomp_deap.nets.chain.Chain`, or a
    :class:`~ecomp_deap.nets.graph.Graph`) and its tensors as detached float32 CPU copies:
    for a chain, per stage, ``weights``, ``biases`` and ``norms`` (a BatchNorm (4, out)
    stack or None); for a graph, every state tensor in ``weights`` (biases and norms empty)."""

    model: nn.Module
    net: Chain | Graph
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    norms: tuple[torch.Tensor | None, ...]
    source: dict | None = None  # how a worker rebuilds the module: {"kind": "spec" | "builder", ...}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as the first layer takes it."""
        return self.net.input_shape

    @property
    def n_classes(self) -> int:
        """Outputs of the last layer: the number of classes."""
        return self.net.n_classes

    @property
    def is_graph(self) -> bool:
        """Whether the parent is read as a :class:`~ecomp_deap.nets.graph.Graph`."""
        return self.net.kind == "graph"

    def whole(self) -> MaskedNetwork:
        """The parent as a network that keeps every group."""
        return MaskedNetwork.whole(self.net.hidden_widths, self.weights, self.biases, self.norms)


def read_parent(model: nn.Module, example_inputs: torch.Tensor | None = None, source: dict | None = None) -> Parent:
    """Read ``model`` (put in evaluation mode; its weights must be finite, else one
    :class:`~ecomp_deap.errors.ParentError` line). An ``nn.Sequential`` of the layers a chain
    holds is read as a chain (``example_inputs`` (N, ...) give a convolutional one its input
    shape); any other module as a graph traced on ``example_inputs`` (required then), with
    one ``ParentError`` line for what cannot be traced or coupled. ``source``: how another
    process rebuilds the module (see :class:`Parent`). A :class:`Parent` is returned as it is."""
    if isinstance(model, Parent):
        return model
    if not isinstance(model, nn.Module):
        raise ParentError(f"the parent must be an nn.Module, got {type(model).__name__}")
    model = model.eval()
    validate_parent_weights(model)
    try:
        check_layers(model)
    except ParentError:
        if example_inputs is None:
            raise ParentError(f"reading {type(model).__name__} as a graph needs example inputs (a batch of the "
                              "data it classifies)") from None
        graph = read_graph(model, example_inputs)
        return Parent(model, graph, tuple(graph_tensors(graph.model, graph)), (), (), source)
    shape = parent_input_shape(model, example_inputs) if example_inputs is not None else None
    chain = Chain.from_module(model, input_shape=shape)
    weights, biases, norms = parent_tensors(model, chain)
    return Parent(model, chain, tuple(weights), tuple(biases), tuple(norms), source)

"""Reading a parent, once: the module, how it is cut and its tensors, checked.

Where the user enters (``ecomp_deap.compress``, ``run_ecomp``, ``experiments/run.py``) the
parent is read into one :class:`Parent` and handed down; nothing below reads or checks
it again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..validation import validate_parent_weights
from .chain import Chain, check_layers, parent_input_shape, parent_tensors
from .masked import MaskedNetwork


@dataclass(frozen=True, eq=False)
class Parent:
    """A trained network read once: ``model`` (in evaluation mode, on the CPU), ``chain``
    (how it is cut into stages and groups) and, per stage, its tensors as detached float32
    CPU copies (``weights``, ``biases``; ``norms``: a BatchNorm (4, out) stack or None)."""

    model: nn.Module
    chain: Chain
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    norms: tuple[torch.Tensor | None, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as the first layer takes it."""
        return self.chain.input_shape

    @property
    def n_classes(self) -> int:
        """Outputs of the last layer: the number of classes."""
        return self.chain.n_classes

    def whole(self) -> MaskedNetwork:
        """The parent as a network that keeps every group."""
        return MaskedNetwork.whole(self.chain.hidden_widths, self.weights, self.biases, self.norms)


def read_parent(model: nn.Module, example_inputs: torch.Tensor | None = None) -> Parent:
    """Read ``model`` (put in evaluation mode): its layers must be ones a chain holds and
    its weights finite (else one :class:`~ecomp_deap.errors.ParentError` line);
    ``example_inputs`` (N, ...) give a convolutional parent its input shape (an MLP's
    follows from its first Linear layer)."""
    if isinstance(model, Parent):
        return model
    check_layers(model)
    model = model.eval()
    validate_parent_weights(model)
    shape = parent_input_shape(model, example_inputs) if example_inputs is not None else None
    chain = Chain.from_module(model, input_shape=shape)
    weights, biases, norms = parent_tensors(model, chain)
    return Parent(model, chain, tuple(weights), tuple(biases), tuple(norms))

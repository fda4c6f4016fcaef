"""Checks on a data set before a run uses it: one ``ConfigError`` line per problem.

A run trusts its data everywhere after this point (a NaN input would only show up as
a plausible accuracy, a label outside the parent's classes as a silently wrong one),
so every entry point checks each data set once, before the first generation:
:func:`validate_dataset` costs one pass over the inputs and one over the labels.

``input_shape`` is the per-example shape the parent expects: ``(in_features,)`` for an
MLP, which accepts any input whose per-example size is ``in_features`` (it flattens
each example, as the evaluator does), or an image shape such as ``(C, H, W)``, which
the inputs' ``x.shape[1:]`` must equal exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import ConfigError

__all__ = ["validate_dataset", "validate_inputs", "validate_labels", "validate_parent_weights", "validate_run_data"]


def _shape(t) -> str:
    return "(" + ", ".join(str(int(s)) for s in t) + ("," if len(t) == 1 else "") + ")"


def _first(mask: torch.Tensor) -> int:
    """Flat index of the first True of ``mask`` (which has at least one)."""
    return int(mask.reshape(-1).nonzero()[0, 0])


def validate_inputs(name: str, x, input_shape: Sequence[int]) -> None:
    """Inputs: a non-empty tensor of real numbers, finite, of ``input_shape`` per example."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} data: inputs must be a torch tensor, got {type(x).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ConfigError(f"{name} data is empty (no examples)")
    if x.is_complex() or x.dtype == torch.bool:
        raise ConfigError(f"{name} data: inputs must be real numbers, got dtype {x.dtype}")
    input_shape = tuple(int(s) for s in input_shape)
    per_example = tuple(x.shape[1:])
    if len(input_shape) == 1:  # an MLP flattens every example
        numel = 1
        for s in per_example:
            numel *= s
        if numel != input_shape[0]:
            raise ConfigError(f"{name} data: each example has {numel} input values (shape {_shape(per_example)}), "
                              f"the parent takes {input_shape[0]}")
    elif per_example != input_shape:
        raise ConfigError(f"{name} data: examples have shape {_shape(per_example)}, the parent takes "
                          f"{_shape(input_shape)}")
    # a NaN or inf makes the sum non-finite: one fast reduction (far cheaper than an
    # elementwise isfinite over every input); the exact scan only if it is not
    # finite (a NaN/inf, or finite values whose sum overflowed)
    if x.is_floating_point() and not bool(torch.isfinite(x.sum())):
        finite = torch.isfinite(x)  # (N, ...) bool
        if not bool(finite.all()):
            flat = _first(~finite)
            per = max(1, x[0].numel())
            i, j = divmod(flat, per)
            value = x.reshape(-1)[flat].item()
            raise ConfigError(f"{name} data: input {i} is not finite ({value} at position {j} of the example); "
                              "inputs must be finite numbers")


def validate_labels(name: str, y, n_classes: int, n_examples: int | None = None, classes_from: str | None = None) -> None:
    """Labels: a 1-d tensor of whole numbers in ``[0, n_classes)``, one per example.
    ``classes_from`` says where ``n_classes`` comes from (default: the parent's outputs)."""
    if not isinstance(y, torch.Tensor):
        raise ConfigError(f"{name} data: labels must be a torch tensor, got {type(y).__name__}")
    if y.dim() != 1:
        hint = " (one-hot labels? pass y.argmax(1))" if y.dim() == 2 and y.shape[1] == n_classes else ""
        raise ConfigError(f"{name} data: labels must be 1-d class indices of shape (N,), got shape "
                          f"{_shape(y.shape)}{hint}")
    if n_examples is not None and len(y) != n_examples:
        raise ConfigError(f"{name} data: {n_examples} inputs but {len(y)} labels")
    if len(y) == 0:
        raise ConfigError(f"{name} data is empty (no labels)")
    if y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(f"{name} data: labels must be class indices (integers), got dtype {y.dtype}")
    if y.is_floating_point():
        whole = torch.isfinite(y) & (y == torch.round(y))  # (N,) bool
        if not bool(whole.all()):
            i = _first(~whole)
            raise ConfigError(f"{name} data: label {i} is {y[i].item()}, not a whole number; labels must be "
                              f"class indices 0..{n_classes - 1}")
    if bool(y.min() < 0) or bool(y.max() >= n_classes):
        outside = (y < 0) | (y >= n_classes)  # (N,) bool
        i = _first(outside)
        value = y[i].item()
        value = int(value) if float(value).is_integer() else value
        raise ConfigError(f"{name} data: label {i} is {value}, outside [0, {n_classes}) "
                          f"({classes_from or f'the parent has {n_classes} outputs'})")


def validate_dataset(name: str, x, y, n_classes: int, input_shape: Sequence[int],
                     classes_from: str | None = None) -> None:
    """Raise a one-line :class:`ConfigError` naming ``name``, the problem and the first
    offending index or value, unless ``x`` (N, ...) and ``y`` (N,) are usable: N > 0,
    finite inputs of ``input_shape`` per example, whole-number labels in ``[0, n_classes)``."""
    validate_inputs(name, x, input_shape)
    validate_labels(name, y, n_classes, n_examples=len(x), classes_from=classes_from)


def validate_run_data(data, chain, validation: tuple | None = None) -> None:
    """Check a run's data against its parent: ``data.train_x/train_y``, the optional
    ``validation`` (x, y) pair, and ``data.test_x/test_y``; labels that are None (inputs
    only) are not checked. ``chain`` (a parsed parent) needs ``input_shape`` and ``n_classes``."""
    shape, k = chain.input_shape, chain.n_classes
    sets = [("train", data.train_x, data.train_y), *([("val", *validation)] if validation is not None else []),
            ("test", data.test_x, data.test_y)]
    for name, x, y in sets:
        if y is None:
            validate_inputs(name, x, shape)
        else:
            validate_dataset(name, x, y, k, shape)


def validate_parent_weights(model: torch.nn.Module) -> None:
    """Every parameter and floating-point buffer of the parent is finite (a NaN weight
    would only surface generations later, as a non-finite measure); else a one-line
    :class:`ParentError` naming the tensor and the first offending position."""
    from .errors import ParentError

    tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
    for name, t in tensors:
        t = t.detach()
        if not bool(torch.isfinite(t.sum())):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                flat = _first(~finite)
                where, rest = [], flat
                for size in reversed(t.shape):  # the flat index as one index per dimension
                    rest, i = divmod(rest, size)
                    where.insert(0, i)
                raise ParentError(f"parent {name} is not finite ({t.reshape(-1)[flat].item()} at {where}); "
                                  "the parent's weights must be finite numbers")

"""The parent's accuracy on the user's data, measured once before any search.

A parent that scores at chance level on the data it is given (inputs scaled unlike its
training data, labels in another order, images channels-last) would still be
compressed, and the search would report networks of that accuracy as if they were
results. Where a user enters, :func:`check_parent_accuracy` measures the parent on the
validation data (else the training data) and refuses, in one line, a parent that is no
better than guessing, unless the user says to go on; the measure goes into every
result file.

Chance is the accuracy of always guessing the most common label of the measured
examples (1/classes for balanced data). A parent is *weak* when its accuracy is below
``min(1.5 * chance, chance + (1 - chance) / 10)``: 0.15 for 10 balanced classes, 0.55
for 2, 0.015 for 100. Data with a single label cannot tell, and is never refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import WeakParentError
from .forward import as_input

MAX_EXAMPLES = 5000
"""At most this many examples are measured (a seeded sample of a larger set)."""
BATCH = 1000


@dataclass(frozen=True)
class DataAccuracy:
    """The parent's ``accuracy`` on ``examples`` examples of the ``data`` set ('val' or
    'train'), and ``chance``, the accuracy of always guessing their most common label."""

    accuracy: float
    data: str
    examples: int
    chance: float

    def to_json(self) -> dict:
        """The fields a result file's ``parent`` entry gets."""
        return {"data_accuracy": self.accuracy, "data_accuracy_on": self.data,
                "data_accuracy_examples": self.examples}

    def describe(self) -> str:
        """The measure in words, for the log."""
        return (f"accuracy {self.accuracy:.4f} on {self.examples} {self.data} examples "
                f"(chance {self.chance:.4f})")


def weak_below(chance: float) -> float:
    """The accuracy under which a parent counts as weak (see the module docstring)."""
    return min(1.5 * chance, chance + (1.0 - chance) / 10)


@torch.inference_mode()
def measure_parent_accuracy(parent, x: torch.Tensor, y: torch.Tensor, data: str,
                            max_examples: int = MAX_EXAMPLES) -> DataAccuracy:
    """The accuracy of ``parent`` (a :class:`~ecomp_deap.nets.reader.Parent`, its module as
    the user gave it) on ``x`` (N, ...) and ``y`` (N,), checked data: all of it, or a
    sample of ``max_examples`` drawn with a fixed seed (the global random state is not
    touched)."""
    if len(x) > max_examples:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_examples]
        x, y = x[pick], y[pick]
    model = parent.model.eval()
    correct = 0
    for i in range(0, len(x), BATCH):
        batch = x[i:i + BATCH]
        logits = model(batch if parent.is_graph else as_input(parent.net, batch))  # (B, K)
        correct += int((logits.argmax(1) == y[i:i + BATCH]).sum())
    counts = torch.bincount(y.long())
    return DataAccuracy(correct / len(x), data, len(x), float(counts.max()) / len(y))


def check_parent_accuracy(parent, x: torch.Tensor, y: torch.Tensor, data: str, allow_weak: bool = False,
                          opt_in: str = "allow_weak_parent=True") -> DataAccuracy:
    """:func:`measure_parent_accuracy`, and a one-line :class:`~ecomp_deap.errors.WeakParentError`
    when the parent is weak on it (unless ``allow_weak``): the measured accuracy, chance,
    the usual causes and ``opt_in``, the way to go on anyway."""
    measured = measure_parent_accuracy(parent, x, y, data)
    single_label = measured.chance >= 1.0
    if not allow_weak and not single_label and measured.accuracy < weak_below(measured.chance):
        raise WeakParentError(
            f"the parent's accuracy on the {data} data is {measured.accuracy:.4f} ({measured.examples} examples), "
            f"at chance level ({measured.chance:.4f}: always guessing the most common of its "
            f"{parent.net.n_classes} classes); usual causes: inputs scaled unlike its training data (0-255 "
            "pixels for a [0, 1] parent), labels in another order, images channels-last (N, H, W, C) instead of "
            f"(N, C, H, W); to compress it anyway, use {opt_in}")
    return measured

"""What an evaluation gives each individual, and how that becomes a DEAP fitness.

The evaluator returns :class:`Measures` for a population: accuracy ``a``, compression
``c`` (kept groups / the parent's) and similarity ``s`` (the t-SNE loss summed over the
embedding layers). Weighted mode turns them into the scalar ``wa*a - ws*s + wc*(1 - c)``
(a 1-tuple: DEAP compares fitnesses lexicographically, its weights only give the
direction); NSGA-II takes the tuple of the objectives whose weight is not zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

MEASURE_SENSES = {"accuracy": 1, "similarity": -1, "compression": -1}  # +1: higher is better


class NonFiniteError(ArithmeticError):
    """A measure came out NaN or infinite."""

    def __init__(self, index: int, measure: str, value: float):
        super().__init__(f"individual {index}: {measure} is {value} (not finite)")
        self.index, self.measure, self.value = index, measure, value


class IndividualMeasures(NamedTuple):
    """One individual's measures on the data it was last evaluated on, and the weighted
    fitness they give (whatever the selection: the logbook records it)."""

    accuracy: float
    compression: float
    similarity: float
    fitness: float


@dataclass
class Measures:
    """Per-individual measures of a population, float64 numpy arrays of shape (P,)."""

    accuracy: np.ndarray
    compression: np.ndarray
    similarity: np.ndarray

    def __len__(self):
        return len(self.accuracy)

    def as_rows(self) -> list[tuple[float, float, float]]:
        """Per individual, (accuracy, compression, similarity) as Python floats."""
        return list(zip(self.accuracy.tolist(), self.compression.tolist(), self.similarity.tolist()))

    def subset(self, index) -> "Measures":
        """The measures of the individuals ``index`` (positions or a boolean mask)."""
        return Measures(self.accuracy[index], self.compression[index], self.similarity[index])

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` for the first individual with a NaN or infinite measure."""
        for name in ("accuracy", "compression", "similarity"):
            values = getattr(self, name)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise NonFiniteError(int(bad[0]), name, float(values[bad[0]]))

    @staticmethod
    def mean(parts: Sequence["Measures"]) -> "Measures":
        """The per-individual mean of several evaluations of one population."""
        return Measures(*(np.mean([getattr(m, f) for m in parts], axis=0)
                          for f in ("accuracy", "compression", "similarity")))

    def objectives(self, names) -> tuple[np.ndarray, tuple[int, ...]]:
        """(P, len(names)) objective vectors and their senses (+1 maximise, -1 minimise)."""
        cols = {"accuracy": self.accuracy, "similarity": self.similarity, "compression": self.compression}
        return np.stack([cols[o] for o in names], axis=1), tuple(MEASURE_SENSES[o] for o in names)


def weighted_fitness(m: Measures, weights) -> np.ndarray:
    """f = wa*a - ws*s + wc*(1 - c), (P,)."""
    wa, ws, wc = weights
    return wa * m.accuracy - ws * m.similarity + wc * (1.0 - m.compression)


def fitness_tuples(m: Measures, selection: str, weights) -> list[tuple[float, ...]]:
    """Weighted mode: 1-tuples of the scalar (DEAP compares fitnesses lexicographically,
    so the scalar is computed here). NSGA-II: (a, s, c) restricted to non-zero weights."""
    if selection == "weighted":
        return [(float(f),) for f in weighted_fitness(m, weights)]
    cols = [col for col, w in zip((m.accuracy, m.similarity, m.compression), weights) if w != 0]
    return [tuple(float(c[i]) for c in cols) for i in range(len(m))]

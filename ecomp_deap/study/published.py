"""The reference study's published table, carried as data.

Ten runs per weighting of the reference implementation on FashionMNIST with a
784-256-256-10 parent of test accuracy 0.866: the test accuracy of each run's best
network and the final population's mean compression (fraction of the parent's hidden
units), each as median, minimum and maximum over the runs.

An experiment is matched to a row by its name: ``weightingABC`` (our operators) or
``ref-weightingABC`` (the reference's operators), ``ABC`` the weights in the order
accuracy, similarity, compression.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PARENT = {"architecture": "784-256-256-10", "test_accuracy": 0.866}
RUNS = 10


@dataclass(frozen=True)
class Published:
    """median, min, max over the reference's runs."""

    median: float
    low: float
    high: float

    def contains(self, value: float | None) -> bool | None:
        """Whether ``value`` lies in [min, max] (at the table's 3 decimals); None for no value."""
        if value is None:
            return None
        return self.low - 5e-4 <= value <= self.high + 5e-4


# weights (a s c) -> (best test accuracy, final mean compression)
TABLE: dict[str, tuple[Published, Published]] = {
    "001": (Published(0.131, 0.046, 0.199), Published(0.221, 0.207, 0.241)),
    "020": (Published(0.816, 0.590, 0.842), Published(0.814, 0.727, 0.902)),
    "021": (Published(0.676, 0.461, 0.847), Published(0.609, 0.398, 0.762)),
    "100": (Published(0.849, 0.812, 0.861), Published(0.881, 0.832, 0.902)),
    "101": (Published(0.824, 0.520, 0.851), Published(0.650, 0.293, 0.719)),
    "120": (Published(0.857, 0.840, 0.867), Published(0.859, 0.812, 0.902)),
    "121": (Published(0.847, 0.819, 0.855), Published(0.748, 0.637, 0.859)),
}

_NAME = re.compile(r"^(?:ref-)?weighting(\d{3})$")


def weighting_code(name: str) -> str | None:
    """'121' for 'weighting121' or 'ref-weighting121'; None for any other name."""
    m = _NAME.match(name)
    return m.group(1) if m and m.group(1) in TABLE else None


def published_for(name: str) -> tuple[Published, Published] | None:
    """(best test accuracy, final mean compression) published for this experiment name, or None."""
    code = weighting_code(name)
    return TABLE[code] if code else None

"""Pareto-front indicators: non-dominated sorting, hypervolume, knee point.

Conventions: every function takes an array of objective vectors ``(N, M)`` together
with a ``senses`` tuple of ``+1`` (maximise) or ``-1`` (minimise) per column, so the
caller never has to negate columns by hand. A hypervolume always names its
reference point.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_minimisation(points: np.ndarray, senses: Sequence[int]) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != len(senses):
        raise ValueError(f"points must be (N, {len(senses)}), got {points.shape}")
    signs = np.array([-1.0 if s > 0 else 1.0 for s in senses])
    return points * signs  # (N, M), every column minimised


def non_dominated_mask(points, senses: Sequence[int]) -> np.ndarray:
    """Boolean (N,) mask of the points that no other point dominates.

    Duplicated points are all kept (none dominates its copy).
    """
    p = _as_minimisation(points, senses)
    n = len(p)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        # j dominates i: no worse everywhere and strictly better somewhere
        dominated_by = np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1)
        keep[i] = not dominated_by.any()
    return keep


def hypervolume_2d(points, reference, senses: Sequence[int] = (1, -1)) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (2 objectives).

    Default senses fit (accuracy, compression): maximise the first, minimise the
    second; the usual reference point is accuracy 0, compression 1. Points that do
    not strictly improve on the reference in both objectives add nothing.
    """
    p = _as_minimisation(points, senses)
    ref = _as_minimisation(np.asarray(reference, dtype=np.float64)[None, :], senses)[0]
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[np.argsort(p[:, 0], kind="stable")]
    area, best_y = 0.0, ref[1]
    for x, y in p:  # sweep along the first objective; keep the running minimum of the second
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def knee_point(points, senses: Sequence[int]) -> int:
    """Index of the knee of a front: the non-dominated point farthest from the
    line (hyperplane for M > 2: the line through the two extremes of the first two
    objectives is used) joining the extremes, in objective space normalised to
    [0, 1] per column. With one or two front points, the one of best first objective.
    """
    pts = np.asarray(points, dtype=np.float64)
    front = np.flatnonzero(non_dominated_mask(pts, senses))
    p = _as_minimisation(pts[front], senses)[:, :2]
    if len(front) <= 2:
        return int(front[np.argmin(p[:, 0])])
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = (p - lo) / span  # (F, 2) in [0, 1], both minimised
    a = q[np.argmin(q[:, 0])]  # extreme of the first objective
    b = q[np.argmin(q[:, 1])]  # extreme of the second objective
    d = b - a
    norm = np.hypot(*d)
    if norm == 0:
        return int(front[np.argmin(p[:, 0])])
    # distance to the line a-b, counted positive on the side towards the ideal (0, 0)
    dist = (d[0] * (a[1] - q[:, 1]) - d[1] * (a[0] - q[:, 0])) / norm
    ideal_side = np.sign(d[0] * (a[1] - 0.0) - d[1] * (a[0] - 0.0)) or 1.0
    return int(front[np.argmax(dist * ideal_side)])

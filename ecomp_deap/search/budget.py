"""The size budget (``EcompConfig.max_size``): every individual keeps at most a fraction
F of the parent's hidden groups (units or channels, summed over the hidden layers).

* F becomes a whole number of groups, ``floor(F * total)``, in
  :func:`ecomp_deap.config.budget_groups` (:func:`~ecomp_deap.config.check_budget` refuses F
  outside (0, 1] or a budget below one group per layer): the setting's own arithmetic.
* :func:`group_ranks` makes the initial prunings' per-layer scores comparable across
  layers: a group's score becomes its percentile within its layer (1 = the layer's
  best), so a repair of a uniform pruning stays uniform whatever the layers' scales.
* :func:`repair_to_budget` (DEAP style: changes the individual, returns a tuple) drops
  the kept groups of lowest percentile until the budget holds, never a layer's last
  one; it replaces mask tensors, never writes into them.
* :func:`within_budget` is a DEAP ``toolbox.decorate`` decorator that repairs every
  individual an operator returns (``checkBounds`` in DEAP's documentation is the same
  idea), so no operator (initialisation, crossover, mutation, mask flips) can leave an
  individual over budget.
* :func:`budget_rates` scales the initial prunings' rates so that the largest initial
  individual sits at the budget and the others spread below it as they would below
  the parent.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from ..config import SIZE_TOL


def group_ranks(scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per hidden layer, (H_l,) float: each group's percentile within its layer by
    ``scores`` (the layer's lowest (1/H_l), ..., its highest 1.0; ties: the lower index
    ranks higher, as :func:`ecomp_deap.search.operators.top_units_mask` keeps it first)."""
    ranks = []
    for s in scores:
        h = len(s)
        order = torch.argsort(s, descending=True, stable=True)  # best first
        r = torch.empty(h, dtype=torch.float64)
        r[order] = torch.arange(h, 0, -1, dtype=torch.float64) / h  # best: h/h = 1
        ranks.append(r)
    return ranks


def repair_to_budget(ind, budget: int, ranks: Sequence[torch.Tensor]):
    """Drop ``ind``'s kept groups of lowest rank (:func:`group_ranks`), over all hidden
    layers, until at most ``budget`` are kept; each layer keeps its best-ranked group.
    An individual within the budget is left as it is. Returns ``(ind,)``."""
    kept = [int(m.sum()) for m in ind.masks]
    excess = sum(kept) - budget
    if excess <= 0:
        return (ind,)
    keys = []
    for m, r in zip(ind.masks, ranks):
        key = torch.where(m, r, torch.full_like(r, math.inf))  # (H_l,): dropped groups are never chosen
        if bool(m.any()):
            key[int(torch.argmax(torch.where(m, r, torch.full_like(r, -math.inf))))] = math.inf  # the layer's best stays
        keys.append(key)
    flat = torch.cat(keys)  # (sum H_l,), layer-major: ties drop the lower layer first, then alternate
    drop = torch.argsort(flat, stable=True)[:excess]
    masks = torch.cat([m for m in ind.masks]).clone()
    masks[drop] = False
    start = 0
    for l, m in enumerate(ind.masks):
        new = masks[start:start + len(m)].clone()  # its own tensor, not a view of the others
        if not torch.equal(new, m):
            ind.masks[l] = new
        start += len(m)
    return (ind,)


def within_budget(budget: int, ranks: Sequence[torch.Tensor]):
    """A ``toolbox.decorate`` decorator: every individual the operator returns (a tuple
    from ``cx_``/``mut_``, a list from ``init_``) is repaired to the budget."""
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            out = func(*args, **kwargs)
            for ind in out:
                repair_to_budget(ind, budget, ranks)
            return out

        return wrapper

    return decorator


def budget_rates(max_size: float, low: float, high: float) -> tuple[float, float]:
    """Pruning rates for initial prunings within the budget: a pruning at rate ``r``
    over [low, high) keeps ``max_size * (1 - r) / (1 - low)`` of each layer instead of
    ``1 - r`` (the largest exactly at the budget, the smallest at the same fraction of
    the budget as before of the parent). Returned as the [low', high') that
    :func:`ecomp_deap.search.operators.init_pruned_population` spaces evenly."""
    scale = max_size / (1.0 - low)
    return 1.0 - scale * (1.0 - low), 1.0 - scale * (1.0 - high)


def repair_to_macs(ind, net, budget: float, ranks: Sequence[torch.Tensor]):
    """Drop ``ind``'s kept groups of lowest rank, over all layers, one at a time until its
    multiply-adds (``net.sizes``) are at most ``budget``; each layer keeps its best-ranked
    group. An individual within the budget is left as it is. Returns ``(ind,)``."""
    if net.sizes(ind.masks)[1] <= budget + SIZE_TOL * budget:
        return (ind,)
    keys = []
    for m, r in zip(ind.masks, ranks):
        key = torch.where(m, r, torch.full_like(r, math.inf))
        if bool(m.any()):
            key[int(torch.argmax(torch.where(m, r, torch.full_like(r, -math.inf))))] = math.inf
        keys.append(key)
    flat = torch.cat(keys)  # layer-major, as repair_to_budget
    starts = [0]
    for m in ind.masks:
        starts.append(starts[-1] + len(m))
    masks = [m.clone() for m in ind.masks]
    for position in torch.argsort(flat, stable=True).tolist():
        if not math.isfinite(float(flat[position])):
            break
        layer = max(i for i, s in enumerate(starts[:-1]) if s <= position)
        masks[layer][position - starts[layer]] = False
        if net.sizes(masks)[1] <= budget + SIZE_TOL * budget:
            break
    for layer, (old, new) in enumerate(zip(ind.masks, masks)):
        if not torch.equal(old, new):
            ind.masks[layer] = new
    return (ind,)


def within_macs(net, budget: float, ranks: Sequence[torch.Tensor]):
    """A ``toolbox.decorate`` decorator: every individual the operator returns is repaired
    to at most ``budget`` multiply-adds (:func:`repair_to_macs`)."""
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            out = func(*args, **kwargs)
            for ind in out:
                repair_to_macs(ind, net, budget, ranks)
            return out

        return wrapper

    return decorator

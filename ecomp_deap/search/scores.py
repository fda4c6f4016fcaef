"""How the groups of a parent are ranked: higher scores are kept first.

Used by the initial prunings and the size budget's repair (:mod:`.operators`,
:mod:`.budget`) and by the pruning baselines (:mod:`ecomp_deap.study.pruning_baselines`).

* ``l1``: the L1 norm of a group's incoming weights (a Linear row, a whole Conv2d filter:
  Li et al. 2017);
* ``random``: uniform scores from a given generator;
* ``activation``: a group's mean |output| on some images times the L2 norm of its
  outgoing weights (what the group actually sends downstream).
"""
from __future__ import annotations

import torch

from ..nets.chain import Chain
from ..nets.forward import as_input, run_stage

METHODS = ("l1", "random", "activation")


def l1_unit_scores(weights) -> list[torch.Tensor]:
    """Per hidden stage, (H_l,): the L1 norm of each group's incoming weights, a Linear
    row or a whole Conv2d filter (Li et al. 2017); the output layer, ``weights[-1]``,
    has no groups to prune."""
    return [w.abs().flatten(1).sum(dim=1) for w in weights[:-1]]


def top_units_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(H,) bool: the ``keep`` units with the largest score (ties: the lower index)."""
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return mask


def unit_scores(method: str, chain: Chain, weights, biases, x: torch.Tensor | None = None,
                rng: torch.Generator | None = None, norms=None) -> list[torch.Tensor]:
    """Per hidden stage, a (H_l,) score: higher is kept first."""
    if method == "l1":
        return l1_unit_scores(weights)
    if method == "random":
        return [torch.rand(h, generator=rng) for h in chain.hidden_widths]
    if method == "activation":
        return activation_scores(chain, weights, biases, norms, x)
    raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")


def activation_scores(chain: Chain, weights, biases, norms, x: torch.Tensor, batch: int = 1000) -> list[torch.Tensor]:
    """Per hidden stage, each group's mean |output| over ``x`` (over images and, for a
    feature map, its H*W positions; the output the next layer reads) times the L2 norm
    of its outgoing weights (the next stage's input slice for that group)."""
    norms = norms if norms is not None else [None] * len(weights)
    mean_abs = [torch.zeros(h, dtype=torch.float64) for h in chain.hidden_widths]
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            h = as_input(chain, x[i:i + batch])
            for l, st in enumerate(chain.stages[:-1]):
                h, _ = run_stage(st, h, weights[l], biases[l], norms[l])
                dims = [0, *range(2, h.dim())]  # all but the group dim
                mean_abs[l] += h.abs().sum(dims, dtype=torch.float64) / (h[0, 0].numel())
    scores = []
    for l, st in enumerate(chain.stages[:-1]):
        w = weights[l + 1].transpose(0, 1)  # (in, out[, kh, kw])
        w = w.reshape(st.out_size, -1)  # (groups, everything a group feeds)
        scores.append((mean_abs[l] / len(x)).float() * w.norm(dim=1))
    return scores



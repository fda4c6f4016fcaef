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
from ..nets.graph import Graph, functional_forward

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


def unit_scores(method: str, chain: Chain | Graph, weights, biases, x: torch.Tensor | None = None,
                rng: torch.Generator | None = None, norms=None) -> list[torch.Tensor]:
    """Per group (a chain's hidden stage, or a graph's coupled group), a (H_l,) score:
    higher is kept first."""
    if method == "random":
        return [torch.rand(h, generator=rng) for h in chain.hidden_widths]
    if isinstance(chain, Graph):
        if method == "l1":
            return graph_l1_scores(chain, weights)
        if method == "activation":
            return graph_activation_scores(chain, weights, x)
    elif method == "l1":
        return l1_unit_scores(weights)
    elif method == "activation":
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




def graph_l1_scores(graph: Graph, tensors) -> list[torch.Tensor]:
    """Per coupled group, (H_g,): the L1 norm of each channel's filters (its rows) in every
    Conv and Linear layer of the group (a group-wide L1 magnitude, as Torch-Pruning's
    group importance with p = 1 over the layers that produce the channel)."""
    weights = {layer.weight for layer in graph.layers}
    scores = []
    for g in graph.groups:
        s = torch.zeros(g.size, dtype=torch.float64)
        for sl in g.rows:
            if sl.tensor in weights:
                rows = tensors[sl.tensor].index_select(0, sl.index)  # (n, ...)
                s.index_add_(0, sl.root, rows.abs().flatten(1).sum(1).double())
        scores.append(s.float())
    return scores


def graph_activation_scores(graph: Graph, tensors, x: torch.Tensor, batch: int = 250) -> list[torch.Tensor]:
    """Per coupled group, (H_g,): what each channel sends downstream, summed over its
    consumers: the mean |input| a consumer layer reads at the channel's positions (over
    images and a feature map's positions) times the L2 norm of the consumer's weights
    there."""
    consumers = {}  # consumer layer name -> its weight's tensor index
    by_weight = {layer.weight: layer.name for layer in graph.layers}
    for g in graph.groups:
        for sl in g.inputs:
            if sl.tensor in by_weight:
                consumers[by_weight[sl.tensor]] = sl.tensor
    mean_abs = {name: None for name in consumers}
    hooks = []

    def record(name):
        def hook(module, inputs):
            h = inputs[0].detach()
            dims = [0, *range(2, h.dim())] if h.dim() > 2 else [0]
            part = h.abs().sum(dims, dtype=torch.float64) / (h[0, 0].numel() if h.dim() > 2 else 1)
            mean_abs[name] = part if mean_abs[name] is None else mean_abs[name] + part
        return hook

    for name in consumers:
        hooks.append(graph.model.get_submodule(name).register_forward_pre_hook(record(name)))
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                functional_forward(graph, tensors, x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    scores = []
    for g in graph.groups:
        s = torch.zeros(g.size, dtype=torch.float64)
        for sl in g.inputs:
            name = by_weight.get(sl.tensor)
            if name is None or mean_abs[name] is None:
                continue
            w = tensors[sl.tensor].index_select(1, sl.index).transpose(0, 1).flatten(1)  # (n, everything fed)
            s.index_add_(0, sl.root, mean_abs[name][sl.index] / len(x) * w.norm(dim=1).double())
        scores.append(s.float())
    return scores

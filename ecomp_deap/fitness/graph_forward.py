"""The forward of a graph parent's population: each individual as the parent with its
dropped channels' tensor slices zeroed (:func:`ecomp_deap.nets.graph.zeroed`), run on
the parent's own module by ``torch.func.functional_call``: on a GPU the chunk's
individuals stacked and run as one program by ``torch.func.vmap``, on the CPU one call
per individual (faster there: vmap turns each convolution into a grouped one over the
chunk; measured in docs/benchmarks.md).

A network computes what its physically pruned copy computes (the premise
:func:`~ecomp_deap.nets.graph.read_graph` checks), and a dropped channel's hidden values
are the same for every image, so the embeddings' pairwise distances are the pruned
network's too. Each individual costs a full parent forward. A model whose forward
``vmap`` cannot run (data-dependent control flow, an op without a batching rule) is run
individual by individual on a GPU too, with a warning; the numbers are the same.
"""
from __future__ import annotations

import warnings
from collections import Counter

import torch

from ..nets.graph import Graph, zeroed
from .embeddings import Embeddings, block_rows, padded_distances


class GraphForward:
    """A graph parent's population through the masked functional forward (vmapped per
    chunk when ``vmapped``: the default on a GPU)."""

    name = "graph"
    holds_feature_maps = True  # a chunk's feature maps at once

    def __init__(self, graph: Graph, embeddings: Embeddings, device: torch.device):
        self.graph, self.embeddings, self.device = graph, embeddings, device
        self.model = graph.model if device.type == "cpu" else _copy_to(graph.model, device)
        # one program per chunk on a GPU; on the CPU, and once vmap has failed on this model, one call each
        self.vmapped = device.type != "cpu"

    def plan(self, population, x: torch.Tensor, rows: int, step: int) -> "GraphPlan":
        """Nothing to prepare: each chunk is stacked when it runs."""
        return GraphPlan(self, population, x, rows)

    def _forward(self, tensors, x: torch.Tensor, names) -> tuple:
        """One network: (logits (N, K), *the named modules' outputs)."""
        from torch.func import functional_call

        found, hooks = {}, []
        for name in names:
            hooks.append(self.model.get_submodule(name).register_forward_hook(
                lambda m, i, o, name=name: found.setdefault(name, o)))
        try:
            logits = functional_call(self.model, dict(zip(self.graph.tensor_names, tensors)), (x,), strict=False)
        finally:
            for h in hooks:
                h.remove()
        return (logits, *(found[n] for n in names))

    def _run(self, population, x: torch.Tensor, names) -> list:
        """Per output (logits, then each named module's): (C, N, ...) over the chunk."""
        per_ind = [zeroed(self.graph, [t.to(self.device) for t in ind.weights], ind.masks) for ind in population]
        if self.vmapped:
            from torch.func import vmap

            stacked = [torch.stack([t[k] for t in per_ind]) for k in range(len(self.graph.tensor_names))]
            try:
                return list(vmap(lambda *ts: self._forward(ts, x, names))(*stacked))
            except Exception as e:  # no batching rule, data-dependent control flow, ...
                self.vmapped = False
                warnings.warn(f"the parent's forward cannot be vmapped ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running individuals one at a time",
                              RuntimeWarning, stacklevel=3)
            finally:
                del stacked
        outs = [self._forward(t, x, names) for t in per_ind]
        return [torch.stack([o[k] for o in outs]) for k in range(len(names) + 1)]

    @torch.no_grad()
    def outputs(self, population, x: torch.Tensor, rows: int, blocks: int = 1, dtype=None):
        """Logits (C, N, K), the masks (C, H_g) float and, per embedding layer, the squared
        distances (C, blocks, rows, rows) between the embeddings of each batch's first
        ``rows`` images; ``x`` holds ``blocks`` equal batches."""
        masks = [torch.stack([ind.masks[k] for ind in population]).float() for k in range(self.graph.n_hidden)]
        dtype = dtype or self.embeddings.dtype
        C = len(population)
        names = [name for _, name in self.embeddings.layers] if rows else []
        logits, *caught = self._run(population, x, names)
        dists = [torch.empty(C, blocks, rows, rows, dtype=dtype, device=self.device) for _ in names]
        embedded = [list(block_rows(c, blocks, rows, lead=1).unbind(0)) for c in caught]
        holders = Counter(e.untyped_storage().data_ptr() for per_pos in embedded for e in per_pos)
        for pos in range(len(names)):
            padded_distances(self.embeddings, embedded[pos], dists[pos], dtype, holders)
        return logits, masks, dists


def _copy_to(model, device):
    import copy

    return copy.deepcopy(model).to(device)


class GraphPlan:
    """The graph forward of ``population`` on ``x`` (:meth:`outputs` per chunk)."""

    def __init__(self, forward: GraphForward, population, x: torch.Tensor, rows: int):
        self.forward, self.population, self.x, self.rows = forward, population, x, rows

    def outputs(self, start: int, stop: int, blocks: int = 1, dtype=None):
        """:meth:`GraphPlan.outputs` of individuals ``start:stop``."""
        return self.forward.outputs(self.population[start:stop], self.x, self.rows, blocks, dtype)

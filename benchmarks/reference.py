"""The per-network reference implementation of one EComp generation (benchmarks only).

This is how the reference work evaluated a population, kept here as the baseline
that ``bench_generation.py`` and ``bench_cnn.py`` time against the batched evaluator.
It is never imported by the ``ecomp_deap`` package, and imports nothing from
``benchmarks/`` (the scripts import it).

* Every individual is exported as its own, physically smaller ``nn.Sequential``
  (``ecomp_deap.nets.export.export_individual``; for a graph parent, a copy of the
  parent's own class pruned by Torch-Pruning) and run on the batch on its own.
* The similarity is computed per network and per embedding layer with
  scikit-learn's exact t-SNE joint probabilities,
  ``sklearn.manifold._t_sne._joint_probabilities(D, perplexity, 0)``, on numpy
  squared distances, for both the parent (P) and the child (Q);
  loss = 2 * sum over the condensed pairs of P * log(max(P, eps) / Q).
  The parent's P is recomputed for every individual (the parent is run again too):
  that is what the reference paid.

A reference generation is the package's own loop (``ecomp_deap.search.loops``:
``ea_weighted`` / ``ea_nsga2``) with a toolbox whose ``evaluate`` measures through
:class:`ReferenceEvaluator` (:func:`reference_toolbox`): selection, variation
(``loops.vary``) and bookkeeping (``loops.assign``, the logbook) are the package's, so
the time difference of a generation is the evaluation's.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.manifold._t_sne import _joint_probabilities
from torch import nn

from ecomp_deap.fitness.measures import Measures
from ecomp_deap.nets.export import export_individual
from ecomp_deap.nets.reader import Parent
from ecomp_deap.search.loops import evaluate_on_batch

MACHINE_EPSILON = np.finfo(np.float64).eps


def numpy_squared_distances(x: np.ndarray) -> np.ndarray:
    """(B, H) -> (B, B) float64 squared Euclidean distances, zero diagonal, >= 0."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)  # (B,)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)  # (B, B)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def reference_loss(parent_e: np.ndarray, child_e: np.ndarray, perplexity: float) -> float:
    """t-SNE similarity loss of one layer, the reference way (sklearn P and Q, condensed)."""
    p = _joint_probabilities(numpy_squared_distances(parent_e), perplexity, 0)  # (B(B-1)/2,)
    q = _joint_probabilities(numpy_squared_distances(child_e), perplexity, 0)  # (B(B-1)/2,)
    return float(2.0 * np.sum(p * np.log(np.maximum(p, MACHINE_EPSILON) / q)))


def _capture_modules(model: nn.Module, x: torch.Tensor, names) -> tuple[torch.Tensor, dict]:
    """Run ``model``; return the logits and the outputs of its named submodules (hooks)."""
    out, hooks = {}, []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: out.setdefault(name, o)))
    try:
        return model(x), out
    finally:
        for h in hooks:
            h.remove()


def _capture(model: nn.Module, x: torch.Tensor, names) -> tuple[torch.Tensor, dict]:
    """Run ``model`` layer by layer; return the logits and the outputs of the named layers
    (a graph parent's module and its pruned copies: by hooks on the named submodules)."""
    if not isinstance(model, nn.Sequential):
        return _capture_modules(model, x, names)
    want = set(names)
    out = {}
    h = x
    for name, layer in model.named_children():
        h = layer(h)
        if name in want:
            out[name] = h
    return h, out


class ReferenceEvaluator:
    """Per-network evaluation of a population on one batch, as the reference did it."""

    def __init__(self, parent: Parent, embedding_layers, perplexity: float, device: str | torch.device = "cpu"):
        """``parent``: read by ``ecomp_deap.nets.reader.read_parent`` (its ``chain`` cuts the
        individuals for the export; its ``model`` is run as the parent); ``embedding_layers``:
        the parent's layer names (None: the chain's default embeddings)."""
        if embedding_layers is None:
            embedding_layers = parent.net.default_embeddings()
        self.chain = parent.net
        self.device = torch.device(device)
        self.parent = copy.deepcopy(parent.model).to(self.device).eval()  # the caller's stays where it is
        self.layers = tuple(embedding_layers)
        self.perplexity = float(perplexity)
        self.total_hidden = sum(self.chain.hidden_widths)

    @torch.no_grad()
    def measure_one(self, ind, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """(accuracy, compression, similarity) of one individual on the batch (x, y)."""
        child = export_individual(ind, self.chain).to(self.device)
        logits, child_out = _capture(child, x, self.layers)
        acc = int((logits.argmax(1) == y).sum()) / len(y)  # divided on the host, as ours (exact on CUDA too)
        comp = sum(int(m.sum()) for m in ind.masks) / self.total_hidden
        _, parent_out = _capture(self.parent, x, self.layers)  # recomputed per individual
        sim = 0.0
        for name in self.layers:
            sim += reference_loss(parent_out[name].flatten(1).cpu().numpy(), child_out[name].flatten(1).cpu().numpy(),
                                  self.perplexity)  # a feature map as its C*H*W vector
        return acc, comp, sim

    def measure(self, population, x: torch.Tensor, y: torch.Tensor, key=None) -> Measures:
        """Same interface as ``PopulationEvaluator.measure``: one network at a time."""
        x = x.to(self.device)
        y = y.to(self.device)
        rows = [self.measure_one(ind, x, y) for ind in population]
        return Measures(*(np.array(col, dtype=np.float64) for col in zip(*rows)))


def reference_toolbox(run, ref: ReferenceEvaluator):
    """A copy of ``run``'s toolbox (an ``EcompRun``'s: the same operators and random
    generator) whose ``evaluate(population, t)`` measures through ``ref``; one generation
    of ``LOOPS[config.selection]`` with it is a reference generation."""
    tb = copy.copy(run.toolbox)
    tb.register("evaluate", evaluate_on_batch, evaluator=ref, stream=run.stream, config=run.config)
    return tb

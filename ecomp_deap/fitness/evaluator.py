"""The population evaluator: accuracy, compression and similarity of a whole population.

Works for any parent chain (MLP units or CNN channels: "groups"). How the networks are
run is a strategy chosen in one place (:func:`choose_forward`): on the CPU each
individual on its kept groups only (:mod:`.kept_groups`), elsewhere the population's
masked tensors stacked into one batched program (:mod:`.stacked`). Both return the
logits and, per embedding layer, the children's squared distances; from them come, per
individual, accuracy ``a``, compression ``c`` (kept groups / parent groups) and
similarity ``s`` (the t-SNE KL loss summed over the embedding layers). The parent's side
of the similarity (:class:`~.reference.ParentReference`) is computed once per batch and
shared by every individual.

Several equal batches can be measured as one program (:meth:`PopulationEvaluator.measure_batches`:
the final pass over all training batches, validation, test): each individual's forward
runs on their concatenation and the similarity on a ``(batches, B, B)`` stack per
individual; the measures are the per-batch ones, averaged. The children's distances and
perplexity search run in ``config.similarity_dtype`` (the parent's side in float64).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from ..config import EcompConfig
from ..nets.masked import MaskedNetwork
from . import memory
from .embeddings import Embeddings
from .graph_forward import GraphForward
from .kept_groups import KeptGroupsForward
from .measures import Measures
from .reference import ParentReference, row_means
from .similarity import joint_probabilities, parent_entropy_term, similarity_from_distances
from .stacked import StackedForward

FORWARDS = {"kept_groups": KeptGroupsForward, "stacked": StackedForward, "graph": GraphForward}


def choose_forward(device: torch.device, net=None) -> str:
    """The forward strategy for a device and a parsed parent: a graph parent's masked
    functional forward (:mod:`.graph_forward`); for a chain, each individual on its kept
    groups on the CPU (its cost scales with its size), one stacked masked program
    elsewhere (few kernel launches, where launches and not arithmetic bound a generation)."""
    if net is not None and net.kind == "graph":
        return "graph"
    return "kept_groups" if device.type == "cpu" else "stacked"


@contextmanager
def full_float32(device: torch.device):
    """On a CUDA device, convolutions and matrix products in full float32 within (PyTorch
    lets cuDNN use TF32 by default, which moves the similarities against the CPU's; see
    tests/test_cuda.py). Nothing changes on the CPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class PopulationEvaluator:
    """Measures of a population on a batch, for a parent read by
    :func:`~ecomp_deap.nets.reader.read_parent` (anything with ``chain``, ``weights``,
    ``biases`` and ``norms``). ``forward``: 'kept_groups' or 'stacked' (None: chosen for
    the device by :func:`choose_forward`)."""

    def __init__(self, parent, config: EcompConfig, device: str | torch.device = "cpu", forward: str | None = None):
        self.chain = chain = parent.net
        self.config = config
        self.device = torch.device(device)
        norms = parent.norms if parent.norms is not None else [None] * len(parent.weights)
        self.parent_network = MaskedNetwork.whole(
            chain.hidden_widths, [w.to(self.device) for w in parent.weights],
            [b.to(self.device) for b in parent.biases], [n.to(self.device) if n is not None else None for n in norms])
        self.embeddings = Embeddings(chain, config)
        self.total_hidden = sum(chain.hidden_widths)
        self.bytes_per_ind = (sum(w.numel() for w in parent.weights) + sum(b.numel() for b in parent.biases)) * 4
        self.feature_elems = chain.largest_feature_map()  # elements of one example's largest layer output
        name = forward or choose_forward(self.device, chain)
        if name not in FORWARDS or (name == "graph") != (chain.kind == "graph"):
            raise ValueError(f"forward {name!r} does not run a {chain.kind} parent; choose from "
                             + ", ".join(n for n in FORWARDS if (n == "graph") == (chain.kind == "graph")))
        self.forward = FORWARDS[name](chain, self.embeddings, self.device)
        self._parent_references: dict = {}  # batch key -> the parent's references on that batch

    def chunk_size(self, batch: int, similarity_entries: int = 0) -> int:
        """Individuals per batched forward: bounded weights and feature maps, and, with
        ``similarity_entries`` (distance entries per individual over all embedding
        layers), a bounded similarity work space."""
        if self.config.eval_chunk:
            return self.config.eval_chunk
        per_ind = self.bytes_per_ind
        if self.forward.holds_feature_maps:  # every individual's feature maps at once
            per_ind += 3 * 4 * batch * self.feature_elems
        step = max(1, memory.CHUNK_BYTES // per_ind)
        if similarity_entries:  # the search holds about 12 float64-sized copies of the distances
            step = min(step, max(1, memory.SIMILARITY_BYTES // (12 * 8 * similarity_entries)))
        return step

    def outputs(self, population, x: torch.Tensor, rows: int = 0, blocks: int = 1, dtype=None):
        """Logits (C, N, K), masks [(C, H_l) float] and, per embedding layer, the squared
        distances (C, blocks, rows, rows) between the embeddings of the first ``rows``
        images of each of the ``blocks`` equal batches that make up ``x``; in ``dtype``
        (default: the children's precision). One chunk, nothing pooled."""
        with full_float32(self.device):
            return self.forward.plan(population, x, rows, len(population)).outputs(0, len(population), blocks, dtype)

    def parent_reference(self, x: torch.Tensor, key=None) -> list[ParentReference]:
        """Per embedding layer, the parent's :class:`ParentReference` on ``x`` (with ``key``,
        kept for the next call with the same key)."""
        if key is not None and key in self._parent_references:
            return self._parent_references[key]
        _, _, dists = self.outputs([self.parent_network], x, len(x), dtype=torch.float64)
        refs = []
        for d in dists:
            d = d[0, 0]  # (B, B)
            p, log_beta = joint_probabilities(d, self.config.perplexity, return_log_beta=True, symmetric=True)
            refs.append(ParentReference(p, log_beta, row_means(d), parent_entropy_term(p)))
        if key is not None:
            self._parent_references[key] = refs
        return refs

    def clear_cache(self):
        """Forget the parent's references."""
        self._parent_references.clear()

    # ----------------------------------------------------------------- measures
    def similarity_rows(self, batch: int) -> int:
        """Images of a batch of ``batch`` that enter the similarity (the first ones)."""
        return min(self.config.similarity_batch or batch, batch)

    @torch.inference_mode()
    def measure(self, population, x: torch.Tensor, y: torch.Tensor, key=None) -> Measures:
        """Accuracy, compression and similarity of every individual on one batch."""
        x, y = x.to(self.device), y.to(self.device)
        refs = self.parent_reference(x[:self.similarity_rows(len(x))], key)
        acc, comp, sim = self.measure_blocks(population, x, y, [refs])
        return Measures(acc[:, 0], comp, sim[:, 0])

    @torch.inference_mode()
    def measure_blocks(self, population, x: torch.Tensor, y: torch.Tensor, refs: Sequence[list]):
        """Per-batch measures of every individual on ``len(refs)`` equal batches
        concatenated in ``x`` (N = batches * B images), as one program: each chunk's
        forward on all the images, the similarity on a (C, batches, rows, rows) stack.
        ``refs``: per batch, the parent's references of its embedding layers.
        Returns numpy accuracy (P, batches), compression (P,), similarity (P, batches)."""
        blocks = len(refs)
        rows = self.similarity_rows(len(x) // blocks)
        stacked = [ParentReference.stack([r[e] for r in refs]) for e in range(len(self.embeddings))]
        step = self.chunk_size(len(x), blocks * rows * rows * len(self.embeddings))
        plan = self.forward.plan(population, x, rows, step)
        acc, comp, sim = [], [], []
        for start in range(0, len(population), step):
            stop = min(start + step, len(population))
            with full_float32(self.device):
                logits, masks, dists = plan.outputs(start, stop, blocks)
            hits = (logits.argmax(-1) == y).reshape(stop - start, blocks, -1)  # (C, blocks, B)
            acc.append(hits.sum(2))  # (C, blocks) correct images
            comp.append(sum((m != 0).sum(1) for m in masks))  # (C,) kept groups
            s = torch.zeros(stop - start, blocks, dtype=torch.float64, device=self.device)
            for (layer, _), d_child, ref in zip(self.embeddings.layers, dists, stacked):
                s = s + similarity_from_distances(ref.p, d_child, self.config.perplexity, self.config.kernel,
                                                  dof=masks[layer].sum(1)[:, None] if layer is not None else None,
                                                  log_beta_init=ref.warm_start(d_child), parent_term=ref.term)
            sim.append(s)
        correct, kept, sim = (torch.cat(v).cpu().numpy() for v in (acc, comp, sim))
        # counts are divided here, on the host: CUDA divides by a scalar through its
        # reciprocal, which can move the last bits of accuracies and compressions
        return correct / (len(x) // blocks), kept / self.total_hidden, sim

    @torch.inference_mode()
    def accuracy(self, population, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        """(P,) accuracy over all of ``x`` (any length): the forward pass only."""
        correct = torch.zeros(len(population), dtype=torch.int64, device=self.device)
        step = self.chunk_size(batch_size)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(self.device), y[i:i + batch_size].to(self.device)
            plan = self.forward.plan(population, xb, 0, step)
            for start in range(0, len(population), step):
                stop = min(start + step, len(population))
                with full_float32(self.device):
                    logits, _, _ = plan.outputs(start, stop)
                correct[start:stop] += (logits.argmax(-1) == yb).sum(1)
        return correct.cpu().numpy() / len(x)  # divided on the host, as in measure_blocks

    @torch.inference_mode()
    def parent_predictions(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N,) int64 on the CPU: the parent's top-1 class for every input of ``x``, by the
        same forward as the population's, so that the parent agrees with them everywhere
        (its fidelity is 1). Inputs only: what a run without labels measures agreement with."""
        out = []
        for i in range(0, len(x), batch_size):
            with full_float32(self.device):
                logits, _, _ = self.forward.plan([self.parent_network], x[i:i + batch_size].to(self.device), 0,
                                                 1).outputs(0, 1)
            out.append(logits[0].argmax(-1).cpu())  # (B,)
        return torch.cat(out)

    @torch.inference_mode()
    def measure_batches(self, population, batches, key: tuple | None = None) -> Measures:
        """Mean measures over an iterable of (x, y) batches; with ``key``, batch ``i``'s
        parent reference is kept under ``(*key, i)``. Equal batches are measured
        together (:meth:`measure_blocks`), as many at a time as keep the largest
        feature map of one forward under ``memory.IMAGE_BYTES``; the result is the mean of
        the per-batch measures either way."""
        batches = [(x.to(self.device), y.to(self.device)) for x, y in batches]
        if not batches:
            raise ValueError("measure_batches needs at least one batch")
        if len({len(x) for x, _ in batches}) > 1:  # unequal batches: one at a time
            parts = [self.measure(population, x, y, key=None if key is None else (*key, i))
                     for i, (x, y) in enumerate(batches)]
            return Measures.mean(parts)
        size = len(batches[0][0])
        rows = self.similarity_rows(size)
        refs = [self.parent_reference(x[:rows], None if key is None else (*key, i)) for i, (x, _) in enumerate(batches)]
        group = max(1, memory.IMAGE_BYTES // (4 * size * self.feature_elems))  # batches per forward
        acc, sim = [], []
        for g in range(0, len(batches), group):
            part = batches[g:g + group]
            a, comp, s = self.measure_blocks(population, torch.cat([x for x, _ in part]),
                                             torch.cat([y for _, y in part]), refs[g:g + group])
            acc.append(a)
            sim.append(s)
        return Measures(np.concatenate(acc, 1).mean(1), comp, np.concatenate(sim, 1).mean(1))

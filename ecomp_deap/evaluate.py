"""The population evaluator: one batched tensor program for a whole population.

Works for any parent chain (MLP units or CNN channels: "groups"). On the CPU each
individual runs on its kept groups only (its filters and rows gathered to the kept
outputs and the kept inputs, so a network at 25 % of the groups costs about a quarter
of the parent's forward or less); on other devices the population's masked tensors are
stacked and run as one batched program (a grouped convolution with the population as
groups, a batched matmul for Linear layers; :mod:`ecomp_deap.nets.forward`). From the
logits and the hidden outputs come, per individual, accuracy ``a``, compression ``c``
(kept groups / parent groups) and similarity ``s`` (the t-SNE KL loss summed over the
embedding layers; a feature map enters as its flattened C*H*W vector).
The parent's side of the similarity (its joint probabilities) is computed once per
batch and shared by every individual.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import EcompConfig
from .genome import Genome
from .nets.chain import Chain
from .nets.forward import as_input, kept_tensors, per_individual, run_stage, stacked_stage
from .similarity import (centred_gram, distances_from_gram, joint_probabilities, similarity_from_distances,
                         squared_distances)

CHUNK_BYTES = 256 * 2**20  # stacked weights per batched forward when eval_chunk is automatic
# Features per group from which a shared first stage's embedding distances come from
# per-group Gram matrices (summing a group's rows x rows Gram costs what recomputing it
# costs divided by its feature count): feature maps yes, Linear units (1 feature) no.
GRAM_SHARING_MIN = 16


def row_means(d: torch.Tensor) -> torch.Tensor:
    """(..., B, B) squared distances -> (..., B) mean distance of each row to the others."""
    return d.sum(-1) / (d.shape[-1] - 1)


@dataclass
class ParentReference:
    """The parent's side of one embedding layer's similarity on one batch."""

    p: torch.Tensor  # (B, B) joint probabilities
    log_beta: torch.Tensor  # (B,) log-precisions of its rows' Gaussians
    mean_d: torch.Tensor  # (B,) mean squared distance of each row

    def warm_start(self, d_child: torch.Tensor) -> torch.Tensor:
        """(C, B) starting log-precisions for children's rows: the parent's, rescaled by
        how much smaller the child's distances are (a Gaussian's precision scales
        inversely with its distances). Only the search's speed depends on it."""
        return self.log_beta + torch.log(self.mean_d) - torch.log(row_means(d_child))


class NonFiniteError(ArithmeticError):
    """A measure came out NaN or infinite."""

    def __init__(self, index: int, measure: str, value: float):
        super().__init__(f"individual {index}: {measure} is {value} (not finite)")
        self.index, self.measure, self.value = index, measure, value


@dataclass
class Measures:
    """Per-individual measures, float64 numpy arrays of shape (P,)."""

    accuracy: np.ndarray
    compression: np.ndarray
    similarity: np.ndarray

    def __len__(self):
        return len(self.accuracy)

    def as_rows(self) -> list[tuple[float, float, float]]:
        return list(zip(self.accuracy.tolist(), self.compression.tolist(), self.similarity.tolist()))

    def check_finite(self) -> None:
        for name in ("accuracy", "compression", "similarity"):
            values = getattr(self, name)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise NonFiniteError(int(bad[0]), name, float(values[bad[0]]))

    @staticmethod
    def mean(parts: Sequence["Measures"]) -> "Measures":
        return Measures(*(np.mean([getattr(m, f) for m in parts], axis=0)
                          for f in ("accuracy", "compression", "similarity")))


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


class PopulationEvaluator:
    """Measures of a population on a batch, for any parent :class:`Chain` (MLP or CNN)."""

    def __init__(self, arch: Chain, parent_weights, parent_biases, config: EcompConfig,
                 device: str | torch.device = "cpu", parent_norms=None):
        self.arch = arch
        self.config = config
        self.device = torch.device(device)
        self.parent_weights = [w.to(self.device) for w in parent_weights]
        self.parent_biases = [b.to(self.device) for b in parent_biases]
        norms = parent_norms if parent_norms is not None else [None] * len(parent_weights)
        self.parent_norms = [n.to(self.device) if n is not None else None for n in norms]
        emb = config.embedding_layers if config.embedding_layers is not None else arch.default_embeddings()
        self.embeddings = [arch.embedding_index(name) for name in emb]  # [(hidden stage, position)]
        self.total_hidden = sum(arch.hidden_widths)
        self.bytes_per_ind = sum(w.numel() + b.numel() for w, b in zip(parent_weights, parent_biases)) * 4
        self.feature_elems = self._largest_feature_map()
        self._parent_cache: dict = {}
        # CPU: each individual on its kept groups; elsewhere one stacked masked forward
        self.kept_units_forward = self.device.type == "cpu"

    def _largest_feature_map(self) -> int:
        """Elements of one example's largest stage output (bounds a stacked chunk's memory)."""
        sizes = [st.out_size * st.out_hw[0] * st.out_hw[1] for st in self.arch.stages]
        return max(sizes)

    def chunk_size(self, batch: int) -> int:
        """Individuals per batched forward: bounded weights and feature maps."""
        if self.config.eval_chunk:
            return self.config.eval_chunk
        per_ind = self.bytes_per_ind
        if not self.kept_units_forward:  # the stacked program holds every individual's feature maps at once
            per_ind += 3 * 4 * batch * self.feature_elems
        return max(1, CHUNK_BYTES // per_ind)

    # ------------------------------------------------------------------ forward
    def _stack(self, population):
        """Per stage, the chunk's stacked tensors on the device: weights (C, out, ...),
        biases (C, out), norms (C, 4, out) or None; masks (C, H_l) float per hidden stage."""
        def stack(items):
            return torch.stack(items).to(self.device, torch.float32, non_blocking=True)

        n = len(self.arch.stages)
        weights = [stack([ind.weights[k] for ind in population]) for k in range(n)]
        biases = [stack([ind.biases[k] for ind in population]) for k in range(n)]
        norms = [stack([ind.norms[k] for ind in population]) if population[0].norms[k] is not None else None
                 for k in range(n)]
        masks = [stack([ind.masks[l] for ind in population]) for l in range(self.arch.n_hidden)]
        return weights, biases, norms, masks

    def _wanted(self, rows: int) -> dict[int, list]:
        """Hidden stage -> [(embedding position in self.embeddings, tail position)]; none without rows."""
        wanted: dict[int, list] = {}
        for pos, (stage, where) in enumerate(self.embeddings if rows else ()):
            wanted.setdefault(stage, []).append((pos, where))
        return wanted

    def _forward_stacked(self, population, x: torch.Tensor, rows: int):
        """One masked batched program for the chunk (GPU; also the CPU reference in
        tests). Returns logits (C, B, K), the masks (C, H_l) float and the embeddings'
        squared distances (C, rows, rows)."""
        weights, biases, norms, masks = self._stack(population)
        C, last, wanted = len(population), len(self.arch.stages) - 1, self._wanted(rows)
        dists = [None] * len(self.embeddings)
        h = as_input(self.arch, x)
        for k, st in enumerate(self.arch.stages):
            positions = [where for _, where in wanted.get(k, ())]
            h, kept = stacked_stage(st, h, weights[k], biases[k], norms[k], masks[k] if k < last else None,
                                    shared=k == 0, positions=positions)
            for pos, where in wanted.get(k, ()):
                dists[pos] = squared_distances(per_individual(kept[where], C)[:, :rows])  # (C, rows, rows)
        logits = per_individual(h, C).reshape(C, x.shape[0], -1)  # (C, B, K)
        return logits, masks, dists

    def _forward_kept_units(self, population, x: torch.Tensor, rows: int):
        """CPU forward of each individual on its kept groups only (filters and rows
        gathered to the kept outputs, inputs to the kept groups below).

        Returns logits (C, B, K) and, per embedding layer, the squared distances
        (C, rows, rows) float64 between the first ``rows`` images' embeddings, computed
        from the kept groups (a masked group is 0 in every image, so it adds nothing):
        the same values as from the masked forward, at the cost of the kept groups."""
        h0 = as_input(self.arch, x)
        C, last = len(population), len(self.arch.stages) - 1
        logits = x.new_empty(C, x.shape[0], self.arch.n_classes)
        dists = [torch.empty(C, rows, rows, dtype=torch.float64) for _ in self.embeddings]
        wanted = self._wanted(rows)
        first_positions = [where for _, where in wanted.get(0, ())]
        # The first stage sees the same input in every individual: individuals sharing its
        # tensors (operators never copy a tensor both parents share) share one full-width
        # output, from which each takes its kept groups (dim 1: units or channels).
        first = [(id(ind.weights[0]), id(ind.biases[0]), id(ind.norms[0])) for ind in population]
        shared = {key for key, n in Counter(first).items() if n > 1}
        first_outputs: dict = {}
        for i, ind in enumerate(population):
            h, prev = h0, None  # prev: kept group indices of the stage below
            for k, st in enumerate(self.arch.stages):
                keep = ind.masks[k].nonzero().squeeze(1) if k < last else None  # (h_k,)
                positions = [where for _, where in wanted.get(k, ())]
                if k == 0 and first[i] in shared:  # k = 0 is a hidden stage: keep is set
                    if first[i] not in first_outputs:
                        first_outputs[first[i]] = self._shared_first_stage(ind, h0, first_positions, rows)
                    full, shared_embeddings = first_outputs[first[i]]
                    h = full.index_select(1, keep)
                    for pos, where in wanted.get(0, ()):
                        kind, t = shared_embeddings[where]
                        if kind == "gram":  # the Gram of the kept groups is the sum of theirs
                            dists[pos][i] = distances_from_gram(t.index_select(0, keep).sum(0)[None])[0]
                        else:
                            dists[pos][i] = squared_distances(t.index_select(1, keep)[:rows].flatten(1))
                    prev = keep
                    continue
                else:
                    w, b, n = kept_tensors(st, ind.weights[k], ind.biases[k], ind.norms[k], keep, prev)
                    h, kept = run_stage(st, h, w, b, n, positions)
                for pos, where in wanted.get(k, ()):
                    dists[pos][i] = squared_distances(kept[where][:rows].flatten(1))
                prev = keep
            logits[i] = h.reshape(h.shape[0], -1)
        return logits, dists

    def _shared_first_stage(self, ind, h0: torch.Tensor, positions, rows: int):
        """The first stage at full width for individuals sharing its tensors: its output
        and, per embedding position, ('gram', the centred Gram of each group's features
        on the first ``rows`` images, (H_0, rows, rows) float64), computed once and then
        summed over each individual's kept groups, when a group has at least
        GRAM_SHARING_MIN features (a feature map's H*W); else ('full', the output), from
        which each individual's distances are computed as usual."""
        out, full_kept = run_stage(self.arch.stages[0], h0, ind.weights[0], ind.biases[0], ind.norms[0], positions)
        shared = {}
        for where, t in full_kept.items():
            per_group = t[:rows].reshape(rows, t.shape[1], -1)  # (rows, H_0, features per group)
            if per_group.shape[2] >= GRAM_SHARING_MIN:
                shared[where] = ("gram", centred_gram(per_group.transpose(0, 1)))  # (H_0, rows, rows)
            else:
                shared[where] = ("full", t)
        return out, shared

    def outputs(self, population, x: torch.Tensor, rows: int = 0):
        """Logits (C, B, K), masks [(C, H_l) float] and, per embedding layer, the
        squared distances (C, rows, rows) between the embeddings of the first ``rows``
        images, for a chunk of individuals."""
        if self.kept_units_forward:
            masks = [torch.stack([ind.masks[l] for ind in population]).float() for l in range(self.arch.n_hidden)]
            logits, dists = self._forward_kept_units(population, x, rows)
            return logits, masks, dists
        logits, masks, dists = self._forward_stacked(population, x, rows)
        if not rows:
            dists = [torch.empty(len(population), 0, 0, dtype=torch.float64, device=self.device)
                     for _ in self.embeddings]
        return logits, masks, dists

    def parent_genome(self) -> Genome:
        return Genome([torch.ones(h, dtype=torch.bool) for h in self.arch.hidden_widths],
                      self.parent_weights, self.parent_biases, self.parent_norms)

    def parent_reference(self, x: torch.Tensor, key=None):
        """Per embedding layer, the parent's :class:`ParentReference` on ``x``."""
        if key is not None and key in self._parent_cache:
            return self._parent_cache[key]
        _, _, dists = self.outputs([self.parent_genome()], x, len(x))
        refs = []
        for d in dists:
            p, log_beta = joint_probabilities(d[0], self.config.perplexity, return_log_beta=True)
            refs.append(ParentReference(p, log_beta, row_means(d[0])))
        if key is not None:
            self._parent_cache[key] = refs
        return refs

    def clear_cache(self):
        self._parent_cache.clear()

    # ----------------------------------------------------------------- measures
    @torch.inference_mode()
    def measure(self, population, x: torch.Tensor, y: torch.Tensor, key=None) -> Measures:
        """Accuracy, compression and similarity of every individual on one batch."""
        x = x.to(self.device)
        y = y.to(self.device)
        n_sim = min(self.config.similarity_batch or len(x), len(x))  # the first n_sim images enter the similarity
        refs = self.parent_reference(x[:n_sim], key)
        acc, comp, sim = [], [], []
        step = self.chunk_size(len(x))
        for start in range(0, len(population), step):
            chunk = population[start:start + step]
            logits, masks, dists = self.outputs(chunk, x, n_sim)
            acc.append((logits.argmax(-1) == y).double().mean(1))  # (C,)
            comp.append(sum(m.sum(1, dtype=torch.float64) for m in masks) / self.total_hidden)
            s = torch.zeros(len(chunk), dtype=torch.float64, device=self.device)
            for (layer, _), d_child, ref in zip(self.embeddings, dists, refs):
                s = s + similarity_from_distances(ref.p, d_child, self.config.perplexity, self.config.kernel,
                                                  dof=masks[layer].sum(1), log_beta_init=ref.warm_start(d_child))
            sim.append(s)
        return Measures(*(torch.cat(v).cpu().numpy() for v in (acc, comp, sim)))

    @torch.inference_mode()
    def accuracy(self, population, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        """(P,) accuracy over all of ``x`` (any length): the forward pass only."""
        correct = torch.zeros(len(population), dtype=torch.float64, device=self.device)
        step = self.chunk_size(batch_size)
        for start in range(0, len(population), step):
            chunk = population[start:start + step]
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size].to(self.device), y[i:i + batch_size].to(self.device)
                logits, _, _ = self.outputs(chunk, xb)
                correct[start:start + len(chunk)] += (logits.argmax(-1) == yb).sum(1)
        return (correct / len(x)).cpu().numpy()

    def measure_batches(self, population, batches, key: tuple | None = None) -> Measures:
        """Mean measures over an iterable of (x, y) batches; with ``key``, batch ``i``'s
        parent reference is cached under ``(*key, i)``."""
        parts = [self.measure(population, x, y, key=None if key is None else (*key, i))
                 for i, (x, y) in enumerate(batches)]
        return Measures.mean(parts)

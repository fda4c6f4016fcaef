"""The population evaluator: one batched tensor program for a whole population.

On the CPU each individual runs on its kept units only (its weights gathered to the
kept rows and columns, so a network at 25 % of the units costs about a quarter of the
parent's forward); on other devices the population's masked weights are stacked
(``(P, out, in)`` per layer) and run as one batched forward pass. From the logits
and the hidden activations come,
per individual, accuracy ``a``, compression ``c`` (kept hidden units / parent hidden
units) and similarity ``s`` (the t-SNE KL loss summed over the embedding layers).
The parent's side of the similarity (its joint probabilities) is computed once per
batch and shared by every individual.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .architecture import MLPArchitecture
from .config import EcompConfig
from .genome import Genome
from .similarity import joint_probabilities, similarity_from_distances, squared_distances

CHUNK_BYTES = 256 * 2**20  # stacked weights per batched forward when eval_chunk is automatic


def _linear(h: torch.Tensor, w, b) -> torch.Tensor:
    """(C, B, in) inputs through C Linear layers -> (C, B, out).

    ``w``/``b`` stacked ((C, out, in), (C, out)): one baddbmm. As lists of C tensors:
    one addmm per individual written into the batched output, which on the CPU is as
    fast as the baddbmm and saves stacking the weights."""
    if isinstance(w, torch.Tensor):
        return torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
    out = h.new_empty(len(w), h.shape[1], w[0].shape[0])
    for i, (wi, bi) in enumerate(zip(w, b)):
        torch.addmm(bi, h[i], wi.T, out=out[i])
    return out


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
    def __init__(self, arch: MLPArchitecture, parent_weights, parent_biases, config: EcompConfig,
                 device: str | torch.device = "cpu"):
        self.arch = arch
        self.config = config
        self.device = torch.device(device)
        self.parent_weights = [w.to(self.device) for w in parent_weights]
        self.parent_biases = [b.to(self.device) for b in parent_biases]
        emb = config.embedding_layers if config.embedding_layers is not None else arch.act_names
        self.embeddings = [arch.embedding_index(name) for name in emb]  # [(hidden index, kind)]
        self.needs_pre = any(kind == "linear" for _, kind in self.embeddings)
        self.total_hidden = sum(arch.hidden_widths)
        bytes_per_ind = sum(w.numel() + b.numel() for w, b in zip(parent_weights, parent_biases)) * 4
        self.chunk = config.eval_chunk or max(1, CHUNK_BYTES // bytes_per_ind)
        self._parent_cache: dict = {}
        # CPU: each individual on its kept units; elsewhere one stacked masked forward
        self.kept_units_forward = self.device.type == "cpu"

    # ------------------------------------------------------------------ forward
    def forward(self, weights, biases, masks, x: torch.Tensor, keep_pre: bool = True):
        """Masked batched forward.

        weights[k]: (C, out_k, in_k) stacked, or a list of C tensors (out_k, in_k);
        biases[k]: (C, out_k) or a list likewise; masks[l]: (C, H_l) float;
        x: (B, ...) inputs. Returns logits (C, B, K) and, per hidden layer, the masked
        pre-activations (None unless ``keep_pre``) and activations (C, B, H_l).
        """
        h = x.reshape(x.shape[0], -1)  # (B, in)
        C = masks[0].shape[0]
        h = h.expand(C, *h.shape)  # (C, B, in), a view
        pre, post = [], []
        last = len(weights) - 1
        for k, (w, b) in enumerate(zip(weights, biases)):
            z = _linear(h, w, b)  # (C, B, out)
            if k == last:
                return z, pre, post
            m = masks[k][:, None, :]  # (C, 1, H)
            pre.append(z * m if keep_pre else None)
            h = self.arch.activations[k](z).mul_(m)  # a masked unit's activation is 0
            post.append(h)
        raise AssertionError("unreachable")

    def _stack(self, population):
        """The chunk's tensors for :meth:`forward`. On the CPU the weights stay per
        individual (lists: the forward writes each product straight into the batched
        output, so no stacked copy of the population's weights is made); elsewhere
        they are stacked and moved to the device."""
        n_lin = len(self.arch.linear_names)
        if self.device.type == "cpu":
            weights = [[ind.weights[k] for ind in population] for k in range(n_lin)]
            biases = [[ind.biases[k] for ind in population] for k in range(n_lin)]
        else:
            weights = [torch.stack([ind.weights[k] for ind in population]).to(self.device, non_blocking=True)
                       for k in range(n_lin)]
            biases = [torch.stack([ind.biases[k] for ind in population]).to(self.device, non_blocking=True)
                      for k in range(n_lin)]
        masks = [torch.stack([ind.masks[l] for ind in population]).to(self.device, torch.float32)
                 for l in range(self.arch.n_hidden)]
        return weights, biases, masks

    def _forward_kept_units(self, population, x: torch.Tensor, rows: int):
        """CPU forward of each individual on its kept units only.

        Returns logits (C, B, K) and, per embedding layer, the squared distances
        (C, rows, rows) float64 between the first ``rows`` images' embeddings, computed
        from the kept units (a masked unit is 0 in every image, so it adds nothing):
        the same values as from the masked forward, at the cost of the kept units."""
        h0 = x.reshape(x.shape[0], -1)  # (B, in)
        C, last = len(population), len(self.arch.linear_names) - 1
        logits = h0.new_empty(C, h0.shape[0], self.arch.widths[-1])
        dists = [torch.empty(C, rows, rows, dtype=torch.float64) for _ in self.embeddings]
        wanted: dict[int, list] = {}  # hidden layer -> [(embedding position, kind)]; none without rows
        for pos, (layer, kind) in enumerate(self.embeddings if rows else ()):
            wanted.setdefault(layer, []).append((pos, kind))
        # The first layer sees the same input in every individual: individuals sharing its
        # weight and bias tensors (operators never copy a tensor both parents share)
        # share one full-width product, from which each takes its kept units.
        first = [(id(ind.weights[0]), id(ind.biases[0])) for ind in population]
        shared = {key for key, n in Counter(first).items() if n > 1}
        first_products: dict = {}
        for i, ind in enumerate(population):
            h, prev = h0, None  # prev: kept unit indices of the layer below
            for k in range(last + 1):
                w, b = ind.weights[k], ind.biases[k]
                keep = ind.masks[k].nonzero().squeeze(1) if k < last else None  # (h_k,)
                if k == 0 and first[i] in shared:  # k = 0 is a hidden layer: keep is set
                    if first[i] not in first_products:
                        first_products[first[i]] = torch.addmm(b, h0, w.T)  # (B, H_0)
                    z = first_products[first[i]].index_select(1, keep)  # (B, h_0)
                else:
                    if keep is not None:
                        w, b = w.index_select(0, keep), b.index_select(0, keep)
                    if prev is not None:
                        w = w.index_select(1, prev)  # (h_k, h_{k-1})
                    if k == last:
                        torch.addmm(b, h, w.T, out=logits[i])
                        break
                    z = torch.addmm(b, h, w.T)  # (B, h_k)
                h = self.arch.activations[k](z)
                for pos, kind in wanted.get(k, ()):
                    dists[pos][i] = squared_distances((h if kind == "act" else z)[:rows])
                prev = keep
        return logits, dists

    def outputs(self, population, x: torch.Tensor, rows: int = 0):
        """Logits (C, B, K), masks [(C, H_l) float] and, per embedding layer, the
        squared distances (C, rows, rows) between the embeddings of the first ``rows``
        images, for a chunk of individuals."""
        if self.kept_units_forward:
            masks = [torch.stack([ind.masks[l] for ind in population]).float() for l in range(self.arch.n_hidden)]
            logits, dists = self._forward_kept_units(population, x, rows)
            return logits, masks, dists
        weights, biases, masks = self._stack(population)
        logits, pre, post = self.forward(weights, biases, masks, x, keep_pre=self.needs_pre and rows > 0)
        dists = [squared_distances((post if kind == "act" else pre)[layer][:, :rows]) if rows
                 else torch.empty(len(population), 0, 0, dtype=torch.float64, device=self.device)
                 for layer, kind in self.embeddings]
        return logits, masks, dists

    def parent_reference(self, x: torch.Tensor, key=None):
        """Per embedding layer, the parent's :class:`ParentReference` on ``x``."""
        if key is not None and key in self._parent_cache:
            return self._parent_cache[key]
        full = Genome([torch.ones(h, dtype=torch.bool) for h in self.arch.hidden_widths],
                      self.parent_weights, self.parent_biases)
        _, _, dists = self.outputs([full], x, len(x))
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
        for start in range(0, len(population), self.chunk):
            chunk = population[start:start + self.chunk]
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
        for start in range(0, len(population), self.chunk):
            chunk = population[start:start + self.chunk]
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

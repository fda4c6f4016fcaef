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

Several equal batches can be measured as one program (``measure_batches``: the final
pass over all training batches, validation, test): each individual's forward runs on
their concatenation and the similarity on a ``(batches, B, B)`` stack per individual;
the measures are the per-batch ones, averaged. The children's distances and perplexity
search run in ``config.similarity_dtype`` (float32 by default; the parent's side is
float64; see :mod:`ecomp_deap.fitness.similarity.loss`).
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import EcompConfig
from ..search.genome import Genome
from ..nets.chain import Chain
from ..nets.forward import as_input, kept_tensors, per_individual, run_stage, stacked_stage
from .row_keys import group_keys
from .similarity.loss import (DTYPES, centred_gram, distances_from_gram, joint_probabilities, parent_entropy_term, rescaled_as_one, similarity_from_distances, squared_distances)
from ..nets.spliced import rows_by_source

CHUNK_BYTES = 256 * 2**20  # stacked weights per batched forward when eval_chunk is automatic
SIMILARITY_BYTES = 512 * 2**20  # bound on a chunk's similarity work space (distances and search)
IMAGE_BYTES = 128 * 2**20  # bound on one forward's largest feature map when batches are concatenated
# A convolutional first stage runs once on the population's distinct filters from this many
# images (the final pass's concatenated batches); a Linear one always does (see _pooled):
# late in a run most kept rows/filters are copies (a default weighted MLP run at t = 90:
# 13763 kept first-layer rows, 1214 distinct).
DEDUPE_MIN_IMAGES = 1000
PAD_MAX_ELEMENTS = 2**16  # embeddings up to this size get their distances computed together, zero-padded
# Features per group from which a shared first stage's embedding distances come from
# per-group Gram matrices (summing a group's rows x rows Gram costs what recomputing it
# costs divided by its feature count): feature maps yes, Linear units (1 feature) no.
GRAM_SHARING_MIN = 16


def row_means(d: torch.Tensor) -> torch.Tensor:
    """(..., B, B) squared distances -> (..., B) mean distance of each row to the others."""
    return d.sum(-1) / (d.shape[-1] - 1)


@dataclass
class ParentReference:
    """The parent's side of one embedding layer's similarity on one batch, or on a
    stack of batches (a leading (batches,) dimension on every field)."""

    p: torch.Tensor  # (B, B) joint probabilities, float64
    log_beta: torch.Tensor  # (B,) log-precisions of its rows' Gaussians
    mean_d: torch.Tensor  # (B,) mean squared distance of each row
    term: torch.Tensor  # () sum P log P, the KL's part that does not depend on the child

    def warm_start(self, d_child: torch.Tensor) -> torch.Tensor:
        """(C, ..., B) starting log-precisions for children's rows: the parent's, rescaled
        by how much smaller the child's distances are (a Gaussian's precision scales
        inversely with its distances). Only the search's speed depends on it."""
        return self.log_beta + torch.log(self.mean_d) - torch.log(row_means(d_child).to(self.mean_d.dtype))

    @staticmethod
    def stack(refs: Sequence["ParentReference"]) -> "ParentReference":
        """One reference per batch -> one with a leading (batches,) dimension."""
        return ParentReference(*(torch.stack([getattr(r, f) for r in refs]) for f in ("p", "log_beta", "mean_d", "term")))


def block_rows(t: torch.Tensor, blocks: int, rows: int, lead: int = 0) -> torch.Tensor:
    """(*lead, blocks*B, *features) -> (*lead, blocks, rows, F): each batch's first
    ``rows`` images, features flattened (an embedding's input to the distances)."""
    head = t.shape[:lead]
    return t.reshape(*head, blocks, t.shape[lead] // blocks, -1)[..., :rows, :]


def unit_major(t: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(N, U) -> equal (N, U) whose storage is (U, N) contiguous (each unit's values in a
    row), copied ``block`` images at a time: each block's reads and writes stay in cache
    (a final pass's 10 000 x 1214 pool: 20 ms, against 32 ms for one transposing copy;
    5000 x 1214 in memory already written: 4.6 ms against 17)."""
    out = t.new_empty(t.shape[1], t.shape[0])  # (U, N)
    for start in range(0, t.shape[0], block):
        out[:, start:start + block] = t[start:start + block].T
    return out.T


def kept_groups(population, k: int) -> tuple[torch.Tensor, ...]:
    """Per individual, the kept group indices (h,) of hidden stage ``k``, in index order
    (one ``nonzero`` for the population: its columns, split by individual)."""
    masks = torch.stack([ind.masks[k] for ind in population])  # (P, H_k)
    _, cols = masks.nonzero(as_tuple=True)  # (S,) row by row
    return cols.split(masks.sum(1).tolist())


def row_numbers(keys: torch.Tensor) -> torch.Tensor:
    """(S, K) int64 -> (S,) int64: sum_k keys[:, k] * m_k with odd multipliers m_k
    (wrapping around): equal rows give equal numbers."""
    mix = torch.tensor([1] + [0x9E3779B97F4A7C15 - 2**64 + 2 * j for j in range(keys.shape[1] - 1)],
                       dtype=torch.int64)
    return (keys * mix).sum(1)


def unique_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, K) int64 -> (inverse (S,), first (U,)): row i of ``keys`` is distinct row
    ``inverse[i]``, which first occurs at row ``first[inverse[i]]`` (so the distinct rows
    are ``keys[first]``, in the order of their numbers). Found like ``torch.unique(keys,
    dim=0, return_inverse=True)`` but through one int64 per row (a 1-D sort, ~20x faster),
    checked against the rows: if two different rows ever share that number, the exact
    2-D unique is used instead."""
    _, inverse = torch.unique(row_numbers(keys), return_inverse=True)
    first = _first_occurrences(inverse, len(keys))
    if not torch.equal(keys.index_select(0, first).index_select(0, inverse), keys):  # a shared number
        _, inverse = torch.unique(keys, dim=0, return_inverse=True)  # the exact way
        first = _first_occurrences(inverse, len(keys))
    return inverse, first


def _first_occurrences(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) group of each row -> (groups,) the first row of each group."""
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long)
    return first.scatter_reduce_(0, inverse, torch.arange(n), "amin")


@dataclass
class FirstStagePool:
    """The first stage on ``x`` for the population's distinct groups (a group = its
    filter or row, bias and BatchNorm entries): output (N, U, ...), the wanted tail
    positions' tensors, and per individual (by id) its kept groups' columns in U."""

    x: torch.Tensor
    out: torch.Tensor
    kept: dict
    columns: dict


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


@contextmanager
def full_float32(device: torch.device):
    """On a CUDA device, convolutions and matrix products in full float32 within: PyTorch
    lets cuDNN use TF32 by default, which moved the default CNN's similarities against
    the CPU's by up to 5e-4 relative on an H200 (1e-6 without; tests/test_cuda.py).
    Nothing changes on the CPU."""
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
        # the children's distances and search: float32 unless the kernel is not scale-free
        student = config.kernel.lower().replace("-", "_") in ("student_t", "studentt", "t")
        self.similarity_dtype = torch.float64 if student else DTYPES[config.similarity_dtype]
        self._pool: FirstStagePool | None = None  # set within first_stage_once

    def _largest_feature_map(self) -> int:
        """Elements of one example's largest stage output (bounds a stacked chunk's memory)."""
        sizes = [st.out_size * st.out_hw[0] * st.out_hw[1] for st in self.arch.stages]
        return max(sizes)

    def chunk_size(self, batch: int, similarity_entries: int = 0) -> int:
        """Individuals per batched forward: bounded weights and feature maps, and, with
        ``similarity_entries`` (distance entries per individual over all embedding
        layers), a bounded similarity work space."""
        if self.config.eval_chunk:
            return self.config.eval_chunk
        per_ind = self.bytes_per_ind
        if not self.kept_units_forward:  # the stacked program holds every individual's feature maps at once
            per_ind += 3 * 4 * batch * self.feature_elems
        step = max(1, CHUNK_BYTES // per_ind)
        if similarity_entries:  # the search holds about 12 float64-sized copies of the distances
            step = min(step, max(1, SIMILARITY_BYTES // (12 * 8 * similarity_entries)))
        return step

    def distances(self, t: torch.Tensor, dtype: torch.dtype | None = None, overwrite: bool = False,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., rows, F) embeddings -> (..., rows, rows) squared distances in the
        children's precision (float32: rescaled by a power of two, see similarity, and
        not symmetrised: the search reads columns as rows); ``overwrite``: ``t`` is a scratch
        tensor that may be modified; ``out``: written into that contiguous tensor."""
        dtype = dtype or self.similarity_dtype
        exact = dtype == torch.float64
        return squared_distances(t, dtype, rescale=not exact, overwrite=overwrite, symmetric=exact, out=out)

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

    def _forward_stacked(self, population, x: torch.Tensor, rows: int, blocks: int = 1, dtype=None):
        """One masked batched program for the chunk (GPU; also the CPU reference in
        tests). ``x`` holds ``blocks`` equal batches. Returns logits (C, N, K), the masks
        (C, H_l) float and the embeddings' squared distances (C, blocks, rows, rows)."""
        weights, biases, norms, masks = self._stack(population)
        C, last, wanted = len(population), len(self.arch.stages) - 1, self._wanted(rows)
        dists = [None] * len(self.embeddings)
        h = as_input(self.arch, x)
        for k, st in enumerate(self.arch.stages):
            positions = [where for _, where in wanted.get(k, ())]
            h, kept = stacked_stage(st, h, weights[k], biases[k], norms[k], masks[k] if k < last else None,
                                    shared=k == 0, positions=positions)
            for pos, where in wanted.get(k, ()):
                dists[pos] = self.distances(block_rows(per_individual(kept[where], C), blocks, rows, 1), dtype)
        logits = per_individual(h, C).reshape(C, x.shape[0], -1)  # (C, B, K)
        return logits, masks, dists

    def _forward_kept_units(self, population, x: torch.Tensor, rows: int, blocks: int = 1, dtype=None):
        """CPU forward of each individual on its kept groups only (filters and rows
        gathered to the kept outputs, inputs to the kept groups below).

        ``x`` holds ``blocks`` equal batches. Returns logits (C, N, K) and, per embedding
        layer, the squared distances (C, blocks, rows, rows) between the embeddings of
        each batch's first ``rows`` images, computed from the kept groups (a masked group
        is 0 in every image, so it adds nothing): the same values as from the masked
        forward, at the cost of the kept groups. The first stage runs for many
        individuals at once (:meth:`_first_stage`) and the distances of all individuals'
        embeddings are computed together, zero-padded to a common width."""
        dtype = dtype or self.similarity_dtype
        h0 = as_input(self.arch, x)
        C, last = len(population), len(self.arch.stages) - 1
        logits = x.new_empty(C, x.shape[0], self.arch.n_classes)
        dists = [torch.empty(C, blocks, rows, rows, dtype=dtype) for _ in self.embeddings]
        embedded = [[None] * C for _ in self.embeddings]  # per embedding: (blocks, rows, F_i) or None
        wanted = self._wanted(rows)
        keeps = list(zip(*(kept_groups(population, k) for k in range(last))))  # per individual, per stage: (h_k,)
        positions = [where for _, where in wanted.get(0, ())]
        pool = self._pool
        if pool is not None and pool.x is x and all(id(ind) in pool.columns for ind in population) \
                and set(positions) <= set(pool.kept):
            first = [self._from_pool(pool, ind, positions) for ind in population]
        else:
            first = self._first_stage(population, h0, keeps, positions, rows, blocks, dtype)
        for i, ind in enumerate(population):
            h, kept = first[i]
            for pos, where in wanted.get(0, ()):
                if isinstance(kept[where], tuple):  # ('dist', distances from the shared per-group Grams)
                    dists[pos][i] = kept[where][1]
                else:
                    embedded[pos][i] = block_rows(kept[where], blocks, rows)
            prev = keeps[i][0]  # kept group indices of the stage below
            for k in range(1, last + 1):
                st = self.arch.stages[k]
                keep = keeps[i][k] if k < last else None
                w, b, n = kept_tensors(st, ind.weights[k], ind.biases[k], ind.norms[k], keep, prev)
                h, kept = run_stage(st, h, w, b, n, [where for _, where in wanted.get(k, ())])
                for pos, where in wanted.get(k, ()):
                    embedded[pos][i] = block_rows(kept[where], blocks, rows)
                prev = keep
            logits[i] = h.reshape(h.shape[0], -1)
        # the forward is done: an embedding no other one shares storage with (the same layer
        # named twice, or a group's columns of one first-stage run) is centred in place
        holders = Counter(e.untyped_storage().data_ptr() for per_pos in embedded for e in per_pos if e is not None)
        for pos in range(len(self.embeddings)):
            self._padded_distances(embedded[pos], dists[pos], dtype, holders)
        return logits, dists

    def _first_stage(self, population, h0: torch.Tensor, keeps, positions, rows: int, blocks: int, dtype):
        """Per individual, (its first stage's output on its kept groups, {position:
        embedding, or ('dist', squared distances)}). The first stage's input is the same
        for every individual and every one of its operations is per group, so:
        individuals sharing its tensors (operators never copy a tensor both parents
        share) share one full-width output, from which each takes its kept groups;
        the others run side by side, their kept groups concatenated into one layer (one
        GEMM or convolution instead of one per individual), in groups whose output stays
        under IMAGE_BYTES."""
        st = self.arch.stages[0]
        key = [(id(ind.weights[0]), id(ind.biases[0]), id(ind.norms[0])) for ind in population]
        counts = Counter(key)
        out: list = [None] * len(population)
        shared: dict = {}
        own = []
        for i, ind in enumerate(population):
            if counts[key[i]] == 1:
                own.append(i)
                continue
            if key[i] not in shared:
                shared[key[i]] = self._shared_first_stage(ind, h0, positions, rows, blocks, dtype)
            full, embeddings = shared[key[i]]
            keep = keeps[i][0]
            kept = {}
            for where in positions:
                kind, t = embeddings[where]
                if kind == "gram":  # the Gram of the kept groups is the sum of theirs
                    kept[where] = ("dist", distances_from_gram(t.index_select(0, keep).sum(0)))
                else:
                    kept[where] = t.index_select(1, keep)
            out[i] = (full.index_select(1, keep), kept)
        group_bytes = 4 * h0.shape[0] * st.out_hw[0] * st.out_hw[1]  # one output group's feature map
        sizes = {i: int(keeps[i][0].shape[0]) for i in own}
        group: list[int] = []
        width = 0
        for j, i in enumerate(own):
            group.append(i)
            width += sizes[i]
            nxt = own[j + 1] if j + 1 < len(own) else None
            if nxt is None or (width + sizes[nxt]) * group_bytes > IMAGE_BYTES:
                tensors = [kept_tensors(st, population[g].weights[0], population[g].biases[0], population[g].norms[0],
                                        keeps[g][0], None) for g in group]
                norm = torch.cat([t[2] for t in tensors], 1) if tensors[0][2] is not None else None
                z, kept = run_stage(st, h0, torch.cat([t[0] for t in tensors]), torch.cat([t[1] for t in tensors]),
                                    norm, positions)  # (N, width, ...)
                start = 0
                for g in group:
                    n = sizes[g]
                    out[g] = (z[:, start:start + n], {where: t[:, start:start + n] for where, t in kept.items()})
                    start += n
                group, width = [], 0
        return out

    @staticmethod
    def _from_pool(pool: FirstStagePool, ind, positions):
        """An individual's first-stage output and wanted tail tensors, from the pool."""
        cols = pool.columns[id(ind)]

        def take(t):  # (N, h) from a unit-major (N, U) as its (U, N) transpose's rows; (N, h, ...) from (N, U, ...)
            return t.T.index_select(0, cols).T if t.dim() == 2 else t.index_select(1, cols)

        out = take(pool.out)
        return out, {where: out if pool.kept[where] is pool.out else take(pool.kept[where]) for where in positions}

    def first_stage_pool(self, population, x: torch.Tensor, rows: int) -> FirstStagePool | None:
        """The first stage on ``x`` for the distinct groups of ``population`` (equal
        filter or row, bias and BatchNorm entries: :func:`~ecomp_deap.fitness.row_keys.group_keys`),
        or None when its output would not fit in IMAGE_BYTES. Each distinct group is
        computed from its first holder's tensors; groups come in the order of their keys,
        so the same population always gives the same program."""
        st = self.arch.stages[0]
        masks = torch.stack([ind.masks[0] for ind in population])  # (P, H)
        flat = masks.reshape(-1).nonzero().squeeze(1)  # (S,) every kept group as i * H + its row, by individual
        stored = [ind.weights.raw(0) for ind in population]  # tensors or row splices: rows are read, never the whole
        biases = torch.cat([ind.biases[0] for ind in population])  # (P H,)
        norms = torch.cat([ind.norms[0] for ind in population], 1) if population[0].norms[0] is not None else None
        keys = group_keys(stored, biases, norms).index_select(0, flat)  # (S, K)
        inverse, first = unique_rows(keys)  # (S,), (U,): each kept group's distinct group, each one's first holder
        n_distinct = len(first)
        positions = [where for _, where in self._wanted(rows).get(0, ())]
        if 4 * len(x) * n_distinct * st.out_hw[0] * st.out_hw[1] * (1 + len(positions)) > IMAGE_BYTES:
            return None
        holders = flat.index_select(0, first)  # (U,) each distinct group's first holder, as i * H + row
        w = torch.empty(n_distinct, *stored[0].shape[1:], dtype=stored[0].dtype, device=stored[0].device)  # (U, ...)
        for src, at, src_rows in rows_by_source(stored, holders):  # one gather per tensor that stores rows
            w.index_copy_(0, at, src.index_select(0, src_rows))
        b = biases.index_select(0, holders)
        n = norms.index_select(1, holders) if norms is not None else None
        out, kept = run_stage(st, as_input(self.arch, x), w.to(self.device), b.to(self.device),
                              n.to(self.device) if n is not None else None, positions)  # (N, U, ...)
        if out.dim() == 2:  # Linear: stored unit-major, so that each individual's units are
            # gathered as contiguous rows of the (U, N) transpose (as columns they took 4-5x as long)
            major = {}
            for t in (out, *kept.values()):  # each once: a kept position is often the output itself
                if id(t) not in major:
                    major[id(t)] = unit_major(t)
            out, kept = major[id(out)], {where: major[id(t)] for where, t in kept.items()}
        inverse = inverse.to(self.device)
        columns, start = {}, 0
        for ind, count in zip(population, masks.sum(1).tolist()):
            columns[id(ind)] = inverse[start:start + count]
            start += count
        return FirstStagePool(x, out, kept, columns)

    def _padded_distances(self, embedded: list, out: torch.Tensor, dtype, holders: Counter | None = None) -> None:
        """Squared distances of the embeddings (blocks, rows, F_i) not None in
        ``embedded``, written into ``out`` (C, blocks, rows, rows): computed for many
        individuals at once, their features zero-padded to a common width (zero
        features add nothing to a distance), in groups under IMAGE_BYTES. ``holders``:
        how many embeddings of the forward hold each storage; a large embedding alone
        in its storage is centred in place (it is not read again; the same bits unless
        its squared norms need the float32 rescale, see squared_distances)."""
        todo = []
        for i, e in enumerate(embedded):
            if e is None:
                continue
            if e.numel() > PAD_MAX_ELEMENTS:  # large already (many batches): padding would only copy
                alone = holders is not None and holders[e.untyped_storage().data_ptr()] == 1
                self.distances(e, dtype, overwrite=alone, out=out[i])
            else:
                todo.append(i)
        while todo:
            group, width = [], 0
            for i in todo:
                w = max(width, embedded[i].shape[-1])
                if group and (len(group) + 1) * w * embedded[i][..., 0].numel() * 4 > IMAGE_BYTES:
                    break
                group.append(i)
                width = w
            todo = todo[len(group):]
            first = embedded[group[0]]
            stack = first.new_zeros(len(group), *first.shape[:-1], width)  # (G, blocks, rows, width)
            for j, i in enumerate(group):
                stack[j, ..., :embedded[i].shape[-1]] = embedded[i]
            if group[-1] - group[0] == len(group) - 1:  # consecutive individuals: written in place
                self.distances(stack, dtype, overwrite=True, out=out[group[0]:group[-1] + 1])
            else:
                out[torch.tensor(group)] = self.distances(stack, dtype, overwrite=True)

    def _shared_first_stage(self, ind, h0: torch.Tensor, positions, rows: int, blocks: int, dtype):
        """The first stage at full width for individuals sharing its tensors: its output
        and, per embedding position, ('gram', the centred Gram of each group's features
        on each batch's first ``rows`` images, (H_0, blocks, rows, rows) in ``dtype``),
        computed once and then summed over each individual's kept groups, when a group
        has at least GRAM_SHARING_MIN features (a feature map's H*W); else ('full', the
        output), from which each individual's distances are computed as usual."""
        out, full_kept = run_stage(self.arch.stages[0], h0, ind.weights[0], ind.biases[0], ind.norms[0], positions)
        shared = {}
        for where, t in full_kept.items():
            per_group = block_rows(t.flatten(2) if t.dim() > 2 else t[..., None], blocks, rows)  # (blocks, rows, H_0*S)
            per_group = per_group.reshape(blocks, rows, t.shape[1], -1).to(dtype)  # (blocks, rows, H_0, S)
            if per_group.shape[3] >= GRAM_SHARING_MIN:
                if dtype != torch.float64:  # one power of two for all groups: their Grams still add up
                    per_group = rescaled_as_one(per_group)
                shared[where] = ("gram", centred_gram(per_group.permute(2, 0, 1, 3), dtype))  # (H_0, blocks, rows, rows)
            else:
                shared[where] = ("full", t)
        return out, shared

    def outputs(self, population, x: torch.Tensor, rows: int = 0, blocks: int = 1, dtype=None):
        """Logits (C, N, K), masks [(C, H_l) float] and, per embedding layer, the
        squared distances (C, blocks, rows, rows) between the embeddings of the first
        ``rows`` images of each of the ``blocks`` equal batches that make up ``x``, for a
        chunk of individuals; in ``dtype`` (default: the children's precision). Every
        forward of the evaluator runs here, in full float32 (:func:`full_float32`)."""
        with full_float32(self.device):
            return self._outputs(population, x, rows, blocks, dtype)

    def _outputs(self, population, x: torch.Tensor, rows: int, blocks: int, dtype):
        if self.kept_units_forward:
            masks = [torch.stack([ind.masks[l] for ind in population]).float() for l in range(self.arch.n_hidden)]
            logits, dists = self._forward_kept_units(population, x, rows, blocks, dtype)
            return logits, masks, dists
        logits, masks, dists = self._forward_stacked(population, x, rows, blocks, dtype)
        if not rows:
            dists = [torch.empty(len(population), blocks, 0, 0, dtype=dtype or self.similarity_dtype,
                                 device=self.device) for _ in self.embeddings]
        return logits, masks, dists

    def parent_genome(self) -> Genome:
        return Genome([torch.ones(h, dtype=torch.bool) for h in self.arch.hidden_widths],
                      self.parent_weights, self.parent_biases, self.parent_norms)

    def parent_reference(self, x: torch.Tensor, key=None):
        """Per embedding layer, the parent's :class:`ParentReference` on ``x``."""
        if key is not None and key in self._parent_cache:
            return self._parent_cache[key]
        _, _, dists = self.outputs([self.parent_genome()], x, len(x), dtype=torch.float64)
        refs = []
        for d in dists:
            d = d[0, 0]  # (B, B)
            p, log_beta = joint_probabilities(d, self.config.perplexity, return_log_beta=True, symmetric=True)
            refs.append(ParentReference(p, log_beta, row_means(d), parent_entropy_term(p)))
        if key is not None:
            self._parent_cache[key] = refs
        return refs

    def clear_cache(self):
        self._parent_cache.clear()

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
        with self.first_stage_once(population, x, rows, step):
            return self._measure_chunks(population, x, y, blocks, rows, stacked, step)

    @contextmanager
    def first_stage_once(self, population, x: torch.Tensor, rows: int, step: int):
        """Within it, :meth:`outputs` on ``x`` for members of ``population`` (measured in
        chunks of ``step``) reads their first stage from one run on the population's
        distinct groups (:meth:`first_stage_pool`), where :meth:`_pooled` says so."""
        self._pool = self.first_stage_pool(population, x, rows) if self._pooled(population, x, step) else None
        try:
            yield
        finally:
            self._pool = None

    def _pooled(self, population, x: torch.Tensor, step: int) -> bool:
        """Whether the first stage runs once on the population's distinct groups (see
        :meth:`first_stage_pool`): on the CPU for a Linear first stage (its shared input
        makes every copied row a wasted GEMM row), and for a convolution from
        DEDUPE_MIN_IMAGES images when the population is measured in several chunks
        (below that, individuals sharing the parent's filters share per-channel Grams)."""
        if not self.kept_units_forward or len(population) < 2:
            return False
        if self.arch.stages[0].kind == "linear":
            return True
        return len(x) >= DEDUPE_MIN_IMAGES and len(population) > step

    def _measure_chunks(self, population, x, y, blocks: int, rows: int, stacked, step: int):
        acc, comp, sim = [], [], []
        for start in range(0, len(population), step):
            chunk = population[start:start + step]
            logits, masks, dists = self.outputs(chunk, x, rows, blocks)
            hits = (logits.argmax(-1) == y).reshape(len(chunk), blocks, -1)  # (C, blocks, B)
            acc.append(hits.sum(2))  # (C, blocks) correct images
            comp.append(sum((m != 0).sum(1) for m in masks))  # (C,) kept groups
            s = torch.zeros(len(chunk), blocks, dtype=torch.float64, device=self.device)
            for (layer, _), d_child, ref in zip(self.embeddings, dists, stacked):
                s = s + similarity_from_distances(ref.p, d_child, self.config.perplexity, self.config.kernel,
                                                  dof=masks[layer].sum(1)[:, None],
                                                  log_beta_init=ref.warm_start(d_child), parent_term=ref.term)
            sim.append(s)
        correct, kept, sim = (torch.cat(v).cpu().numpy() for v in (acc, comp, sim))
        # counts are divided here, on the host: CUDA divides by a scalar through its
        # reciprocal, which moved last bits of accuracies and compressions (seen on an H200)
        return correct / (len(x) // blocks), kept / self.total_hidden, sim

    @torch.inference_mode()
    def accuracy(self, population, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
        """(P,) accuracy over all of ``x`` (any length): the forward pass only."""
        correct = torch.zeros(len(population), dtype=torch.int64, device=self.device)
        step = self.chunk_size(batch_size)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(self.device), y[i:i + batch_size].to(self.device)
            with self.first_stage_once(population, xb, 0, step):
                for start in range(0, len(population), step):
                    chunk = population[start:start + step]
                    logits, _, _ = self.outputs(chunk, xb)
                    correct[start:start + len(chunk)] += (logits.argmax(-1) == yb).sum(1)
        return correct.cpu().numpy() / len(x)  # divided on the host, as in measure_blocks

    @torch.inference_mode()
    def measure_batches(self, population, batches, key: tuple | None = None) -> Measures:
        """Mean measures over an iterable of (x, y) batches; with ``key``, batch ``i``'s
        parent reference is cached under ``(*key, i)``. Equal batches are measured
        together (:meth:`measure_blocks`), as many at a time as keep the largest
        feature map of one forward under IMAGE_BYTES; the result is the mean of the
        per-batch measures either way."""
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
        group = max(1, IMAGE_BYTES // (4 * size * self.feature_elems))  # batches per forward
        acc, sim = [], []
        for g in range(0, len(batches), group):
            part = batches[g:g + group]
            a, comp, s = self.measure_blocks(population, torch.cat([x for x, _ in part]),
                                             torch.cat([y for _, y in part]), refs[g:g + group])
            acc.append(a)
            sim.append(s)
        return Measures(np.concatenate(acc, 1).mean(1), comp, np.concatenate(sim, 1).mean(1))

"""Variation operators: ``init_*``, ``cx_*``, ``mut_*``.

Pure functions in DEAP's style: they change the individuals they are given (by
replacing tensors, never writing into them) and return a tuple. Randomness comes
from the ``torch.Generator`` passed in; nothing global is read.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..nets.forward import recalibrated_norms
from ..nets.spliced import splice
from .scores import l1_unit_scores, top_units_mask


def init_pruned(ind_cls, weights, biases, rate: float, scores=None, norms=None):
    """One structured pruning of the parent: every group layer keeps
    ``round((1 - rate) * H)`` groups (at least one), those with the largest per-layer
    ``scores`` (H_l,), by default the L1 norm of their incoming weights (the
    reference; a chain's stages); tensors (and BatchNorm ``norms``) shared with the parent."""
    scores = l1_unit_scores(weights) if scores is None else scores
    keeps = [max(1, int(round((1.0 - rate) * len(s)))) for s in scores]
    return ind_cls([top_units_mask(s, k) for s, k in zip(scores, keeps)], weights, biases, norms)


def init_pruned_population(ind_cls, weights, biases, n: int, low: float = 0.1, high: float = 0.8,
                           scores=None, norms=None) -> list:
    """``n`` prunings at rates evenly spaced over [low, high), by L1 norm (the
    reference) or by the given per-layer group ``scores`` (required for a graph parent)."""
    scores = l1_unit_scores(weights) if scores is None else scores  # once, not per individual
    rates = [low + (high - low) * i / n for i in range(n)]
    return [init_pruned(ind_cls, weights, biases, r, scores, norms) for r in rates]


def ensure_nonempty(mask: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """A mask with at least one unit: an empty one gets one random unit back."""
    if bool(mask.any()):
        return mask
    mask = mask.clone()
    mask[int(torch.randint(len(mask), (1,), generator=rng))] = True
    return mask


def cx_layerwise(ind1, ind2, layers: Sequence[int], rng: torch.Generator):
    """Layer-wise one-point crossover with weight inheritance.

    For each stage index ``k`` in ``layers``, a cut ``c`` in [1, out_k - 1]: child 1
    takes output groups [0, c) from ``ind1`` and [c, out_k) from ``ind2``, child 2 the
    opposite. A group (a unit or a channel) carries its mask bit (hidden stages), its
    incoming weights (a Linear row or a Conv2d filter), its bias and its BatchNorm
    entries. A weight between two groups belongs to the group it feeds, so the next
    stage's input slice of a group comes with that stage's own rows (its cut); aligned
    positions keep it connected to the same parent group. A hidden stage left empty
    gets one random group back. The first stage's children are stored as row ranges of
    their parents' tensors (:mod:`ecomp_deap.nets.spliced`), copied only when read whole.
    """
    n_hidden = len(ind1.masks)
    for k in layers:
        w1, w2 = ind1.weights.raw(k), ind2.weights.raw(k)  # tensors or row splices
        out = w1.shape[0]
        if out < 2:
            continue
        cut = int(torch.randint(1, out, (1,), generator=rng))
        b1, b2 = ind1.biases[k], ind2.biases[k]
        if w1 is not w2 and k == 0:  # the first stage: ranges of the parents' rows, copied only when
            # read whole (the evaluator reads just the population's distinct rows of it: spliced.py)
            ind1.weights[k], ind2.weights[k] = splice(w1, w2, cut), splice(w2, w1, cut)
        elif w1 is not w2:  # (parents sharing one tensor: the children keep sharing it, no copy)
            ind1.weights[k], ind2.weights[k] = torch.cat([w1[:cut], w2[cut:]]), torch.cat([w2[:cut], w1[cut:]])
        if b1 is not b2:
            ind1.biases[k], ind2.biases[k] = torch.cat([b1[:cut], b2[cut:]]), torch.cat([b2[:cut], b1[cut:]])
        n1, n2 = ind1.norms[k], ind2.norms[k]
        if n1 is not n2:  # (4, out_k): the BatchNorm entries of each channel travel with it
            ind1.norms[k], ind2.norms[k] = (torch.cat([n1[:, :cut], n2[:, cut:]], 1),
                                            torch.cat([n2[:, :cut], n1[:, cut:]], 1))
        if k < n_hidden:
            m1, m2 = ind1.masks[k], ind2.masks[k]
            ind1.masks[k] = ensure_nonempty(torch.cat([m1[:cut], m2[cut:]]), rng)
            ind2.masks[k] = ensure_nonempty(torch.cat([m2[:cut], m1[cut:]]), rng)
    return ind1, ind2


def cx_groupwise(ind1, ind2, graph, rng: torch.Generator):
    """Group-wise one-point crossover for a graph parent (:class:`~ecomp_deap.nets.graph.Graph`),
    aligned as :func:`cx_layerwise`: for each coupled group a cut ``c`` in [1, H - 1];
    child 1 takes channels [0, c) from ``ind1`` and [c, H) from ``ind2``, child 2 the
    opposite. A channel carries its mask bit and its rows in every tensor the group owns
    (its filters with all their input weights, biases, BatchNorm entries, in every layer
    it touches). The output layer's rows (the classes) are cut once, across its tensors.
    A tensor both parents share stays shared; a group left empty gets one channel back."""
    for k, g in enumerate(graph.groups):
        cut = int(torch.randint(1, g.size, (1,), generator=rng))
        for s in g.rows:
            _swap_rows(ind1, ind2, s.tensor, s.index[s.root >= cut])
        m1, m2 = ind1.masks[k], ind2.masks[k]
        ind1.masks[k] = ensure_nonempty(torch.cat([m1[:cut], m2[cut:]]), rng)
        ind2.masks[k] = ensure_nonempty(torch.cat([m2[:cut], m1[cut:]]), rng)
    owned = {s.tensor for g in graph.groups for s in g.rows}
    free = [i for i, name in enumerate(graph.tensor_names) if i not in owned
            and name.rsplit(".", 1)[0] == graph.output_layer]
    if free:
        rows = graph.shapes[free[0]][0]
        cut = int(torch.randint(1, rows, (1,), generator=rng)) if rows > 1 else 1
        for i in free:
            _swap_rows(ind1, ind2, i, torch.arange(cut, rows))
    return ind1, ind2


def _swap_rows(ind1, ind2, k: int, rows: torch.Tensor) -> None:
    """Exchange rows ``rows`` of tensor ``k`` between two individuals, every other row
    staying where it is (new tensors; the parents' are never written)."""
    t1, t2 = ind1.weights[k], ind2.weights[k]
    if t1 is t2 or len(rows) == 0:
        return
    swap = torch.zeros(t1.shape[0], dtype=torch.bool)
    swap[rows] = True
    swap = swap.view(-1, *([1] * (t1.dim() - 1)))
    ind1.weights[k], ind2.weights[k] = torch.where(swap, t2, t1), torch.where(swap, t1, t2)


def mut_scale_group_units(ind, graph, low: float, high: float, rng: torch.Generator):
    """Unit-gain mutation for a graph parent: each channel of each coupled group has its
    outgoing weights (every consumer's input slice of it) times one factor from U(low, high)."""
    for g in graph.groups:
        factors = torch.empty(g.size).uniform_(low, high, generator=rng)  # (H_g,)
        for s in g.inputs:
            w = ind.weights[s.tensor]
            scale = torch.ones(w.shape[1], dtype=w.dtype)
            scale[s.index] = factors[s.root].to(w.dtype)
            ind.weights[s.tensor] = w * scale.view(1, -1, *(1,) * (w.dim() - 2))
    return (ind,)


def kept_indices(mask: torch.Tensor) -> torch.Tensor:
    """(h,) int64: the kept units of a (H,) bool mask, in index order."""
    return torch.nonzero(mask, as_tuple=True)[0]


def cx_reference(ind1, ind2, layers: Sequence[int], rng: torch.Generator):
    """The reference study's recombination, not aligned (MLP genomes only).

    Each parent is read compacted to its kept units in index order. For each Linear
    layer ``k`` in ``layers``, with compacted weights W1 (o1, i1) and W2 (o2, i2), one
    cut ``c`` is drawn uniformly from 1 ... min(o1, o2, i1, i2) (hidden widths; the first
    layer's columns are the input features, the output layer's rows the classes), and
    the same ``c`` cuts rows and columns:

    * child 1 = ``[W1[:c, :c] | W2[:c, c:]]`` on ``W2[c:, :]``, bias ``b1[:c] ++ b2[c:]``
      (parent 2's shape);
    * child 2 = ``[W2[:c, :c] | W1[:c, c:]]`` on ``W1[c:, :]``, bias ``b2[:c] ++ b1[c:]``
      (parent 1's shape).

    In the genome, ``ind1`` becomes child 1: parent 2's masks, and parent 2's tensors
    with the c x c top-left block of its kept rows and columns (and the first c kept
    bias entries) taken from parent 1's kept positions; ``ind2`` symmetrically. Layers
    not in ``layers`` are inherited whole from the shape-parent. So a child keeps one
    parent's widths and mixes weights by position, which pairs unrelated units.
    """
    n_hidden = len(ind1.masks)
    m1, m2 = list(ind1.masks), list(ind2.masks)
    w1s, w2s, b1s, b2s = list(ind1.weights), list(ind2.weights), list(ind1.biases), list(ind2.biases)
    ind1.masks, ind1.weights, ind1.biases = list(m2), list(w2s), list(b2s)  # child 1: parent 2's shape
    ind2.masks, ind2.weights, ind2.biases = list(m1), list(w1s), list(b1s)  # child 2: parent 1's shape
    for k in layers:
        w1, w2, b1, b2 = w1s[k], w2s[k], b1s[k], b2s[k]
        rows1 = kept_indices(m1[k]) if k < n_hidden else torch.arange(w1.shape[0])  # (o1,)
        rows2 = kept_indices(m2[k]) if k < n_hidden else torch.arange(w2.shape[0])  # (o2,)
        cols1 = kept_indices(m1[k - 1]) if k > 0 else torch.arange(w1.shape[1])     # (i1,)
        cols2 = kept_indices(m2[k - 1]) if k > 0 else torch.arange(w2.shape[1])     # (i2,)
        c_max = min(len(rows1), len(rows2), len(cols1), len(cols2))
        c = int(torch.randint(1, c_max + 1, (1,), generator=rng))
        r1, r2, q1, q2 = rows1[:c], rows2[:c], cols1[:c], cols2[:c]
        same_block = torch.equal(r1, r2) and torch.equal(q1, q2)
        if not (w1 is w2 and same_block):  # identical blocks of one shared tensor: keep sharing it
            block1 = w1[r1[:, None], q1[None, :]]  # (c, c) from parent 1
            block2 = w2[r2[:, None], q2[None, :]]  # (c, c) from parent 2
            child1, child2 = w2.clone(), w1.clone()  # new tensors; the parents' are never written
            child1[r2[:, None], q2[None, :]] = block1
            child2[r1[:, None], q1[None, :]] = block2
            ind1.weights[k], ind2.weights[k] = child1, child2
        if not (b1 is b2 and torch.equal(r1, r2)):
            cb1, cb2 = b2.clone(), b1.clone()
            cb1[r2], cb2[r1] = b1[r1], b2[r2]
            ind1.biases[k], ind2.biases[k] = cb1, cb2
    return ind1, ind2


def mut_scale_weights(ind, layers: Sequence[int], low: float, high: float, rng: torch.Generator):
    """The reference mutation: every weight of the given stages (Linear or Conv2d)
    times its own factor drawn from U(low, high). Biases and BatchNorm are left as they are."""
    for k in layers:
        w = ind.weights[k]
        factors = torch.empty(w.shape, dtype=w.dtype).uniform_(low, high, generator=rng)
        ind.weights[k] = w * factors
    return (ind,)


def mut_scale_units(ind, layers: Sequence[int], low: float, high: float, rng: torch.Generator,
                    repeats: Sequence[int] | None = None):
    """Unit-gain mutation: for every stage ``k >= 1`` of ``layers``, each group ``j`` of
    the stage below has its outgoing weights times one factor drawn from U(low, high):
    input column ``j`` of a Linear, input channel ``j`` of a Conv2d, or, across Flatten,
    the ``repeats[k]`` = H*W columns channel ``j`` feeds. For ReLU-like activations that
    equals rescaling the group itself. A few hundred gains instead of every weight: a
    search space where selection on noisy batches still makes progress; the first
    stage (its inputs are pixels, not groups) keeps its tensor, shared with the parent."""
    for k in layers:
        if k == 0:
            continue
        w = ind.weights[k]
        r = repeats[k] if repeats is not None else 1
        factors = torch.empty(w.shape[1] // r, dtype=w.dtype).uniform_(low, high, generator=rng)  # (groups below,)
        if r > 1:
            factors = factors.repeat_interleave(r)  # (in_k,)
        ind.weights[k] = w * factors.view(1, -1, *(1,) * (w.dim() - 2))
    return (ind,)


def mut_flip_units(ind, flip_prob: float, rng: torch.Generator):
    """Flip each group's mask bit with probability ``flip_prob``; a stage that would
    become empty keeps one random group."""
    if flip_prob <= 0:
        return (ind,)
    for l, m in enumerate(ind.masks):
        flips = torch.rand(m.shape, generator=rng) < flip_prob
        if bool(flips.any()):
            ind.masks[l] = ensure_nonempty(m ^ flips, rng)
    return (ind,)


def recalibrate_norms(ind, chain, x: torch.Tensor):
    """Adaptive BatchNorm: the individual's BatchNorm running statistics re-estimated on
    the images ``x`` for the channels it keeps (forward only, no gradient; stages after
    the first). Returns a tuple, in DEAP's style."""
    if any(n is not None for n in ind.norms[1:]):
        with torch.inference_mode():
            ind.norms = recalibrated_norms(chain, x, ind.weights, ind.biases, ind.norms, ind.masks)
    return (ind,)


def recalibrate_graph_norms(ind, graph, x: torch.Tensor):
    """Adaptive BatchNorm for a graph parent's individual
    (:func:`ecomp_deap.nets.graph.recalibrated`). Returns a tuple, in DEAP's style."""
    from ..nets.graph import recalibrated

    ind.weights = recalibrated(graph, ind.weights, ind.masks, x)
    return (ind,)


def sel_softmax_roulette(individuals, k: int, temperature: float, rng: torch.Generator) -> list:
    """The reference selection: ``k`` draws with replacement, probabilities
    softmax(fitness / temperature) over the 1-tuple fitnesses. Returns references
    (the caller clones)."""
    f = torch.tensor([ind.fitness.values[0] for ind in individuals], dtype=torch.float64)  # (N,)
    probs = torch.softmax(f / temperature, dim=0)
    idx = torch.multinomial(probs, k, replacement=True, generator=rng)
    return [individuals[i] for i in idx.tolist()]

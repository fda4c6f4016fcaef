"""Crossover's first-stage children as row ranges of their ancestors' tensors."""
import io
import pickle

import numpy as np
import pytest
import torch

from ecomp_deap.config import EcompConfig
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.nets import spliced
from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.nets.spliced import RowSplice, StageTensors, rows_by_source, splice
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import cx_layerwise, init_pruned_population, mut_flip_units, mut_scale_weights


def _sources(n=3, rows=7, cols=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, cols, generator=g) for _ in range(n)]


def test_a_splice_reads_as_the_concatenated_rows():
    a, b, c = _sources()
    s1 = splice(a, b, 2)
    assert isinstance(s1, RowSplice) and len(s1.parts) == 2
    s2 = splice(s1, c, 5)  # a[:2] b[2:5] c[5:]
    s3 = splice(c, s2, 1)  # c[:1] a[1:2] b[2:5] c[5:]
    expected = torch.cat([c[:1], a[1:2], b[2:5], c[5:]])
    assert [(src is t, lo, hi) for (src, lo, hi), t in zip(s3.parts, (c, a, b, c))] == \
        [(True, 0, 1), (True, 1, 2), (True, 2, 5), (True, 5, 7)]
    for index in ([0, 2, 3, 6], [6, 0, 5, 1, 1], [], [4], list(range(7))):
        i = torch.tensor(index, dtype=torch.long)
        got = torch.empty(len(i), 4)
        for src, at, rows in rows_by_source([s3], i):  # every row from the tensor that stores it
            assert any(src is t for t in (a, b, c))
            got[at] = src.index_select(0, rows)
        assert torch.equal(got, expected.index_select(0, i))
    # a population's rows: [s3, b, s1, s3] read as one (28, 4) stack, one group per source
    stack = torch.cat([expected, b, torch.cat([a[:2], b[2:]]), expected])
    for index in ([0, 7, 14, 21, 27], [27, 8, 1, 15, 15, 20], [], list(range(28))):
        i = torch.tensor(index, dtype=torch.long)
        groups = rows_by_source([s3, b, s1, s3], i)
        assert len({id(src) for src, _, _ in groups}) == len(groups)
        got = torch.full((len(i), 4), float("nan"))
        for src, at, rows in groups:
            got[at] = src.index_select(0, rows)
        assert torch.equal(got, stack.index_select(0, i))
    copy = spliced.dense_uncached(s3)  # a reader that leaves the splice as it is
    assert torch.equal(copy, expected) and s3._dense is None
    assert torch.equal(s3.materialize(), expected)
    assert s3.materialize() is s3.materialize()  # copied once


def test_ranges_of_one_tensor_merge_and_long_splices_are_copied():
    a, b = _sources(2)
    assert splice(a, a, 3) is a
    assert splice(splice(a, b, 2), b, 4) is not b and len(splice(splice(a, b, 2), b, 4).parts) == 2
    assert splice(b, splice(a, b, 2), 5) is b  # b[:5] then b[5:]: b itself
    with pytest.raises(ValueError, match="shape"):
        splice(a, torch.zeros(8, 4), 2)
    first, *others = _sources(spliced.MAX_PARTS + 3, rows=40, seed=1)
    t, ref, copied = first, first.clone(), 0
    for i, src in enumerate(others):
        c = 2 * i + 1  # row c from a new source: up to two more ranges each time
        u = splice(t, src, c)
        t = splice(u, t, c + 1)
        ref = torch.cat([ref[:c], src[c:c + 1], ref[c + 1:]])
        for v in (u, t):
            assert isinstance(v, torch.Tensor) or len(v.parts) <= spliced.MAX_PARTS
            copied += isinstance(v, torch.Tensor)
        assert torch.equal(spliced.dense_uncached(t), ref)  # read without storing a copy on t
    assert copied  # past MAX_PARTS ranges the child was copied at once


def test_digests_of_a_splice_are_its_rows_digests():
    a, b, c = _sources(seed=2)
    s = splice(splice(a, b, 3), c, 6)
    assert torch.equal(spliced.row_digests(s), spliced.row_digests(s.materialize().clone()))
    w = splice(a, b, 4).materialize()  # the copy inherits its sources' digests (already known)
    assert torch.equal(spliced.cached_digests(w), spliced.row_digests(w.clone()))


def test_genome_weights_read_as_tensors_and_keep_splices_until_read():
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    a, b = _sources(2)
    out = torch.randn(3, 7)
    ind = ind_cls([torch.ones(7, dtype=torch.bool)], [a, out], [torch.zeros(7), torch.zeros(3)])
    s = splice(a, b, 3)
    ind.weights[0] = s
    other = ind.clone()
    assert ind.weights.raw(0) is s and other.weights.raw(0) is s  # clones share the splice
    assert isinstance(ind.weights, StageTensors)
    assert [type(w) for w in ind.weights] == [torch.Tensor, torch.Tensor]  # iterating reads tensors
    assert torch.equal(ind.weights[0], torch.cat([a[:3], b[3:]]))
    assert isinstance(ind.weights.raw(0), torch.Tensor)  # read once: stored as the tensor
    assert other.weights.raw(0) is s and other.weights[0] is ind.weights[0]  # the same copy
    assert all(isinstance(w, torch.Tensor) for w in ind.weights[:1] + list(ind.weights))
    # saved and pickled as a plain list of tensors (a checkpoint loads with weights_only=True)
    third = ind.clone()
    third.weights[0] = splice(b, a, 2)
    buf = io.BytesIO()
    torch.save({"weights": list(third.weights)}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["weights"]
    assert type(loaded) is list and torch.equal(loaded[0], torch.cat([b[:2], a[2:]]))
    fourth = ind.clone()
    fourth.weights[0] = splice(b, a, 5)
    restored = pickle.loads(pickle.dumps(fourth.weights))
    assert type(restored) is list and torch.equal(restored[0], torch.cat([b[:5], a[5:]]))


def _spliced_population(generations=6, n=8, seed=0):
    """Individuals whose first stage is a splice of several parts: the first stage mutated
    once per individual, then only recombined (as late in a run)."""
    torch.manual_seed(seed)
    model = build_mlp((24, 16), in_features=15, n_classes=4, activation="relu")
    parent = read_parent(model)
    w, b = list(parent.weights), list(parent.biases)
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    g = torch.Generator().manual_seed(seed)
    pop = init_pruned_population(ind_cls, w, b, n)
    for ind in pop:
        mut_scale_weights(ind, [0, 1, 2], 0.9, 1.1, g)  # every individual its own tensors
    for _ in range(generations):
        order = torch.randperm(n, generator=g).tolist()
        pop = [pop[i].clone() for i in order]
        for i in range(0, n - 1, 2):
            cx_layerwise(pop[i], pop[i + 1], [0, 1, 2], g)
        for ind in pop:
            mut_flip_units(ind, 0.1, g)
    return parent, pop


def test_crossover_splices_the_first_stage_and_the_evaluator_reads_it_without_copying(monkeypatch):
    parent, pop = _spliced_population()
    raws = [ind.weights.raw(0) for ind in pop]
    assert all(isinstance(r, RowSplice) for r in raws)
    assert max(len(r.parts) for r in raws) >= 3
    assert all(isinstance(ind.weights.raw(k), torch.Tensor) for ind in pop for k in (1, 2))  # copied as before
    dense = [ind.__class__(ind.masks, [r.materialize().clone(), *ind.weights[1:]], ind.biases) for ind, r in
             zip(pop, raws)]
    for r in raws:
        r._dense = None  # forget the copies: the evaluator must read the splices themselves
    copies = []
    original = RowSplice.materialize
    monkeypatch.setattr(RowSplice, "materialize", lambda self: copies.append(self) or original(self))
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=30)
    ev = PopulationEvaluator(parent, cfg)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 15, generator=g), torch.randint(0, 4, (30,), generator=g)
    m = ev.measure(pop, x, y)
    acc = ev.accuracy(pop, x, y, batch_size=7)
    assert copies == []  # the pool read the rows from their sources
    ev.clear_cache()
    m_dense = ev.measure(dense, x, y)
    np.testing.assert_array_equal(m.accuracy, m_dense.accuracy)
    np.testing.assert_array_equal(m.similarity, m_dense.similarity)
    np.testing.assert_array_equal(acc, ev.accuracy(dense, x, y, batch_size=7))


@pytest.mark.parametrize("generations", [1, 4])
def test_recombined_children_equal_the_concatenation_of_their_parents_rows(generations):
    _, pop = _spliced_population(generations=generations, seed=4)
    expected = [ind.weights.raw(0).materialize().clone() for ind in pop]
    g = torch.Generator().manual_seed(9)
    a, c = pop[0].clone(), pop[1].clone()
    cut = int(torch.randint(1, 24, (1,), generator=torch.Generator().manual_seed(9)))
    cx_layerwise(a, c, [0], g)
    assert torch.equal(a.weights[0], torch.cat([expected[0][:cut], expected[1][cut:]]))
    assert torch.equal(c.weights[0], torch.cat([expected[1][:cut], expected[0][cut:]]))

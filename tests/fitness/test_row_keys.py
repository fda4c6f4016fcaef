"""Content keys of a stage's groups (the evaluator's distinct first-stage rows)."""
import gc

import torch

from ecomp_deap.fitness import row_keys
from ecomp_deap.fitness.row_keys import row_numbers, unique_rows
from ecomp_deap.nets import spliced
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import cx_layerwise, mut_scale_weights


def test_equal_groups_have_equal_keys_and_different_groups_different_ones():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    w[3] = w[1]  # a copied row
    b = torch.randn(6, generator=g)
    b[3] = b[1]
    keys = row_keys.group_keys(w, b, None)
    assert keys.shape == (6, 3) and keys.dtype == torch.int64
    assert torch.equal(keys[3], keys[1])
    assert len({tuple(k) for k in keys.tolist()}) == 5
    b2 = b.clone()
    b2[3] += 1e-7  # same row, another bias: another group
    assert not torch.equal(row_keys.group_keys(w, b2, None)[3], keys[1])
    norm = torch.randn(4, 6, generator=g)
    norm[:, 3] = norm[:, 1]
    with_norm = row_keys.group_keys(w, b, norm)
    assert with_norm.shape == (6, 7) and torch.equal(with_norm[3], with_norm[1])
    norm[2, 3] = 5.0  # a different running mean
    assert not torch.equal(row_keys.group_keys(w, b, norm)[3], with_norm[1])
    # a copy of the tensor (another object) gets the same digests, computed afresh
    assert torch.equal(spliced.row_digests(w.clone()), spliced.row_digests(w))
    # a population's stage: the keys of its members' rows one after another
    w2, n2 = torch.randn(6, 5, generator=g), torch.randn(4, 6, generator=g)
    both = row_keys.group_keys([w, w2], torch.cat([b, b2]), torch.cat([norm, n2], 1))
    assert torch.equal(both, torch.cat([row_keys.group_keys(w, b, norm), row_keys.group_keys(w2, b2, n2)]))


def test_crossover_children_inherit_the_keys_their_rows_would_get():
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    g = torch.Generator().manual_seed(1)
    parents = []
    for _ in range(2):
        w = [torch.randn(8, 5, generator=g), torch.randn(3, 8, generator=g)]
        b = [torch.randn(8, generator=g), torch.randn(3, generator=g)]
        parents.append(ind_cls([torch.ones(8, dtype=torch.bool)], w, b))
    for p in parents:
        spliced.row_digests(p.weights[0])  # known digests: the children's are inherited, not hashed
    a, c = cx_layerwise(parents[0], parents[1].clone(), [0, 1], g)
    for child in (a, c):
        inherited = spliced.cached_digests(child.weights[0])
        assert inherited is not None
        fresh = spliced.row_digests(child.weights[0].clone())
        assert torch.equal(inherited, fresh)
    mutated = mut_scale_weights(a, [0], 0.9, 1.1, g)[0]
    assert spliced.cached_digests(mutated.weights[0]) is None  # new content: hashed when needed


def test_the_cache_forgets_dead_tensors():
    gc.collect()
    before = len(spliced._DIGESTS)
    w = torch.randn(4, 3)
    spliced.row_digests(w)
    assert len(spliced._DIGESTS) == before + 1 and spliced.cached_digests(w) is not None
    del w
    gc.collect()
    assert len(spliced._DIGESTS) == before


def test_unique_rows_is_torch_unique_and_survives_a_shared_number(monkeypatch):
    g = torch.Generator().manual_seed(2)
    keys = torch.randint(-2**62, 2**62, (50, 3), generator=g)
    keys = torch.cat([keys, keys[::3], keys[5:9]])  # repeated rows
    inverse, first = unique_rows(keys)
    distinct = keys.index_select(0, first)
    assert torch.equal(distinct.index_select(0, inverse), keys)
    assert len(distinct) == len(torch.unique(keys, dim=0))
    # two different rows that combine to the same number: the exact 2-D unique takes over
    m = 0x9E3779B97F4A7C15 - 2**64  # the second column's multiplier
    a, b = torch.tensor([[1, 0, 0]]), torch.tensor([[1 + m, -1, 0]])
    assert int(row_numbers(a)[0]) == int(row_numbers(b)[0])
    both = torch.cat([a, b, a])
    inverse, first = unique_rows(both)
    distinct = both.index_select(0, first)
    assert len(distinct) == 2 and torch.equal(distinct.index_select(0, inverse), both)

import torch
from helpers import setup

from ecomp_deap.search.genome import make_types
from ecomp_deap.search.operators import (
    cx_layerwise,
    init_pruned,
    init_pruned_population,
    mut_flip_units,
    mut_scale_units,
    mut_scale_weights,
    sel_softmax_roulette,
)


def test_make_types_is_idempotent_and_silent(recwarn):
    a = make_types((1.0,))
    b = make_types((1.0,))
    assert a == b
    assert not [w for w in recwarn if "already been created" in str(w.message)]


def test_init_population_prunes_by_l1_norm_at_evenly_spaced_rates():
    arch, w, b, ind_cls = setup()
    pop = init_pruned_population(ind_cls, w, b, 8, 0.1, 0.8)
    assert len(pop) == 8
    for i, ind in enumerate(pop):
        rate = 0.1 + (0.8 - 0.1) * i / 8
        for l, m in enumerate(ind.masks):
            keep = max(1, round((1 - rate) * arch.hidden_widths[l]))
            assert int(m.sum()) == keep
            norms = w[l].abs().sum(1)
            # every kept unit has a norm at least as large as every dropped one
            if (~m).any():
                assert norms[m].min() >= norms[~m].max()
        assert ind.weights[0] is w[0]  # shared with the parent, not copied


def test_crossover_inherits_exact_rows_masks_and_biases():
    arch, w, b, ind_cls = setup()
    g = torch.Generator().manual_seed(3)
    a = init_pruned(ind_cls, [t * 2 for t in w], [t * 2 for t in b], 0.5)
    c = init_pruned(ind_cls, [t * 3 for t in w], [t * 3 for t in b], 0.2)
    a0, c0 = a.clone(), c.clone()
    layers = [0, 1, 2, 3]
    cx_layerwise(a, c, layers, g)
    for k in layers:
        wa, wc = a.weights[k], c.weights[k]
        assert wa.shape == w[k].shape and wc.shape == w[k].shape
        # each row comes whole from one parent: a prefix from the first, the suffix from the other
        from_a0 = torch.isclose(wa, a0.weights[k]).all(1)
        assert from_a0.any() and (~from_a0).any(), "a real cut mixes both parents"
        cut = int(from_a0.long().argmin())
        assert from_a0[:cut].all() and not from_a0[cut:].any()
        assert torch.equal(wa[cut:], c0.weights[k][cut:])
        assert torch.equal(wc[:cut], c0.weights[k][:cut]) and torch.equal(wc[cut:], a0.weights[k][cut:])
        assert torch.equal(a.biases[k][cut:], c0.biases[k][cut:])
        if k < arch.n_hidden:
            assert torch.equal(a.masks[k][:cut], a0.masks[k][:cut])
            assert torch.equal(a.masks[k][cut:], c0.masks[k][cut:])
    # the originals were not touched (tensors are replaced, never written into)
    assert torch.equal(a0.weights[0], w[0] * 2)


def test_crossover_never_leaves_a_layer_empty():
    arch, w, b, ind_cls = setup(hidden=(6, 6))
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        a = ind_cls([torch.tensor([True] * 3 + [False] * 3)] * 2, w, b)
        c = ind_cls([torch.tensor([False] * 3 + [True] * 3)] * 2, w, b)
        cx_layerwise(a, c, [0, 1], g)
        for ind in (a, c):
            assert all(m.any() for m in ind.masks)


def test_weight_mutation_factors_within_bounds_and_per_weight():
    arch, w, b, ind_cls = setup()
    g = torch.Generator().manual_seed(1)
    ind = init_pruned(ind_cls, w, b, 0.3)
    mut_scale_weights(ind, [0, 3], 0.9, 1.1, g)
    ratio = ind.weights[0] / w[0]
    assert ratio.min() >= 0.9 - 1e-6 and ratio.max() <= 1.1 + 1e-6
    assert ratio.std() > 0.03  # its own factor per weight
    assert ind.weights[1] is w[1]  # layers not listed are untouched
    assert torch.equal(ind.biases[0], b[0])


def test_mask_flips_never_empty_a_layer_and_flip_at_the_given_rate():
    arch, w, b, ind_cls = setup(hidden=(200, 3))
    g = torch.Generator().manual_seed(2)
    flips = 0
    for _ in range(50):
        ind = init_pruned(ind_cls, w, b, 0.5)
        before = ind.masks[0].clone()
        mut_flip_units(ind, 0.05, g)
        flips += int((ind.masks[0] ^ before).sum())
        assert all(m.any() for m in ind.masks)
    assert 0.035 < flips / (50 * 200) < 0.065
    ind = ind_cls([torch.tensor([True, False, False])] * 2, w, b)
    for _ in range(50):
        mut_flip_units(ind, 1.0, g)
        assert all(m.any() for m in ind.masks)


def test_roulette_draws_fitter_individuals_more_often():
    arch, w, b, ind_cls = setup()
    _, wind = make_types((1.0,))
    pop = [wind([], [], []) for _ in range(4)]
    for ind, f in zip(pop, (0.0, 1.0, 2.0, 3.0)):
        ind.fitness.values = (f,)
    g = torch.Generator().manual_seed(0)
    chosen = sel_softmax_roulette(pop, 40000, 1.0, g)
    counts = [sum(c is ind for c in chosen) / 40000 for ind in pop]
    expected = torch.softmax(torch.tensor([0.0, 1, 2, 3]), 0).tolist()
    assert counts == sorted(counts)
    for c, e in zip(counts, expected):
        assert abs(c - e) < 0.01
    # a lower temperature sharpens the pressure
    sharp = sel_softmax_roulette(pop, 4000, 0.1, g)
    assert sum(c is pop[3] for c in sharp) / 4000 > 0.99


def test_crossover_keeps_a_tensor_both_parents_share_and_recombines_the_masks():
    arch, w, b, ind_cls = setup((10, 6), seed=6)
    a, c = init_pruned(ind_cls, w, b, 0.2), init_pruned(ind_cls, w, b, 0.6)
    mut_scale_weights(c, [1], 0.9, 1.1, torch.Generator().manual_seed(0))  # layer 1 now differs
    ma = [m.clone() for m in a.masks]
    cx_layerwise(a, c, range(3), torch.Generator().manual_seed(1))
    assert a.weights[0] is w[0] and c.weights[0] is w[0] and a.biases[0] is b[0]  # shared: no copy
    assert a.weights[1] is not w[1]  # differing parents: a recombined copy
    assert any(not torch.equal(m, n) for m, n in zip(a.masks, ma))


def test_unit_gain_mutation_scales_each_units_outgoing_weights_by_one_factor():
    arch, w, b, ind_cls = setup((10, 6), seed=7)
    ind = init_pruned(ind_cls, w, b, 0.0)
    mut_scale_units(ind, [0, 1, 2], 0.8, 1.2, torch.Generator().manual_seed(0))
    assert ind.weights[0] is w[0]  # inputs are pixels: untouched, still shared
    for k in (1, 2):
        ratio = ind.weights[k] / w[k]  # (out, in): one factor per column
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), atol=1e-5)
        assert bool(((ratio >= 0.8 - 1e-6) & (ratio <= 1.2 + 1e-6)).all())
        assert not torch.allclose(ratio, torch.ones_like(ratio))
        assert ind.biases[k] is b[k]

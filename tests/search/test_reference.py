"""The reference study's recombination (cx_reference), its presets and option."""
from __future__ import annotations

import pytest
import torch

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import cx_reference, kept_indices

IN, HIDDEN, CLASSES = 6, (5, 4), 3


def hand_made(sign: float, masks):
    """A genome on a 6-5-4-3 MLP whose every weight and bias is distinct and says where
    it sits: w[k][r, q] = sign * (100 k + 10 r + q + 1), b[k][r] = sign * (100 k + r + 0.5)."""
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    widths = (IN, *HIDDEN, CLASSES)
    weights, biases = [], []
    for k in range(len(widths) - 1):
        out, inp = widths[k + 1], widths[k]
        r = torch.arange(out, dtype=torch.float32)[:, None]
        q = torch.arange(inp, dtype=torch.float32)[None, :]
        weights.append(sign * (100 * k + 10 * r + q + 1))                            # (out, in)
        biases.append(sign * (100 * k + torch.arange(out, dtype=torch.float32) + 0.5))  # (out,)
    return ind_cls([torch.tensor(m, dtype=torch.bool) for m in masks], weights, biases)


MASKS_A = [[1, 0, 1, 1, 1], [1, 1, 0, 1]]   # widths 4, 3
MASKS_B = [[0, 1, 1, 0, 0], [0, 1, 1, 1]]   # widths 2, 3


def compact(ind, k):
    """Layer k of a genome compacted to its kept units: (o, i) weights and (o,) bias."""
    n_hidden = len(ind.masks)
    rows = kept_indices(ind.masks[k]) if k < n_hidden else torch.arange(ind.weights[k].shape[0])
    cols = kept_indices(ind.masks[k - 1]) if k > 0 else torch.arange(ind.weights[k].shape[1])
    return ind.weights[k][rows[:, None], cols[None, :]], ind.biases[k][rows]


def issue_children(W1, W2, b1, b2, c):
    """The issue's statement, literally, on compacted matrices."""
    child1 = torch.cat([torch.cat([W1[:c, :c], W2[:c, c:]], 1), W2[c:, :]], 0)
    child2 = torch.cat([torch.cat([W2[:c, :c], W1[:c, c:]], 1), W1[c:, :]], 0)
    return child1, child2, torch.cat([b1[:c], b2[c:]]), torch.cat([b2[:c], b1[c:]])


@pytest.mark.parametrize("seed", range(12))
def test_children_are_the_issue_formula_on_compacted_parents(seed):
    a, b = hand_made(1.0, MASKS_A), hand_made(-1.0, MASKS_B)
    a0, b0 = a.clone(), b.clone()
    snapshot = [t.clone() for t in a0.weights + b0.weights + a0.biases + b0.biases]
    layers = [0, 1, 2]
    cx_reference(a, b, layers, torch.Generator().manual_seed(seed))
    replay = torch.Generator().manual_seed(seed)  # one cut per layer, in layer order
    for k in layers:
        W1, b1 = compact(a0, k)
        W2, b2 = compact(b0, k)
        c_max = min(*W1.shape, *W2.shape)
        # first layer: min of the widths (columns are the 6 inputs); output: at most the 3 classes
        assert c_max == {0: 2, 1: 2, 2: 3}[k]
        c = int(torch.randint(1, c_max + 1, (1,), generator=replay))
        e1, e2, eb1, eb2 = issue_children(W1, W2, b1, b2, c)
        g1, gb1 = compact(a, k)
        g2, gb2 = compact(b, k)
        assert g1.shape == W2.shape and g2.shape == W1.shape  # child 1 has parent 2's shape
        assert torch.equal(g1, e1) and torch.equal(g2, e2)
        assert torch.equal(gb1, eb1) and torch.equal(gb2, eb2)
    # masks: the shape-parent's, still valid (bool, parent-shaped, no empty layer)
    for child, shape_parent in ((a, b0), (b, a0)):
        for m, ms, h in zip(child.masks, shape_parent.masks, HIDDEN):
            assert m.dtype == torch.bool and m.shape == (h,) and bool(m.any()) and torch.equal(m, ms)
    # the parents' tensors are never written into
    after = a0.weights + b0.weights + a0.biases + b0.biases
    assert all(torch.equal(x, y) for x, y in zip(snapshot, after))


def test_the_cut_block_lands_in_the_kept_positions_and_nothing_else_moves():
    a, b = hand_made(1.0, MASKS_A), hand_made(-1.0, MASKS_B)
    b0 = b.clone()
    cx_reference(a, b, [0, 1, 2], torch.Generator().manual_seed(0))
    for k in range(3):
        # child 1 (a) is parent 2 (b0) except where a value of parent 1 (positive) sits
        from_1 = a.weights[k] > 0
        assert torch.equal(a.weights[k][~from_1], b0.weights[k][~from_1])
        rows = kept_indices(b0.masks[k]) if k < 2 else torch.arange(CLASSES)
        cols = kept_indices(b0.masks[k - 1]) if k > 0 else torch.arange(IN)
        c = int(from_1.sum().item() ** 0.5)
        assert c >= 1 and from_1.sum() == c * c
        expected = torch.zeros_like(from_1)
        expected[rows[:c, None], cols[None, :c]] = True   # the c x c top-left block of the kept units
        assert torch.equal(from_1, expected)
        assert torch.equal(a.biases[k] > 0, torch.isin(torch.arange(len(a.biases[k])), rows[:c]))


def test_layers_not_recombined_come_whole_from_the_shape_parent():
    a, b = hand_made(1.0, MASKS_A), hand_made(-1.0, MASKS_B)
    a0, b0 = a.clone(), b.clone()
    cx_reference(a, b, [1], torch.Generator().manual_seed(1))
    for k in (0, 2):
        assert a.weights[k] is b0.weights[k] and b.weights[k] is a0.weights[k]
        assert a.biases[k] is b0.biases[k] and b.biases[k] is a0.biases[k]
    assert not torch.equal(a.weights[1], b0.weights[1])


def test_identical_parents_sharing_tensors_keep_sharing_them():
    a = hand_made(1.0, MASKS_A)
    b = a.clone()
    cx_reference(a, b, [0, 1, 2], torch.Generator().manual_seed(0))
    for k in range(3):
        assert a.weights[k] is b.weights[k] and a.biases[k] is b.biases[k]


def test_crossover_option_is_validated_and_selects_the_operator():
    from ecomp_deap.nets.chain import Chain
    from ecomp_deap.nets.parents import build_cnn, build_mlp
    from ecomp_deap.search.operators import cx_layerwise
    from ecomp_deap.search.toolbox import crossover_operator

    with pytest.raises(ConfigError, match="crossover must be one of layerwise, reference"):
        EcompConfig(crossover="uniform").validate()
    arch = Chain.from_module(build_mlp((5, 4), in_features=6, n_classes=3))
    assert crossover_operator(EcompConfig(), arch) is cx_layerwise
    assert crossover_operator(EcompConfig(crossover="reference"), arch) is cx_reference

    cnn = Chain.from_module(build_cnn((4, 6), (8,), (1, 12, 12), 3), (1, 12, 12))
    with pytest.raises(ConfigError, match="MLP parents without BatchNorm only"):
        crossover_operator(EcompConfig(crossover="reference"), cnn)


def test_reference_presets_state_the_reference_operators():
    from ecomp_deap.study.presets import PRESETS, WEIGHTINGS, preset_config

    for code in WEIGHTINGS:
        cfg = preset_config(f"ref-weighting{code}").validate()
        ours = preset_config(f"weighting{code}")
        assert cfg.weights == ours.weights
        assert (cfg.crossover, cfg.mask_flip_prob, cfg.mutation, cfg.mutation_rate) == ("reference", 0.0, "weights", 0.01)
        assert (cfg.mutation_low, cfg.mutation_high, cfg.init_scores) == (0.9, 1.1, "l1")
        assert (cfg.init_prune_low, cfg.init_prune_high, cfg.selection_temperature, cfg.elitism) == (0.1, 0.8, 1.0, 0)
        assert ours.crossover == "layerwise" and ours.mask_flip_prob > 0
    assert sum(n.startswith("ref-weighting") for n in PRESETS) == 7


def test_a_reference_preset_runs_end_to_end_and_children_take_one_parents_widths(tiny_data, tiny_parent):
    from ecomp_deap.search.run import run_ecomp
    from ecomp_deap.study.presets import preset_config

    cfg = preset_config("ref-weighting001", pop_size=8, generations=4, batch_size=30, perplexity=5.0,
                        val_size=60, device="cpu", embedding_layers=None, recombination_layers=None)
    r = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    assert len(r.logbook) == 4 and 0 < r.best["compression"] <= 1
    assert r.best_module(tiny_data.test_x[:5]).shape == (5, 4)
    # no mask flips and no aligned cut: every final width pattern is one of the initial prunings
    from ecomp_deap.nets.chain import Chain, parent_tensors
    from ecomp_deap.search.operators import init_pruned_population

    w, b, _ = parent_tensors(tiny_parent, Chain.from_module(tiny_parent))
    _, ind_cls = make_types(fitness_weights("weighted", cfg.weights))
    initial = {tuple(ind.hidden_units()) for ind in init_pruned_population(ind_cls, w, b, 8)}
    final = {tuple(ind.hidden_units()) for ind in r.evolution.population}
    assert final <= initial

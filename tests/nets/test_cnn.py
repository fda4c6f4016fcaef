"""Convolutional parents: parsing, the channel coupling, the batched evaluator against
each network run alone, export, and the operators on channel groups."""

import numpy as np
import pytest
import torch
from helpers import CNNS, population, randomise_norms, seq
from torch import nn

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ParentError
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.fitness.similarity import tsne_similarity_loss
from ecomp_deap.nets.chain import Chain, parent_tensors
from ecomp_deap.nets.export import count_parameters, export_individual, load_exported, save_exported
from ecomp_deap.nets.forward import network_forward
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import (
    cx_layerwise,
    init_pruned_population,
    mut_flip_units,
    mut_scale_units,
    mut_scale_weights,
)
from ecomp_deap.search.scores import l1_unit_scores


def named_outputs(net: nn.Module, x: torch.Tensor, names) -> dict:
    out, h = {}, x
    for name, mod in net.named_children():
        h = mod(h)
        if name in names:
            out[name] = h.flatten(1)
    return out


@pytest.mark.parametrize("name", CNNS)
def test_parse_sizes_and_the_parent_forward(name):
    factory, shape = CNNS[name]
    torch.manual_seed(0)
    model = randomise_norms(factory(), 1)
    chain = Chain.from_module(model, shape)
    assert chain.is_conv and chain.n_hidden == len(chain.stages) - 1
    assert chain.sizes()[0] == count_parameters(model)
    w, b, norms = parent_tensors(model, chain)
    x = torch.randn(9, *shape)
    with torch.no_grad():
        assert torch.allclose(network_forward(chain, x, w, b, norms), model(x), atol=1e-5)


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("kept_path", [True, False], ids=["kept-channels", "stacked"])
def test_batched_measures_equal_each_exported_network_run_alone(name, kept_path):
    factory, shape = CNNS[name]
    torch.manual_seed(0)
    model = randomise_norms(factory(), 2)
    parent, pop = population(model, shape)
    chain = parent.net
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=30)
    ev = PopulationEvaluator(parent, cfg, forward="kept_groups" if kept_path else "stacked")
    x, y = torch.randn(30, *shape), torch.randint(0, chain.n_classes, (30,))
    m = ev.measure(pop, x, y)
    names = chain.default_embeddings()
    with torch.no_grad():
        parent = named_outputs(model, x, names)
        for i, ind in enumerate(pop):
            net = export_individual(ind, chain)
            logits = net(x)
            assert torch.allclose(logits, network_forward(chain, x, ind.weights, ind.biases, ind.norms, ind.masks),
                                  atol=1e-5)
            assert m.accuracy[i] == (logits.argmax(1) == y).double().mean().item()
            assert m.compression[i] == sum(ind.hidden_units()) / sum(chain.hidden_widths)
            child = named_outputs(net, x, names)
            s = sum(tsne_similarity_loss(parent[n], child[n], 5.0) for n in names)
            assert m.similarity[i] == pytest.approx(s, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", CNNS)
def test_kept_channel_and_stacked_paths_agree_with_shared_first_layer(name):
    factory, shape = CNNS[name]
    torch.manual_seed(1)
    model = randomise_norms(factory(), 3)
    parent, pop = population(model, shape, n=8, mutate=False)
    chain, w = parent.net, parent.weights
    assert sum(ind.weights[0] is w[0] for ind in pop) == 8  # the first stage is shared
    cfg = EcompConfig(embedding_layers=chain.embedding_names, recombination_layers=None, perplexity=4.0,
                      batch_size=20)
    ev = PopulationEvaluator(parent, cfg)
    x = torch.randn(20, *shape)
    kept = ev.outputs(pop, x, 16)
    stacked = PopulationEvaluator(parent, cfg, forward="stacked").outputs(pop, x, 16)
    assert torch.allclose(kept[0], stacked[0], atol=1e-5)
    for a, s in zip(kept[2], stacked[2]):
        assert torch.allclose(a, s, rtol=1e-5, atol=1e-6)


def test_export_is_physically_smaller_saves_and_loads(tmp_path):
    factory, shape = CNNS["stride2-nobias-bn-avgpool"]
    torch.manual_seed(2)
    model = randomise_norms(factory(), 4)
    parent, pop = population(model, shape, n=4)
    chain = parent.net
    x = torch.randn(5, *shape)
    for i, ind in enumerate(pop):
        net = export_individual(ind, chain)
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
        assert [c.out_channels for c in convs] == ind.hidden_units()[:2]
        assert [bn.num_features for bn in bns] == ind.hidden_units()[:2]
        assert convs[0].bias is None and convs[1].bias is not None  # bias-free stays bias-free
        linear = next(m for m in net if isinstance(m, nn.Linear))
        assert linear.in_features == ind.hidden_units()[1] * 2 * 2  # Flatten: H*W columns per kept channel
        assert count_parameters(net) == chain.sizes(ind.hidden_units())[0] < count_parameters(model)
        save_exported(tmp_path / f"n{i}.pt", net)
        again = load_exported(tmp_path / f"n{i}.pt")
        with torch.no_grad():
            assert torch.equal(again(x), net(x))


def test_crossover_moves_filter_bias_batchnorm_and_mask_of_a_channel_together():
    factory, shape = CNNS["stride2-nobias-bn-avgpool"]
    torch.manual_seed(3)
    model = randomise_norms(factory(), 5)
    chain = Chain.from_module(model, shape)
    w, b, norms = parent_tensors(model, chain)
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    a, c = init_pruned_population(ind_cls, w, b, 2, low=0.2, high=0.6, norms=norms)
    g = torch.Generator().manual_seed(0)
    for ind in (a, c):  # distinct tensors everywhere, so every entry tells its parent
        mut_scale_weights(ind, range(len(w)), 0.5, 1.5, g)
        ind.biases = [x + torch.rand(x.shape, generator=g) for x in ind.biases]
        ind.norms = [n * (1 + torch.rand(n.shape, generator=g)) if n is not None else None for n in ind.norms]
        mut_flip_units(ind, 0.5, g)
    before = [x.clone() for x in (a, c)]
    child1, child2 = a.clone(), c.clone()
    cx_layerwise(child1, child2, range(len(w)), torch.Generator().manual_seed(7))
    for k in (0, 1):  # the two conv stages
        for ch in range(w[k].shape[0]):
            for child, other in ((child1, child2), (child2, child1)):
                src = [p for p in (a, c) if torch.equal(child.weights[k][ch], p.weights[k][ch])]
                assert len(src) == 1  # the filter comes whole from one parent ...
                p = src[0]
                assert torch.equal(child.biases[k][ch], p.biases[k][ch])  # ... with its bias,
                assert torch.equal(child.norms[k][:, ch], p.norms[k][:, ch])  # BatchNorm entries
                assert bool(child.masks[k][ch]) == bool(p.masks[k][ch]) or not p.masks[k].any()  # and mask bit
            # the children split each channel between the parents
            assert not torch.equal(child1.weights[k][ch], child2.weights[k][ch])
        # the consumer's input slice of channel ch stays at ch: the next stage reads its
        # own row's parent's weights for that channel, aligned with the parent's channel
        nxt = child1.weights[k + 1]
        for r in range(nxt.shape[0]):
            row_parent = [p for p in (a, c) if torch.equal(nxt[r], p.weights[k + 1][r])]
            assert len(row_parent) == 1
    assert [x.hidden_units() for x in (a, c)] == [x.hidden_units() for x in before]  # parents untouched


def test_channel_gain_mutation_scales_a_channels_whole_flatten_block():
    factory, shape = CNNS["stride2-nobias-bn-avgpool"]
    model = randomise_norms(factory(), 6)
    chain = Chain.from_module(model, shape)
    w, b, norms = parent_tensors(model, chain)
    _, ind_cls = make_types(fitness_weights("weighted", (1, 1, 1)))
    ind = ind_cls([torch.ones(h, dtype=torch.bool) for h in chain.hidden_widths], w, b, norms)
    mut_scale_units(ind, range(len(w)), 0.5, 1.5, torch.Generator().manual_seed(0),
                    repeats=[st.in_repeat for st in chain.stages])
    assert ind.weights[0] is w[0]  # the first stage reads pixels: untouched
    conv_gain = ind.weights[1] / w[1]  # (out, in, kh, kw): one factor per input channel
    assert torch.allclose(conv_gain, conv_gain[:1, :, :1, :1].expand_as(conv_gain))
    flat_gain = (ind.weights[2] / w[2]).reshape(12, 8, 4)  # Linear after Flatten: 8 channels x 2*2 columns
    assert torch.allclose(flat_gain, flat_gain[:1, :, :1].expand_as(flat_gain))
    assert flat_gain[0, :, 0].unique().numel() == 8


def test_l1_scores_are_whole_filter_norms():
    factory, shape = CNNS["dilation-maxpool-adaptive"]
    model = factory()
    chain = Chain.from_module(model, shape)
    w, _, _ = parent_tensors(model, chain)
    scores = l1_unit_scores(w)
    assert torch.allclose(scores[0], model.l0.weight.detach().abs().sum((1, 2, 3)))


UNSUPPORTED = [
    (lambda: seq(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)), (4, 3, 3), "grouped"),
    (lambda: seq(nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)), (4, 3, 3), "depthwise"),
    (lambda: seq(nn.Conv2d(1, 4, 3), nn.LayerNorm([4, 3, 3]), nn.Flatten(), nn.Linear(36, 2)), (1, 5, 5),
     "'l1' is LayerNorm, which is not supported"),
    (lambda: seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(3, 2)), (1, 5, 5), "put a Flatten before it"),
    (lambda: seq(nn.Flatten(), nn.Linear(25, 4), nn.ReLU(), nn.Conv2d(4, 4, 1)), (1, 5, 5), "needs (C, H, W)"),
    (lambda: seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(36), nn.Linear(36, 2)), (1, 5, 5),
     "per-channel"),
    (lambda: seq(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(100, 2)),
     (1, 5, 5), "padding_mode"),
    (lambda: seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)), (1, 5, 5), "class scores"),
    (lambda: nn.ModuleList([nn.Linear(2, 2)]), (2,), "nn.Sequential chain"),
]


@pytest.mark.parametrize("factory,shape,message", UNSUPPORTED, ids=[m for _, _, m in UNSUPPORTED])
def test_unsupported_layers_are_refused_by_name(factory, shape, message):
    with pytest.raises(ParentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Chain.from_module(factory(), shape)


def test_a_residual_block_is_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    model = seq(nn.Conv2d(1, 4, 3), Residual(), nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(ParentError, match="'l1' is Residual, which is not supported"):
        Chain.from_module(model, (1, 5, 5))


def test_mlp_with_dropout_and_batchnorm1d_is_a_chain_too():
    model = randomise_norms(seq(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                                nn.Linear(8, 3)), 7)
    chain = Chain.from_module(model)
    assert chain.is_mlp and chain.hidden_widths == (8,) and chain.default_embeddings() == ("l3",)
    w, b, norms = parent_tensors(model, chain)
    x = torch.randn(4, 3, 4)
    with torch.no_grad():
        assert torch.allclose(network_forward(chain, x, w, b, norms), model(x), atol=1e-6)


def test_recalibrated_norms_are_the_pruned_networks_batch_statistics():
    factory, shape = CNNS["stride2-nobias-bn-avgpool"]
    torch.manual_seed(4)
    model = randomise_norms(factory(), 8)
    parent, pop = population(model, shape, n=4)
    chain = parent.net
    x = torch.randn(64, *shape)
    from ecomp_deap.search.operators import recalibrate_norms

    for ind in pop:
        before = list(ind.norms)
        recalibrate_norms(ind, chain, x)
        assert ind.norms[0] is before[0]  # the first stage's inputs are never pruned
        net = export_individual(ind, chain)
        # a BatchNorm in training mode, fed the pruned network's own activations, agrees
        reference = export_individual(ind, chain)
        second = [m for m in reference if isinstance(m, nn.BatchNorm2d)][1]
        second.reset_running_stats()
        second.momentum = None  # cumulative average: the statistics of x
        second.train()  # the first BatchNorm keeps the parent's statistics, as recalibration does
        with torch.no_grad():
            reference(x)
        bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
        ref_bns = [m for m in reference if isinstance(m, nn.BatchNorm2d)]
        assert torch.allclose(bns[1].running_mean, ref_bns[1].running_mean, atol=1e-5)
        assert torch.allclose(bns[1].running_var, ref_bns[1].running_var, rtol=1e-4, atol=1e-6)
        kept = ind.masks[1].nonzero().squeeze(1)
        untouched = ~ind.masks[1]
        assert torch.equal(ind.norms[1][:2], before[1][:2])  # weight and bias are not statistics
        assert torch.equal(ind.norms[1][2:, untouched], before[1][2:, untouched])
        assert not torch.allclose(ind.norms[1][2:, kept], before[1][2:, kept])


def test_a_run_with_norm_calibration_recalibrates_every_child(tiny_cnn_data):
    from ecomp_deap.search.run import run_ecomp

    data, model = tiny_cnn_data
    cfg = EcompConfig(selection="nsga2", weights=(1, 0, 1), embedding_layers=None, recombination_layers=None,
                      pop_size=8, generations=3, batch_size=40, perplexity=5.0, val_size=40, device="cpu",
                      norm_calibration=60)
    r = run_ecomp(cfg, model, data, progress=False, allow_weak_parent=True)  # an untrained CNN: at chance
    parent_bn = model.l4.running_mean
    for ind in r.evolution.population:
        assert not torch.allclose(ind.norms[1][2][ind.masks[1]], parent_bn[ind.masks[1]])
    with pytest.raises(Exception, match="norm_calibration"):
        run_ecomp(cfg.replace(norm_calibration=10_000), model, data, progress=False, allow_weak_parent=True)


@pytest.fixture(scope="module")
def tiny_cnn_data():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    factory, shape = CNNS["stride2-nobias-bn-avgpool"]
    centers = torch.randn(4, *shape, generator=g)
    y = torch.arange(400) % 4
    x = centers[y] + 0.8 * torch.randn(400, *shape, generator=g)
    torch.manual_seed(0)
    model = randomise_norms(factory(), 9)
    return SimpleNamespace(train_x=x[:300], train_y=y[:300], test_x=x[300:], test_y=y[300:]), model


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared-first-stage", "own-tensors"])
@pytest.mark.parametrize("pool", [False, True], ids=["", "distinct-first-filters"])
def test_batched_final_pass_equals_the_per_batch_one(name, shared, pool, monkeypatch):
    """All batches in one program (per-channel Grams of a shared first stage on a
    (batches, rows, rows) stack included; with ``pool``, the first stage once for the
    population's distinct filters with their BatchNorm entries) = the mean of the
    per-batch measures."""
    from ecomp_deap.fitness import kept_groups
    from ecomp_deap.fitness.measures import Measures

    factory, shape = CNNS[name]
    torch.manual_seed(5)
    model = randomise_norms(factory(), 5)
    parent, pop = population(model, shape, mutate=not shared)
    chain = parent.net
    if pool:
        monkeypatch.setattr(kept_groups, "DEDUPE_MIN_IMAGES", 1)
    cfg = EcompConfig(embedding_layers=chain.embedding_names, recombination_layers=None, perplexity=4.0,
                      batch_size=16, similarity_batch=12, eval_chunk=3 if pool else 0)
    ev = PopulationEvaluator(parent, cfg)
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(16, *shape, generator=g), torch.randint(0, chain.n_classes, (16,), generator=g))
               for _ in range(3)]
    expected = Measures.mean([ev.measure(pop, x, y) for x, y in batches])
    got = ev.measure_batches(pop, batches)
    np.testing.assert_allclose(got.accuracy, expected.accuracy, rtol=1e-12)
    np.testing.assert_allclose(got.similarity, expected.similarity, rtol=1e-5)


@pytest.mark.parametrize("name", ["stride2-nobias-bn-avgpool", "conv-then-mlp-with-bn1d"])
def test_run_stage_gives_every_wanted_position_the_modules_values(name):
    """run_stage (whose in-place activations overwrite tensors nothing else holds)
    returns, at every subset of wanted positions, exactly what the stage's modules give
    one after the other, and leaves its input and every kept tensor as they were computed."""
    from itertools import combinations

    from ecomp_deap.nets.forward import as_input, layer, run_stage

    factory, shape = CNNS[name]
    model = randomise_norms(factory(), 4)
    chain = Chain.from_module(model, shape)
    w, b, norms = parent_tensors(model, chain)
    h = as_input(chain, torch.randn(5, *shape, generator=torch.Generator().manual_seed(4)))
    overwriting = 0
    for k, st in enumerate(chain.stages[:-1]):
        ref = {-1: layer(st, h, w[k], b[k])}  # the layer, then each tail module on a copy
        for i, op in enumerate(st.tail):
            ref[i] = op.module(ref[i - 1].clone()) if op.kind in ("norm", "act", "pool") else ref[i - 1]
        overwriting += sum(op.overwriting is not None for op in st.tail)
        every = [-1, *range(len(st.tail))]
        for n in range(len(every) + 1):
            for positions in combinations(every, n):
                h0 = h.clone()
                out, kept = run_stage(st, h, w[k], b[k], norms[k], positions)
                assert torch.equal(h, h0)
                assert torch.equal(out, ref[len(st.tail) - 1])
                assert set(kept) == set(positions)
                for where in positions:
                    assert torch.equal(kept[where], ref[where]), (k, positions, where)
        h = ref[len(st.tail) - 1]
    assert overwriting  # the in-place path was taken (ReLU; ELU in the second chain)

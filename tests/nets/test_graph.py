"""Graph parents (residual, depthwise, branching networks; torchvision models; a user's own
class): channels coupled by Torch-Pruning, the masked network equal to the pruned copy,
export and reload without pickled code, batched measures equal to each network alone,
the operators keeping a channel's tensors together, budgets, and refusals."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError, ParentError
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.fitness.similarity import tsne_similarity_loss
from ecomp_deap.nets.export import export_individual, load_compressed, save_compressed
from ecomp_deap.nets.graph import functional_forward, pruned_copy, zeroed
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.budget import group_ranks
from ecomp_deap.search.genome import fitness_weights, make_types
from ecomp_deap.search.operators import cx_groupwise, mut_flip_units, mut_scale_group_units, mut_scale_weights
from ecomp_deap.search.scores import graph_activation_scores, graph_l1_scores
from ecomp_deap.search.toolbox import build_toolbox

torchvision = pytest.importorskip("torchvision")


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class Residual(nn.Module):
    """Two residual stages, a strided convolution between them, functional ops in forward."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1, self.down, self.stage2 = Block(8), nn.Conv2d(8, 12, 3, stride=2, padding=1), Block(12)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        h = self.stage2(F.relu(self.down(self.stage1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class Branches(nn.Module):
    """Two branches concatenated, a depthwise convolution, Flatten into a Linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 6, 1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 5, 1)
        self.fc1, self.fc2 = nn.Linear(5 * 4 * 4, 9), nn.Linear(9, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], 1)
        h = F.max_pool2d(F.relu(self.mix(F.relu(self.bn(self.dw(h))))), 2)
        return self.fc2(F.gelu(self.fc1(torch.flatten(h, 1))))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


NETS = {
    "residual": (lambda: Residual(), (1, 12, 12)),
    "branches": (lambda: Branches(), (2, 8, 8)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5), (3, 32, 32)),
}


class Parents(dict):
    """Each network read on first use, then kept (the torchvision ones take seconds to trace)."""

    def __missing__(self, name):
        factory, shape = NETS[name]
        torch.manual_seed(0)
        model = randomise(factory(), 1)
        x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
        self[name] = (read_parent(model, x), x)
        return self[name]


@pytest.fixture(scope="module")
def parents():
    return Parents()


def random_masks(graph, seed: int, keep: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for size in graph.hidden_widths:
        m = torch.rand(size, generator=g) < keep
        m[int(torch.randint(size, (1,), generator=g))] = True
        masks.append(m)
    return masks


@pytest.mark.parametrize("name", NETS)
def test_the_pruned_copy_computes_what_the_masked_network_computes(parents, name):
    """Torch-Pruning's physically pruned copy of the parent's own class gives the logits
    of the parent with the dropped channels' slices zeroed, for random masks; its
    parameter count is the graph's."""
    parent, x = parents[name]
    graph = parent.net
    assert graph.kind == "graph" and graph.n_hidden >= 2
    for seed in range(3):
        masks = random_masks(graph, seed)
        with torch.no_grad():
            masked, _ = functional_forward(graph, zeroed(graph, parent.weights, masks), x)
            pruned, history = pruned_copy(graph, parent.weights, masks)
            assert type(pruned) is type(parent.model)
            np.testing.assert_allclose(pruned(x).numpy(), masked.numpy(), rtol=1e-4, atol=1e-5)
        assert graph.sizes(masks)[0] == sum(p.numel() for p in pruned.parameters())
        assert graph.sizes(masks)[0] < graph.sizes()[0]


def test_multiply_adds_are_each_layers_kept_weight_times_its_output_positions(parents):
    """Counted independently on the pruned copy: hooks on every Conv and Linear layer."""
    parent, x = parents["branches"]
    graph = parent.net
    masks = random_masks(graph, 5)
    pruned, _ = pruned_copy(graph, parent.weights, masks)
    macs, hooks = [], []

    def count(module, _inputs, out):
        positions = out[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
        macs.append(module.weight.numel() * positions)

    for m in pruned.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        pruned(x[:1])
    assert graph.sizes([int(m.sum()) for m in masks])[1] == sum(macs)


def test_coupled_channels_share_one_group(parents):
    """A residual add joins the channels of every convolution writing into the stream:
    one group spans the stem, both blocks' second convolutions and the consumers; a
    depthwise convolution follows its input's channels; a concatenation maps ranges."""
    residual = parents["residual"][0].net
    first = next(g for g in residual.groups if g.size == 8 and any(
        residual.tensor_names[s.tensor] == "stage1.c2.weight" for s in g.rows))
    touched = {residual.tensor_names[s.tensor] for s in first.slices}
    assert {"stem.0.weight", "stem.1.weight", "stage1.c2.weight", "stage1.b2.running_mean",
            "stage1.c1.weight", "down.weight"} <= touched
    branches = parents["branches"][0].net
    # the depthwise convolution reads cat([a, b]) channel by channel: a's 4 and b's 6
    # filters are one group of 10, b's owning group channels 4..9
    g = next(g for g in branches.groups if g.size == 10)
    where = {(branches.tensor_names[s.tensor], s.dim): s for s in g.slices}
    assert torch.equal(where[("a.weight", 0)].root, torch.arange(0, 4))
    assert torch.equal(where[("b.weight", 0)].root, torch.arange(4, 10))
    assert torch.equal(where[("b.weight", 0)].index, torch.arange(0, 6))
    assert torch.equal(where[("dw.weight", 0)].index, torch.arange(10))
    assert torch.equal(where[("mix.weight", 1)].index, torch.arange(10))
    assert ("bn.running_var", 0) in where
    # a Flatten maps each of mix's 5 channels onto its 16 positions in fc1's input
    flat = next(g for g in branches.groups if g.name == "mix")
    (fc1_in,) = [s for s in flat.inputs if branches.tensor_names[s.tensor] == "fc1.weight"]
    assert torch.equal(fc1_in.root, torch.arange(5).repeat_interleave(16))


def test_export_saves_plain_data_and_reloads_from_the_constructor(parents, tmp_path):
    parent, x = parents["residual"]
    graph = parent.net
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    ind = ind_cls(random_masks(graph, 3), parent.weights, (), ())
    module = export_individual(ind, graph)
    save_compressed(tmp_path / "net.pt", module, {"note": "plain"})
    blob = torch.load(tmp_path / "net.pt", weights_only=True)  # no allowlist: tensors and plain data only
    assert blob["format"] == "ecomp_deap.compressed/1" and blob["note"] == "plain"
    again = load_compressed(Residual, tmp_path / "net.pt")
    with torch.no_grad():
        masked, _ = functional_forward(graph, zeroed(graph, parent.weights, ind.masks), x)
        torch.testing.assert_close(again(x), masked, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(again(x), module(x))
    with pytest.raises(ParentError, match="does not make the architecture"):
        load_compressed(lambda: Residual(classes=7), tmp_path / "net.pt")


@pytest.mark.parametrize("vmapped", [False, True], ids=["one-call-each", "vmapped"])
@pytest.mark.parametrize("name", ["residual", "branches"])
def test_batched_measures_equal_each_pruned_network_alone(parents, name, vmapped):
    parent, x = parents[name]
    graph = parent.net
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    pop = [ind_cls(random_masks(graph, s), parent.weights, (), ()) for s in range(4)]
    mut_scale_weights(pop[1], [layer.weight for layer in graph.layers], 0.8, 1.2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(40, *x.shape[1:], generator=g)
    y = torch.randint(0, graph.n_classes, (40,), generator=g)
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=40)
    ev = PopulationEvaluator(parent, cfg)
    assert ev.forward.name == "graph" and not ev.forward.vmapped  # on the CPU: one call per individual
    ev.forward.vmapped = vmapped
    m = ev.measure(pop, xs, y)
    names = graph.default_embeddings()
    assert names
    _, parent_emb = functional_forward(graph, parent.weights, xs, capture=names)
    for i, ind in enumerate(pop):
        net = export_individual(ind, graph)
        captured = {}
        hooks = [net.get_submodule(n).register_forward_hook(lambda m_, i_, o, n=n: captured.setdefault(n, o))
                 for n in names]
        with torch.no_grad():
            logits = net(xs)
        for h in hooks:
            h.remove()
        assert m.accuracy[i] == (logits.argmax(1) == y).double().mean().item()
        assert m.compression[i] == sum(ind.hidden_units()) / sum(graph.hidden_widths)
        s = sum(tsne_similarity_loss(parent_emb[n].flatten(1), captured[n].flatten(1), 5.0) for n in names)
        assert m.similarity[i] == pytest.approx(s, rel=1e-4, abs=1e-7)


class DataDependent(Residual):
    """A forward with a data-dependent branch: ``vmap`` cannot run it."""

    def forward(self, x):
        h = self.stage1(self.stem(x))
        if bool(h.mean() > -1e9):
            h = self.stage2(F.relu(self.down(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def test_a_forward_vmap_cannot_run_falls_back_to_one_individual_at_a_time(parents):
    """The vmapped chunk and the one-by-one forward give the same measures; a model with
    data-dependent control flow warns once and is measured one individual at a time."""
    parent, x = parents["residual"]
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    g = torch.Generator().manual_seed(3)
    xs, y = torch.randn(30, *x.shape[1:], generator=g), torch.randint(0, 4, (30,), generator=g)
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=30)
    pop = [ind_cls(random_masks(parent.net, s), parent.weights, (), ()) for s in range(5)]
    vmapped = PopulationEvaluator(parent, cfg)
    vmapped.forward.vmapped = True  # as on a GPU
    one_by_one = PopulationEvaluator(parent, cfg)
    a, b = vmapped.measure(pop, xs, y), one_by_one.measure(pop, xs, y)
    assert vmapped.forward.vmapped
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_allclose(a.similarity, b.similarity, rtol=1e-4, atol=1e-7)

    model = DataDependent()
    model.load_state_dict(parent.model.state_dict())
    other = read_parent(model.eval(), x)
    ev = PopulationEvaluator(other, cfg)
    ev.forward.vmapped = True
    with pytest.warns(RuntimeWarning, match="cannot be vmapped"):
        c = ev.measure([ind_cls(i.masks, other.weights, (), ()) for i in pop], xs, y)
    assert not ev.forward.vmapped
    np.testing.assert_array_equal(c.accuracy, b.accuracy)
    np.testing.assert_allclose(c.similarity, b.similarity, rtol=1e-4, atol=1e-7)


def test_groupwise_crossover_keeps_a_channels_tensors_together(parents):
    parent, _ = parents["branches"]
    graph = parent.net
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    rng = torch.Generator().manual_seed(7)
    a = ind_cls([torch.ones(s, dtype=torch.bool) for s in graph.hidden_widths], parent.weights, (), ())
    b = a.clone()
    mut_scale_weights(a, range(len(parent.weights)), 0.5, 0.6, rng)  # every weight of a: 0.5-0.6 of the parent's
    mut_scale_weights(b, range(len(parent.weights)), 1.5, 1.6, rng)  # of b: 1.5-1.6
    c1, c2 = cx_groupwise(a.clone(), b.clone(), graph, rng)
    for child in (c1, c2):
        for g in graph.groups:
            source = torch.full((g.size,), -1)  # per channel: 0 from the low parent, 1 from the high one
            for s in g.rows:
                ratio = child.weights[s.tensor] / parent.weights[s.tensor]
                ratio = ratio.index_select(0, s.index).reshape(len(s.index), -1)  # one row per position
                finite = torch.isfinite(ratio)
                low = torch.where(finite, ratio < 1, torch.zeros_like(finite)).any(1)
                high = torch.where(finite, ratio > 1, torch.zeros_like(finite)).any(1)
                assert bool((low ^ high).all())  # every row whole from one parent
                seen = source[s.root]
                assert bool(((seen == -1) | (seen == high.long())).all())  # a channel's rows agree
                source[s.root] = high.long()
            assert bool((source >= 0).all())
            assert 0 < int(source.sum()) < g.size  # one cut: both parents contribute
    untouched = a.clone()
    assert cx_groupwise(untouched, untouched.clone(), graph, rng)[0].weights[0] is a.weights[0]  # shared stays shared


def test_group_unit_mutation_scales_every_consumer_slice_of_a_channel_alike(parents):
    parent, _ = parents["residual"]
    graph = parent.net
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    ind = ind_cls([torch.ones(s, dtype=torch.bool) for s in graph.hidden_widths], parent.weights, (), ())
    mut_scale_group_units(ind, graph, 0.5, 2.0, torch.Generator().manual_seed(1))
    for g in graph.groups:
        gains = []
        for s in g.inputs:
            ratio = (ind.weights[s.tensor] / parent.weights[s.tensor]).index_select(1, s.index)
            ratio = ratio.transpose(0, 1).flatten(1)  # (n, everything): one gain per position
            gain = ratio.nanmedian(1).values
            per_channel = torch.zeros(g.size).index_reduce_(0, s.root, gain, "amax", include_self=False)
            gains.append(per_channel)
        for other in gains[1:]:
            torch.testing.assert_close(other, gains[0])


def test_scores_rank_each_group_s_channels(parents):
    parent, x = parents["residual"]
    graph = parent.net
    l1 = graph_l1_scores(graph, parent.weights)
    act = graph_activation_scores(graph, parent.weights, torch.randn(16, *x.shape[1:]))
    assert [len(s) for s in l1] == [len(s) for s in act] == list(graph.hidden_widths)
    big = list(parent.weights)
    g = graph.groups[0]
    s = g.rows[0]
    rows = s.index[s.root == 1]
    big[s.tensor] = big[s.tensor].clone()
    big[s.tensor][rows] *= 100  # channel 1 of group 0: huge filters
    assert int(graph_l1_scores(graph, big)[0].argmax()) == 1


@pytest.mark.parametrize("budget", ["max_size", "max_macs"])
def test_a_budget_is_never_exceeded_by_any_operator(parents, budget):
    parent, _ = parents["branches"]
    graph = parent.net
    total_groups, total_macs = sum(graph.hidden_widths), graph.sizes()[1]
    for trial, fraction in enumerate((0.3, 0.5, 0.8)):
        cfg = EcompConfig(selection="nsga2", weights=(1, 1, 1), pop_size=8, embedding_layers=None,
                          recombination_layers=None, mask_flip_prob=0.5, mutation="units", **{budget: fraction})
        cfg.validate().validate_for(graph)
        tb = build_toolbox(cfg, parent, torch.Generator().manual_seed(trial))
        pop = tb.population(n=8)

        def check(individuals):
            for ind in individuals:
                kept = ind.hidden_units()
                assert all(k >= 1 for k in kept)
                if budget == "max_size":
                    assert sum(kept) <= int(fraction * total_groups + 1e-9)
                else:
                    assert graph.sizes(ind.masks)[1] <= fraction * total_macs * (1 + 1e-9)

        check(pop)
        for _ in range(4):
            for i in range(0, 8, 2):
                check(tb.mate(pop[i], pop[i + 1]))
            for ind in pop:
                check(tb.mutate(ind))
                ind.masks = [torch.ones_like(m) for m in ind.masks]  # grown by hand: repaired by the flip
                check(tb.mutate_mask(ind))


def test_a_macs_budget_below_one_channel_per_group_is_refused(parents):
    graph = parents["residual"][0].net
    with pytest.raises(ConfigError, match="max_macs 0.001 allows .* the smallest budget is"):
        EcompConfig(max_macs=0.001, embedding_layers=None, recombination_layers=None).validate().validate_for(graph)


REFUSED = [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2)), (4,), "'1' is LayerNorm"),
    (lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(72, 2)), (4, 5, 5),
     "grouped Conv2d \\(groups=2\\)"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 4, 2), nn.Flatten(), nn.Linear(256, 2)),
     (1, 5, 5), "ConvTranspose2d"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.MultiheadAttention(4, 1)), (3,), "MultiheadAttention"),
]


@pytest.mark.parametrize("factory,shape,expected", REFUSED, ids=["layernorm", "grouped", "transposed", "attention"])
def test_what_cannot_be_coupled_is_refused_naming_the_module(factory, shape, expected):
    with pytest.raises(ParentError, match=expected) as e:
        read_parent(factory().eval(), torch.randn(2, *shape))
    assert "\n" not in str(e.value)


def test_a_model_that_does_not_return_class_scores_is_refused():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))), x

    with pytest.raises(ParentError, match="must return class scores.*returns tuple"):
        read_parent(Pair().eval(), torch.randn(2, 3))
    with pytest.raises(ParentError, match="needs example inputs"):
        read_parent(Pair().eval())


def test_a_one_dimensional_network_with_unflatten_is_read_and_compressed():
    """Time series and audio: Unflatten, Conv1d, BatchNorm1d, MaxPool1d (a chain refuses
    Unflatten; the graph reads it)."""
    torch.manual_seed(3)
    model = randomise(nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8),
                                    nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 12, 3, padding=1), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(12 * 20, 16), nn.ReLU(), nn.Linear(16, 3)), 2)
    x = torch.randn(8, 40)
    parent = read_parent(model, x)
    assert parent.net.kind == "graph" and parent.net.hidden_widths == (16, 12, 8)
    assert parent.net.default_embeddings() == ("4", "6", "9")  # what each Conv/Linear after the first reads
    masks = random_masks(parent.net, 1)
    with torch.no_grad():
        masked, _ = functional_forward(parent.net, zeroed(parent.net, parent.weights, masks), x)
        pruned, _ = pruned_copy(parent.net, parent.weights, masks)
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_compress_takes_a_residual_network_and_its_export_scores_what_is_reported():
    import ecomp_deap

    torch.manual_seed(0)
    x = torch.randn(700, 1, 12, 12)
    y = 2 * (x[:, 0, :6].mean((1, 2)) > x[:, 0, 6:].mean((1, 2))).long() + (x[:, 0, :, :6].mean((1, 2)) > 0).long()
    net = Residual()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(net(x[:500]), y[:500]).backward()
        opt.step()
    before = copy.deepcopy(net.state_dict())
    cfg = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                      pop_size=8, generations=4, batch_size=100, perplexity=10.0, val_size=0)
    r = ecomp_deap.compress(net, train=(x[:400], y[:400]), val=(x[400:500], y[400:500]), test=(x[500:], y[500:]),
                            config=cfg, progress=False, max_macs=0.6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's model is not changed
    assert isinstance(r.best.module, Residual) and r.best.macs_kept <= 0.6 + 1e-9
    with torch.no_grad():
        acc = (r.best.module(x[500:]).argmax(1) == y[500:]).double().mean().item()
    assert acc == pytest.approx(r.best.accuracy)
    assert all(c.macs_kept <= 0.6 + 1e-9 for c in r.front)
    assert "multiply-adds" in r.run.best["selected_by"]


def test_graph_parents_refuse_what_works_on_chains_only(parents):
    graph = parents["residual"][0].net
    for setting in (dict(refit_images=100), dict(kernel="student_t"),
                    dict(crossover="reference")):
        with pytest.raises(ConfigError, match="chain parents"):
            EcompConfig(embedding_layers=None, recombination_layers=None, **setting).validate().validate_for(graph)


def test_ranks_and_flips_work_on_groups(parents):
    parent, _ = parents["residual"]
    graph = parent.net
    ranks = group_ranks(graph_l1_scores(graph, parent.weights))
    assert [len(r) for r in ranks] == list(graph.hidden_widths)
    _, ind_cls = make_types(fitness_weights("nsga2", (1, 1, 1)))
    ind = ind_cls([torch.ones(s, dtype=torch.bool) for s in graph.hidden_widths], parent.weights, (), ())
    mut_flip_units(ind, 1.0, torch.Generator().manual_seed(0))  # every bit flipped: a group keeps one
    assert all(k == 1 for k in ind.hidden_units())


@pytest.mark.parametrize("name", ["residual", "branches"])
def test_adaptive_batchnorm_on_the_masked_network_is_that_of_the_pruned_copy(parents, name):
    """Re-estimating the BatchNorm statistics of a masked individual gives the logits of
    its physically pruned copy recalibrated on the same images; a dropped channel keeps
    its old statistics (a mask flip may bring it back)."""
    from ecomp_deap.nets.graph import recalibrated
    from ecomp_deap.study.tp_baselines import recalibrate_module

    parent, x = parents[name]
    graph = parent.net
    calib = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(9))
    masks = random_masks(graph, 11)
    tensors = recalibrated(graph, parent.weights, masks, calib, batch=32)
    pruned = recalibrate_module(pruned_copy(graph, parent.weights, masks)[0], calib, batch=32)
    with torch.no_grad():
        ours, _ = functional_forward(graph, zeroed(graph, tensors, masks), x)
        np.testing.assert_allclose(ours.numpy(), pruned(x).numpy(), rtol=1e-4, atol=1e-5)
        before, _ = functional_forward(graph, zeroed(graph, parent.weights, masks), x)
    assert not torch.allclose(ours, before)
    for g, mask in zip(graph.groups, masks):
        for s in g.rows:
            if graph.tensor_names[s.tensor].endswith("running_var"):
                dropped = s.index[~mask[s.root]]
                assert torch.equal(tensors[s.tensor][dropped], parent.weights[s.tensor][dropped])
                assert not torch.equal(tensors[s.tensor][s.index[mask[s.root]]],
                                       parent.weights[s.tensor][s.index[mask[s.root]]])


def test_compress_defaults_recalibrate_batchnorm_and_skip_the_refit_on_a_graph_parent(monkeypatch):
    import ecomp_deap
    from ecomp_deap import api

    seen = {}

    class Stop(Exception):
        pass

    def stop(self, config, *a, **k):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(api.EcompRun, "__init__", stop)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(900, 1, 12, 12, generator=g), torch.arange(900) % 4
    with pytest.raises(Stop):
        ecomp_deap.compress(randomise(Residual(), 1), train=(x[:800], y[:800]), test=(x[800:], y[800:]),
                            progress=False, allow_weak_parent=True)
    assert seen["config"].norm_calibration == api.DEFAULT_NORM_CALIBRATION and seen["config"].refit_images == 0

import numpy as np
import pytest
import torch
from helpers import varied_population

from ecomp_deap.config import EcompConfig
from ecomp_deap.fitness import embeddings, first_stage, kept_groups, memory
from ecomp_deap.fitness.embeddings import Embeddings
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.fitness.measures import Measures, fitness_tuples, weighted_fitness
from ecomp_deap.fitness.similarity import tsne_similarity_loss
from ecomp_deap.nets.export import count_parameters, export_individual
from ecomp_deap.nets.forward import as_input, network_forward, stacked_stage
from ecomp_deap.nets.parents import build_mlp


@pytest.mark.parametrize("hidden,act", [((24, 16), "relu"), ((20, 9, 13), "gelu"), ((12, 30), "tanh"),
                                        ((10,), "sigmoid")])
def test_batched_evaluator_equals_exported_networks_one_at_a_time(hidden, act):
    torch.manual_seed(0)
    model = build_mlp(hidden, in_features=15, n_classes=4, activation=act)
    parent, pop = varied_population(model)
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=40)
    ev = PopulationEvaluator(parent, cfg)
    x, y = torch.randn(40, 15), torch.randint(0, 4, (40,))
    m = ev.measure(pop, x, y)
    with torch.no_grad():
        parent_embs = _activations(model, x)
    for i, ind in enumerate(pop):
        net = export_individual(ind, parent.net)
        with torch.no_grad():
            logits = net(x)
        assert m.accuracy[i] == (logits.argmax(1) == y).double().mean().item()
        assert m.compression[i] == sum(ind.hidden_units()) / sum(hidden)
        with torch.no_grad():
            child_embs = _activations(net, x)
        s = sum(tsne_similarity_loss(p, c, 5.0) for p, c in zip(parent_embs, child_embs))
        assert m.similarity[i] == pytest.approx(s, rel=1e-5, abs=1e-9)


def _activations(net, x):
    out, h = [], x
    for name, mod in net.named_children():
        h = mod(h)
        if name.endswith("_act"):
            out.append(h)
    return out


def test_export_matches_masked_forward_and_counts_parameters():
    torch.manual_seed(1)
    model = build_mlp((32, 8, 16), in_features=12, n_classes=3)
    parent, pop = varied_population(model, n=4, seed=1)
    ev = PopulationEvaluator(parent, EcompConfig(embedding_layers=None, recombination_layers=None), forward="stacked")
    x = torch.randn(7, 12)
    logits, _, _ = ev.outputs(pop, x, 0)
    for i, ind in enumerate(pop):
        net = export_individual(ind, parent.net)
        with torch.no_grad():
            assert torch.allclose(net(x), logits[i], atol=1e-5)
        assert count_parameters(net) == parent.net.sizes(ind.hidden_units())[0]
        assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)][:-1] == ind.hidden_units()


def test_masked_unit_activation_is_zero_even_when_activation_of_zero_is_not():
    torch.manual_seed(2)
    model = build_mlp((6,), in_features=4, n_classes=2, activation="sigmoid")
    parent, pop = varied_population(model, n=2)
    ev = PopulationEvaluator(parent, EcompConfig(embedding_layers=None, recombination_layers=None), forward="stacked")
    ws, bs, ns, ms = ev.forward.stack(pop)
    _, post = stacked_stage(parent.net.stages[0], as_input(parent.net, torch.randn(5, 4)), ws[0], bs[0], ns[0], ms[0],
                            shared=True, positions=[0])
    for i, ind in enumerate(pop):
        assert torch.all(post[0][i][:, ~ind.masks[0]] == 0)
        assert torch.all(post[0][i][:, ind.masks[0]] != 0)  # sigmoid: kept units are never 0


def test_fitness_weighted_formula_and_nsga2_tuples():
    m = Measures(np.array([0.8, 0.5]), np.array([0.25, 1.0]), np.array([0.1, 0.3]))
    assert np.allclose(weighted_fitness(m, (1, 2, 1)), [0.8 - 0.2 + 0.75, 0.5 - 0.6 + 0.0])
    assert fitness_tuples(m, "weighted", (1, 2, 1))[0] == pytest.approx((1.35,))
    assert fitness_tuples(m, "nsga2", (1, 2, 1))[1] == (0.5, 0.3, 1.0)
    assert fitness_tuples(m, "nsga2", (1, 0, 1))[0] == (0.8, 0.25)


def test_stacked_forward_equals_each_network_run_alone():
    torch.manual_seed(3)
    model = build_mlp((24, 16), in_features=15, n_classes=4)
    parent, pop = varied_population(model)
    ev = PopulationEvaluator(parent, EcompConfig(embedding_layers=None, recombination_layers=None), forward="stacked")
    x = torch.randn(9, 15)
    logits, _, _ = ev.outputs(pop, x, 0)
    for i, ind in enumerate(pop):
        alone = network_forward(parent.net, x, ind.weights, ind.biases, ind.norms, ind.masks)
        assert torch.allclose(logits[i], alone, atol=1e-5)


def test_similarity_batch_uses_the_first_images_only():
    torch.manual_seed(4)
    model = build_mlp((24, 16), in_features=15, n_classes=4)
    parent, pop = varied_population(model)
    x, y = torch.randn(60, 15), torch.randint(0, 4, (60,))
    full = PopulationEvaluator(parent, EcompConfig(perplexity=5.0, batch_size=60, embedding_layers=None,
                                                       recombination_layers=None))
    part = PopulationEvaluator(parent, EcompConfig(perplexity=5.0, batch_size=60, similarity_batch=20,
                                                       embedding_layers=None, recombination_layers=None))
    m_part = part.measure(pop, x, y)
    m_first = full.measure(pop, x[:20], y[:20])
    m_full = full.measure(pop, x, y)
    assert np.allclose(m_part.similarity, m_first.similarity, rtol=1e-6)
    assert np.array_equal(m_part.accuracy, m_full.accuracy)
    assert not np.allclose(m_part.similarity, m_full.similarity)


@pytest.mark.parametrize("embeddings,mutate", [(None, True), (("layer_1_linear", "layer_3_act"), True),
                                               (None, False)])
def test_kept_units_forward_equals_the_stacked_masked_forward(embeddings, mutate):
    """The CPU path (each individual on its kept units; a first-layer product shared by
    individuals with the same tensors when not mutated) and the stacked masked forward
    (other devices) give the same logits, embedding distances and measures."""
    torch.manual_seed(5)
    model = build_mlp((32, 8, 16), in_features=12, n_classes=3, activation="gelu")
    parent, pop = varied_population(model, n=6, seed=5, mutate=mutate)
    assert all((ind.weights[0] is parent.weights[0]) != mutate for ind in pop)
    cfg = EcompConfig(embedding_layers=embeddings, recombination_layers=None, perplexity=4.0, batch_size=20)
    ev = PopulationEvaluator(parent, cfg)
    x, y = torch.randn(20, 12), torch.randint(0, 3, (20,))
    assert ev.forward.name == "kept_groups"  # chosen for the CPU
    kept = ev.outputs(pop, x, 15)
    m_kept = ev.measure(pop, x, y)
    acc_kept = ev.accuracy(pop, x, y, batch_size=7)
    ev = PopulationEvaluator(parent, cfg, forward="stacked")
    stacked = ev.outputs(pop, x, 15)
    m_stacked = ev.measure(pop, x, y)
    assert np.array_equal(ev.accuracy(pop, x, y, batch_size=7), acc_kept)
    assert torch.allclose(kept[0], stacked[0], atol=1e-5)
    for a, s in zip(kept[1], stacked[1]):
        assert torch.equal(a, s)
    assert len(kept[2]) == len(ev.embeddings)
    for a, s in zip(kept[2], stacked[2]):
        assert a.shape == (6, 1, 15, 15)  # (individuals, batches, rows, rows)
        assert torch.allclose(a, s, rtol=1e-5, atol=1e-6)
    assert np.array_equal(m_kept.accuracy, m_stacked.accuracy)
    assert np.allclose(m_kept.similarity, m_stacked.similarity, rtol=1e-5)


@pytest.mark.parametrize("layers", [None, ("layer_1_act", "layer_1_act", "layer_2_act")],
                         ids=["default", "a-layer-named-twice"])
def test_large_embeddings_centred_in_place_give_the_same_bits(layers, monkeypatch):
    """The final pass centres a large embedding in place when no other embedding shares
    its storage (a layer named twice shares it: those are copied); the measures are the
    same bits as with every embedding copied before centring."""
    model = build_mlp((24, 16), in_features=15, n_classes=4, activation="relu")
    parent, pop = varied_population(model, n=6, seed=5)
    cfg = EcompConfig(embedding_layers=layers, recombination_layers=None, perplexity=5.0, batch_size=20)
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(20, 15, generator=g), torch.randint(0, 4, (20,), generator=g)) for _ in range(5)]
    monkeypatch.setattr(embeddings, "PAD_MAX_ELEMENTS", 0)  # every embedding takes the large path
    calls = []
    original = Embeddings.distances

    def recording(self, t, dtype=None, overwrite=False, out=None, copy_all=False):
        calls.append(overwrite)
        return original(self, t, dtype, overwrite=overwrite and not copy_all, out=out)

    results = {}
    for copy_all in (False, True):
        monkeypatch.setattr(Embeddings, "distances",
                            lambda self, t, dtype=None, overwrite=False, out=None, c=copy_all:
                            recording(self, t, dtype, overwrite, out, c))
        ev = PopulationEvaluator(parent, cfg)
        calls.clear()
        results[copy_all] = ev.measure_batches(pop, batches, key=("train",))
        if not copy_all:
            in_place = sum(calls)
    assert np.array_equal(results[False].similarity, results[True].similarity)
    assert np.array_equal(results[False].accuracy, results[True].accuracy)
    n_emb = len(layers) if layers else 2
    # the parent's embeddings on each batch and every individual's: in place, except the layer named twice
    assert in_place == (len(batches) + len(pop)) * (n_emb - (2 if layers else 0))


def _per_batch_mean(ev, pop, batches):
    return Measures.mean([ev.measure(pop, x, y) for x, y in batches])


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("similarity_batch", [0, 12])
@pytest.mark.parametrize("pool", [False, True], ids=["", "distinct-first-groups"])
def test_batched_final_pass_equals_the_per_batch_one(stacked, dtype, similarity_batch, pool, monkeypatch):
    """measure_batches (every batch in one forward, the similarity on a (batches, B, B)
    stack; with ``pool``, the first layer computed once for the population's distinct
    rows) gives the per-batch measures' mean, also when the batches are split into
    several forwards, and unequal batches still work (one at a time)."""
    torch.manual_seed(3)
    model = build_mlp((24, 16), in_features=15, n_classes=4, activation="relu")
    parent, pop = varied_population(model, n=6, seed=3)
    pop += [ind.__class__(ind.masks, ind.weights, ind.biases) for ind in pop[:2]]  # copies: rows shared with others
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=20,
                      similarity_batch=similarity_batch, similarity_dtype=dtype, eval_chunk=3 if pool else 0)
    if pool:
        monkeypatch.setattr(kept_groups, "DEDUPE_MIN_IMAGES", 1)
        built = []
        original = kept_groups.build_pool
        monkeypatch.setattr(kept_groups, "build_pool", lambda *a: built.append(original(*a)) or built[-1])
    ev = PopulationEvaluator(parent, cfg, forward="stacked" if stacked else "kept_groups")
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(20, 15, generator=g), torch.randint(0, 4, (20,), generator=g)) for _ in range(5)]
    expected = _per_batch_mean(ev, pop, batches)
    for image_bytes in (memory.IMAGE_BYTES, 2 * 20 * 24 * 4):  # all five batches at once; two at a time
        monkeypatch.setattr(memory, "IMAGE_BYTES", image_bytes)
        ev.clear_cache()
        got = ev.measure_batches(pop, batches, key=("train",))
        np.testing.assert_allclose(got.accuracy, expected.accuracy, rtol=1e-12)
        np.testing.assert_array_equal(got.compression, expected.compression)
        np.testing.assert_allclose(got.similarity, expected.similarity, rtol=1e-5)
    if pool and not stacked:  # the pool was built (and refused once IMAGE_BYTES was tiny), with fewer
        made = [p for p in built if p is not None]  # distinct rows than kept ones
        assert made and None in built
        assert made[0].out.shape[1] < sum(int(ind.masks[0].sum()) for ind in pop)
    uneven = batches[:2] + [(batches[2][0][:13], batches[2][1][:13])]
    np.testing.assert_allclose(ev.measure_batches(pop, uneven).similarity,
                               _per_batch_mean(ev, pop, uneven).similarity, rtol=1e-12)


def test_float32_similarity_agrees_with_float64_in_the_evaluator():
    torch.manual_seed(4)
    model = build_mlp((32, 24), in_features=15, n_classes=4, activation="relu")
    parent, pop = varied_population(model, n=8, seed=4)
    x, y = torch.randn(60, 15), torch.randint(0, 4, (60,))
    m = {}
    for dtype in ("float32", "float64"):
        cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=10.0, batch_size=60,
                          similarity_dtype=dtype)
        m[dtype] = PopulationEvaluator(parent, cfg).measure(pop, x, y)
    np.testing.assert_array_equal(m["float32"].accuracy, m["float64"].accuracy)
    np.testing.assert_allclose(m["float32"].similarity, m["float64"].similarity, rtol=1e-4)


def test_the_first_layer_on_distinct_rows_gives_the_same_measures(monkeypatch):
    """On the CPU a Linear first stage runs once per distinct row of the population
    (copies found by content keys, also in a generation's single batch and in
    ``accuracy``): the same measures as each individual on its own rows."""
    torch.manual_seed(5)
    model = build_mlp((24, 16), in_features=15, n_classes=4, activation="relu")
    parent, pop = varied_population(model, n=8, seed=5, mutate=False)
    mutate_some = varied_population(model, n=4, seed=6)[1]
    pop += mutate_some + [ind.clone() for ind in pop[:2]]  # shared, copied and mutated rows
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=30)
    ev = PopulationEvaluator(parent, cfg)
    built = []
    original = kept_groups.build_pool
    monkeypatch.setattr(kept_groups, "build_pool", lambda *a: built.append(original(*a)) or built[-1])
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(30, 15, generator=g), torch.randint(0, 4, (30,), generator=g)
    pooled = ev.measure(pop, x, y)
    acc_pooled = ev.accuracy(pop, x, y, batch_size=7)
    assert built and all(p is not None for p in built)
    kept = sum(int(ind.masks[0].sum()) for ind in pop)
    assert built[0].out.shape[1] < kept  # fewer distinct rows than kept ones
    monkeypatch.setattr(kept_groups.KeptGroupsForward, "pooled", lambda self, *a: False)
    ev.clear_cache()
    own = ev.measure(pop, x, y)
    np.testing.assert_array_equal(pooled.accuracy, own.accuracy)
    np.testing.assert_array_equal(pooled.compression, own.compression)
    np.testing.assert_allclose(pooled.similarity, own.similarity, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(acc_pooled, ev.accuracy(pop, x, y, batch_size=7))


def test_kept_groups_of_a_population_are_each_individuals_kept_indices():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(2)
    pop = [SimpleNamespace(masks=[torch.rand(9, generator=g) < 0.5, torch.rand(5, generator=g) < 0.7])
           for _ in range(6)]
    pop[2].masks[0] = torch.zeros(9, dtype=torch.bool)
    pop[2].masks[0][8] = True  # one unit
    pop[4].masks[1] = torch.ones(5, dtype=torch.bool)  # all units
    for k in (0, 1):
        got = kept_groups.kept_groups(pop, k)
        assert len(got) == len(pop)
        for idx, ind in zip(got, pop):
            assert torch.equal(idx, torch.nonzero(ind.masks[k]).squeeze(1))


def test_unit_major_keeps_the_values_with_units_contiguous():
    unit_major = first_stage.unit_major
    t = torch.randn(700, 13, generator=torch.Generator().manual_seed(3))  # several blocks and a partial one
    u = unit_major(t)
    assert torch.equal(u, t) and u.T.is_contiguous()
    assert torch.equal(unit_major(t, block=5), t)


def test_the_pool_copies_each_distinct_output_unit_major_once(monkeypatch):
    """A kept position that is the stage's output itself (the ReLU's, the default
    embedding) is the same tensor in the pool, copied once."""
    torch.manual_seed(2)
    model = build_mlp((24, 16), in_features=15, n_classes=4, activation="relu")
    parent, pop = varied_population(model, n=6, seed=2)
    ev = PopulationEvaluator(parent, EcompConfig(embedding_layers=None, recombination_layers=None,
                                                     perplexity=5.0, batch_size=30))
    calls = []
    original = first_stage.unit_major
    monkeypatch.setattr(first_stage, "unit_major", lambda t, *a: calls.append(t) or original(t, *a))
    pool = first_stage.build_pool(parent.net, ev.embeddings, pop, torch.randn(30, 15), 30, ev.device)
    assert pool is not None and pool.kept and all(t is pool.out for t in pool.kept.values())
    assert len(calls) == 1


def test_full_float32_turns_tf32_off_on_cuda_only_and_restores_the_flags():
    from ecomp_deap.fitness.evaluator import full_float32

    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with full_float32(torch.device("cpu")):
            assert all(f.allow_tf32 for f in flags)
        with pytest.raises(RuntimeError, match="inside"):
            with full_float32(torch.device("cuda")):  # only sets flags: no GPU needed
                assert not any(f.allow_tf32 for f in flags)
                raise RuntimeError("inside")
        assert all(f.allow_tf32 for f in flags)
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v

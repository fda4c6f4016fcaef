"""The CUDA path against the CPU one: skipped without a CUDA device (CI has none; run
``pytest tests/fitness/test_cuda.py`` on a GPU machine). On a GPU the evaluator runs the
stacked masked forward and the torch perplexity search, so these compare two different
programs: measures within float tolerance (an accuracy may differ by one tied image),
compressions exactly, and with TF32 allowed (the evaluator turns it off within)."""
import numpy as np
import pytest
import torch
from helpers import CNNS, SMALL, population, randomise_norms, run_script, varied_population

from ecomp_deap.config import EcompConfig
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.fitness.measures import Measures
from ecomp_deap.nets.parents import build_mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def tf32_allowed():
    """TF32 allowed for convolutions and matrix products (cuDNN's default allows it for
    convolutions): the evaluator must still compute in full float32, and leave the
    flags as it found them."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_agree(gpu: Measures, cpu: Measures, images: int, rtol: float):
    assert np.abs(gpu.accuracy - cpu.accuracy).max() <= 1 / images + 1e-12
    np.testing.assert_array_equal(gpu.compression, cpu.compression)
    np.testing.assert_allclose(gpu.similarity, cpu.similarity, rtol=rtol, atol=1e-7)
    assert np.isfinite(gpu.similarity).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("embeddings", [None, ("layer_1_linear", "layer_3_act")])
def test_mlp_measures_on_cuda_equal_the_cpu(dtype, embeddings):
    torch.manual_seed(0)
    model = build_mlp((48, 32, 24), in_features=30, n_classes=5, activation="relu")
    parent, pop = varied_population(model, n=10, seed=1)
    cfg = EcompConfig(embedding_layers=embeddings, recombination_layers=None, perplexity=10.0, batch_size=80,
                      similarity_dtype=dtype)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(80, 30, generator=g), torch.randint(0, 5, (80,), generator=g)
    cpu = PopulationEvaluator(parent, cfg, "cpu").measure(pop, x, y)
    gpu = PopulationEvaluator(parent, cfg, "cuda").measure(pop, x, y)
    assert_agree(gpu, cpu, 80, 1e-4)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_measures_on_cuda_equal_the_cpu(name):
    factory, shape = CNNS[name]
    torch.manual_seed(0)
    model = randomise_norms(factory(), 2)
    parent, pop = population(model, shape, n=8)
    chain = parent.net
    cfg = EcompConfig(embedding_layers=chain.embedding_names, recombination_layers=None, perplexity=5.0,
                      batch_size=40)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, *shape, generator=g), torch.randint(0, chain.n_classes, (40,), generator=g)
    cpu = PopulationEvaluator(parent, cfg, "cpu").measure(pop, x, y)
    gpu = PopulationEvaluator(parent, cfg, "cuda").measure(pop, x, y)
    assert_agree(gpu, cpu, 40, 1e-4)


def test_the_batched_final_pass_on_cuda_equals_the_cpu_per_batch_mean():
    torch.manual_seed(4)
    model = build_mlp((40, 24), in_features=20, n_classes=4, activation="gelu")
    parent, pop = varied_population(model, n=8, seed=4)
    cfg = EcompConfig(embedding_layers=None, recombination_layers=None, perplexity=5.0, batch_size=30)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(30, 20, generator=g), torch.randint(0, 4, (30,), generator=g)) for _ in range(6)]
    cpu = PopulationEvaluator(parent, cfg, "cpu")
    expected = Measures.mean([cpu.measure(pop, x, y) for x, y in batches])
    gpu = PopulationEvaluator(parent, cfg, "cuda")
    assert_agree(gpu.measure_batches(pop, batches, key=("train",)), expected, 30, 1e-4)
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    np.testing.assert_allclose(gpu.accuracy(pop, x, y, batch_size=50), cpu.accuracy(pop, x, y), atol=1 / 180 + 1e-12)


@pytest.mark.parametrize("selection", ["weighted", "nsga2"])
def test_a_run_on_cuda_completes_reloads_and_exports_a_cpu_network(tiny_data, tiny_parent, tmp_path, selection):
    from ecomp_deap.search.run import run_ecomp

    cfg = EcompConfig(selection=selection, pop_size=12, generations=5, batch_size=30, perplexity=5.0, val_size=60,
                      device="cuda", embedding_layers=None, recombination_layers=None)
    r = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)
    assert len(r.logbook) == 5
    assert 0 < r.best["compression"] <= 1 and 0 <= r.best["test_accuracy"] <= 1
    net = r.best_module.cpu()
    with torch.no_grad():
        acc = (net(tiny_data.test_x).argmax(1) == tiny_data.test_y).double().mean().item()
    assert acc == pytest.approx(r.best["test_accuracy"], abs=1 / len(tiny_data.test_y) + 1e-12)
    again = run_ecomp(cfg, tiny_parent, tiny_data, progress=False)  # same seed, same device: same run
    assert again.logbook == r.logbook and again.best == r.best


def test_the_cli_runs_on_cuda_and_records_the_device(tmp_path, cache_dir):
    import json

    args = [a if a != "cpu" else "cuda" for a in SMALL]
    out = tmp_path / "o"
    p = run_script("experiments/run.py", "--name", "weighting121", *args, "--cache-dir", cache_dir, "--out", out)
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "weighting121" / "run_0.json").read_text())
    assert r["config"]["device"] == "cuda" and r["best"]["test_accuracy"] > 0.5

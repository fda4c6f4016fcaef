"""The library API on a user's own model and data, and unusual parents."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ecomp_deap
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError


def problem(seed=0, n=1400, features=12, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x @ torch.randn(features, classes, generator=g)).argmax(1)
    return x, y


def trained(model, x, y, steps=150):
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                  pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0, device="cpu")


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.Tanh])
def test_three_unequal_hidden_layers_end_to_end_and_export_matches(act):
    torch.manual_seed(0)
    x, y = problem()
    model = trained(nn.Sequential(nn.Linear(12, 40), act(), nn.Linear(40, 9), act(), nn.Linear(9, 23), act(),
                                  nn.Linear(23, 3)), x[:1000], y[:1000])
    res = ecomp_deap.compress(model, train=(x[:1000], y[:1000]), val=(x[1000:1200], y[1000:1200]),
                              test=(x[1200:], y[1200:]), config=CFG, progress=False)
    assert len(res.best.hidden_units) == 3
    assert res.front and all(0 < c.compression <= 1 for c in res.front)
    # the exported module computes what the masked individual computes
    run = res.run
    best = run.evolution.population[run.evolution.best_index]
    from ecomp_deap.fitness.evaluator import PopulationEvaluator
    from ecomp_deap.nets.reader import read_parent

    ev = PopulationEvaluator(read_parent(model), CFG, forward="stacked")
    logits, _, _ = ev.outputs([best], x[1200:], 0)
    with torch.no_grad():
        assert torch.allclose(res.best.module(x[1200:]), logits[0], atol=1e-5)
    acc = (res.best.module(x[1200:]).argmax(1) == y[1200:]).double().mean().item()
    assert res.best.accuracy == pytest.approx(acc)


def test_api_accepts_dataloaders_and_reports_sizes():
    torch.manual_seed(1)
    x, y = problem(1)
    model = trained(nn.Sequential(nn.Flatten(), nn.Linear(12, 30), nn.ReLU(), nn.Linear(30, 3)), x[:1000], y[:1000])
    loader = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=64)
    res = ecomp_deap.compress(model, train=loader, val=DataLoader(TensorDataset(x[1000:1200], y[1000:1200])),
                              test=DataLoader(TensorDataset(x[1200:], y[1200:]), batch_size=33), config=CFG,
                              progress=False)
    b = res.best
    assert b.parameters == 12 * b.hidden_units[0] + b.hidden_units[0] + b.hidden_units[0] * 3 + 3
    assert b.parameters_kept == pytest.approx(b.parameters / (12 * 30 + 30 + 30 * 3 + 3))
    assert isinstance(b.module[0], nn.Flatten)


def test_api_default_config_and_bad_data():
    x, y = problem(2, n=600)
    model = trained(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)), x, y, steps=20)
    res = ecomp_deap.compress(model, train=(x[:500], y[:500]), test=(x[500:], y[500:]),
                              config=ecomp_deap.api.default_config(400, batch_size=50, pop_size=8,
                                                                                     perplexity=5.0, val_size=100),
                              progress=False)
    assert res.run.config.generations == 8
    with pytest.raises(ConfigError, match="inputs but"):
        ecomp_deap.compress(model, train=(x, y[:10]), test=(x, y), progress=False)
    with pytest.raises(ConfigError, match="DataLoader"):
        ecomp_deap.compress(model, train=42, test=(x, y), progress=False)


def test_compress_a_cnn_from_image_dataloaders():
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(3, 2, 8, 8, generator=g)
    y = torch.arange(900) % 3
    x = centers[y] + 0.7 * torch.randn(900, 2, 8, 8, generator=g)
    model = trained(nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                  nn.Dropout(0.1), nn.Linear(8, 3)), x[:600], y[:600], steps=60)
    loader = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=64)
    res = ecomp_deap.compress(model, train=loader, val=(x[600:750], y[600:750]), test=(x[750:], y[750:]),
                              config=CFG, progress=False)
    assert len(res.best.hidden_units) == 2 and all(h >= 1 for h in res.best.hidden_units)
    small = res.best.module
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == res.best.hidden_units
    assert res.best.parameters_kept <= 1 and res.best.macs_kept <= 1
    with torch.no_grad():
        acc = (small(x[750:]).argmax(1) == y[750:]).double().mean().item()
    assert res.best.accuracy == pytest.approx(acc)

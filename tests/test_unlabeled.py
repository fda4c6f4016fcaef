"""Compressing without labels: fidelity (agreement with the parent's top-1 predictions)
as the accuracy objective, in a run, through ``compress``, ``run.py --unlabeled``, the
presets, the comparison and the plots."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import SMALL, ecomp_run, run_script
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ecomp_deap
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError
from ecomp_deap.files import save_json
from ecomp_deap.fitness.evaluator import PopulationEvaluator
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.run import EcompRun, RunData, check_data

CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                  pop_size=8, generations=6, batch_size=60, perplexity=5.0, val_size=120, refit_images=120,
                  device="cpu")
FIDELITY = CFG.replace(accuracy_objective="fidelity")
TIMES = ("wall_time_s", "phase_times_s")


def predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def body(result) -> dict:
    """A run's result-file body without its wall times."""
    return {k: v for k, v in result.to_json().items() if k not in TIMES}


def same_module(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def as_accuracy(value, fidelity: bool = True):
    """A result body without its ``accuracy_objective`` setting and, from a fidelity run
    (``fidelity``), with the names a run with labels uses in place of its own and without
    its test accuracy on the labels."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "accuracy_objective" or (fidelity and k == "test_accuracy"):
                continue
            if fidelity:
                k = {"fidelity": "accuracy", "test_fidelity": "test_accuracy", "train_fidelity": "train_accuracy",
                     "val_fidelity": "val_accuracy"}.get(k, k)
            out[k] = as_accuracy(v, fidelity)
        return out
    if isinstance(value, list):
        return [as_accuracy(v, fidelity) for v in value]
    if fidelity and isinstance(value, str):
        return value.replace("highest fidelity", "most accurate").replace("fidelity", "accuracy")
    return value


@pytest.fixture(scope="module")
def noisy(tiny_data):
    """The tiny problem with every fifth label wrong: the parent (trained on the right
    ones) disagrees with the labels there, so fidelity and accuracy differ."""
    def spoil(y):
        y = y.clone()
        y[::5] = (y[::5] + 1) % 4
        return y

    d = tiny_data
    return RunData(d.train_x, spoil(d.train_y), d.test_x, spoil(d.test_y))


# --------------------------------------------------------------------------- the measure


def test_the_parent_agrees_with_its_own_predictions_and_fidelity_is_accuracy_on_them(noisy, tiny_parent):
    parent = read_parent(tiny_parent, noisy.train_x)
    ev = PopulationEvaluator(parent, FIDELITY)
    x = noisy.train_x[:300]
    targets = ev.parent_predictions(x, batch_size=70)  # in several chunks
    assert targets.dtype == torch.int64 and targets.shape == (300,)
    assert torch.equal(targets, predictions(tiny_parent, x))  # the module's own forward agrees
    assert (targets != noisy.train_y[:300]).float().mean() > 0.1  # the labels are not the predictions
    assert ev.accuracy([ev.parent_network], x, targets)[0] == 1.0


def test_fidelity_equals_accuracy_when_the_labels_are_the_parents_predictions(noisy, tiny_parent):
    tiny_data = noisy
    model = tiny_parent
    as_labels = RunData(tiny_data.train_x, predictions(model, tiny_data.train_x),
                        tiny_data.test_x, predictions(model, tiny_data.test_x))
    labeled = ecomp_run(CFG, model, as_labels).run()
    fidelity = ecomp_run(FIDELITY, model, tiny_data).run()
    b = body(fidelity)
    assert b["objectives"] == ["fidelity", "similarity", "compression"]
    assert {"train_fidelity", "val_fidelity", "test_fidelity", "test_accuracy"} <= set(b["best"])
    assert "accuracy" not in b["logbook"][0] and "fidelity" in b["logbook"][0]
    # on the real test labels: the parent's accuracy and the front's hypervolume
    assert b.pop("parent")["test_accuracy"] == pytest.approx(
        (predictions(model, tiny_data.test_x) == tiny_data.test_y).double().mean().item())
    b.pop("test_hypervolume")
    rest = {k: v for k, v in body(labeled).items() if k not in ("parent", "test_hypervolume")}
    assert as_accuracy(b) == as_accuracy(rest, fidelity=False)  # the whole run, measure by measure
    assert same_module(fidelity.best_module, labeled.best_module)
    # beside the fidelity, the test accuracy on the real test labels
    net = fidelity.best_module
    assert b["best"]["test_accuracy"] == pytest.approx(
        (predictions(net, tiny_data.test_x) == tiny_data.test_y).double().mean().item())
    assert b["best"]["test_fidelity"] == pytest.approx(
        (predictions(net, tiny_data.test_x) == predictions(model, tiny_data.test_x)).double().mean().item())


def test_an_unlabeled_run_never_reads_a_label(noisy, tiny_parent):
    model, d = tiny_parent, noisy
    real = ecomp_run(FIDELITY, model, d).run()
    poisoned = RunData(d.train_x, torch.full_like(d.train_y, 3), d.test_x, d.test_y)  # a valid class, everywhere
    assert body(ecomp_run(FIDELITY, model, poisoned).run()) == body(real)
    parent = read_parent(model, d.train_x)
    none = RunData(d.train_x, None, d.test_x, d.test_y)  # no label at all: nothing to read
    assert body(EcompRun(FIDELITY, parent, check_data(parent, none)).run()) == body(real)
    # a separate validation set: its labels are not read either
    val = (d.train_x[:240], d.train_y[:240])
    train = RunData(d.train_x[240:], d.train_y[240:], d.test_x, d.test_y)
    with_val = EcompRun(FIDELITY, parent, check_data(parent, train, val)).run()
    poisoned_val = (val[0], torch.full_like(val[1], -5))
    without = EcompRun(FIDELITY, parent, RunData(train.train_x, None, d.test_x, d.test_y, poisoned_val)).run()
    assert body(without) == body(with_val)
    # the labels are what a run with labels measures: poisoning them changes it
    assert body(ecomp_run(CFG, model, poisoned).run()) != body(ecomp_run(CFG, model, d).run())


def test_a_run_without_test_labels_reports_fidelity_alone(tiny_data, tiny_parent):
    parent = read_parent(tiny_parent, tiny_data.train_x)
    r = EcompRun(FIDELITY, parent, RunData(tiny_data.train_x, None, tiny_data.test_x, None)).run()
    b = body(r)
    assert b["best"]["test_accuracy"] is None and 0 < b["best"]["test_fidelity"] <= 1
    assert b["parent"]["test_accuracy"] is None and b["test_hypervolume"] is None
    with pytest.raises(ConfigError, match="train data has no labels: the accuracy objective needs them"):
        EcompRun(CFG, parent, RunData(tiny_data.train_x, None, tiny_data.test_x, tiny_data.test_y))


# --------------------------------------------------------------------------- compress()


def problem(seed=0, n=1400):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x @ torch.randn(12, 3, generator=g)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1000]), y[:1000]).backward()
        opt.step()
    return model.eval(), x, y


API_CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                      pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0, device="cpu")


def test_compress_accepts_inputs_only_as_tensors_or_dataloaders():
    model, x, y = problem()
    test = (x[1200:], y[1200:])
    a = ecomp_deap.compress(model, train=x[:1000], val=x[1000:1200], test=test, config=API_CFG, progress=False)
    assert a.run.config.accuracy_objective == "fidelity"
    net = a.best.module
    assert a.best.accuracy == pytest.approx((predictions(net, test[0]) == test[1]).double().mean().item())
    assert a.best.fidelity == pytest.approx(
        (predictions(net, test[0]) == predictions(model, test[0])).double().mean().item())
    # a DataLoader of inputs, or of (inputs, anything) with labels=False: the same run
    b = ecomp_deap.compress(model, train=DataLoader(TensorDataset(x[:1000]), batch_size=64),
                            val=DataLoader(x[1000:1200], batch_size=50), test=test, config=API_CFG, progress=False)
    c = ecomp_deap.compress(model, train=DataLoader(TensorDataset(x[:1000], torch.full((1000,), -1)), batch_size=64),
                            val=(x[1000:1200], torch.full((200,), 99)), test=test, config=API_CFG, progress=False,
                            labels=False)
    assert body(a.run) == body(b.run) == body(c.run)
    # without test labels: fidelity alone
    d = ecomp_deap.compress(model, train=x[:1000], test=x[1200:], config=API_CFG.replace(val_size=200),
                            progress=False)
    assert d.best.accuracy is None and 0 < d.best.fidelity <= 1
    assert all(f.accuracy is None and f.fidelity is not None for f in d.front)
    # with labels, nothing changes: accuracy as before, no fidelity
    e = ecomp_deap.compress(model, train=(x[:1000], y[:1000]), val=(x[1000:1200], y[1000:1200]), test=test,
                            config=API_CFG, progress=False)
    assert e.run.config.accuracy_objective == "accuracy" and e.best.fidelity is None


def test_compress_refuses_labels_only_and_missing_labels_in_one_line(monkeypatch):
    import ecomp_deap.api as api

    def no_run(*a, **k):
        raise AssertionError("a run started on bad data")

    monkeypatch.setattr(api, "EcompRun", no_run)
    model, x, y = problem(1, n=600)
    cases = [
        (dict(train=y[:400]), "train data: the inputs are a 1-d tensor of integers (400 values), labels alone?"),
        (dict(train=(None, y[:400])), "train data: the inputs are missing (None)"),
        (dict(train=DataLoader(TensorDataset(y[:400]), batch_size=50)), "train data: the inputs are a 1-d tensor"),
        (dict(train=(x[:400], y[:400]), test=y[400:]), "test data: the inputs are a 1-d tensor of integers"),
        (dict(train=x[:400], labels=True), "train data has no labels (inputs only) but labels=True"),
        (dict(train=(x[:400], y[:400]), val=x[400:500]), "val data has no labels but train has"),
        (dict(train=(x[:400], y[:400]), test=x[400:]), "test data has no labels but train has"),
        (dict(train=[(x[:200], y[:200]), x[200:400]]), "train data: some batches have labels and some have none"),
        (dict(train=x[:400], labels="no"), "labels must be True, False or None"),
    ]
    for kwargs, expected in cases:
        kwargs.setdefault("test", (x[400:], y[400:]))
        with pytest.raises(ConfigError) as e:
            ecomp_deap.compress(model, config=API_CFG, progress=False, **kwargs)
        assert expected in str(e.value) and "\n" not in str(e.value), (kwargs.keys(), str(e.value))


# --------------------------------------------------------------------------- presets, files, scripts


def test_unlabeled_presets_are_their_labeled_twins_with_fidelity():
    from ecomp_deap.study.presets import PRESETS, UNLABELED_TWINS, preset_arch, preset_config

    assert set(UNLABELED_TWINS) == {"unlabeled121", "unlabeled101", "unlabeled25", "unlabeled25_nosim",
                                    "cnn_unlabeled50", "cnn_unlabeled50_nosim"}
    for name, twin in UNLABELED_TWINS.items():
        cfg = preset_config(name).validate()
        cfg.validate_data(60000)
        assert name in PRESETS and cfg.accuracy_objective == "fidelity" and preset_arch(name) == preset_arch(twin)
        assert cfg == preset_config(twin).replace(accuracy_objective="fidelity")
        assert cfg.objective_names[0] == "fidelity"
    assert preset_config("cnn_quality50").max_size == 0.5 and preset_config("cnn_quality50").weights == (1, 2, 0)
    assert preset_config("cnn_quality50_nosim").replace(weights=(1, 2, 0)) == preset_config("cnn_quality50")


def test_settings_saved_before_the_objective_existed_load_as_accuracy(tmp_path):
    from ecomp_deap.study.experiment import Experiment

    old = EcompConfig().to_dict()
    del old["accuracy_objective"]
    assert EcompConfig.from_dict(old).accuracy_objective == "accuracy"
    exp = Experiment("weighting121", EcompConfig(), 1, 0, tmp_path)
    best = {"test_accuracy": 0.8, "compression": 0.5, "similarity": 0.1, "hidden_units": [4], "parameters": 10}
    save_json(exp.folder / "run_0.json", {"schema": "ecomp_deap.run/1", "config": old, "run": 0, "seed": 0,
                                          "best": best, "front": [best], "parent": {}, "test_hypervolume": 0.4,
                                          "wall_time_s": 1.0})
    assert exp.finished(0)  # an old run resumes as a run with labels
    with pytest.raises(ConfigError, match="accuracy_objective"):
        Experiment("weighting121", EcompConfig(accuracy_objective="fidelity"), 1, 0, tmp_path).finished(0)
    with pytest.raises(ConfigError, match="accuracy_objective must be one of accuracy, fidelity"):
        EcompConfig(accuracy_objective="labels").validate()


def test_run_unlabeled_then_compare_and_plot_beside_a_labeled_run(tmp_path, cache_dir):
    out = tmp_path / "r"
    common = [*SMALL, "--cache-dir", cache_dir, "--runs", "2"]
    p = run_script("experiments/run.py", "--name", "pareto121", *common, "--out", out)
    assert p.returncode == 0, p.stderr
    p = run_script("experiments/run.py", "--name", "pareto121", "--unlabeled", *common, "--out", out / "u")
    assert p.returncode == 0, p.stderr
    assert "nsga2 over fidelity, similarity, compression" in p.stdout and p.stdout.count("test fidelity") == 2
    r = json.loads((out / "u" / "pareto121" / "run_0.json").read_text())
    assert r["config"]["accuracy_objective"] == "fidelity" and r["objectives"][0] == "fidelity"
    assert 0 < r["best"]["test_accuracy"] <= 1 and 0 < r["best"]["test_fidelity"] <= 1
    labeled = json.loads((out / "pareto121" / "run_0.json").read_text())
    assert labeled["config"]["accuracy_objective"] == "accuracy" and "test_fidelity" not in labeled["best"]
    c = run_script("experiments/compare.py", out / "pareto121", out / "u" / "pareto121", "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    rows = list(csv.DictReader(open(tmp_path / "c" / "comparison.csv")))
    assert [r["objective"] for r in rows] == ["accuracy", "fidelity"]
    assert rows[0]["fidelity_median"] == "n/a" and 0 < float(rows[1]["fidelity_median"]) <= 1
    sizes = list(csv.DictReader(open(tmp_path / "c" / "comparison_sizes.csv")))
    medians = [k for k in sizes[0] if k.endswith("_median")]
    assert len(medians) == 2 and sizes[-1][medians[1]] != "n/a"  # the unlabeled fronts, chosen on val fidelity
    assert "best test fidelity" in (tmp_path / "c" / "comparison.md").read_text()
    c = run_script("plots/curves.py", out / "pareto121", out / "u" / "pareto121", "--out", tmp_path / "p")
    assert c.returncode == 0 and (tmp_path / "p" / "curves.png").exists(), c.stderr


def test_a_checkpoint_written_before_the_objective_existed_resumes_as_a_run_with_labels(tiny_data, tiny_parent):
    import io

    from ecomp_deap.errors import UserError
    from ecomp_deap.rng import rng_snapshot
    from ecomp_deap.study.checkpoint import checkpoint_bytes, read_checkpoint

    run = ecomp_run(CFG, tiny_parent, tiny_data)
    blob = torch.load(io.BytesIO(checkpoint_bytes(run.initial_state(), CFG, rng_snapshot(run.rng), 0.0)),
                      weights_only=True)
    del blob["config"]["accuracy_objective"]
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    assert read_checkpoint(buffer.getvalue(), CFG, "old.ckpt")["t"] == 0
    with pytest.raises(UserError, match="other settings"):
        read_checkpoint(buffer.getvalue(), FIDELITY, "old.ckpt")

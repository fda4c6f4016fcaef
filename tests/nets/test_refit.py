"""The closed-form refit (:mod:`ecomp_deap.nets.refit`): the least-squares optimum of each
refitted layer, only the Linear stages after the first change, the same refit for the
baselines, and the settings' errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import ecomp_run
from torch import nn

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError
from ecomp_deap.nets.chain import Chain, parent_input_shape, parent_tensors
from ecomp_deap.nets.export import export_individual
from ecomp_deap.nets.forward import as_input, kept_tensors, network_forward, run_stage
from ecomp_deap.nets.parents import build_cnn, build_mlp
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.nets.refit import Refit, parent_preactivations, ridge_solve
from ecomp_deap.search.genome import Genome, make_types
from ecomp_deap.search.operators import init_pruned


def mlp(hidden=(16, 12, 8), seed=0, bias=True):
    torch.manual_seed(seed)
    model = build_mlp(hidden, in_features=10, n_classes=5)
    if not bias:  # the same chain with bias-free Linear layers after the first
        layers = [nn.Linear(m.in_features, m.out_features, bias=(i == 0)) if isinstance(m, nn.Linear) else m
                  for i, m in enumerate(model)]
        model = nn.Sequential(*layers)
    arch = Chain.from_module(model)
    w, b, n = parent_tensors(model, arch)
    return model, arch, w, b, n


def stage_inputs(arch, ind, x):
    """Per stage, the individual's input to it (n, kept in) as the refit saw it."""
    h, prev, out = as_input(arch, x), None, []
    last = len(arch.stages) - 1
    for k, st in enumerate(arch.stages):
        out.append(h.flatten(1))
        keep = ind.masks[k].nonzero().squeeze(1) if k < last else None
        h, _ = run_stage(st, h, *kept_tensors(st, ind.weights[k], ind.biases[k], ind.norms[k], keep, prev))
        prev = keep
    return out


def objective(a, target, w, b, lam):
    r = a.double() @ w.double().T + b.double() - target.double()
    return float((r ** 2).sum() + lam * (w.double() ** 2).sum())


def test_ridge_solve_matches_the_normal_equations_oracle():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 7, generator=g) * torch.tensor([1, 2, 3, 0.5, 1, 1, 4.0])
    t = a @ torch.randn(7, 3, generator=g) + 0.3 + 0.01 * torch.randn(200, 3, generator=g)
    ridge = 1e-3
    w, b = ridge_solve(a, t, ridge)
    # numpy oracle: augmented least squares with an unpenalised bias column
    A, T = a.double().numpy(), t.double().numpy()
    ac, tc = A - A.mean(0), T - T.mean(0)
    lam = ridge * np.mean(np.sum(ac ** 2, 0))
    w_ref = np.linalg.solve(ac.T @ ac + lam * np.eye(7), ac.T @ tc).T
    b_ref = T.mean(0) - w_ref @ A.mean(0)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-9, atol=1e-12)
    w0, b0 = ridge_solve(a, t, ridge, bias=False)
    assert torch.equal(b0, torch.zeros(3, dtype=torch.float64))
    lam0 = ridge * float((a.double() ** 2).sum(0).mean())
    w0_ref = np.linalg.solve(A.T @ A + lam0 * np.eye(7), A.T @ T).T
    np.testing.assert_allclose(w0.numpy(), w0_ref, rtol=1e-9, atol=1e-12)


def test_constant_inputs_give_finite_weights_and_the_mean_target():
    a = torch.zeros(50, 4)
    t = torch.randn(50, 2)
    w, b = ridge_solve(a, t, 1e-4)
    assert torch.equal(w, torch.zeros(2, 4, dtype=torch.float64))
    assert torch.allclose(b, t.double().mean(0))


@pytest.mark.parametrize("bias", [True, False])
def test_each_refitted_layer_is_the_ridge_optimum_and_nothing_else_changes(bias):
    model, arch, w, b, n = mlp(bias=bias)
    _, ind_cls = make_types((1.0,))
    ind = init_pruned(ind_cls, w, b, 0.5)
    before = ind.clone()
    old = [t.clone() for t in ind.weights], [t.clone() for t in ind.biases]
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(2))
    ridge = 1e-4
    refit = Refit(arch, w, b, n, x, ridge)
    (out,) = refit(ind)
    assert out is ind
    # the individual's old tensors (shared with the parent) were not written into
    assert all(torch.equal(t, o) for t, o in zip(before.weights, old[0]))
    assert all(torch.equal(t, o) for t, o in zip(before.biases, old[1]))
    assert ind.weights[0] is before.weights[0] and ind.biases[0] is before.biases[0]  # the first stage: untouched
    assert [m.tolist() for m in ind.masks] == [m.tolist() for m in before.masks]
    targets = parent_preactivations(arch, x, w, b, n)
    inputs = stage_inputs(arch, ind, x)
    last = len(arch.stages) - 1
    for k in range(1, len(arch.stages)):
        st = arch.stages[k]
        rows = ind.masks[k].nonzero().squeeze(1) if k < last else torch.arange(st.out_size)
        cols = st.input_columns(ind.masks[k - 1].nonzero().squeeze(1))
        a, target = inputs[k], targets[k][:, rows]
        ac = a.double() - a.double().mean(0) if bias else a.double()
        lam = ridge * float((ac ** 2).sum(0).mean())
        new_w, new_b = ind.weights[k][rows][:, cols], ind.biases[k][rows]
        if not bias:
            assert torch.equal(new_b, torch.zeros_like(new_b))
        f_new = objective(a, target, new_w, new_b, lam)
        f_old = objective(a, target, before.weights[k][rows][:, cols], before.biases[k][rows], lam)
        assert f_new <= f_old * (1 + 1e-6)
        for trial in range(5):  # no perturbation of the solution does better
            g = torch.Generator().manual_seed(trial)
            dw = 1e-3 * torch.randn(new_w.shape, generator=g)
            db = 1e-3 * torch.randn(new_b.shape, generator=g) if bias else 0.0
            assert f_new <= objective(a, target, new_w + dw, new_b + db, lam) * (1 + 1e-7)
        # positions the network does not keep are as they were
        full = torch.ones_like(ind.weights[k], dtype=torch.bool)
        full[rows[:, None], cols[None, :]] = False
        assert torch.equal(ind.weights[k][full], before.weights[k][full])
    # the exported module computes what the refitted masked network computes
    exported = export_individual(ind, arch)
    assert torch.allclose(exported(x), network_forward(arch, x, ind.weights, ind.biases, ind.norms, ind.masks),
                          atol=1e-5)


def test_refit_of_the_whole_parent_keeps_its_function():
    model, arch, w, b, n = mlp(hidden=(12, 9))
    x = torch.randn(500, 10, generator=torch.Generator().manual_seed(3))
    ind = Genome([torch.ones(12, dtype=torch.bool), torch.ones(9, dtype=torch.bool)], w, b, n)
    Refit(arch, w, b, n, x, 1e-8)(ind)
    with torch.no_grad():
        assert torch.allclose(network_forward(arch, x, ind.weights, ind.biases, ind.norms, ind.masks), model(x),
                              atol=1e-4)


def test_refit_brings_a_pruned_network_closer_to_the_parent_on_held_out_data():
    model, arch, w, b, n = mlp(hidden=(32, 32))
    _, ind_cls = make_types((1.0,))
    ind = init_pruned(ind_cls, w, b, 0.5)
    g = torch.Generator().manual_seed(4)
    x, held_out = torch.randn(2000, 10, generator=g), torch.randn(1000, 10, generator=g)
    with torch.no_grad():
        parent_logits = model(held_out)
        err_before = float(((network_forward(arch, held_out, w, b, n, ind.masks) - parent_logits) ** 2).mean())
        Refit(arch, w, b, n, x)(ind)
        err_after = float(((network_forward(arch, held_out, ind.weights, ind.biases, ind.norms, ind.masks)
                            - parent_logits) ** 2).mean())
    assert err_after < 0.5 * err_before


def test_cnn_refit_changes_only_the_linear_stages_and_exports_the_same_function():
    torch.manual_seed(0)
    model = build_cnn(channels=(4, 6), hidden=(10,), in_shape=(1, 8, 8), n_classes=3)
    x = torch.randn(120, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    arch = Chain.from_module(model, input_shape=parent_input_shape(model, x))
    w, b, n = parent_tensors(model, arch)
    masks = [torch.arange(h) % 2 == 0 for h in arch.hidden_widths]
    ind = Genome(masks, w, b, n)
    before = ind.clone()
    Refit(arch, w, b, n, x)(ind)
    for k, st in enumerate(arch.stages):
        same = ind.weights[k] is before.weights[k] and ind.norms[k] is before.norms[k]
        assert same == (st.kind == "conv" or k == 0), (k, st.kind)
    assert any(not torch.equal(ind.weights[k], before.weights[k]) for k, st in enumerate(arch.stages)
               if st.kind == "linear" and k > 0)
    with torch.no_grad():
        assert torch.allclose(export_individual(ind, arch)(x),
                              network_forward(arch, x, ind.weights, ind.biases, ind.norms, ind.masks), atol=1e-5)


def test_refit_settings_are_checked():
    for bad in (1, -1):
        with pytest.raises(ConfigError, match="refit_images must be 0"):
            EcompConfig(refit_images=bad).validate()
    for bad in (2.5, True):
        with pytest.raises(ConfigError, match="refit_images must be a whole number"):
            EcompConfig(refit_images=bad).validate()
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="refit_ridge must be a finite number > 0"):
            EcompConfig(refit_ridge=bad).validate()
    with pytest.raises(ConfigError, match=r"refit_images \(20000 images\) exceeds the evolution subset"):
        EcompConfig(refit_images=20000).validate().validate_data(60000)
    model, arch, w, b, n = mlp()
    with pytest.raises(ConfigError, match="at least 2 calibration images"):
        Refit(arch, w, b, n, torch.randn(1, 10))
    assert EcompConfig.from_dict({"seed": 3}).refit_images == 0  # files from before the setting: no refit


def test_a_run_with_refit_measures_and_exports_the_refitted_networks(tiny_data, tiny_parent):

    cfg = EcompConfig(selection="nsga2", pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=200,
                      device="cpu", max_size=0.5, refit_images=150, embedding_layers=None,
                      recombination_layers=None)
    plain = ecomp_run(cfg.replace(refit_images=0), tiny_parent, tiny_data).run()
    run = ecomp_run(cfg, tiny_parent, tiny_data)
    r = run.run()
    # the same search (the refit is applied at the end only) ...
    assert [row["accuracy"]["avg"] for row in r.logbook] == [row["accuracy"]["avg"] for row in plain.logbook]
    # ... then every final network refitted on the first 150 images of the subset
    pop = r.evolution.population
    x = run.subset_images(150)
    arch = run.net
    targets = parent_preactivations(arch, x, run.parent.weights, run.parent.biases, run.parent.norms)
    ind = pop[r.evolution.best_index]
    a = stage_inputs(arch, ind, x)[-1]
    w_ref, b_ref = ridge_solve(a, targets[-1], cfg.refit_ridge)
    assert torch.allclose(ind.weights[-1][:, ind.masks[-1]], w_ref.float(), atol=1e-5)
    with torch.no_grad():
        exported = r.best_module(tiny_data.test_x)
    assert torch.allclose(exported, network_forward(arch, tiny_data.test_x, ind.weights, ind.biases, ind.norms,
                                                    ind.masks), atol=1e-5)
    assert EcompConfig.from_dict(r.to_json()["config"]) == cfg


def test_lamarckian_refit_gives_every_child_refitted_weights(tiny_data, tiny_parent):

    cfg = EcompConfig(selection="weighted", pop_size=6, generations=3, batch_size=50, perplexity=5.0, val_size=0,
                      device="cpu", refit_images=100, refit_children=True, embedding_layers=None,
                      recombination_layers=None)
    run = ecomp_run(cfg, tiny_parent, tiny_data)
    state = run.initial_state()
    x = run.subset_images(100)
    targets = parent_preactivations(run.net, x, run.parent.weights, run.parent.biases, run.parent.norms)
    for _ in range(2):
        for ind in state.population:
            a = stage_inputs(run.net, ind, x)[-1]
            w_ref, _ = ridge_solve(a, targets[-1], cfg.refit_ridge)
            assert torch.allclose(ind.weights[-1][:, ind.masks[-1]], w_ref.float(), atol=1e-5)
        run.evolve(state, until=state.t + 1)


def test_baselines_get_the_same_refit():
    from ecomp_deap.study.pruning_baselines import baseline_curves, baseline_prunings

    model, arch, w, b, n = mlp(hidden=(16, 12))
    parent = read_parent(model)
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(400, 10, generator=g), torch.randint(0, 5, (400,), generator=g)
    refit_x = x[:200]
    plain = baseline_prunings(parent, "l1", [0.5])[0]
    refitted = baseline_prunings(parent, "l1+refit", [0.5], refit_x=refit_x)[0]
    expected = Refit(arch, w, b, n, refit_x)(copy.copy(plain))[0]
    assert [m.tolist() for m in refitted.masks] == [m.tolist() for m in plain.masks]
    assert all(torch.equal(p, q) for p, q in zip(refitted.weights, expected.weights))
    with pytest.raises(ValueError, match="needs calibration images"):
        baseline_prunings(parent, "l1+refit", [0.5])
    curves = baseline_curves(parent, [0.5], x, y, x, seeds=2, refit_x=refit_x)
    assert list(curves) == ["l1", "random", "activation", "l1+refit", "random+refit", "activation+refit"]
    assert curves["random+refit"][0]["repeats"] == 2
    assert list(baseline_curves(parent, [0.5], x, y, x, seeds=2)) == ["l1", "random", "activation"]


def test_compress_refits_by_default_on_up_to_5000_training_images():
    from ecomp_deap.api import default_config

    assert default_config(60000).refit_images == 5000  # 100 generations x 100 images: 10000 in the subset
    assert default_config(900, batch_size=100).refit_images == 900
    assert default_config(1, batch_size=1).refit_images == 0  # nothing to fit on
    assert default_config(60000, refit_images=0).refit_images == 0  # the search without it
    default_config(60000).validate().validate_data(60000)

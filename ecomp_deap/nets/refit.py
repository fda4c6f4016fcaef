"""Closed-form refit of a pruned network's Linear layers to the parent.

Dropping hidden units leaves the next layer summing fewer inputs than it was trained
on. The refit solves, without gradient, for the weights that best restore the
parent's signals: stage by stage, from the first Linear layer whose inputs were pruned
to the output layer, on a calibration batch ``x`` of ``n`` images,

    W_k, b_k = argmin || A_k W_k^T + b_k - Z_k ||^2 + lam * ||W_k||^2

where ``A_k`` (n, kept inputs) is the *pruned* network's input to stage ``k`` (its
refitted stages below included, so errors do not accumulate) and ``Z_k`` (n, kept
outputs) the *parent's* pre-activations of the outputs the network keeps (all of them
for the output layer: its logits). ``lam`` is ``ridge`` times the mean of the diagonal
of ``A_k^T A_k`` (centred), so the setting does not depend on the activations' scale;
the bias is not penalised (the system is centred). The solve runs in float64 on a
(kept inputs)-square system. This is the
least-squares reconstruction of channel-pruning work (e.g. He et al. 2017, ThiNet), applied to every network alike:
the evolved ones (``EcompConfig.refit_images``: the final population, before the
validation choice) and the baselines (``experiments/baselines.py --refit``), so the
comparison stays fair.

Stages refitted: every ``Linear`` stage after the first (the first one's inputs are
never pruned), across ``Flatten`` too (a kept channel's H*W columns). Convolutions
after the first keep their filters as they are (refitting them is an im2col
least-squares problem of another size, not done here). BatchNorm after a refitted
Linear stays as it is: its target is the parent's pre-normalisation output.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .chain import Chain
from .forward import as_input, kept_tensors, layer, run_stage


def parent_preactivations(chain: Chain, x: torch.Tensor, weights, biases, norms) -> list[torch.Tensor]:
    """Per stage, the parent's layer output before its tail on ``x``: (n, out) for a
    Linear, (n, C, H, W) for a Conv2d."""
    out = []
    h = as_input(chain, x)
    with torch.no_grad():
        for k, st in enumerate(chain.stages):
            out.append(layer(st, h, weights[k], biases[k]))
            h, _ = run_stage(st, h, weights[k], biases[k], norms[k])
    return out


def ridge_solve(a: torch.Tensor, target: torch.Tensor, ridge: float,
                bias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(w (out, in), b (out,)) minimising ||a w^T + b - target||^2 + lam ||w||^2, with
    lam = ridge * mean(diag(a^T a)) (centred when there is a bias); float64 inside.
    ``a`` (n, in), ``target`` (n, out); ``bias=False``: b is zero (a bias-free layer)."""
    a64, t64 = a.double(), target.double()
    mean_a, mean_t = (a64.mean(0), t64.mean(0)) if bias else (a64.new_zeros(a64.shape[1]), t64.new_zeros(t64.shape[1]))
    ac, tc = a64 - mean_a, t64 - mean_t  # centring removes the (unpenalised) bias from the system
    gram = ac.T @ ac  # (in, in)
    scale = float(gram.diagonal().mean()) if gram.numel() else 0.0
    lam = ridge * scale if scale > 0 else 1.0  # all inputs constant: any weights fit; ridge picks zero
    gram.diagonal().add_(lam)
    w = torch.linalg.solve(gram, ac.T @ tc).T  # (out, in)
    b = mean_t - w @ mean_a
    return w, b


class Refit:
    """The refit of :mod:`ecomp_deap.nets.refit` on one calibration batch, as a DEAP-style
    operator: ``refit(ind)`` replaces the individual's Linear-stage tensors (new
    tensors, never written in place) and returns ``(ind,)``. The parent's
    pre-activations on ``x`` are computed once, here."""

    def __init__(self, chain: Chain, weights, biases, norms, x: torch.Tensor, ridge: float = 1e-4):
        if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge > 0):
            raise ConfigError(f"refit ridge must be a finite number > 0, got {ridge}")
        if len(x) < 2:
            raise ConfigError(f"the refit needs at least 2 calibration images, got {len(x)}")
        self.chain, self.x, self.ridge = chain, x, float(ridge)
        stages = [k for k, st in enumerate(chain.stages) if k >= 1 and st.kind == "linear"]
        preactivations = parent_preactivations(chain, x, weights, biases, norms)
        self.targets = {k: preactivations[k] for k in stages}  # only the refitted stages' (n, out)

    def __call__(self, ind):
        chain = self.chain
        last = len(chain.stages) - 1
        h, prev = as_input(chain, self.x), None
        weights, biases = list(ind.weights), list(ind.biases)
        with torch.no_grad():
            for k, st in enumerate(chain.stages):
                keep = ind.masks[k].nonzero().squeeze(1) if k < last else None
                if k in self.targets:
                    rows = keep if keep is not None else torch.arange(st.out_size)
                    target = self.targets[k].index_select(1, rows)  # (n, kept outputs)
                    w, b = ridge_solve(h.flatten(1), target, self.ridge, st.has_bias)  # (kept out, kept in * S), (kept out,)
                    if bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all()):
                        cols = st.input_columns(prev)
                        full_w, full_b = weights[k].clone(), biases[k].clone()
                        full_w[rows[:, None], cols[None, :]] = w.to(full_w.dtype)
                        full_b[rows] = b.to(full_b.dtype)
                        weights[k], biases[k] = full_w, full_b
                h, _ = run_stage(st, h, *kept_tensors(st, weights[k], biases[k], ind.norms[k], keep, prev))
                prev = keep
        ind.weights, ind.biases = weights, biases
        return (ind,)

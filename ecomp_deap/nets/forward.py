"""Functional forward passes over a :class:`~ecomp_deap.nets.chain.Chain` with the
tensors of a genome: one network on its kept groups, or a stacked population.

Layouts. One network: ``(B, C, H, W)`` feature maps or ``(B, F)`` rows, as PyTorch's
modules. A stacked population of ``P``: convolutional stages as ``(B, P*C, H, W)`` (the
population along the channels, so a stage is one grouped convolution with ``P``
groups; the first stage, whose input is shared, one ordinary convolution with ``P*C``
filters) and Linear stages as ``(P, B, F)`` (one batched matmul).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .chain import Stage


def layer(st: Stage, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One network's Conv2d or Linear with the given (possibly sliced) tensors."""
    if st.kind == "conv":
        stride, padding, dilation = st.conv_args
        return F.conv2d(h, w, b, stride, padding, dilation)  # (B, out, H', W')
    if h.dim() > 2:
        h = h.flatten(1)  # across Flatten: channel c's H*W block is columns [c*S, (c+1)*S)
    return torch.addmm(b, h, w.T)  # (B, out)


def batch_norm(h: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
    """Evaluation-mode BatchNorm with a (4, C) stack [weight, bias, running mean, running var]."""
    return F.batch_norm(h, norm[2], norm[3], norm[0], norm[1], False, 0.0, eps)


def run_stage(st: Stage, h: torch.Tensor, w, b, norm, positions=()) -> tuple[torch.Tensor, dict]:
    """One network through stage ``st``: returns its output (before any Flatten, which
    the next Linear applies) and ``{position: tensor}`` for the wanted positions (-1: the
    layer's output, i: after tail module i). Tail modules are copies with inplace off;
    an activation that has an in-place form overwrites its input where nothing else holds
    it (the same values, one pass)."""
    z = layer(st, h, w, b)
    kept = {-1: z} if -1 in positions else {}
    own = not kept  # z is a tensor of this call's that nobody else holds
    for i, op in enumerate(st.tail):
        before = z
        if op.kind == "norm":
            z = batch_norm(z, norm, op.module.eps)
        elif isinstance(op.module, nn.MaxPool2d):
            # the same maxima, faster from a channels-last copy on the CPU; back to
            # the usual layout so that what follows computes exactly as the exported module
            z = op.module(z.contiguous(memory_format=torch.channels_last)).contiguous()
        elif own and op.overwriting is not None:
            z = op.overwriting(z)
        elif op.kind in ("act", "pool"):
            z = op.module(z)
        # 'drop' is the identity at evaluation; 'flatten' only reshapes (done by the next layer)
        own = own or z is not before  # a new tensor (an Identity returns its input)
        if i in positions:
            kept[i] = z
            own = False
    return z, kept


def kept_tensors(st: Stage, w, b, norm, keep, prev):
    """A stage's tensors cut to one network: rows (filters), biases and BatchNorm entries
    of the ``keep`` output groups (None: all), input columns of the ``prev`` kept groups
    of the stage below (None: all). Returns (w, b, norm)."""
    if keep is not None:
        w, b = w.index_select(0, keep), b.index_select(0, keep)
        norm = norm.index_select(1, keep) if norm is not None else None
    if prev is not None:
        w = w.index_select(1, st.input_columns(prev))  # (h_k, h_{k-1} * S[, kh, kw])
    return w, b, norm


def recalibrated_norms(chain, x: torch.Tensor, weights, biases, norms, masks) -> list:
    """Per stage, the BatchNorm stack (4, out) with the running mean and variance of the
    kept channels replaced by their statistics on ``x`` in the network the masks keep
    (what a BatchNorm in training mode would accumulate over ``x``: the unbiased
    variance); None where a stage has no BatchNorm. The first stage's stacks are
    returned as they are (the same tensors): its inputs are never pruned."""
    new = list(norms)
    h, prev = as_input(chain, x), None
    last = len(chain.stages) - 1
    for k, st in enumerate(chain.stages):
        keep = masks[k].nonzero().squeeze(1) if k < last else None
        w, b, n = kept_tensors(st, weights[k], biases[k], norms[k], keep, prev)
        z = layer(st, h, w, b)
        for op in st.tail:
            if op.kind == "norm":
                if k > 0:
                    dims = [0, *range(2, z.dim())]  # all but the channel
                    count = z.numel() // z.shape[1]
                    z64 = z.double()
                    mean = z64.mean(dims)
                    var = z64.var(dims, correction=1 if count > 1 else 0)
                    n = n.clone()
                    n[2], n[3] = mean.float(), var.float()
                    full = norms[k].clone()
                    full[:, keep] = n
                    new[k] = full
                z = batch_norm(z, n, op.module.eps)
            elif op.kind in ("act", "pool"):
                z = op.module(z)
        h, prev = z, keep
    return new


def network_forward(chain, x: torch.Tensor, weights, biases, norms, masks=None) -> torch.Tensor:
    """Logits (B, K) of one network (``masks``: per hidden stage a (H,) bool, the groups
    kept; None: all). The reference for tests: the evaluator's paths and the exported
    module must agree with it."""
    h, prev = as_input(chain, x), None
    last = len(chain.stages) - 1
    for k, st in enumerate(chain.stages):
        keep = masks[k].nonzero().squeeze(1) if masks is not None and k < last else None
        h, _ = run_stage(st, h, *kept_tensors(st, weights[k], biases[k], norms[k], keep, prev))
        prev = keep
    return h.reshape(h.shape[0], -1)


def as_input(chain, x: torch.Tensor) -> torch.Tensor:
    """The batch as the first layer takes it: rows for a Linear, images for a Conv2d."""
    if chain.stages[0].kind == "linear":
        return x.reshape(x.shape[0], -1)  # (B, in)
    return x.reshape(x.shape[0], *chain.input_shape)  # (B, C, H, W)


def stacked_stage(st: Stage, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm, mask, shared: bool,
                  positions=()) -> tuple[torch.Tensor, dict]:
    """A population of P through stage ``st`` (layouts in the module docstring).

    w: (P, out, in[, kh, kw]); b: (P, out); norm: (P, 4, out) or None; mask: (P, out)
    float or None (the output stage); ``shared``: ``h`` is the common input (B, ...) of
    every individual. Masked groups are zeroed after the layer and after every tail
    module (BatchNorm and some activations map 0 to non-zero)."""
    P, out = w.shape[:2]
    if st.kind == "conv":
        stride, padding, dilation = st.conv_args
        z = F.conv2d(h, w.reshape(P * out, *w.shape[2:]), b.reshape(-1), stride, padding, dilation,
                     1 if shared else P)  # (B, P*out, H', W')
        m = mask.reshape(1, P * out, 1, 1) if mask is not None else None
    else:
        if shared:
            h = h.reshape(h.shape[0], -1).expand(P, h.shape[0], -1)  # (P, B, in), a view
        elif h.dim() == 4:  # conv layout -> rows: individual p's channels, flattened
            h = h.reshape(h.shape[0], P, -1).transpose(0, 1)  # (P, B, out_below * S)
        z = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))  # (P, B, out)
        m = mask[:, None, :] if mask is not None else None
    if m is not None:
        z = z * m
    kept = {-1: z} if -1 in positions else {}
    for i, op in enumerate(st.tail):
        if op.kind == "norm":
            eps = op.module.eps
            if z.dim() == 4:
                z = F.batch_norm(z, norm[:, 2].reshape(-1), norm[:, 3].reshape(-1), norm[:, 0].reshape(-1),
                                 norm[:, 1].reshape(-1), False, 0.0, eps)
            else:
                g, be, mu, var = (norm[:, j, None, :] for j in range(4))  # (P, 1, out) each
                z = (z - mu) / torch.sqrt(var + eps) * g + be
        elif op.kind in ("act", "pool"):
            z = op.module(z)
        if m is not None and op.kind in ("norm", "act", "pool"):
            z = z * m
        if i in positions:
            kept[i] = z
    return z, kept


def per_individual(z: torch.Tensor, P: int) -> torch.Tensor:
    """A stacked stage output as (P, B, features): conv layout (B, P*C, H, W) is split
    by individual and flattened; rows (P, B, F) are returned as they are."""
    if z.dim() == 4:
        return z.reshape(z.shape[0], P, -1).transpose(0, 1)
    return z

"""Where a network is cut: a parent ``nn.Sequential`` read as a chain of stages.

A *stage* is one ``Conv2d`` or ``Linear`` layer and the modules after it up to the
next one (its *tail*): BatchNorm, elementwise activations, pooling, Dropout,
Flatten. Every stage but the last is a *group layer*: its output channels (Conv2d)
or units (Linear) are the **groups** that masks keep or drop. Dropping group ``c``
of stage ``k`` cuts, together::

    stage k     row c of the weight (a Conv2d filter, or a Linear row), bias c,
                the BatchNorm entries c (weight, bias, running mean and variance)
    stage k+1   input channel c (Conv2d), input column c (Linear after Linear), or,
                across Flatten, the S = H*W input columns [c*S, (c+1)*S) of the Linear

Activations, pooling and Dropout act per channel and need no cut. That walk is all
the dependency analysis a chain needs (Torch-Pruning's dependency graph, reduced to
sequential models). Supported: ``Conv2d`` (groups=1, any kernel, stride, padding,
dilation, bias or not), ``BatchNorm2d``/``BatchNorm1d`` after their layer, elementwise
activations, ``MaxPool2d``/``AvgPool2d``/``AdaptiveAvgPool2d``, ``Dropout``/``Dropout2d``
(identity at evaluation), ``Flatten``, ``Linear``. Anything else is refused by name.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ParentError

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.SiLU,
               nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Identity, nn.CELU)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
DROPOUTS = (nn.Dropout, nn.Dropout2d)
NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)
SUPPORTED = ("Conv2d (groups=1), Linear, BatchNorm2d, BatchNorm1d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
             "Dropout, Dropout2d, Flatten and elementwise activations ("
             + ", ".join(c.__name__ for c in ELEMENTWISE) + ")")


@dataclass(frozen=True)
class TailOp:
    """One module after a stage's layer. kind: 'norm' | 'act' | 'pool' | 'drop' | 'flatten'."""

    name: str
    kind: str
    module: nn.Module  # an eval-mode copy (norm: the template for export; its tensors live in genomes)
    overwriting: nn.Module | None = None  # an activation that can work in place: a copy that does


def _overwriting(mod: nn.Module) -> nn.Module | None:
    """A copy of ``mod`` that overwrites its input (``inplace`` on: ReLU, ELU, SiLU, ...),
    or None for a module that has no in-place form."""
    if not hasattr(mod, "inplace"):
        return None
    twin = copy.deepcopy(mod)
    twin.inplace = True
    return twin


@dataclass(frozen=True)
class Stage:
    """One Conv2d or Linear layer of the parent and its tail."""

    name: str
    kind: str  # 'conv' | 'linear'
    in_size: int  # input channels / features
    out_size: int  # output channels / units: the groups of a hidden stage
    has_bias: bool
    tail: tuple[TailOp, ...]
    in_repeat: int = 1  # input columns per group of the stage below (H*W across Flatten)
    conv_args: tuple = ()  # (stride, padding, dilation) of a Conv2d
    kernel_size: tuple[int, ...] = ()
    out_hw: tuple[int, int] = (1, 1)  # spatial size of a Conv2d's output (its MACs scale with it)

    @property
    def norm(self) -> TailOp | None:
        """The tail's BatchNorm, or None."""
        return next((op for op in self.tail if op.kind == "norm"), None)

    @property
    def flattens(self) -> bool:
        """Whether the tail holds a Flatten."""
        return any(op.kind == "flatten" for op in self.tail)

    def input_columns(self, kept_below: torch.Tensor) -> torch.Tensor:
        """The input positions (dim 1 of the weight) fed by the kept groups of the stage
        below, (h,) -> (h * in_repeat,): a channel's H*W block across Flatten."""
        if self.in_repeat == 1:
            return kept_below
        offsets = torch.arange(self.in_repeat, device=kept_below.device)
        return (kept_below[:, None] * self.in_repeat + offsets).reshape(-1)

    def sizes(self, n_in: int, n_out: int) -> tuple[int, int]:
        """(parameters, multiply-adds per example) of this stage with ``n_in`` kept groups
        below (times in_repeat columns each) and ``n_out`` kept outputs."""
        fan_in = n_in * self.in_repeat
        per_out = fan_in * math.prod(self.kernel_size)  # () for a Linear: 1
        params = n_out * per_out + (n_out if self.has_bias else 0)
        norm = self.norm
        if norm is not None and getattr(norm.module, "affine", False):
            params += 2 * n_out
        macs = n_out * per_out * self.out_hw[0] * self.out_hw[1]
        return params, macs


@dataclass(frozen=True)
class Chain:
    """A parent read as stages; stage ``k < n_hidden`` is group layer ``k``."""

    stages: tuple[Stage, ...]
    pre: tuple[TailOp, ...]  # modules before the first layer (Flatten, Dropout)
    input_shape: tuple[int, ...]  # one example's shape as the first layer takes it
    n_classes: int

    # ------------------------------------------------------------------ shape
    kind = "chain"  # what config.validate_for and the entry points tell apart

    @property
    def n_hidden(self) -> int:
        """Group layers: every stage but the output layer."""
        return len(self.stages) - 1

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """Groups (units or channels) of each hidden stage: (H_0, ..., H_{n_hidden - 1})."""
        return tuple(st.out_size for st in self.stages[:-1])

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' layer names, the output layer last."""
        return tuple(st.name for st in self.stages)

    @property
    def is_conv(self) -> bool:
        """Whether any stage is a Conv2d."""
        return any(st.kind == "conv" for st in self.stages)

    @property
    def is_mlp(self) -> bool:
        """Linear layers only (the reference's kind of parent)."""
        return not self.is_conv

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every module's name in order: those before the first layer, then each stage's
        layer and its tail."""
        names = [op.name for op in self.pre]
        for st in self.stages:
            names += [st.name] + [op.name for op in st.tail]
        return tuple(names)

    @property
    def group_kind(self) -> str:
        """What the groups are called in messages: 'units' (an MLP) or 'channels+units' (a CNN)."""
        return "channels+units" if self.is_conv else "units"

    def largest_feature_map(self) -> int:
        """Elements of one example's largest stage output (bounds a forward's memory)."""
        return max(st.out_size * st.out_hw[0] * st.out_hw[1] for st in self.stages)

    def describe(self) -> str:
        """e.g. 'conv 1->16 | conv 16->32 | linear 1568->64 | linear 64->10'."""
        return " | ".join(f"{st.kind} {st.in_size}->{st.out_size}" for st in self.stages)

    # ------------------------------------------------------------- embeddings
    def embedding_index(self, name: str) -> tuple[int, int]:
        """(stage k, position) of a hidden layer's output: position -1 is the stage's
        layer itself (before its tail), i the output of tail module i."""
        for k, st in enumerate(self.stages[:-1]):
            if name == st.name:
                return k, -1
            for i, op in enumerate(st.tail):
                if op.name == name:
                    return k, i
        raise KeyError(name)

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """Every layer name whose output can enter the similarity loss."""
        return tuple(n for st in self.stages[:-1] for n in (st.name, *(op.name for op in st.tail)))

    def default_embeddings(self) -> tuple[str, ...]:
        """Per hidden stage, its output as the next layer sees it: the last tail module
        that changes values (an MLP: the activation; a conv block: its pooling)."""
        names = []
        for st in self.stages[:-1]:
            ops = [op for op in st.tail if op.kind not in ("flatten", "drop")]
            names.append(ops[-1].name if ops else st.name)
        return tuple(names)

    # ------------------------------------------------------------------ sizes
    def sizes(self, kept=None) -> tuple[int, int]:
        """(parameters, multiply-adds per example) with ``kept`` groups per hidden stage
        (counts, or (H_l,) bool masks; None: the parent)."""
        kept = [int(k.sum()) if isinstance(k, torch.Tensor) else k for k in (self.hidden_widths if kept is None
                                                                               else kept)]
        n_in = self.stages[0].in_size
        params = macs = 0
        for k, st in enumerate(self.stages):
            n_out = kept[k] if k < self.n_hidden else st.out_size
            p, m = st.sizes(n_in, n_out)
            params, macs = params + p, macs + m
            n_in = n_out
        return params, macs

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_module(cls, model: nn.Module, input_shape=None) -> "Chain":
        """Read a parent. ``input_shape``: one example's shape, needed for a convolutional
        parent (the sizes of its feature maps); an MLP's follows from its first Linear."""
        check_layers(model)
        children = list(model.named_children())
        if not children:
            raise ParentError("parent nn.Sequential is empty")
        first_layer = next((m for _, m in children if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if first_layer is None:
            raise ParentError("parent has no Conv2d or Linear layer")
        if input_shape is None:
            if isinstance(first_layer, nn.Conv2d):
                raise ParentError("a convolutional parent needs the input shape (C, H, W) of one example")
            input_shape = (first_layer.in_features,)
        input_shape = tuple(int(s) for s in input_shape)
        return _parse(children, input_shape)


def check_layers(model: nn.Module) -> None:
    """Refuse, by name, what no chain can hold (the shapes are checked by
    :meth:`Chain.from_module`, once the input shape is known)."""
    if not isinstance(model, nn.Sequential):
        raise ParentError(f"parent must be an nn.Sequential chain, got {type(model).__name__} "
                          f"(residual adds, branches and custom forwards are not supported)")
    for name, mod in model.named_children():
        _check_supported(name, mod)


def _check_supported(name: str, mod: nn.Module) -> None:
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise ParentError(f"parent layer {name!r} is a grouped or depthwise Conv2d (groups={mod.groups}); "
                              f"only groups=1 is supported")
        if mod.padding_mode != "zeros":
            raise ParentError(f"parent layer {name!r}: Conv2d padding_mode {mod.padding_mode!r} is not supported "
                              f"(only 'zeros')")
        return
    if isinstance(mod, NORMS):
        if mod.running_mean is None or mod.running_var is None:
            raise ParentError(f"parent layer {name!r}: {type(mod).__name__} without running statistics "
                              f"(track_running_stats=False) is not supported")
        return
    if isinstance(mod, (nn.Linear, nn.Flatten, *ELEMENTWISE, *POOLS, *DROPOUTS)):
        if isinstance(mod, nn.Flatten) and (mod.start_dim != 1 or mod.end_dim != -1):
            raise ParentError(f"parent layer {name!r}: only Flatten(start_dim=1, end_dim=-1) is supported")
        return
    raise ParentError(f"parent layer {name!r} is {type(mod).__name__}, which is not supported; supported "
                      f"layers: {SUPPORTED}")


def _op_kind(mod: nn.Module) -> str:
    if isinstance(mod, NORMS):
        return "norm"
    if isinstance(mod, POOLS):
        return "pool"
    if isinstance(mod, DROPOUTS):
        return "drop"
    if isinstance(mod, nn.Flatten):
        return "flatten"
    return "act"


def _parse(children, input_shape) -> Chain:
    """Walk the chain once on a dummy example, recording shapes and checking couplings."""
    h = torch.zeros(1, *input_shape)
    pre: list[TailOp] = []
    stages: list[dict] = []  # stage fields, the tail as a list while it grows
    flat_from: int | None = None  # spatial size S of the feature map a Flatten turned into columns
    with torch.no_grad():
        for name, mod in children:
            mod = copy.deepcopy(mod).cpu().float().eval()
            if hasattr(mod, "inplace"):  # the evaluator keeps a module's input (pre-activation embeddings)
                mod.inplace = False
            where = f"parent layer {name!r} ({type(mod).__name__})"
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                prev = stages[-1] if stages else None
                if isinstance(mod, nn.Conv2d):
                    if h.dim() != 4:
                        raise ParentError(f"{where} follows a flat input; a Conv2d needs (C, H, W) feature maps"
                                          + ("" if stages else f" but the input is {tuple(input_shape)}"))
                    in_size, got = mod.in_channels, h.shape[1]
                    repeat = 1
                else:
                    if h.dim() != 2:
                        if stages:
                            raise ParentError(f"{where} follows a {h.dim() - 1}-d feature map; put a Flatten "
                                              f"before it")
                        h = h.reshape(1, -1)  # an MLP's images are flattened, as the evaluator does
                    in_size, got = mod.in_features, h.shape[1]
                    repeat = flat_from if (prev is not None and flat_from) else 1
                if got != in_size:
                    raise ParentError(f"{where} takes {in_size} input {'channels' if isinstance(mod, nn.Conv2d) else 'features'} "
                                      f"but {'the layer before gives' if stages else 'the input has'} {got}")
                if prev is not None and prev["out_size"] * repeat != in_size:
                    raise ParentError(f"{where} takes {in_size} inputs, which is not {prev['out_size']} channels of "
                                      f"the layer before times {repeat}")
                h = mod(h)
                conv = isinstance(mod, nn.Conv2d)
                stages.append(dict(
                    name=name, kind="conv" if conv else "linear", in_size=mod.in_channels if conv else mod.in_features,
                    out_size=mod.out_channels if conv else mod.out_features, has_bias=mod.bias is not None, tail=[],
                    in_repeat=repeat, conv_args=(mod.stride, mod.padding, mod.dilation) if conv else (),
                    kernel_size=tuple(mod.kernel_size) if conv else (),
                    out_hw=tuple(h.shape[2:]) if conv else (1, 1)))
                flat_from = None
                continue
            kind = _op_kind(mod)
            if not stages:
                if kind not in ("flatten", "drop"):
                    raise ParentError(f"{where} comes before the first Conv2d/Linear; only Flatten or Dropout may")
                if kind == "flatten":
                    h = mod(h)
                pre.append(TailOp(name, kind, mod))
                continue
            st = stages[-1]
            if kind == "norm":
                if any(op.kind == "flatten" for op in st["tail"]) and st["kind"] == "conv":
                    raise ParentError(f"{where} normalises flattened feature maps; only per-channel "
                                      f"BatchNorm (before Flatten) is supported")
                want = nn.BatchNorm2d if st["kind"] == "conv" and h.dim() == 4 else nn.BatchNorm1d
                if not isinstance(mod, want):
                    raise ParentError(f"{where} is not a per-channel normalisation of {st['name']!r} "
                                      f"(expected {want.__name__} directly on its output)")
                if mod.num_features != st["out_size"]:
                    raise ParentError(f"{where} has {mod.num_features} features but {st['name']!r} gives "
                                      f"{st['out_size']}")
                if any(op.kind == "norm" for op in st["tail"]):
                    raise ParentError(f"{where}: a second BatchNorm after {st['name']!r} is not supported")
            if kind == "pool" and h.dim() != 4:
                raise ParentError(f"{where} needs (C, H, W) feature maps")
            if kind == "flatten":
                if h.dim() == 4:
                    flat_from = h.shape[2] * h.shape[3]
                elif h.dim() != 2:
                    raise ParentError(f"{where}: unexpected input of {h.dim()} dims")
            try:
                h = mod(h)
            except Exception as e:  # e.g. a pooling window larger than the feature map
                raise ParentError(f"{where} fails on the output of {st['name']!r}: {e}") from None
            st["tail"].append(TailOp(name, kind, mod, _overwriting(mod) if kind == "act" else None))
    if len(stages) < 2:
        raise ParentError("parent has no hidden Conv2d or Linear layer to compress")
    if h.dim() != 2:
        raise ParentError(f"parent must end in class scores (batch, classes); it ends in shape {tuple(h.shape[1:])} "
                          f"(add a Flatten / a Linear classifier)")
    last = stages[-1]
    if any(op.kind == "norm" for op in last["tail"]):
        raise ParentError(f"parent: BatchNorm after the output layer {last['name']!r} is not supported")
    built = tuple(Stage(**{**s, "tail": tuple(s["tail"])}) for s in stages)
    return Chain(built, tuple(pre), input_shape, int(h.shape[1]))


def parent_input_shape(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """One example's shape as a convolutional parent takes it: the data's own (C, H, W)
    (None for an MLP, whose first Linear fixes it)."""
    conv = next((m for m in model.children() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return None
    if x.dim() != 4:
        raise ConfigError(f"a convolutional parent takes images (N, C, H, W); the data has shape {tuple(x.shape)}")
    return tuple(x.shape[1:])


def parent_tensors(model: nn.Module, chain: Chain):
    """The parent's per-stage tensors, detached float32 CPU copies: weights (out, in[, kh,
    kw]), biases (out,) (zeros for a bias-free layer) and norms, a (4, out) stack of
    BatchNorm weight, bias, running mean and running variance (None without BatchNorm)."""
    mods = dict(model.named_children())
    weights, biases, norms = [], [], []
    for st in chain.stages:
        layer = mods[st.name]
        w = layer.weight.detach().to("cpu", torch.float32).clone()
        weights.append(w)
        biases.append(layer.bias.detach().to("cpu", torch.float32).clone() if layer.bias is not None
                      else torch.zeros(w.shape[0]))
        norm = st.norm
        if norm is None:
            norms.append(None)
            continue
        bn = mods[norm.name]
        gamma = bn.weight.detach() if bn.affine else torch.ones(st.out_size)
        beta = bn.bias.detach() if bn.affine else torch.zeros(st.out_size)
        norms.append(torch.stack([gamma, beta, bn.running_mean, bn.running_var]).to("cpu", torch.float32).clone())
    return weights, biases, norms

"""The structure of a parent MLP, read off an ``nn.Sequential``.

Supported parents: an optional leading ``Flatten``, then ``(Linear, activation)``
pairs for the hidden layers (any widths), then the output ``Linear``. The
activation must be elementwise (ReLU, GELU, Tanh, ...), so it applies unchanged to
a batched ``(P, B, H)`` tensor. Hidden layer ``l`` is the output of the ``l``-th
Linear; its units are what masks keep or drop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ParentError

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.SiLU,
               nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Identity, nn.CELU)


@dataclass(frozen=True)
class MLPArchitecture:
    linear_names: tuple[str, ...]   # every Linear, the output last
    act_names: tuple[str, ...]      # one per hidden layer
    widths: tuple[int, ...]         # (in_features, H_1, ..., H_L, n_classes)
    flatten_name: str | None
    activations: tuple[nn.Module, ...]

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        return self.widths[1:-1]

    @property
    def n_hidden(self) -> int:
        return len(self.act_names)

    @property
    def in_features(self) -> int:
        return self.widths[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example input shape for data checks: an MLP flattens each example, so any
        shape holding ``in_features`` values fits (see :mod:`ecomp_deap.validation`)."""
        return (self.in_features,)

    @property
    def n_classes(self) -> int:
        return self.widths[-1]

    @property
    def layer_names(self) -> tuple[str, ...]:
        names = [self.flatten_name] if self.flatten_name else []
        for lin, act in zip(self.linear_names, self.act_names):
            names += [lin, act]
        return tuple(names + [self.linear_names[-1]])

    def embedding_index(self, name: str) -> tuple[int, str]:
        """Hidden layer index and 'linear' (pre-activation) or 'act' for an embedding layer name."""
        if name in self.act_names:
            return self.act_names.index(name), "act"
        if name in self.linear_names[:-1]:
            return self.linear_names.index(name), "linear"
        raise KeyError(name)

    @classmethod
    def from_module(cls, model: nn.Module) -> "MLPArchitecture":
        if not isinstance(model, nn.Sequential):
            raise ParentError(f"parent must be an nn.Sequential MLP, got {type(model).__name__}")
        children = list(model.named_children())
        flatten_name = None
        if children and isinstance(children[0][1], nn.Flatten):
            flatten_name = children.pop(0)[0]
        if not children or len(children) % 2 == 0:
            raise ParentError("parent must be [Flatten,] (Linear, activation)* Linear; got layers "
                              + ", ".join(f"{n}:{type(m).__name__}" for n, m in model.named_children()))
        linears, acts, act_mods = [], [], []
        for i, (name, mod) in enumerate(children):
            if i % 2 == 0:
                if not isinstance(mod, nn.Linear):
                    raise ParentError(f"parent layer {name!r} is {type(mod).__name__}, expected Linear")
                if mod.bias is None:
                    raise ParentError(f"parent layer {name!r} has no bias; bias-free Linear layers are not supported")
                linears.append((name, mod))
            else:
                if not isinstance(mod, ELEMENTWISE):
                    raise ParentError(f"parent layer {name!r} is {type(mod).__name__}, expected an elementwise "
                                      f"activation ({', '.join(c.__name__ for c in ELEMENTWISE)})")
                acts.append(name)
                act_mods.append(mod)
        widths = [linears[0][1].in_features]
        for name, lin in linears:
            if lin.in_features != widths[-1]:
                raise ParentError(f"parent layer {name!r} takes {lin.in_features} inputs but the previous "
                                  f"layer gives {widths[-1]}")
            widths.append(lin.out_features)
        if len(linears) < 2:
            raise ParentError("parent has no hidden layer to compress")
        return cls(tuple(n for n, _ in linears), tuple(acts), tuple(widths), flatten_name, tuple(act_mods))


def parent_tensors(model: nn.Module, arch: MLPArchitecture) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parent's Linear weights (out, in) and biases (out,), detached float32 CPU copies."""
    mods = dict(model.named_children())
    weights = [mods[n].weight.detach().to("cpu", torch.float32).clone() for n in arch.linear_names]
    biases = [mods[n].bias.detach().to("cpu", torch.float32).clone() for n in arch.linear_names]
    return weights, biases

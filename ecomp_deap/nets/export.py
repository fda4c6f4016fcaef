"""Genome -> a physically smaller ``nn.Sequential``, and its saved form.

Compression is real slicing, along the coupling that :mod:`ecomp_deap.nets.chain`
describes: stage ``k``'s kept filters or rows, their biases and BatchNorm entries, and
stage ``k+1``'s matching input channels or columns (a channel's H*W block across
Flatten) are cut together, so the exported module computes exactly what the masked
forward computes.
"""
from __future__ import annotations

import copy
import inspect
import io
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..errors import ParentError, UnsafeFileError
from ..files import save_torch
from .chain import DROPOUTS, ELEMENTWISE, NORMS, POOLS
from .graph import pruned_copy, replay
from .safe_load import archive_damage, load_untrusted

FORMAT = "ecomp_deap.exported/2"
COMPRESSED_FORMAT = "ecomp_deap.compressed/1"  # a pruned module of a user's own class
# The module types a saved network may name: what a chain may hold, nothing else.
LOADABLE = {cls.__name__: cls for cls in (nn.Linear, nn.Conv2d, nn.Flatten, *NORMS, *POOLS, *DROPOUTS, *ELEMENTWISE)}


def export_individual(ind, chain):
    """The individual as a dense module holding its kept groups only: for a chain, an
    ``nn.Sequential``; for a graph parent, a pruned copy of the parent's own class (its
    pruning history in ``module.ecomp_compressed``, for :func:`save_network`)."""
    if chain.kind == "graph":
        module, history = pruned_copy(chain, list(ind.weights), ind.masks)
        module.ecomp_compressed = {"history": history, "input_shape": list(chain.input_shape)}
        return module
    layers: list[tuple[str, nn.Module]] = [(op.name, copy.deepcopy(op.module)) for op in chain.pre]
    prev = None  # kept group indices of the stage below
    for k, st in enumerate(chain.stages):
        keep = ind.masks[k].nonzero().squeeze(1) if k < chain.n_hidden else torch.arange(st.out_size)
        w = ind.weights[k].index_select(0, keep)
        if prev is not None:
            w = w.index_select(1, st.input_columns(prev))  # (kept out, kept in * S[, kh, kw])
        if st.kind == "conv":
            stride, padding, dilation = st.conv_args
            layer = nn.Conv2d(w.shape[1], w.shape[0], st.kernel_size, stride, padding, dilation, bias=st.has_bias)
        else:
            layer = nn.Linear(w.shape[1], w.shape[0], bias=st.has_bias)
        with torch.no_grad():
            layer.weight.copy_(w)
            if st.has_bias:
                layer.bias.copy_(ind.biases[k].index_select(0, keep))
        layers.append((st.name, layer))
        for op in st.tail:
            if op.kind == "norm":
                layers.append((op.name, _sliced_norm(op.module, ind.norms[k].index_select(1, keep))))
            else:
                layers.append((op.name, copy.deepcopy(op.module)))
        prev = keep
    return nn.Sequential(OrderedDict(layers)).eval()


def _sliced_norm(template: nn.Module, norm: torch.Tensor) -> nn.Module:
    """A BatchNorm like ``template`` over the kept channels; ``norm`` (4, kept)."""
    bn = type(template)(norm.shape[1], eps=template.eps, momentum=template.momentum, affine=template.affine,
                        track_running_stats=True)
    with torch.no_grad():
        if template.affine:
            bn.weight.copy_(norm[0])
            bn.bias.copy_(norm[1])
        bn.running_mean.copy_(norm[2])
        bn.running_var.copy_(norm[3])
        bn.num_batches_tracked.copy_(template.num_batches_tracked)
    return bn


def count_parameters(model: nn.Module) -> int:
    """Scalars in ``model``'s parameters (buffers such as BatchNorm running statistics not counted)."""
    return sum(p.numel() for p in model.parameters())


def module_spec(mod: nn.Module) -> dict:
    """A module's type and constructor arguments as plain data."""
    cls = type(mod)
    if cls.__name__ not in LOADABLE:
        raise ParentError(f"cannot save a {cls.__name__} layer (supported: {', '.join(LOADABLE)})")
    args = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "bias":  # a flag in the constructor, a tensor (or None) on the module
            args[name] = getattr(mod, "bias", None) is not None
        elif name == "inplace":
            args[name] = False
        elif hasattr(mod, name):
            args[name] = getattr(mod, name)
    return {"type": cls.__name__, "args": args}


def save_exported(path, model: nn.Sequential, extra: dict | None = None) -> None:
    """Save an exported module as its layers' types and arguments plus its state dict:
    plain data that :func:`load_exported` reads with ``weights_only=True``."""
    layers = [{"name": name, **module_spec(mod)} for name, mod in model.named_children()]
    blob = {"format": FORMAT, "layers": layers, "state_dict": model.state_dict(), **(extra or {})}
    save_torch(path, blob)


def read_network_file(path, what: str):
    """What a saved network file holds, read with ``weights_only=True`` after its archive's
    checksums are checked: a file cut short, with a flipped bit or not a torch file at all
    is one :class:`~ecomp_deap.errors.ParentError` line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParentError(f"{path}: cannot read it ({e.strerror or e})") from None
    damaged = (f"{path}: damaged {what} ({{}}); if it is a run's network, delete it and the run's .json "
               "to restart that run (run.py --resume)")
    damage = archive_damage(data)
    if damage is not None:
        raise ParentError(damaged.format(damage))
    try:
        return load_untrusted(io.BytesIO(data), opt_in=None, what=what, name=str(path))
    except UnsafeFileError:
        raise
    except Exception as e:  # not a torch file at all
        raise ParentError(damaged.format(f"unreadable: {type(e).__name__}")) from None


def load_exported(path) -> nn.Sequential:
    """Rebuild a module written by :func:`save_exported` (e.g. ``OUT/NAME/run_0.pt``); a file
    cut short or with a flipped bit is one :class:`~ecomp_deap.errors.ParentError` line."""
    blob = read_network_file(path, "exported network")
    if isinstance(blob, dict) and blob.get("format") == COMPRESSED_FORMAT:
        raise ParentError(f"{path} holds a compressed {blob.get('class', 'network')} of your own class: load it "
                          "with ecomp_deap.load_compressed(build_model, path), build_model making the parent's "
                          "architecture")
    if isinstance(blob, dict) and blob.get("format") == "ecomp_deap.exported/1":
        return _load_v1(blob)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ParentError(f"{path}: not an exported ecomp_deap network")
    layers = []
    for spec in blob["layers"]:
        cls = LOADABLE.get(spec["type"])
        if cls is None:
            raise ParentError(f"{path}: layer {spec['name']!r} has unsupported type {spec['type']!r}")
        layers.append((spec["name"], cls(**spec["args"])))
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def _load_v1(blob: dict) -> nn.Sequential:
    """The MLP-only format of earlier versions: widths, layer names, activation names."""
    widths, names, acts = blob["widths"], blob["layer_names"], blob["activations"]
    layers: list[tuple[str, nn.Module]] = []
    it = iter(names)
    if len(names) == 2 * (len(widths) - 1):  # leading Flatten
        layers.append((next(it), nn.Flatten()))
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append((next(it), nn.Linear(a, b)))
        if k < len(widths) - 2:
            layers.append((next(it), LOADABLE[acts[k]]()))
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def save_compressed(path, model: nn.Module, extra: dict | None = None) -> None:
    """Save a pruned copy of a graph parent (:func:`export_individual`) as plain data: its
    state dict, its pruning history and input shape (no pickled code);
    :func:`load_compressed` rebuilds it from the parent's constructor."""
    info = model.ecomp_compressed
    blob = {"format": COMPRESSED_FORMAT, "class": type(model).__name__, "history": info["history"],
            "input_shape": list(info["input_shape"]), "state_dict": model.state_dict(), **(extra or {})}
    save_torch(path, blob)


def load_compressed(build_model, path) -> nn.Module:
    """The compressed network saved in ``path`` (:func:`save_compressed`, e.g. a run's
    ``run_K.pt`` of a graph parent), rebuilt without unpickling code: ``build_model()``
    makes the parent's architecture (its weights do not matter), which is pruned as
    recorded, then given the saved weights."""
    blob = read_network_file(path, "compressed network")
    if not isinstance(blob, dict) or blob.get("format") != COMPRESSED_FORMAT:
        raise ParentError(f"{path}: not a compressed network of ecomp_deap (an nn.Sequential export loads with "
                          "ecomp_deap.nets.export.load_exported)")
    model = build_model()
    if not isinstance(model, nn.Module):
        raise ParentError(f"build_model() must return an nn.Module, got {type(model).__name__}")
    try:
        model = replay(model, blob["history"], blob["input_shape"])
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, AttributeError, KeyError, ValueError) as e:
        raise ParentError(f"{path}: build_model() does not make the architecture this network was compressed from "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model.ecomp_compressed = {"history": blob["history"], "input_shape": blob["input_shape"]}
    return model.eval()


def save_network(path, model: nn.Module, extra: dict | None = None) -> None:
    """:func:`save_compressed` for a graph parent's network, :func:`save_exported` for a chain's."""
    if hasattr(model, "ecomp_compressed"):
        save_compressed(path, model, extra)
    else:
        save_exported(path, model, extra)

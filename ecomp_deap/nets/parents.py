"""Parent networks: the MLP and CNN factories, training, and the weights cache.

The cache key hashes the architecture, the training settings, the seed and the
data fingerprint, so a second run with the same settings loads instead of training.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ParentError, UnsafeFileError
from ..files import save_torch
from .safe_load import archive_damage, load_untrusted

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU}


ARCHS = ("mlp", "cnn", "resnet")
DEFAULT_CNN_CHANNELS = (16, 32)
DEFAULT_CNN_HIDDEN = (64,)
DEFAULT_CNN_EPOCHS = 5
DEFAULT_RESNET_CHANNELS = (16, 32, 64)
DEFAULT_RESNET_BLOCKS = 3
DEFAULT_RESNET_EPOCHS = 10
DEFAULT_RESNET_SCHEDULE = "cosine"  # a constant rate fell short of 0.92 (docs/results.md)
SCHEDULES = ("constant", "cosine")
RESNET_STEM_STRIDE = 2  # 28 x 28 images: the stages at 14, 7 and 4 pixels


@dataclass(frozen=True)
class ParentSpec:
    """How to build and train a parent (the reference MLP: 784-256-256-10, ReLU, Adam
    1e-3, 4 epochs). ``arch='cnn'``: ``channels`` are the convolution blocks' widths
    (each Conv 3x3 pad 1 - BatchNorm - activation - MaxPool 2), ``hidden`` the Linear
    layers after Flatten; ``arch='resnet'``: a :class:`~ecomp_deap.nets.resnet.ResNet` of
    ``blocks`` BasicBlocks per stage at ``channels`` (``hidden`` unused); images are square
    with one channel (side sqrt(in_features))."""

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    in_features: int = 784
    n_classes: int = 10
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 100
    seed: int = 0
    arch: str = "mlp"
    channels: tuple[int, ...] = ()
    blocks: int = 0  # BasicBlocks per stage of a ResNet parent
    schedule: str = "constant"  # the learning rate over training: constant, or cosine decay to 0 per step

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.arch not in ARCHS:
            raise ParentError(f"unknown parent architecture {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.arch in ("cnn", "resnet") and (not self.channels or any(c < 1 for c in self.channels)):
            raise ParentError(f"a {self.arch.upper()} parent needs positive channel widths, got {list(self.channels)}")
        if self.arch == "mlp" and self.channels:
            raise ParentError("channels are for --arch cnn or resnet")
        if self.arch == "resnet" and (self.blocks < 1 or self.hidden):
            raise ParentError("a ResNet parent needs blocks >= 1 per stage and no hidden Linear widths")
        if self.arch != "resnet" and self.blocks:
            raise ParentError("blocks are for --arch resnet")
        if self.arch != "resnet" and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise ParentError(f"hidden widths must be positive integers, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ParentError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ParentError("parent training needs epochs >= 1, batch size >= 1 and lr > 0")
        if self.schedule not in SCHEDULES:
            raise ParentError(f"unknown learning-rate schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")


def build_mlp(hidden=(256, 256), in_features: int = 784, n_classes: int = 10,
              activation: str = "relu") -> nn.Sequential:
    """``flatten, layer_1_linear, layer_1_act, ..., output`` as a named nn.Sequential."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers += [(f"layer_{i}_linear", nn.Linear(width, h)), (f"layer_{i}_act", ACTIVATIONS[activation]())]
        width = h
    layers.append(("output", nn.Linear(width, n_classes)))
    return nn.Sequential(OrderedDict(layers))


def build_cnn(channels=DEFAULT_CNN_CHANNELS, hidden=DEFAULT_CNN_HIDDEN, in_shape=(1, 28, 28), n_classes: int = 10,
              activation: str = "relu") -> nn.Sequential:
    """``block_i_conv, block_i_bn, block_i_act, block_i_pool`` per channel width (3x3
    convolution, padding 1, no bias: BatchNorm follows; 2x2 max pooling), ``flatten``,
    ``fc_i_linear, fc_i_act`` per hidden width, ``output``."""
    layers: list[tuple[str, nn.Module]] = []
    c, side = in_shape[0], in_shape[1]
    for i, width in enumerate(channels, start=1):
        layers += [(f"block_{i}_conv", nn.Conv2d(c, width, 3, padding=1, bias=False)),
                   (f"block_{i}_bn", nn.BatchNorm2d(width)), (f"block_{i}_act", ACTIVATIONS[activation]()),
                   (f"block_{i}_pool", nn.MaxPool2d(2))]
        c, side = width, side // 2
    layers.append(("flatten", nn.Flatten()))
    width = c * side * side
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc_{i}_linear", nn.Linear(width, h)), (f"fc_{i}_act", ACTIVATIONS[activation]())]
        width = h
    layers.append(("output", nn.Linear(width, n_classes)))
    return nn.Sequential(OrderedDict(layers))


def build_parent(spec: ParentSpec) -> nn.Module:
    """An untrained network of ``spec``: :func:`build_cnn` for ``arch='cnn'``, a
    :class:`~ecomp_deap.nets.resnet.ResNet` for ``arch='resnet'`` (square one-channel
    images of ``in_features`` pixels), else :func:`build_mlp`."""
    if spec.arch == "resnet":
        from .resnet import ResNet

        return ResNet(spec.channels, spec.blocks, 1, spec.n_classes, stem_stride=RESNET_STEM_STRIDE)
    if spec.arch == "cnn":
        side = int(round(spec.in_features ** 0.5))
        return build_cnn(spec.channels, spec.hidden, (1, side, side), spec.n_classes, spec.activation)
    return build_mlp(spec.hidden, spec.in_features, spec.n_classes, spec.activation)


def describe_spec(spec: ParentSpec) -> str:
    """``spec``'s architecture in words, e.g. 'MLP 784-256-256-10'."""
    if spec.arch == "resnet":
        return (f"ResNet-{6 * spec.blocks + 2}-style, {spec.blocks} BasicBlock(s) per stage at "
                f"{'-'.join(map(str, spec.channels))} channels")
    if spec.arch == "cnn":
        return (f"CNN conv {'-'.join(map(str, spec.channels))} (3x3, BatchNorm, max pool 2), "
                f"linear {'-'.join(map(str, (*spec.hidden, spec.n_classes)))}")
    return f"MLP {spec.in_features}-{'-'.join(map(str, spec.hidden))}-{spec.n_classes}"


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Fraction of ``x`` that ``model`` (put in eval mode; inputs moved to its device)
    classifies as ``y``, in batches of ``batch_size``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / len(x)


def train_parent(spec: ParentSpec, train_x: torch.Tensor, train_y: torch.Tensor, progress: bool = True) -> nn.Module:
    """Adam, cross-entropy, shuffled mini-batches; deterministic for one seed on CPU."""
    from tqdm.auto import tqdm

    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    model = build_parent(spec)
    if spec.arch in ("cnn", "resnet"):
        side = int(round(spec.in_features ** 0.5))
        train_x = train_x.reshape(len(train_x), 1, side, side)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    n = len(train_x)
    steps = (n + spec.batch_size - 1) // spec.batch_size
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs * steps)
             if spec.schedule == "cosine" else None)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(spec.seed)
    model.train()
    for epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=g)
        bar = tqdm(range(steps), desc=f"parent epoch {epoch + 1}/{spec.epochs}", disable=None if progress else True,
                   leave=False, unit="batch")
        for s in bar:
            idx = perm[s * spec.batch_size:(s + 1) * spec.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(train_x[idx]), train_y[idx])
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            if s % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def cache_key(spec: ParentSpec, data_fingerprint: str) -> str:
    """The parent cache's key of ``spec`` on the data with ``data_fingerprint``: 16 hex
    digits of a SHA-256 (an MLP's computed without the CNN fields, as before they existed)."""
    fields = asdict(spec)
    if spec.arch != "resnet":  # keys as before the ResNet field existed: cached parents stay valid
        del fields["blocks"]
    if spec.schedule == "constant":  # keys as before the schedule existed
        del fields["schedule"]
    if spec.arch == "mlp":  # MLP keys as before the CNN fields existed: cached parents stay valid
        del fields["arch"], fields["channels"]
    blob = json.dumps({"spec": fields, "data": data_fingerprint, "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ParentInfo:
    """A parent from :func:`load_or_train_parent`: ``model`` (eval mode), its test accuracy,
    whether it came from the cache, the cache file (``path``) and its ``spec``."""

    model: nn.Sequential
    test_accuracy: float
    cached: bool
    path: Path | None = None
    spec: ParentSpec | None = None
    notes: dict = field(default_factory=dict)


def fitted(model: nn.Module, state: dict, misfit: str) -> nn.Module:
    """``model`` with ``state`` loaded, in eval mode; a state dict that does not fit is one
    :class:`~ecomp_deap.errors.ParentError` line: ``misfit`` and torch's first line."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ParentError(f"{misfit} ({str(e).splitlines()[0]})") from None
    return model.eval()


def read_weights_file(path: Path, what: str, **load) -> object:
    """What the torch file at ``path`` holds, read by
    :func:`~ecomp_deap.nets.safe_load.load_untrusted` (``load``: its options); a missing,
    truncated or foreign file is one :class:`~ecomp_deap.errors.ParentError` line."""
    if not path.is_file():
        raise ParentError(f"{path}: parent weights file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParentError(f"{path}: cannot read parent weights ({e.strerror})") from None
    damage = archive_damage(data)  # torch does not check its archives' checksums: a flipped bit loads as a wrong weight
    if damage:
        raise ParentError(f"{path}: damaged parent weights file ({damage}); save the network again")
    try:  # from the bytes read: the file is read once
        return load_untrusted(io.BytesIO(data), what=what, name=str(path), **load)
    except UnsafeFileError:
        raise
    except (ImportError, AttributeError) as e:  # trust_pickle: a class the file names cannot be found
        raise ParentError(f"{path}: cannot unpickle the parent ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "the classes it was saved with must be importable here") from None
    except Exception as e:
        raise ParentError(f"{path}: cannot read parent weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "the file is truncated or not a torch file") from None


def load_parent_file(path, spec: ParentSpec | None = None, trust_pickle: bool = False) -> nn.Sequential:
    """Load a parent: a pickled ``nn.Sequential`` (MLP or CNN chain), a state dict of a
    ``build_mlp`` or ``build_cnn`` network (widths inferred), or this toolkit's cache file.
    Clear errors for anything else.

    Loaded with ``weights_only=True`` and the allowlist of :mod:`ecomp_deap.nets.safe_load`:
    a file that would unpickle anything else is refused (``UnsafeFileError``) unless
    ``trust_pickle`` (``--trust-parent-file``) says the file is trusted."""
    path = Path(path)
    obj = read_weights_file(path, "parent file", trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):  # a safely loaded Sequential of known layers, or a trusted pickle
        return obj.eval()
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ParentError(f"{path}: not a state dict or nn.Sequential (found {type(obj).__name__})")
    return model_from_state_dict(obj, spec, source=str(path))


def model_from_state_dict(state: dict, spec: ParentSpec | None = None, source: str = "state dict") -> nn.Sequential:
    """A parent from a state dict, in eval mode: a :func:`build_cnn` network's (keys ending
    in ``_conv.weight``: :func:`cnn_from_state_dict`), else an MLP in :func:`build_mlp`'s
    layout, its widths read off the Linear weights in key order (checked against ``spec``
    when given; its activation, else ReLU). Anything that does not fit is a one-line
    :class:`~ecomp_deap.errors.ParentError` naming ``source``."""
    if any(k.endswith("_conv.weight") for k in state):
        return cnn_from_state_dict(state, spec, source)
    if "stem.0.weight" in state:
        return resnet_from_state_dict(state, source)
    names = [k[:-len(".weight")] for k in state if k.endswith(".weight")]
    if not names:
        raise ParentError(f"{source}: state dict holds no Linear weights")
    hidden = [state[f"{n}.weight"].shape[0] for n in names[:-1]]
    weight0 = state[f"{names[0]}.weight"]
    if weight0.dim() != 2:
        raise ParentError(f"{source}: {names[0]}.weight has shape {tuple(weight0.shape)}, expected a 2-d Linear weight")
    activation = spec.activation if spec else "relu"
    model = build_mlp(hidden, weight0.shape[1], state[f"{names[-1]}.weight"].shape[0], activation)
    if spec is not None and (tuple(hidden) != spec.hidden or weight0.shape[1] != spec.in_features):
        raise ParentError(f"{source}: parent has hidden widths {hidden} and {weight0.shape[1]} inputs, "
                          f"expected {list(spec.hidden)} and {spec.in_features}")
    return fitted(model, state, f"{source}: state dict does not fit a {'-'.join(map(str, [weight0.shape[1], *hidden]))} "
                                f"MLP with layers {', '.join(names)}")


def cnn_from_state_dict(state: dict, spec: ParentSpec | None = None, source: str = "state dict") -> nn.Sequential:
    """A state dict of a :func:`build_cnn` network, its widths read off the tensors."""
    channels = [state[k].shape[0] for k in state if k.endswith("_conv.weight")]
    hidden = [state[k].shape[0] for k in state if k.startswith("fc_") and k.endswith("_linear.weight")]
    conv0 = next(state[k] for k in state if k.endswith("_conv.weight"))
    out = state.get("output.weight")
    if out is None:
        raise ParentError(f"{source}: a CNN state dict needs the layer names of build_cnn (block_i_conv, ..., "
                          f"output); save the nn.Sequential itself for other CNNs")
    side = int(round(spec.in_features ** 0.5)) if spec else 28
    model = build_cnn(channels, hidden, (conv0.shape[1], side, side), out.shape[0], spec.activation if spec else "relu")
    return fitted(model, state, f"{source}: state dict does not fit the CNN conv {channels} linear {hidden}")


def load_or_train_parent(spec: ParentSpec, data, cache_dir, progress: bool = True, log=print) -> ParentInfo:
    """The cached parent for ``spec`` and ``data``, training and caching it on a miss."""
    key = cache_key(spec, data.fingerprint)
    widths = "-".join(map(str, (*spec.channels, *spec.hidden)))
    path = Path(cache_dir) / "parents" / f"{spec.arch}-{widths}-{spec.activation}-{key}.pt"
    if path.exists():
        try:
            blob = load_untrusted(path, opt_in=None, what="cached parent")
            model = build_parent(spec)
            model.load_state_dict(blob["state_dict"])
            model.eval()
            acc = float(blob["test_accuracy"])
            log(f"parent: loaded cached weights {path} (test accuracy {acc:.4f}; no training)")
            return ParentInfo(model, acc, cached=True, path=path, spec=spec)
        except Exception as e:  # a corrupt cache entry is rebuilt, not fatal
            log(f"parent: cache file {path} unusable ({type(e).__name__}); retraining")
    log(f"parent: training {describe_spec(spec)} "
        f"({spec.activation}, {spec.epochs} epochs, Adam lr {spec.lr}"
        f"{', cosine decay' if spec.schedule == 'cosine' else ''}, batch {spec.batch_size}, seed {spec.seed})")
    model = train_parent(spec, data.train_x, data.train_y, progress=progress)
    acc = accuracy(model, data.test_x, data.test_y)
    save_torch(path, {"state_dict": model.state_dict(), "spec": asdict(spec), "test_accuracy": acc,
                      "data_fingerprint": data.fingerprint})
    log(f"parent: test accuracy {acc:.4f}; cached at {path}")
    return ParentInfo(model, acc, cached=False, path=path, spec=spec)


def resnet_from_state_dict(state: dict, source: str = "state dict") -> nn.Module:
    """A state dict of a :class:`~ecomp_deap.nets.resnet.ResNet` (the default residual
    parent), its channels and blocks per stage read off the tensors."""
    from .resnet import ResNet

    stages = sorted({int(k.split(".")[0][5:]) for k in state if k.startswith("stage") and k.split(".")[0][5:].isdigit()})
    channels = [state[f"stage{i}.0.conv1.weight"].shape[0] for i in stages]
    blocks = len({k.split(".")[1] for k in state if k.startswith("stage1.")})
    stem = state["stem.0.weight"]
    model = ResNet(channels, blocks, stem.shape[1], state["fc.weight"].shape[0], stem_stride=RESNET_STEM_STRIDE)
    return fitted(model, state, f"{source}: state dict does not fit a ResNet of {channels} channels and {blocks} "
                                "blocks per stage")


def import_builder(ref: str):
    """The function ``ref`` names, imported on purpose (it runs the user's code):
    ``'path/to/models.py:build_fn'`` (that file) or ``'package.module:build_fn'``. One
    :class:`~ecomp_deap.errors.ParentError` line when it cannot be found."""
    import importlib
    import importlib.util
    import sys

    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name:
        raise ParentError(f"--model {ref!r}: expected FILE.py:FUNCTION or MODULE:FUNCTION")
    try:
        if where.endswith(".py") or "/" in where or Path(where).is_file():
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ParentError(f"--model {ref!r}: no such file {path}")
            key = "ecomp_user_models_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module  # its classes pickle and unpickle by this name in this process
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ParentError:
        raise
    except Exception as e:
        raise ParentError(f"--model {ref!r}: importing {where} failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    builder = getattr(module, name, None)
    if not callable(builder):
        raise ParentError(f"--model {ref!r}: {where} has no function {name!r}")
    return builder


def model_from_builder(ref: str, weights=None) -> nn.Module:
    """The network ``import_builder(ref)()`` makes (in eval mode), with the state dict in
    the file ``weights`` loaded into it when given (read with ``weights_only=True``: a state
    dict, or a dict holding one under ``'state_dict'``)."""
    try:
        model = import_builder(ref)()
    except ParentError:
        raise
    except Exception as e:
        raise ParentError(f"--model {ref!r}: calling it failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(model, nn.Module):
        raise ParentError(f"--model {ref!r} must return an nn.Module, got {type(model).__name__}")
    if weights is not None:
        path = Path(weights)
        state = read_weights_file(path, "parent weights", opt_in=None)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ParentError(f"{path}: not a state dict (found {type(state).__name__})")
        fitted(model, state, f"{path}: these weights do not fit the model {ref} builds")
    return model.eval()

"""Compress your own network on your own data: ``ecomp_deap.compress``.

    import ecomp_deap
    result = ecomp_deap.compress(model, train=(X, y), val=(Xv, yv), test=(Xt, yt))
    result.best.module          # the chosen network, physically smaller
    [(c.compression, c.accuracy) for c in result.front]
    ecomp_deap.compress(model, train=(X, y), val=(Xv, yv), test=(Xt, yt), max_size=0.25)  # at most 25 % of the units
    ecomp_deap.compress(resnet, train=(X, y), val=(Xv, yv), test=(Xt, yt), max_macs=0.5)  # half the multiply-adds
    ecomp_deap.compress(model, train=X, val=Xv, test=(Xt, yt))   # without labels: fidelity to the model

``model`` is any ``nn.Module`` classifier whose forward can be traced on the training
inputs: an ``nn.Sequential`` chain of ``Linear``/``Conv2d`` layers, BatchNorm,
activations and pooling (:mod:`ecomp_deap.nets.chain`: exported as a smaller
``nn.Sequential``), or a residual, depthwise or branching network, a torchvision model
or a class of your own (:mod:`ecomp_deap.nets.graph`: its channels coupled by
Torch-Pruning, exported as a pruned copy of its own class; save it with
:func:`~ecomp_deap.nets.export.save_compressed`, rebuild it with
:func:`ecomp_deap.load_compressed`); or the path of a file holding an ``nn.Sequential``
(loaded safely: see :func:`ecomp_deap.nets.parents.load_parent_file`).
Data are ``(inputs, labels)`` tensors (a CNN's inputs as images ``(N, C, H, W)``) or a
``DataLoader`` yielding such pairs, checked before anything runs
(:mod:`ecomp_deap.validation`). Without labels (inputs alone, or ``labels=False``) the
accuracy objective becomes the fidelity: agreement with the model's own top-1
predictions. Nothing is retrained by gradient.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

import torch
from torch import nn

from .config import EcompConfig
from .errors import ConfigError
from .nets.parent_accuracy import check_parent_accuracy
from .nets.reader import read_parent
from .search.run import EcompRun, RunData, RunResult
from .validation import validate_dataset, validate_inputs


@dataclass
class Compressed:
    """One compressed network and its measures (on ``test`` if given, else ``val``):
    ``module`` is an ``nn.Sequential`` for a chain parent, a pruned copy of the user's
    own class for a graph parent; ``accuracy`` on that set's labels (None without them)
    and, from a run without labels, ``fidelity``, the fraction of its inputs where it
    predicts the model's top-1 class."""

    module: nn.Module
    accuracy: float | None
    compression: float  # kept groups (units, channels) / the parent's
    similarity: float
    hidden_units: list[int]
    parameters: int
    parameters_kept: float
    macs_kept: float
    fidelity: float | None = None


@dataclass
class CompressionResult:
    """What :func:`compress` returns: ``best``, the chosen network, and ``front``, the
    networks of the final population's front (both :class:`Compressed`, measured alike),
    with ``run``, the whole :class:`~ecomp_deap.search.run.RunResult`."""

    best: Compressed
    front: list[Compressed]
    run: RunResult


def _batch(item, what: str, labels: bool):
    """(inputs, labels or None) of one item: a tensor of inputs, ``(inputs,)`` or
    ``(inputs, labels)``; the second item is not looked at when ``labels`` is False."""
    shapes = f"{what} data must be inputs, (inputs, labels) tensors or a DataLoader of either"
    if isinstance(item, torch.Tensor):
        return item, None
    if not isinstance(item, (tuple, list)) or len(item) not in (1, 2):
        raise ConfigError(shapes)
    x, y = item[0], item[1] if len(item) == 2 and labels else None
    if x is None:
        raise ConfigError(f"{what} data: the inputs are missing (None); give inputs, alone or as (inputs, labels)")
    if not isinstance(x, torch.Tensor) or not (y is None or isinstance(y, torch.Tensor)):
        raise ConfigError(shapes)
    return x, y


def as_tensors(data, what: str, labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) from a tensor of inputs, a pair ``(inputs, labels)`` of tensors, or
    an iterable (a ``DataLoader``) yielding either: inputs as float32, labels as given
    (:func:`compress` checks them, then makes them int64) or None when there are none,
    both on the CPU. With ``labels=False`` the labels of pairs are not read. A 1-d
    integer tensor in place of the inputs (labels alone, by mistake) is one
    :class:`ConfigError` line."""
    if data is None:
        raise ConfigError(f"{what} data is required")
    if isinstance(data, torch.Tensor) or (isinstance(data, (tuple, list)) and len(data) in (1, 2)
                                          and all(t is None or isinstance(t, torch.Tensor) for t in data)):
        x, y = _batch(data, what, labels)
    else:
        try:
            batches = [_batch(item, what, labels) for item in data]
        except TypeError:
            raise ConfigError(f"{what} data must be inputs, (inputs, labels) tensors or a DataLoader of either") \
                from None
        if not batches:
            raise ConfigError(f"{what} data is empty")
        if len({y is None for _, y in batches}) > 1:
            raise ConfigError(f"{what} data: some batches have labels and some have none")
        try:
            x = torch.cat([b[0] for b in batches])
            y = None if batches[0][1] is None else torch.cat([b[1] for b in batches])
        except RuntimeError as e:
            raise ConfigError(f"{what} data: batches do not fit together ({str(e).splitlines()[0]})") from None
    for t, part in ((x, "inputs"), (y, "labels")):
        if t is not None and (t.layout != torch.strided or t.is_meta):
            raise ConfigError(f"{what} data: {part} must be dense tensors holding their values, got a "
                              f"{'meta' if t.is_meta else t.layout} tensor")
    if x.is_complex():
        raise ConfigError(f"{what} data: inputs must be real numbers, got dtype {x.dtype}")
    if y is not None and (x.dim() == 0 or y.dim() == 0):
        raise ConfigError(f"{what} data: inputs and labels need one row per example, got shapes "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 0:
        raise ConfigError(f"{what} data: inputs need one row per example, got a single number")
    if x.dim() == 1 and not x.is_floating_point():
        raise ConfigError(f"{what} data: the inputs are a 1-d tensor of integers ({len(x)} values), labels alone? "
                          "give inputs of shape (N, ...), alone or as (inputs, labels)")
    if y is not None and len(x) != len(y):
        raise ConfigError(f"{what} data: {len(x)} inputs but {len(y)} labels")
    return x.detach().to(torch.float32).cpu(), None if y is None else y.detach().cpu()


DEFAULT_REFIT_IMAGES = 5000


DEFAULT_NORM_CALIBRATION = 500
"""Images a graph parent's new individuals re-estimate their BatchNorm statistics on, by default."""


def default_config(n_train: int, batch_size: int = 100, **overrides) -> EcompConfig:
    """NSGA-II over accuracy, similarity and compression, similarity on every hidden
    activation, every Linear layer recombined, as many generations as the training
    data has batches (at most 100), and the final population's Linear layers refitted
    to the parent on up to 5000 training images (:mod:`ecomp_deap.nets.refit`).

    The refit lifts the front's networks at a quarter and at half of the units at
    little cost in time (docs/results.md, ``benchmarks/compress_defaults.py``).
    ``refit_children=True`` (every child refitted) buys more accuracy for more time;
    ``refit_images=0`` is the search without it."""
    generations = max(1, min(100, n_train // batch_size))
    refit = min(DEFAULT_REFIT_IMAGES, generations * batch_size)
    settings = dict(selection="nsga2", weights=(1.0, 1.0, 1.0), embedding_layers=None, recombination_layers=None,
                    batch_size=batch_size, generations=generations,
                    refit_images=refit if refit >= 2 else 0)  # a one-image subset: nothing to fit on
    settings.update(overrides)
    return EcompConfig(**settings)


def compress(model: nn.Module | str | os.PathLike, train, val=None, test=None, config: EcompConfig | None = None,
             progress: bool = True, trust_pickle: bool = False, max_size: float | None = None,
             max_macs: float | None = None, labels: bool | None = None,
             allow_weak_parent: bool = False) -> CompressionResult:
    """Evolve compressed versions of ``model``; return the chosen one and the front.

    Data sets are ``(inputs, labels)`` or inputs alone (a tensor, or a ``DataLoader``
    yielding either). Without training labels (inputs alone, or ``labels=False``, which
    ignores the labels of ``train`` and ``val``) the first objective is the fidelity,
    agreement with ``model``'s top-1 predictions, and no training or validation label is
    read; labels in ``test`` then only report each network's ``accuracy`` beside its
    ``fidelity``. ``labels=True`` requires training labels.

    ``max_size=F`` asks for the most accurate network with at most the fraction F of the
    model's hidden units (or channels): every candidate stays within that budget and
    ``best`` is the most accurate one on ``val`` (it overrides ``config.max_size``; F in
    (0, 1] and at least one unit per hidden layer, else a :class:`ConfigError`).
    ``max_macs=F`` does the same with the fraction F of the model's multiply-adds per
    example (its Conv and Linear layers'), the budget CNN users usually give.

    ``val`` is used for the final choice (Pareto mode: the validation front's knee);
    without it, ``config.val_size`` images are held out of ``train``. Measures are
    reported on ``test`` (or ``val`` when there is no test set). Each data set must be
    non-empty, with finite inputs of the model's input size and whole-number labels in
    ``[0, outputs)`` where it has labels; anything else (labels alone, labels missing
    from ``val`` or ``test`` of a run with labels) is a one-line :class:`ConfigError`.
    With labels, the model's accuracy on ``val`` (else ``train``) is measured first and
    stored in ``result.run.parent``; at chance level (wrongly scaled inputs, labels in
    another order, ...) it is a one-line :class:`~ecomp_deap.errors.WeakParentError`,
    unless ``allow_weak_parent=True``.

    ``model`` may be a file path: it is loaded with ``torch.load(weights_only=True)``
    and an allowlist of the supported layer types; ``trust_pickle=True`` lifts that
    restriction for a file you trust (unpickling can run arbitrary code).
    """
    if config is not None:
        if not isinstance(config, EcompConfig):
            raise ConfigError(f"config must be an EcompConfig, got {type(config).__name__}")
        config.validate()  # the settings first: a mistake there needs no parent or data to see
    if isinstance(model, (str, os.PathLike)):
        from .nets.parents import load_parent_file

        model = load_parent_file(model, trust_pickle=trust_pickle)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module or the path of a saved nn.Sequential, got {type(model).__name__}")
    model = model.eval().cpu()
    if labels not in (None, True, False):
        raise ConfigError(f"labels must be True, False or None (decided by the training data), got {labels!r}")
    given_sets = {"train": as_tensors(train, "train", labels is not False)}
    labeled = given_sets["train"][1] is not None
    if labels and not labeled:
        raise ConfigError("train data has no labels (inputs only) but labels=True: give (inputs, labels), "
                          "or compress without labels (labels=False)")
    for name, given in (("val", val), ("test", test)):
        if given is not None:  # a run without labels reads none but the test set's
            given_sets[name] = as_tensors(given, name, labeled or name == "test")
            if labeled and given_sets[name][1] is None:
                raise ConfigError(f"{name} data has no labels but train has: give {name} as (inputs, labels), "
                                  "or compress without labels (labels=False)")
    parent = read_parent(model, given_sets["train"][0])  # read and checked once, here
    sets = {}
    for name, (x, y) in given_sets.items():
        if y is None:
            validate_inputs(name, x, parent.input_shape)  # once, before any work
        else:
            validate_dataset(name, x, y, parent.n_classes, parent.input_shape)
        sets[name] = (x, None if y is None else y.long())
    x, y = sets["train"]
    validation = sets.get("val")
    report = sets.get("test", validation)
    if config is None:
        config = default_config(len(x), val_size=0 if validation is not None else min(1000, len(x) // 5 // 100 * 100))
        if parent.is_graph:  # the closed-form refit solves a chain's Linear layers only; a pruned
            # residual network needs its BatchNorm statistics re-estimated (docs/results.md)
            has_norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
            config = config.replace(refit_images=0,
                                    norm_calibration=min(DEFAULT_NORM_CALIBRATION, config.subset_size) if has_norms else 0)
    if report is None:
        raise ConfigError("give val or test data: compressed networks are measured on data not used for evolution")
    if max_size is not None:
        config = config.replace(max_size=max_size)
    if max_macs is not None:
        config = config.replace(max_macs=max_macs)
    if not labeled:
        config = config.replace(accuracy_objective="fidelity")
    data = RunData(x, y, *report, validation)
    if labeled:  # without labels there is no accuracy to check (the model's fidelity is 1)
        measured = check_parent_accuracy(parent, *data.measured_on(), allow_weak_parent)  # before any work
        if progress:
            print(f"parent: {measured.describe()}", file=sys.stderr)
        data = replace(data, data_accuracy=measured)
    r = EcompRun(config, parent, data, progress=progress).run()

    def wrap(measures: dict, module) -> Compressed:
        return Compressed(module, measures["test_accuracy"], measures["compression"], measures["similarity"],
                          measures["hidden_units"], measures["parameters"], measures["parameters_kept"],
                          measures["macs_kept"], measures.get("test_fidelity"))

    front = [wrap(m, mod) for m, mod in zip(r.front, r.front_modules)]
    return CompressionResult(wrap(r.best, r.best_module), front, r)

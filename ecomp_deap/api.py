"""Compress your own MLP or CNN on your own data: ``ecomp_deap.compress``.

    import ecomp_deap
    result = ecomp_deap.compress(model, train=(X, y), val=(Xv, yv), test=(Xt, yt))
    result.best.module          # the chosen network, physically smaller nn.Sequential
    [(c.compression, c.accuracy) for c in result.front]
    ecomp_deap.compress(model, train=(X, y), val=(Xv, yv), test=(Xt, yt), max_size=0.25)  # at most 25 % of the units

``model`` is an ``nn.Sequential`` chain: ``Linear`` layers with elementwise activations
(an MLP, optionally with ``Flatten``, ``Dropout``, ``BatchNorm1d``), or ``Conv2d`` blocks
with ``BatchNorm2d``, activations and pooling, then ``Flatten`` and ``Linear`` layers (a
CNN; :mod:`ecomp_deap.nets.chain` lists what is supported), or the path of a file
holding one (loaded safely: see :func:`ecomp_deap.nets.parents.load_parent_file`).
Data are ``(inputs, labels)`` tensors (a CNN's inputs as images ``(N, C, H, W)``) or a
``DataLoader`` yielding such pairs, checked before anything runs
(:mod:`ecomp_deap.validation`). Nothing is retrained by gradient.
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
from .validation import validate_dataset


@dataclass
class Compressed:
    """One compressed network and its measures (on ``test`` if given, else ``val``)."""

    module: nn.Sequential
    accuracy: float
    compression: float  # kept groups (units, channels) / the parent's
    similarity: float
    hidden_units: list[int]
    parameters: int
    parameters_kept: float
    macs_kept: float


@dataclass
class CompressionResult:
    """What :func:`compress` returns: ``best``, the chosen network, and ``front``, the
    networks of the final population's front (both :class:`Compressed`, measured alike),
    with ``run``, the whole :class:`~ecomp_deap.search.run.RunResult`."""

    best: Compressed
    front: list[Compressed]
    run: RunResult


def as_tensors(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) from a pair of tensors or from an iterable of such batches:
    inputs as float32, labels as given (:func:`compress` checks them, then makes them
    int64), both on the CPU."""
    if data is None:
        raise ConfigError(f"{what} data is required")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        try:
            batches = [(bx, by) for bx, by in data]
        except (TypeError, ValueError):
            raise ConfigError(f"{what} data must be (inputs, labels) tensors or a DataLoader of such pairs") from None
        if not batches:
            raise ConfigError(f"{what} data is empty")
        if not all(isinstance(t, torch.Tensor) for b in batches for t in b):
            raise ConfigError(f"{what} data must be (inputs, labels) tensors or a DataLoader of such pairs")
        try:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        except RuntimeError as e:
            raise ConfigError(f"{what} data: batches do not fit together ({str(e).splitlines()[0]})") from None
    for t, part in ((x, "inputs"), (y, "labels")):
        if t.layout != torch.strided or t.is_meta:
            raise ConfigError(f"{what} data: {part} must be dense tensors holding their values, got a "
                              f"{'meta' if t.is_meta else t.layout} tensor")
    if x.is_complex():
        raise ConfigError(f"{what} data: inputs must be real numbers, got dtype {x.dtype}")
    if x.dim() == 0 or y.dim() == 0:
        raise ConfigError(f"{what} data: inputs and labels need one row per example, got shapes "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) != len(y):
        raise ConfigError(f"{what} data: {len(x)} inputs but {len(y)} labels")
    return x.detach().to(torch.float32).cpu(), y.detach().cpu()


DEFAULT_REFIT_IMAGES = 5000


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
             allow_weak_parent: bool = False) -> CompressionResult:
    """Evolve compressed versions of ``model``; return the chosen one and the front.

    ``max_size=F`` asks for the most accurate network with at most the fraction F of the
    model's hidden units (or channels): every candidate stays within that budget and
    ``best`` is the most accurate one on ``val`` (it overrides ``config.max_size``; F in
    (0, 1] and at least one unit per hidden layer, else a :class:`ConfigError`).

    ``val`` is used for the final choice (Pareto mode: the validation front's knee);
    without it, ``config.val_size`` images are held out of ``train``. Measures are
    reported on ``test`` (or ``val`` when there is no test set). Each data set must be
    non-empty, with finite inputs of the model's input size and whole-number labels in
    ``[0, outputs)``; anything else is a one-line :class:`ConfigError`. The model's accuracy
    on ``val`` (else ``train``) is measured first and stored in ``result.run.parent``; at
    chance level (wrongly scaled inputs, labels in another order, ...) it is a one-line
    :class:`~ecomp_deap.errors.WeakParentError`, unless ``allow_weak_parent=True``.

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
        raise ConfigError(f"model must be an nn.Sequential or the path of a saved one, got {type(model).__name__}")
    model = model.eval().cpu()
    given_sets = {name: as_tensors(given, name) for name, given in (("train", train), ("val", val), ("test", test))
                  if given is not None or name == "train"}
    parent = read_parent(model, given_sets["train"][0])  # read and checked once, here
    sets = {}
    for name, (x, y) in given_sets.items():
        validate_dataset(name, x, y, parent.n_classes, parent.input_shape)  # once, before any work
        sets[name] = (x, y.long())
    x, y = sets["train"]
    validation = sets.get("val")
    report = sets.get("test", validation)
    if config is None:
        config = default_config(len(x), val_size=0 if validation is not None else min(1000, len(x) // 5 // 100 * 100))
    if report is None:
        raise ConfigError("give val or test data: compressed networks are measured on data not used for evolution")
    if max_size is not None:
        config = config.replace(max_size=max_size)
    data = RunData(x, y, *report, validation)
    measured = check_parent_accuracy(parent, *data.measured_on(), allow_weak_parent)  # before any work
    if progress:
        print(f"parent: {measured.describe()}", file=sys.stderr)
    r = EcompRun(config, parent, replace(data, data_accuracy=measured), progress=progress).run()

    def wrap(measures: dict, module) -> Compressed:
        return Compressed(module, measures["test_accuracy"], measures["compression"], measures["similarity"],
                          measures["hidden_units"], measures["parameters"], measures["parameters_kept"],
                          measures["macs_kept"])

    front = [wrap(m, mod) for m, mod in zip(r.front, r.front_modules)]
    return CompressionResult(wrap(r.best, r.best_module), front, r)

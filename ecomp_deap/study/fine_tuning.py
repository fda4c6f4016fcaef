"""Fine-tuning compressed networks by gradient, one recipe for all of them.

Pruned networks are usually fine-tuned; the fair question is whether an evolved
architecture still beats L1 (or random, or activation) pruning once both are
fine-tuned the same way. The recipe (:class:`Recipe`): Adam at the parent's learning
rate, cross-entropy, shuffled mini-batches of the parent's batch size, ``max(epochs)``
epochs over the training images that the run did not use for validation
(:func:`finetune_indices`), one seed for the shuffling (and any Dropout); the test
accuracy is recorded before fine-tuning (epoch 0) and after each epoch in
``Recipe.epochs``, so N = 1 and N = 5 come from one trajectory, exactly as two
separate runs of 1 and 5 epochs would (nothing in the recipe depends on the total).

What is fine-tuned is the *exported* network (``OUT/NAME/run_K.pt``, or a baseline
pruning exported the same way): physically smaller, so no gradient can reach a
removed unit, and its widths stay what they were. :func:`fine_tune` changes only the
module it is given (the parent's tensors, the global random state and other networks
are left alone).

Results: ``OUT/NAME/finetune.json`` per experiment (one entry per run) and
``BASELINES/finetune.json`` (per method and size), each with the parent fine-tuned by
the same recipe as a control; :mod:`ecomp_deap.study.comparison` turns them into the
"after N epochs of fine-tuning" columns of the size table.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ResultsError
from ..files import load_json

FINETUNE_SCHEMA = "ecomp_deap.finetune/1"
FINETUNE_FILE = "finetune.json"


@dataclass(frozen=True)
class Recipe:
    """How every network is fine-tuned."""

    epochs: tuple[int, ...] = (1, 5)
    """Test accuracy recorded after each of these epochs (training runs max(epochs))."""
    lr: float = 1e-3
    """Adam's learning rate: the parent's (the default parent was trained at 1e-3)."""
    batch_size: int = 100
    """Images per step: the parent's batch size."""
    seed: int = 0
    """Seeds the shuffling and any Dropout: the same for every network."""

    def __post_init__(self):
        object.__setattr__(self, "epochs", tuple(sorted(set(self.epochs))))

    def validate(self) -> "Recipe":
        """The recipe itself, checked: a one-line :class:`ConfigError` for a bad setting."""
        if not self.epochs or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in self.epochs):
            raise ConfigError(f"fine-tuning epochs must be whole numbers >= 1, got {list(self.epochs)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"fine-tuning learning rate must be > 0, got {self.lr}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"fine-tuning batch size must be a whole number >= 1, got {self.batch_size}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"fine-tuning seed must be a whole number >= 0, got {self.seed}")
        return self

    @property
    def total_epochs(self) -> int:
        """Epochs trained: the largest of ``epochs``."""
        return max(self.epochs)

    def to_dict(self) -> dict:
        """The recipe as plain data, its optimiser and loss named (a ``finetune.json`` field)."""
        return {**asdict(self), "epochs": list(self.epochs), "optimizer": "Adam", "loss": "cross-entropy"}

    def describe(self) -> str:
        """The recipe in one line, for reports."""
        return (f"Adam (lr {self.lr:g}), cross-entropy, batches of {self.batch_size}, seed {self.seed}, "
                f"test accuracy after {', '.join(map(str, self.epochs))} epoch(s)")


def hidden_widths(model: nn.Module) -> list[int]:
    """The widths of a sequential network's Conv2d/Linear layers but the last (its groups)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in layers[:-1]]


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
              measure: Callable[[nn.Module], float] | None = None, progress: bool = False,
              desc: str = "fine-tuning") -> dict[int, float]:
    """Train ``model``'s own parameters in place by :class:`Recipe` on ``(x, y)``; return
    ``{epoch: measure(model)}`` for epoch 0 (before) and each of ``recipe.epochs``
    (empty without ``measure``). The global random state is saved and restored; the
    model is left in eval mode. Its structure (hence its size) is not changed."""
    from tqdm.auto import tqdm

    recipe.validate()
    n, bs = len(x), recipe.batch_size
    steps = -(-n // bs)
    results: dict[int, float] = {}
    if measure is not None:
        results[0] = float(measure(model))
    with torch.random.fork_rng(devices=[]):  # Dropout draws from the global generator: seed it, then restore it
        torch.manual_seed(recipe.seed)
        order = torch.Generator().manual_seed(recipe.seed)
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        loss_fn = nn.CrossEntropyLoss()
        with tqdm(total=steps * recipe.total_epochs, desc=desc, unit="batch", leave=False,
                  disable=None if progress else True) as bar:
            for epoch in range(1, recipe.total_epochs + 1):
                model.train()
                perm = torch.randperm(n, generator=order)
                for s in range(steps):
                    idx = perm[s * bs:(s + 1) * bs]
                    if len(idx) < 2:  # a last batch of one image: BatchNorm cannot train on it
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
                    bar.update(1)
                model.eval()
                if measure is not None and epoch in recipe.epochs:
                    results[epoch] = float(measure(model))
    model.eval()
    return results


def finetune_indices(train_y: torch.Tensor, config) -> torch.Tensor:
    """(N - V,) int64, ascending: the training images outside the validation split a run
    with ``config`` (an :class:`~ecomp_deap.config.EcompConfig`) chose its network on."""
    from ..data import make_splits

    used = torch.zeros(len(train_y), dtype=torch.bool)
    if config.val_size:
        used[make_splits(train_y, config.subset_size, config.val_size, config.seed).validation] = True
    return torch.nonzero(~used, as_tuple=True)[0]


# --------------------------------------------------------------------------- one network


def tune_record(model: nn.Module, data, indices: torch.Tensor, recipe: Recipe, progress: bool = False,
                desc: str = "fine-tuning") -> dict:
    """Fine-tune ``model`` (in place) on ``data.train_x[indices]``; its test accuracies
    (``"after_epochs"``: ``{"0": before, "N": after N epochs}``), size and wall time."""
    from ..nets.parents import accuracy

    widths = hidden_widths(model)
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    acc = fine_tune(model, data.train_x[indices], data.train_y[indices], recipe,
                    measure=lambda m: accuracy(m, data.test_x, data.test_y), progress=progress, desc=desc)
    assert hidden_widths(model) == widths and sum(p.numel() for p in model.parameters()) == params
    return {"hidden_units": widths, "parameters": params, "images": len(indices),
            "after_epochs": {str(k): v for k, v in acc.items()}, "wall_time_s": time.perf_counter() - t0}


def epochs_line(after: dict) -> str:
    """'0.8512 -> 0.8631 (1 epoch), 0.8702 (5 epochs)'."""
    tuned = [f"{v:.4f} ({k} epoch{'s' if k != '1' else ''})" for k, v in after.items() if k != "0"]
    return f"{after['0']:.4f} -> " + ", ".join(tuned)


# --------------------------------------------------------------------------- the three kinds


def finetune_parent(parent: nn.Module, data, indices: torch.Tensor, recipe: Recipe, progress: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """The control: a copy of the parent fine-tuned by the same recipe (the parent itself is untouched)."""
    rec = tune_record(copy.deepcopy(parent), data, indices, recipe, progress, "parent")
    log(f"parent: {epochs_line(rec['after_epochs'])}, {rec['wall_time_s']:.1f} s")
    return rec


def finetune_runs(folder, name: str, runs: Sequence[dict], data, recipe: Recipe, progress: bool = False,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Each run's exported network (``folder/run_K.pt``, loaded with ``weights_only``)
    fine-tuned on the training images outside that run's validation split."""
    from ..config import EcompConfig
    from ..nets.export import load_exported

    out = []
    for i, run in enumerate(runs):
        k = run.get("run", i)
        model = load_exported(Path(folder) / run.get("weights_file", f"run_{k}.pt"))
        cfg = EcompConfig.from_dict(run["config"])
        rec = tune_record(model, data, finetune_indices(data.train_y, cfg), recipe, progress, f"{name} run {k}")
        best = run["best"]
        out.append({"run": k, "seed": run.get("seed"), "compression": best["compression"],
                    "reported_test_accuracy": best["test_accuracy"], **rec})
        log(f"{name} run {i + 1}/{len(runs)} ({sum(rec['hidden_units'])} units, compression "
            f"{best['compression']:.3f}): {epochs_line(rec['after_epochs'])}, {rec['wall_time_s']:.1f} s")
        if abs(rec["after_epochs"]["0"] - best["test_accuracy"]) > 2e-3:
            log(f"note: {name} run {k}: before fine-tuning {rec['after_epochs']['0']:.4f}, but its result file "
                f"reports {best['test_accuracy']:.4f}")
    return out


def finetune_baselines(parent, baselines: dict, data, sizes: Sequence[float], indices: torch.Tensor,
                       recipe: Recipe, progress: bool = False, log: Callable[[str], None] = print) -> dict:
    """The pruning baselines of ``baselines`` (a ``baselines.json`` body: methods, random
    seeds, seed, subset and BatchNorm calibration) rebuilt at ``sizes``, exported and
    fine-tuned: ``{method: [{size, compression, hidden_units, after_epochs (mean over
    the random seeds), after_epochs_std, repeats}, ...]}``. ``parent``: a
    :class:`~ecomp_deap.nets.reader.Parent`, or a module to read."""

    from ..data import make_splits
    from ..nets.export import export_individual
    from ..nets.reader import read_parent
    from .pruning_baselines import METHODS, baseline_prunings, split_method

    parent = read_parent(parent, data.train_x)  # a Parent as it is; a module read
    chain = parent.net
    seed, seeds = int(baselines.get("seed", 0)), int(baselines.get("random_seeds", 5))
    subset = make_splits(data.train_y, int(baselines.get("subset", 10000)), 0, seed).subset
    if parent.is_graph:
        return _finetune_tp_baselines(parent, baselines, data, sizes, indices, recipe, subset, progress, log)
    activation_x = data.train_x[subset]
    calibration = int(baselines.get("norm_calibration") or 0)
    refit_images = int(baselines.get("refit_images") or 0)
    refit_x = activation_x[:refit_images] if refit_images else None
    methods = [m for m in baselines.get("methods", {}) if split_method(m)[0] in METHODS
               and (refit_x is not None or not split_method(m)[1])]
    total = sum(chain.hidden_widths)
    out = {}
    for method in methods:
        nets = baseline_prunings(parent, method, sizes, activation_x, seeds, seed,
                                 activation_x[:calibration] if calibration else None, refit_x,
                                 float(baselines.get("refit_ridge") or 1e-4))
        out[method] = _tuned_rows(method, sizes, [export_individual(ind, chain) for ind in nets], hidden_widths,
                                  total, data, indices, recipe, progress, log)
    return out


def _tuned_rows(method: str, sizes, nets, widths_of, total: int, data, indices, recipe: Recipe, progress, log,
                of: str = "") -> list[dict]:
    """One baseline method's networks (size-major, ``len(nets) // len(sizes)`` per size)
    fine-tuned: a row per size, the mean (and spread) over its networks after each epoch."""
    import numpy as np

    repeats = len(nets) // len(sizes)
    rows = []
    for i, size in enumerate(sizes):
        group = nets[i * repeats:(i + 1) * repeats]
        widths = widths_of(group[0])
        recs = [tune_record(m, data, indices, recipe, progress, f"{method} {100 * size:g} %") for m in group]
        vals = {e: [r["after_epochs"][e] for r in recs] for e in recs[0]["after_epochs"]}
        row = {"size": float(size), "compression": sum(widths) / total, "hidden_units": widths,
               "repeats": repeats, "images": len(indices),
               "after_epochs": {e: float(np.mean(v)) for e, v in vals.items()},
               "after_epochs_std": {e: float(np.std(v)) for e, v in vals.items()},
               "wall_time_s": sum(r["wall_time_s"] for r in recs)}
        rows.append(row)
        log(f"{method} pruning at {100 * size:g} %{of} ({repeats} network{'s' if repeats > 1 else ''}): "
            f"{epochs_line(row['after_epochs'])}, {row['wall_time_s']:.1f} s")
    return rows


def _finetune_tp_baselines(parent, baselines: dict, data, sizes, indices, recipe: Recipe, subset, progress, log):
    """:func:`finetune_baselines` for a graph parent: Torch-Pruning's prunings
    (:mod:`ecomp_deap.study.tp_baselines`) rebuilt at the multiply-add fractions ``sizes``."""
    from .tp_baselines import TP_METHODS, group_widths, tp_prunings

    graph = parent.net
    seed, seeds = int(baselines.get("seed", 0)), int(baselines.get("random_seeds", 5))
    calib = subset[:int(baselines.get("calibration") or 1000)]
    total = sum(graph.hidden_widths)
    out = {}
    for method in [m for m in baselines.get("methods", {}) if m in TP_METHODS]:
        norm = int(baselines.get("norm_calibration") or 0)
        nets = tp_prunings(parent, method, sizes, data.train_x[calib], data.train_y[calib], seeds, seed,
                           norm_x=data.train_x[subset[:norm]] if norm else None)
        out[method] = _tuned_rows(method, sizes, nets, lambda m: group_widths(graph, m), total, data, indices, recipe,
                                  progress, log, of=" of the multiply-adds")
    return out


# --------------------------------------------------------------------------- result files


def finetune_body(kind: str, recipe: Recipe, parent: dict | None, **fields) -> dict:
    """A ``finetune.json`` body: its schema, ``kind`` ('experiment' or 'baselines'), the
    recipe, the ``parent`` fine-tuned as the control, and ``fields``."""
    return {"schema": FINETUNE_SCHEMA, "kind": kind, "recipe": recipe.to_dict(), "parent": parent, **fields}


def load_finetune(folder) -> dict | None:
    """``folder/finetune.json`` (None when the folder has none); a clear error for a
    file that is not a fine-tuning result."""
    path = Path(folder) / FINETUNE_FILE
    if not path.is_file():
        return None
    data = load_json(path)
    if not isinstance(data, dict) or data.get("schema") != FINETUNE_SCHEMA:
        raise ResultsError(f"{path}: not an ecomp_deap fine-tuning result (expected schema {FINETUNE_SCHEMA!r})")
    return data


def check_against_runs(tuned: dict, runs: Sequence[dict], folder) -> None:
    """Refuse fine-tuning results written for other runs (the experiment was rerun since):
    each tuned run must match its result file's seed and chosen network's widths."""
    by_run = {r.get("run", i): r for i, r in enumerate(runs)}
    for entry in tuned.get("runs") or []:
        run = by_run.get(entry.get("run"))
        if run is None or run.get("seed") != entry.get("seed") \
                or list(run["best"]["hidden_units"]) != list(entry.get("hidden_units") or []):
            raise ResultsError(f"{Path(folder) / FINETUNE_FILE}: run {entry.get('run')} does not match "
                               f"run_{entry.get('run')}.json (the experiment was rerun after fine-tuning); rerun "
                               "experiments/finetune.py with --overwrite")

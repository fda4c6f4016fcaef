"""Named experiment presets: the reference study's weightings and their Pareto twins.

``ref-weightingABC`` is the same weighting with the reference study's operators
(``REFERENCE``: its unaligned recombination, no mask flips), to reproduce its table.

``weightingABC`` is weighted selection with weights (A, B, C) in the order accuracy,
similarity, compression; ``paretoABC`` is NSGA-II over the objectives whose weight is
non-zero. Everything else is the reference setting (``EcompConfig``'s defaults: pop
100, mutation 0.01, embedding layers layer_1_act layer_2_act, recombination layers
layer_1_linear layer_2_linear output, 1 epoch of 100 batches of 100). ``quality121`` and
``quality101`` are the configuration behind the accuracy-at-size table (docs/results.md).

``qualityS`` and ``qualityS_nosim`` (S = 12.5, 25, 50) search for the most accurate
network within S % of the parent's hidden units (``max_size``, see
:mod:`ecomp_deap.search.budget`): the quality configuration for 5 epochs, NSGA-II over
accuracy and similarity (``_nosim``: accuracy alone; compression is not an objective,
so the population stays at the budget), every child's Linear layers refitted to the
parent by closed-form least squares on 1000 images (:mod:`ecomp_deap.nets.refit`,
Lamarckian: selection compares masks at their refitted accuracy), and the most
accurate network on validation as the run's result (``run_K.pt``, which
``experiments/finetune.py`` fine-tunes). They make the size table: ``make quality``.

``cnn_quality50`` and ``cnn_quality50_nosim`` are the CNN quality search within half
of the default CNN's channels and units, over accuracy and similarity (``_nosim``:
accuracy alone), compression not an objective, as the MLP budget presets.

``unlabeled121``, ``unlabeled101``, ``unlabeled25``, ``unlabeled25_nosim``,
``cnn_unlabeled50`` and ``cnn_unlabeled50_nosim`` are ``quality121``, ``quality101``,
``quality25``, ``quality25_nosim``, ``cnn_quality50`` and ``cnn_quality50_nosim``
without labels: their first objective is the fidelity (agreement with the parent's top-1
predictions; ``EcompConfig.accuracy_objective``), and no training or validation label
is read. ``run.py --unlabeled`` does the same to any preset.
"""
from __future__ import annotations

from ..config import EcompConfig
from ..errors import ConfigError

WEIGHTINGS = ("001", "020", "021", "100", "101", "120", "121")
PARETO = ("101", "120", "121")


def _weights(code: str) -> tuple[float, float, float]:
    return tuple(float(c) for c in code)  # type: ignore[return-value]


# The quality configuration: NSGA-II on large, low-noise accuracy batches
# (the similarity on their first 100 images), a population twice the reference's,
# initial prunings ranked by activation, and unit-gain mutation instead of per-weight
# noise. quality101 is the same search without the similarity objective.
QUALITY = {"selection": "nsga2", "pop_size": 200, "batch_size": 5000, "generations": 11, "epochs": 25,
           "similarity_batch": 100, "init_scores": "activation", "mutation": "units",
           "mutation_rate": 0.3, "mutation_low": 0.9, "mutation_high": 1.1}

# CNN presets: the same searches on a convolutional parent (``run.py --arch cnn``, the
# default CNN). Every hidden block's output enters the similarity (a feature map as its
# flattened C*H*W vector) and every Conv2d/Linear is recombined.
CNN_LAYERS = {"embedding_layers": None, "recombination_layers": None}
CNN_QUALITY = {**QUALITY, **CNN_LAYERS, "pop_size": 40, "batch_size": 1000, "generations": 10, "epochs": 3}

# The reference study's operators: its unaligned recombination, no mask
# flips, its weight mutation (probability 0.01 per child, a U(0.9, 1.1) factor per
# weight), L1-norm initial prunings at rates over [0.1, 0.8), softmax roulette at T = 1
# on the raw fitness, children replace the population. Stated in full, not left to the
# defaults, so that a change of a default does not change the reproduction.
REFERENCE = {"selection": "weighted", "crossover": "reference", "mask_flip_prob": 0.0,
             "mutation": "weights", "mutation_rate": 0.01, "mutation_low": 0.9, "mutation_high": 1.1,
             "init_scores": "l1", "init_prune_low": 0.1, "init_prune_high": 0.8,
             "selection_temperature": 1.0, "elitism": 0}
REFERENCE_PREFIX = "ref-weighting"

# Size-budget presets: the quality search with every network within S % of the parent's
# hidden units, with and without the similarity objective; compression is not an
# objective (it would spread the population below the budget), every child is refitted
# (Lamarckian), 5 epochs (the measurements behind these choices: docs/results.md).
BUDGETS = {"12.5": 0.125, "25": 0.25, "50": 0.5}
BUDGET_SEARCH = {**QUALITY, "epochs": 5, "refit_images": 1000, "refit_children": True}

# Residual presets: the default ResNet parent (``run.py --arch resnet``), every group
# recombined and each stage's output in the similarity; the budget presets keep every
# network within a fraction of the parent's multiply-adds (what users of CNN pruning
# budget), with the CNN quality search's settings scaled to a parent with ~5x the
# multiply-adds of the default CNN: pop 24, 2 epochs of 10 batches of 500; every new
# individual's BatchNorm statistics re-estimated on 500 images (without it a pruned
# ResNet is near chance: docs/results.md).
MACS = {"25": 0.25, "50": 0.5, "75": 0.75}
RESNET_BUDGET = {**CNN_QUALITY, "pop_size": 24, "batch_size": 500, "generations": 10, "epochs": 2,
                 "norm_calibration": 500}

PRESETS: dict[str, dict] = {
    **{f"weighting{c}": {"selection": "weighted", "weights": _weights(c)} for c in WEIGHTINGS},
    **{f"{REFERENCE_PREFIX}{c}": {**REFERENCE, "weights": _weights(c)} for c in WEIGHTINGS},
    **{f"pareto{c}": {"selection": "nsga2", "weights": _weights(c)} for c in PARETO},
    "quality121": {**QUALITY, "weights": _weights("121")},
    "quality101": {**QUALITY, "weights": _weights("101")},
    **{f"quality{b}": {**BUDGET_SEARCH, "weights": _weights("120"), "max_size": f} for b, f in BUDGETS.items()},
    **{f"quality{b}_nosim": {**BUDGET_SEARCH, "weights": _weights("100"), "max_size": f} for b, f in BUDGETS.items()},
    "cnn_weighting121": {**CNN_LAYERS, "selection": "weighted", "weights": _weights("121")},
    "cnn_pareto121": {**CNN_LAYERS, "selection": "nsga2", "weights": _weights("121")},
    "cnn_quality121": {**CNN_QUALITY, "weights": _weights("121")},
    "cnn_quality101": {**CNN_QUALITY, "weights": _weights("101")},
    "cnn_quality50": {**CNN_QUALITY, "weights": _weights("120"), "max_size": 0.5},
    "cnn_quality50_nosim": {**CNN_QUALITY, "weights": _weights("100"), "max_size": 0.5},
    "resnet_weighting121": {**CNN_LAYERS, "selection": "weighted", "weights": _weights("121")},
    "resnet_pareto121": {**CNN_LAYERS, "selection": "nsga2", "weights": _weights("121")},
    **{f"resnet_macs{b}": {**RESNET_BUDGET, "weights": _weights("120"), "max_macs": f} for b, f in MACS.items()},
    **{f"resnet_macs{b}_nosim": {**RESNET_BUDGET, "weights": _weights("100"), "max_macs": f} for b, f in MACS.items()},
}

# Without labels: the same searches with the parent's top-1 predictions as the targets
# of the first objective (fidelity) in place of the labels.
UNLABELED_TWINS = {"unlabeled121": "quality121", "unlabeled101": "quality101", "unlabeled25": "quality25",
                   "unlabeled25_nosim": "quality25_nosim", "cnn_unlabeled50": "cnn_quality50",
                   "cnn_unlabeled50_nosim": "cnn_quality50_nosim"}
PRESETS.update({name: {**PRESETS[twin], "accuracy_objective": "fidelity"} for name, twin in UNLABELED_TWINS.items()})

_QUALITY_TEXT = ("pop 200, 25 epochs of 11 batches of 5000 (similarity on 100), activation-ranked "
                 "initial prunings, unit-gain mutation 0.3")

_BUDGET_TEXT = ("pop 200, 5 epochs of 11 batches of 5000 (similarity on 100), activation-ranked initial "
                "prunings, unit-gain mutation 0.3, every child refitted on 1000 images")

_CNN_QUALITY_TEXT = ("pop 40, 3 epochs of 10 batches of 1000 (similarity on 100), activation-ranked initial "
                     "prunings, channel-gain mutation 0.3")

_RESNET_TEXT = ("ResNet parent; within {b} % of its multiply-adds (max_macs {f}); NSGA-II over accuracy{sim}; "
                "pop 24, 2 epochs of 10 batches of 500 (similarity on 100), activation-ranked initial prunings, "
                "channel-gain mutation 0.3, BatchNorm statistics re-estimated on 500 images")

DESCRIPTIONS = {
    "resnet_weighting121": "ResNet parent; weighted selection, weights 1 2 1 (the reference settings otherwise)",
    "resnet_pareto121": "ResNet parent; NSGA-II over accuracy, similarity, compression",
    **{f"resnet_macs{b}": _RESNET_TEXT.format(b=b, f=f, sim=", similarity") for b, f in MACS.items()},
    **{f"resnet_macs{b}_nosim": _RESNET_TEXT.format(b=b, f=f, sim=" (no similarity)") for b, f in MACS.items()},
    "cnn_weighting121": "CNN parent; weighted selection, weights 1 2 1 (the reference settings otherwise)",
    "cnn_pareto121": "CNN parent; NSGA-II over accuracy, similarity, compression",
    "cnn_quality121": "CNN parent; NSGA-II over accuracy, similarity, compression; " + _CNN_QUALITY_TEXT,
    "cnn_quality101": "CNN parent; NSGA-II over accuracy, compression (no similarity); " + _CNN_QUALITY_TEXT,
    "cnn_quality50": "CNN parent; at most 50 % of the channels and units (max_size 0.5); NSGA-II over accuracy, "
                     "similarity; " + _CNN_QUALITY_TEXT,
    "cnn_quality50_nosim": "CNN parent; at most 50 % of the channels and units (max_size 0.5); accuracy alone "
                           "(no similarity); " + _CNN_QUALITY_TEXT,
    "quality121": "NSGA-II over accuracy, similarity, compression; " + _QUALITY_TEXT,
    "quality101": "NSGA-II over accuracy, compression (no similarity); " + _QUALITY_TEXT,
    **{f"quality{b}": f"at most {b} % of the hidden units (max_size {f}); NSGA-II over accuracy, similarity; "
                      + _BUDGET_TEXT for b, f in BUDGETS.items()},
    **{f"quality{b}_nosim": f"at most {b} % of the hidden units (max_size {f}); accuracy alone (no similarity); "
                            + _BUDGET_TEXT for b, f in BUDGETS.items()},
    **{f"weighting{c}": f"weighted selection, weights accuracy {c[0]}, similarity {c[1]}, compression {c[2]}"
       for c in WEIGHTINGS},
    **{f"{REFERENCE_PREFIX}{c}": f"the reference study's operators (crossover reference, no mask flips), "
                                  f"weights accuracy {c[0]}, similarity {c[1]}, compression {c[2]}"
       for c in WEIGHTINGS},
    **{f"pareto{c}": "NSGA-II over " + ", ".join(o for o, w in zip(("accuracy", "similarity", "compression"), c)
                                                 if w != "0") for c in PARETO},
}
DESCRIPTIONS.update({name: f"{twin} without labels: fidelity to the parent's predictions in place of accuracy"
                     for name, twin in UNLABELED_TWINS.items()})


def preset_arch(name: str) -> str | None:
    """The parent a preset is made for ('mlp', 'cnn' or 'resnet'); None for a name that is no preset."""
    if name not in PRESETS:
        return None
    for arch in ("cnn", "resnet"):
        if name.startswith(f"{arch}_"):
            return arch
    return "mlp"


def preset_config(name: str, **overrides) -> EcompConfig:
    """The preset's config with overrides applied (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} "
                          "(or give --weights to define a new experiment)")
    settings = dict(PRESETS[name])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return EcompConfig(**settings)


def describe_presets() -> str:
    """Every preset's name and description, one per line, the names aligned."""
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {DESCRIPTIONS[name]}" for name in PRESETS)

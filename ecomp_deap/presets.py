"""Named experiment presets: the reference study's weightings and their Pareto twins.

``weightingABC`` is weighted selection with weights (A, B, C) in the order accuracy,
similarity, compression; ``paretoABC`` is NSGA-II over the objectives whose weight is
non-zero. Everything else is the reference setting (``EcompConfig``'s defaults: pop
100, mutation 0.01, embedding layers layer_1_act layer_2_act, recombination layers
layer_1_linear layer_2_linear output, 1 epoch of 100 batches of 100).
"""
from __future__ import annotations

from .config import EcompConfig
from .errors import ConfigError

WEIGHTINGS = ("001", "020", "021", "100", "101", "120", "121")
PARETO = ("101", "120", "121")


def _weights(code: str) -> tuple[float, float, float]:
    return tuple(float(c) for c in code)  # type: ignore[return-value]


PRESETS: dict[str, dict] = {
    **{f"weighting{c}": {"selection": "weighted", "weights": _weights(c)} for c in WEIGHTINGS},
    **{f"pareto{c}": {"selection": "nsga2", "weights": _weights(c)} for c in PARETO},
}

DESCRIPTIONS = {
    **{f"weighting{c}": f"weighted selection, weights accuracy {c[0]}, similarity {c[1]}, compression {c[2]}"
       for c in WEIGHTINGS},
    **{f"pareto{c}": "NSGA-II over " + ", ".join(o for o, w in zip(("accuracy", "similarity", "compression"), c)
                                                 if w != "0") for c in PARETO},
}


def preset_config(name: str, **overrides) -> EcompConfig:
    """The preset's config with overrides applied (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} "
                          "(or give --weights to define a new experiment)")
    settings = dict(PRESETS[name])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return EcompConfig(**settings)


def describe_presets() -> str:
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {DESCRIPTIONS[name]}" for name in PRESETS)

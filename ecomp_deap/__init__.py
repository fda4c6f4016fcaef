"""EComp: compress trained neural networks by multiobjective evolution (DEAP + PyTorch).

Entry points: :func:`ecomp_deap.compress` (your model and data),
:func:`ecomp_deap.search.run.run_ecomp` (one run from an ``EcompConfig``), and the
scripts in ``experiments/`` and ``plots/``.
"""
__version__ = "0.1.0"

from .api import compress  # noqa: E402
from .config import EcompConfig  # noqa: E402

__all__ = ["compress", "EcompConfig", "__version__"]

"""EComp: compress trained neural networks by multiobjective evolution (DEAP + PyTorch).

Entry points: :func:`ecomp_deap.compress` (your model and data),
:func:`ecomp_deap.search.run.run_ecomp` (one run from an :class:`EcompConfig`), and the
scripts in ``experiments/`` and ``plots/``.

The package in layers, each importing only those below it (``tests/test_layers.py``
checks it):

* core, at the top level: :mod:`.errors`, :mod:`.rng`, :mod:`.config`, :mod:`.files`,
  :mod:`.validation`, :mod:`.data` (they import one another and nothing else of the package);
* :mod:`.nets`: reading a parent, running, exporting and refitting networks;
* :mod:`.fitness`: measuring populations (the evaluator, the similarity loss);
* :mod:`.search`: the evolutionary search (genome, operators, budget, loops, one run);
* :mod:`.study`: experiments, executors, checkpoints, result files, statistics, plots;
* :mod:`.api` (``compress``) and this ``__init__``: the top, which may import anything.
"""
from ._version import __version__
from .config import EcompConfig

__all__ = ["compress", "save_compressed", "load_compressed", "EcompConfig", "__version__"]


def __getattr__(name: str):
    """``compress``, ``save_compressed`` and ``load_compressed`` are imported on first use:
    the scripts that only read result files (plots, comparisons) then never import torch."""
    if name == "compress":
        from .api import compress

        return compress
    if name in ("save_compressed", "load_compressed"):
        from .nets import export

        return getattr(export, name)
    raise AttributeError(f"module 'ecomp_deap' has no attribute {name!r}")

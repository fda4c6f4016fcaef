"""Measuring networks: the population evaluator and the similarity loss.

* :mod:`.measures`: what an evaluation gives each individual and how it becomes a DEAP
  fitness; :mod:`.evaluator`: :class:`~.evaluator.PopulationEvaluator`, which chooses how
  a population is run (:mod:`.kept_groups` on the CPU, :mod:`.stacked` elsewhere;
  :mod:`.first_stage` and :mod:`.row_keys` share a population's first stage) and measures
  it; :mod:`.reference`: the parent's side of the similarity; :mod:`.embeddings`: which
  hidden outputs enter it; :mod:`.memory`: the evaluator's memory bounds.
* :mod:`.similarity`: the t-SNE similarity loss (distances, perplexity search, KL) and
  its C kernels.

Imports the core modules (``config``, ``errors``) and :mod:`ecomp_deap.nets`; nothing
from ``search``, ``study`` or ``api``.
"""

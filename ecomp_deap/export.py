"""Kept for imports written before networks got their own subpackage: see
:mod:`ecomp_deap.nets.export`."""
from .nets.export import count_parameters, export_individual, load_exported, save_exported  # noqa: F401

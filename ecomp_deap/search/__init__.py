"""The evolutionary search: the individual (:mod:`.genome`), the operators
(:mod:`.operators`; group rankings in :mod:`.scores`), the size budget's repair
(:mod:`.budget`), the one toolbox (:mod:`.toolbox`), the two generation loops as
DEAP-style functions (:mod:`.loops`: ``ea_weighted``, ``ea_nsga2``), the final choice
(:mod:`.choice`), Pareto indicators (:mod:`.indicators`) and one whole run from a config
(:mod:`.run`: ``run_ecomp``).

Imports the core modules, :mod:`ecomp_deap.nets` and :mod:`ecomp_deap.fitness`; nothing
from ``study`` or ``api``.
"""

"""Studies: experiments of many runs (:mod:`.experiment`), running them here or on a
cluster through one path (:mod:`.runner`, :mod:`.executors`) with checkpoints
(:mod:`.checkpoint`), the presets (:mod:`.presets`) and the reference's published table
(:mod:`.published`), result files (:mod:`.results`), statistics of comparisons
(:mod:`.comparison`), plotting helpers (:mod:`.plotting`), the pruning baselines
(:mod:`.pruning_baselines`), fine-tuning (:mod:`.fine_tuning`) and command-line plumbing
(:mod:`.cli`).

May import every layer below (core, ``nets``, ``fitness``, ``search``); nothing imports
it but ``api`` and the scripts.
"""

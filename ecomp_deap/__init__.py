"""EComp: compress trained neural networks by multiobjective evolution (DEAP + PyTorch)."""
__version__ = "0.1.0"

"""Networks: how a parent is read and cut (:mod:`.chain`), run with a genome's tensors
(:mod:`.forward`), built and trained (:mod:`.parents`) and exported (:mod:`.export`)."""
from .chain import Chain, parent_tensors
from .export import export_individual, load_exported, save_exported

__all__ = ["Chain", "parent_tensors", "export_individual", "load_exported", "save_exported"]

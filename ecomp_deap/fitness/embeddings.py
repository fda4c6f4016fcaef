"""The hidden outputs that enter the similarity, and their squared distances.

An embedding layer is named by the parent's layer (``EcompConfig.embedding_layers``;
None: every hidden stage's output as the next layer sees it) and found at a (hidden
stage, position) of the chain: position -1 is the stage's layer, ``i`` the output of its
tail module ``i``. A feature map enters as its flattened C*H*W vector.
"""
from __future__ import annotations

import torch

from ..config import EcompConfig
from ..nets.chain import Chain
from .similarity import DTYPES, normalise_kernel, squared_distances


def block_rows(t: torch.Tensor, blocks: int, rows: int, lead: int = 0) -> torch.Tensor:
    """(*lead, blocks*B, *features) -> (*lead, blocks, rows, F): each batch's first
    ``rows`` images, features flattened (an embedding's input to the distances)."""
    head = t.shape[:lead]
    return t.reshape(*head, blocks, t.shape[lead] // blocks, -1)[..., :rows, :]


class Embeddings:
    """The embedding layers of a run and the children's precision of their distances
    (float32 unless the kernel is not scale-free: the Student-t kernel's is float64)."""

    def __init__(self, chain: Chain, config: EcompConfig):
        names = config.embedding_layers if config.embedding_layers is not None else chain.default_embeddings()
        self.layers = [chain.embedding_index(name) for name in names]  # [(hidden stage, position)]
        student = normalise_kernel(config.kernel) == "student_t"
        self.dtype = torch.float64 if student else DTYPES[config.similarity_dtype]

    def __len__(self) -> int:
        return len(self.layers)

    def wanted(self, rows: int) -> dict[int, list[tuple[int, int]]]:
        """Hidden stage -> [(index in ``layers``, tail position)]; none without ``rows``."""
        wanted: dict[int, list] = {}
        for index, (stage, where) in enumerate(self.layers if rows else ()):
            wanted.setdefault(stage, []).append((index, where))
        return wanted

    def distances(self, t: torch.Tensor, dtype: torch.dtype | None = None, overwrite: bool = False,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., rows, F) embeddings -> (..., rows, rows) squared distances in the
        children's precision (float32: rescaled by a power of two, see
        :mod:`.similarity.distances`, and not symmetrised: the search reads columns as
        rows); ``overwrite``: ``t`` is a scratch tensor that may be modified; ``out``:
        written into that contiguous tensor."""
        dtype = dtype or self.dtype
        exact = dtype == torch.float64
        return squared_distances(t, dtype, rescale=not exact, overwrite=overwrite, symmetric=exact, out=out)

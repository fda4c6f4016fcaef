"""The hidden outputs that enter the similarity, and their squared distances.

An embedding layer is named by the parent's layer (``EcompConfig.embedding_layers``;
None: every hidden stage's output as the next layer sees it, or a graph parent's stage
outputs) and found at a (hidden stage, position) of a chain (position -1 is the stage's
layer, ``i`` the output of its tail module ``i``), or at a module of a graph (stage
None). A feature map enters as its flattened C*H*W vector.
"""
from __future__ import annotations

from collections import Counter

import torch

from ..config import EcompConfig
from ..nets.chain import Chain
from . import memory
from .similarity import DTYPES, normalise_kernel, squared_distances

PAD_MAX_ELEMENTS = 2**16  # embeddings up to this size get their distances computed together, zero-padded


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
        if chain.kind == "graph":
            self.layers = [(None, chain.embedding_index(name)) for name in names]  # [(None, module name)]
        else:
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


def padded_distances(embeddings: "Embeddings", embedded: list, out: torch.Tensor, dtype,
                     holders: Counter | None = None) -> None:
    """Squared distances of the embeddings (blocks, rows, F_i) not None in
    ``embedded``, written into ``out`` (C, blocks, rows, rows): computed for many
    individuals at once, their features zero-padded to a common width (zero
    features add nothing to a distance), in groups under ``memory.IMAGE_BYTES``.
    ``holders``: how many embeddings of the forward hold each storage; a large
    embedding alone in its storage is centred in place (it is not read again; the
    same bits unless its squared norms need the float32 rescale, see
    :func:`~ecomp_deap.fitness.similarity.squared_distances`)."""
    todo = []
    for i, e in enumerate(embedded):
        if e is None:
            continue
        if e.numel() > PAD_MAX_ELEMENTS:  # large already (many batches): padding would only copy
            alone = holders is not None and holders[e.untyped_storage().data_ptr()] == 1
            embeddings.distances(e, dtype, overwrite=alone, out=out[i])
        else:
            todo.append(i)
    while todo:
        group, width = [], 0
        for i in todo:
            w = max(width, embedded[i].shape[-1])
            if group and (len(group) + 1) * w * embedded[i][..., 0].numel() * 4 > memory.IMAGE_BYTES:
                break
            group.append(i)
            width = w
        todo = todo[len(group):]
        first = embedded[group[0]]
        stack = first.new_zeros(len(group), *first.shape[:-1], width)  # (G, blocks, rows, width)
        for j, i in enumerate(group):
            stack[j, ..., :embedded[i].shape[-1]] = embedded[i]
        if group[-1] - group[0] == len(group) - 1:  # consecutive individuals: written in place
            embeddings.distances(stack, dtype, overwrite=True, out=out[group[0]:group[-1] + 1])
        else:
            out[torch.tensor(group)] = embeddings.distances(stack, dtype, overwrite=True)

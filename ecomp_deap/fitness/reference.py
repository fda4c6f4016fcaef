"""The parent's side of the similarity on a batch: computed once, shared by every child."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def row_means(d: torch.Tensor) -> torch.Tensor:
    """(..., B, B) squared distances -> (..., B) mean distance of each row to the others."""
    return d.sum(-1) / (d.shape[-1] - 1)


@dataclass
class ParentReference:
    """The parent's side of one embedding layer's similarity on one batch, or on a
    stack of batches (a leading (batches,) dimension on every field)."""

    p: torch.Tensor  # (B, B) joint probabilities, float64
    log_beta: torch.Tensor  # (B,) log-precisions of its rows' Gaussians
    mean_d: torch.Tensor  # (B,) mean squared distance of each row
    term: torch.Tensor  # () sum P log P, the KL's part that does not depend on the child

    def warm_start(self, d_child: torch.Tensor) -> torch.Tensor:
        """(C, ..., B) starting log-precisions for children's rows: the parent's, rescaled
        by how much smaller the child's distances are (a Gaussian's precision scales
        inversely with its distances). Only the search's speed depends on it."""
        return self.log_beta + torch.log(self.mean_d) - torch.log(row_means(d_child).to(self.mean_d.dtype))

    @staticmethod
    def stack(refs: Sequence["ParentReference"]) -> "ParentReference":
        """One reference per batch -> one with a leading (batches,) dimension."""
        return ParentReference(*(torch.stack([getattr(r, f) for r in refs]) for f in ("p", "log_beta", "mean_d", "term")))

"""Cosine feature losses: semantic self-distillation (and the GSB consistency term, which is the
same distance between a reconstruction and its target)."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


def cosine_distance(x: Tensor, y: Tensor) -> Tensor:
    """Mean over all tokens of 1 - cos(x, y), the cosine taken over the last (channel) dimension."""
    if x.shape != y.shape:
        raise ValueError(f"cosine distance needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (1 - F.cosine_similarity(x, y, dim=-1)).mean()


def distillation_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over layers of the per-token cosine distance between student and (frozen) teacher features."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need the same non-zero number of layers, got {len(student)} and {len(teacher)}")
    return sum(cosine_distance(s, t.detach()) for s, t in zip(student, teacher)) / len(student)

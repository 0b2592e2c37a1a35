"""Hinge GAN losses (Lim & Ye 2017; the form used by taming-transformers' VQGAN)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator: -mean D(x_hat)."""
    return -logits_fake.mean()

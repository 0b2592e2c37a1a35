"""GSB, the Generation-Semantic Bottleneck (DESIGN section 1).

Gen-ViT features h (B, N, D) are compressed per token to a diagonal Gaussian of dimension c,

    (mu, logvar) = compress(h),   z = mu + exp(logvar / 2) * eps,

and z is THE latent (the decoder reconstructs from it, the LLM reads it). ``reconstruct`` lifts z
back to h' (B, N, D) for Sem-ViT. Two regularisers: the KL of N(mu, sigma^2) against N(0, I) and the
consistency 1 - cos(h', h) per token.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from hydra_umm.losses.distillation import cosine_distance


class Compress(nn.Module):
    """Linear(D -> 2c) split into the posterior mean and log-variance, each (B, N, c); the
    log-variance clamped to [-30, 20] as LDM's autoencoders do, so exp(logvar) stays finite."""

    def __init__(self, dim: int, latent_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.proj(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)


class GenerationSemanticBottleneck(nn.Module):
    def __init__(self, dim: int, latent_dim: int):
        super().__init__()
        self.compress = Compress(dim, latent_dim)
        self.reconstruct = nn.Linear(latent_dim, dim)

    @staticmethod
    def sample(mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Reparameterisation: z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over channels, averaged over tokens and batch:
    0.5 * sum_c (mu^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=-1).mean()


def consistency_loss(h_prime: Tensor, h: Tensor, stop_grad: bool = True) -> Tensor:
    """Mean over tokens of 1 - cos(h', h); with ``stop_grad`` h is a fixed target."""
    return cosine_distance(h_prime, h.detach() if stop_grad else h)

"""AdaLN-Zero conditioning (DiT, Peebles & Xie 2023), shared by the pixel decoder and the vision head.

A condition vector c (the timestep embedding, possibly plus more) regresses per-channel shift,
scale and gate for each sub-layer; the regressors are zero-initialised so every block starts as
the identity and the final layer starts by predicting exactly zero.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _per_token(c: Tensor) -> Tensor:
    """(B, C) -> (B, 1, C) so one condition broadcasts over tokens; (B, N, C) stays per token."""
    return c.unsqueeze(1) if c.dim() == 2 else c


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of 1000 t -> MLP (DiT's embedder, on the flow's time)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:  # (...,) -> (..., dim)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[..., None] * freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AdaLNZeroBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c and whose residuals are gated."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        # x (B, N, dim); c (B, cond_dim) or (B, N, cond_dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(_per_token(c)).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), attn_mask=attn_mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class AdaLNFinalLayer(nn.Module):
    """Modulated norm then a zero-initialised projection: the initial prediction is exactly 0."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.proj = nn.Linear(dim, out_dim)
        for layer in (self.modulation[1], self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(_per_token(c)).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))

"""Deterministic ViT decoder (DESIGN section 4; an option for HYDRA-TOK beside the pixel flow decoder).

The latent tokens z (B, N, c) are lifted to the decoder width, given fixed 2-D sin-cos positions on
the tokenizer's (H/p, W/p) grid, mixed by plain ViT blocks (timm), and each token is projected to
its p x p pixel patch:

    z -> Linear(c -> W) + pos -> blocks -> LayerNorm -> Linear(W -> 3 p^2) -> unpatchify -> x_hat

One forward pass decodes (no ODE); it is trained with L1 + LPIPS (+ GAN in stage 2) on x_hat.
"""

from __future__ import annotations

from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from hydra_umm.models.pixel_decoder import unpatchify


class ViTDecoder(nn.Module):
    def __init__(
        self,
        grid: tuple[int, int],
        patch_size: int,
        latent_dim: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.grid, self.patch_size = grid, patch_size
        self.latent_embed = nn.Linear(latent_dim, width)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(grid), width)[None], persistent=False)
        self.blocks = nn.Sequential(*(Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3 * patch_size * patch_size)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, N, c) -> x_hat (B, 3, H, W)."""
        x = self.blocks(self.latent_embed(z) + self.pos_embed)  # (B, N, W)
        return unpatchify(self.head(self.norm(x)), self.patch_size, self.grid)

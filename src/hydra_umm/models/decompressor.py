"""Decompressor (DESIGN section 4): lifts temporally compressed features back to per-frame resolution.

Two stages, each doubling the frame count:

    x (B, F, N, C_in) -> 1x1 conv C -> 2C (a Linear per token) -> (B, F, N, 2, C)
      -> channel-to-time: (B, 2F, N, C), the two halves becoming consecutive frames
      -> transformer block (timm ViT block, 3D RoPE, frame pattern ``attention``)
    ... -> Linear(C -> C_out): (B, 4F, N, C_out)

HYDRA-X uses it on Sem-ViT's features of the compressed frames, s_{1:}, to meet a video teacher
that sees every frame (training only), and on the latents of those frames ahead of the per-frame
image decoder.
"""

from __future__ import annotations

from timm.models.vision_transformer import Block
from torch import Tensor, nn

from hydra_umm.models.spacetime import check_attention, spacetime_block

STAGES = 2  # two 2x stages: the 4x temporal compression of the tokenizer


class Decompressor(nn.Module):
    def __init__(
        self,
        in_dim: int,
        width: int,
        out_dim: int,
        num_heads: int,
        grid: tuple[int, int],
        attention: str = "tubelet",
        mlp_ratio: float = 4.0,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        check_attention(attention)
        self.grid, self.attention, self.rope_theta = grid, attention, rope_theta
        self.expand = nn.ModuleList(nn.Linear(in_dim if i == 0 else width, 2 * width) for i in range(STAGES))
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(STAGES))
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, N, C_in) -> (B, 4F, N, C_out)."""
        b, _, n, _ = x.shape
        for expand, block in zip(self.expand, self.blocks, strict=True):
            x = expand(x)  # (B, F, N, 2C)
            x = x.unflatten(-1, (2, -1)).transpose(2, 3).flatten(1, 2)  # (B, 2F, N, C): channel halves -> frames
            frames = x.shape[1]
            x = spacetime_block(block, x.flatten(1, 2), frames, self.grid, self.attention, self.rope_theta)
            x = x.view(b, frames, n, -1)
        return self.out(x)

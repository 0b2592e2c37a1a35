"""The vision head of HYDRA (DESIGN section 3): DiT-style AdaLN-Zero blocks over the LLM's final
hidden states at the visual positions, modulated by the flow time t, predicting the velocity of
every c-dim latent token. Its modulations and output layer start at zero, so it first predicts 0.
"""

from __future__ import annotations

from torch import Tensor, nn

from hydra_umm.models.adaln import AdaLNFinalLayer, AdaLNZeroBlock, TimestepEmbedder


class VisionHead(nn.Module):
    def __init__(self, llm_width: int, width: int, depth: int, num_heads: int, latent_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(llm_width, width)
        self.time_embed = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(width, num_heads, cond_dim=width) for _ in range(depth))
        self.final = AdaLNFinalLayer(width, latent_dim, cond_dim=width)

    def forward(self, hidden: Tensor, t: Tensor) -> Tensor:
        """hidden (B, N, llm_width) of one image block, t (B,) -> velocity (B, N, latent_dim)."""
        x = self.proj_in(hidden)
        c = self.time_embed(t)  # (B, width)
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c)

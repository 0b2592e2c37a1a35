"""MAR encoder and decoder (Li et al. 2024, as used by Harmon; DESIGN section 5), and their masking.

Latent tokens (B, N, c) of the KL autoencoder (patch 1) are masked in a random order per sample.

- :class:`MAREncoder`: drops the masked tokens, prepends ``buffer_size`` learned buffer tokens and
  runs a bidirectional ViT (timm ``Block``) -> (B, S + N_visible, width). A masked token's value
  never enters it.
- :class:`MARDecoder`: writes the (LLM-refined) encoder features back into their slots, a learned
  mask token everywhere else, runs another bidirectional ViT and returns the N token conditions
  (B, N, width) the diffusion head reads.

Masking helpers: :func:`random_orders`, :func:`mask_by_order`, :func:`training_mask_ratio` (one
ratio per batch, N(1, 0.25) truncated to [0.7, 1]) and :func:`mask_schedule` (the cosine schedule
of masked-autoregressive sampling over K steps).
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def random_orders(batch: int, num_tokens: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """A random permutation of the N token indices per sample: (B, N) long."""
    return torch.rand(batch, num_tokens, generator=generator, device=device).argsort(dim=1)


def mask_by_order(num_masked: int, orders: Tensor) -> Tensor:
    """(B, N) bool mask, True on the first ``num_masked`` tokens of each sample's order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)


def training_mask_ratio(minimum: float = 0.7, std: float = 0.25, generator: torch.Generator | None = None) -> float:
    """A mask ratio from N(1, std) truncated to [minimum, 1] (MAR's left-half truncated Gaussian),
    drawn by inverting the normal CDF."""
    if not 0.0 <= minimum <= 1.0 or std <= 0:
        raise ValueError(f"need 0 <= mask_ratio_min <= 1 and std > 0, got {minimum}, {std}")
    low = torch.special.ndtr(torch.tensor((minimum - 1.0) / std, dtype=torch.float64))
    u = low + (0.5 - low) * torch.rand((), generator=generator, dtype=torch.float64)
    return float(1.0 + std * torch.special.ndtri(u))


def mask_schedule(num_tokens: int, steps: int) -> list[int]:
    """How many tokens are still masked after each of K sampling steps: N cos(pi/2 (k+1)/K), floored,
    at least one token revealed per step while any remain and at least one kept for the next step,
    none after the last. Step k reveals ``previous - schedule[k]`` tokens (possibly 0 when K > N)."""
    if steps < 1 or num_tokens < 1:
        raise ValueError(f"need at least one step and one token, got steps={steps}, tokens={num_tokens}")
    masked, out = num_tokens, []
    for k in range(steps):
        target = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))
        masked = 0 if k == steps - 1 else max(1, min(masked - 1, target))
        out.append(masked)
    return out


def _init_weights(module: nn.Module) -> None:
    """MAR's init: Xavier-uniform linear layers with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        Block(width, heads, mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=dropout) for _ in range(depth)
    )


def _check_mask(mask: Tensor, num_tokens: int) -> int:
    """The number of masked tokens per row, which must be the same for every row."""
    if mask.dim() != 2 or mask.shape[1] != num_tokens:
        raise ValueError(f"mask must be (B, {num_tokens}), got {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(f"every row must mask the same number of tokens, got {counts.tolist()}")
    return int(counts[0])


class MAREncoder(nn.Module):
    def __init__(self, token_dim: int, num_tokens: int, buffer_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.num_tokens, self.buffer_size = num_tokens, buffer_size
        self.z_proj = nn.Linear(token_dim, width)
        self.buffer = nn.Parameter(torch.zeros(1, buffer_size, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.z_proj_ln = nn.LayerNorm(width, eps=1e-6)
        self.blocks = _blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        _init_weights(self)
        for p in (self.buffer, self.pos_embed):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Tokens (B, N, c) and mask (B, N) bool (True = masked, the same count per row) ->
        (B, S + N_visible, width): buffer tokens first, then the visible tokens in grid order."""
        B = x.shape[0]
        _check_mask(mask, self.num_tokens)
        visible = ~mask
        tokens = self.z_proj(x[visible]) + self.pos_embed.expand(B, -1, -1)[visible]  # (B N_visible, width)
        tokens = tokens.reshape(B, -1, tokens.shape[-1])
        h = self.z_proj_ln(torch.cat([self.buffer.expand(B, -1, -1), tokens], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


class MARDecoder(nn.Module):
    def __init__(self, encoder_width: int, num_tokens: int, buffer_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.num_tokens, self.buffer_size = num_tokens, buffer_size
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, buffer_size + num_tokens, width))
        self.blocks = _blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        self.diffusion_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        _init_weights(self)
        for p in (self.mask_token, self.pos_embed, self.diffusion_pos_embed):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encoder-side features (B, S + N_visible, encoder_width) and the mask (B, N) -> token
        conditions (B, N, width) for every slot, masked or not."""
        B = x.shape[0]
        masked = _check_mask(mask, self.num_tokens)
        if x.shape[1] != self.buffer_size + self.num_tokens - masked:
            raise ValueError(f"expected {self.buffer_size + self.num_tokens - masked} features, got {x.shape[1]}")
        slots = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1)  # (B, S + N), True = mask token
        h = self.mask_token.to(x.dtype).expand(B, slots.shape[1], -1).clone()
        h[~slots] = self.embed(x).reshape(-1, h.shape[-1])
        h = h + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, self.buffer_size:] + self.diffusion_pos_embed

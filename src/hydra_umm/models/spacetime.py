"""Spacetime machinery of HYDRA-X (DESIGN section 4): temporal patchify, 3D RoPE and the
frame-level attention patterns, applied to timm ViT blocks.

Tokens of a clip are laid out frame by frame: (B, F * N, D), N = h * w tokens per (latent) frame.

- Temporal patchify: a clip of 1 + f k frames, the anchor first, is zero-padded in front with
  f - 1 frames so that the anchor forms a group of f like every other frame: 1 + k groups.
- 3D RoPE over (time, row, column): the head dimension's rotation pairs are split between the
  axes (a quarter to time, the rest halved between rows and columns), each axis with the usual
  frequencies theta^(-2i/d) over its integer coordinate.
- Attention patterns between latent frames (a query of frame i may read keys of frame j):
  ``full`` always; ``causal`` when j <= i; ``tubelet`` when i - 1 <= j <= i (own frame and the
  one before: a sliding window of two frames, not block-causal). One frame: all three are full.
  ``causal`` runs dense attention under :func:`frame_mask` (built once per shape and cached);
  ``tubelet`` runs on its two-frame windows instead (2N keys per query, not F N, and no mask),
  which equals dense attention under ``frame_mask("tubelet", ...)``.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, freq_bands
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor

ATTENTION = ("full", "causal", "tubelet")


def check_attention(attention: str) -> None:
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION)}")


def temporal_groups(x: Tensor, factor: int) -> Tensor:
    """(B, 1 + factor k, ...) -> (B, 1 + k, factor, ...): the anchor (frame 0) zero-padded in front
    with factor - 1 frames, then consecutive frames grouped."""
    if (x.shape[1] - 1) % factor:
        raise ValueError(f"{x.shape[1]} frames are not 1 + a multiple of {factor}")
    pad = x.new_zeros((x.shape[0], factor - 1, *x.shape[2:]))
    return torch.cat([pad, x], dim=1).unflatten(1, (-1, factor))


def strip_positions(vit: VisionTransformer) -> VisionTransformer:
    """Remove a timm ViT's class token and learned position table in place (3D RoPE gives the
    positions, and a clip has no single class token): the same model as timm's
    ``class_token=False, pos_embed='none'``."""
    vit.cls_token = None
    vit.pos_embed = None
    vit.num_prefix_tokens = 0
    vit.has_class_token = False
    return vit


def shape_cache(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Memoise a constant tensor per shape. Built outside inference mode, so a tensor first made
    under ``torch.inference_mode`` still serves training later."""

    @functools.lru_cache(maxsize=64)
    def build(*args):
        with torch.inference_mode(False):
            return fn(*args)

    return functools.wraps(fn)(build)


# ------------------------------------------------------------------------------ 3D RoPE


def rope_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis (time, rows, columns) of a head of ``head_dim`` channels."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head dimension >= 6, got {head_dim}")
    pairs = head_dim // 2
    t = max(1, pairs // 4)
    rows = (pairs - t) // 2
    return t, rows, pairs - t - rows


@shape_cache
def rope_3d(frames: int, grid: tuple[int, int], head_dim: int, theta: float, device: torch.device) -> Tensor:
    """(F * h * w, 2 * head_dim): [sin | cos] of every token's rotation angles, interleaved layout
    (timm's ``apply_rot_embed_cat``). Frame f, row r, column c gets angles (f, r, c) * frequencies."""
    coords = torch.meshgrid(
        torch.arange(frames, device=device), torch.arange(grid[0], device=device),
        torch.arange(grid[1], device=device), indexing="ij",
    )
    angles = [
        pos.flatten()[:, None].float() * freq_bands(2 * n, theta, step=2, device=device)[None]
        for pos, n in zip(coords, rope_pairs(head_dim), strict=True)
    ]
    angles = torch.cat(angles, dim=-1).repeat_interleave(2, dim=-1)  # (F h w, head_dim)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# ------------------------------------------------------------------------------ masks


@shape_cache
def frame_mask(attention: str, frames: int, tokens: int, device: torch.device) -> Tensor:
    """(F * N, F * N) bool, True where a query (row) may attend to a key (column)."""
    check_attention(attention)
    f = torch.arange(frames, device=device).repeat_interleave(tokens)
    q, k = f[:, None], f[None, :]
    if attention == "full":
        return torch.ones(len(f), len(f), dtype=torch.bool, device=device)
    if attention == "causal":
        return k <= q
    return (k <= q) & (k >= q - 1)


def attend(q: Tensor, k: Tensor, v: Tensor, attention: str, frames: int, dropout: float = 0.0) -> Tensor:
    """Scaled dot-product attention of (B, H, F * N, d) queries, keys and values under a pattern
    (``dropout`` on the attention weights)."""
    sdpa = functools.partial(F.scaled_dot_product_attention, dropout_p=dropout)
    if attention == "full" or frames == 1:
        return sdpa(q, k, v)
    tokens = q.shape[2] // frames
    if attention == "causal":
        return sdpa(q, k, v, attn_mask=frame_mask(attention, frames, tokens, q.device))
    check_attention(attention)
    q, k, v = (x.unflatten(2, (frames, tokens)) for x in (q, k, v))  # (B, H, F, N, d)
    anchor = sdpa(q[:, :, 0], k[:, :, 0], v[:, :, 0])  # frame 0: no frame before it

    def windows(x: Tensor) -> Tensor:  # (B, H, F, N, d) -> (B, H (F - 1), 2N, d): [frame f - 1; frame f], f >= 1
        return torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3).flatten(1, 2)

    rest = sdpa(q[:, :, 1:].flatten(1, 2), windows(k), windows(v))
    return torch.cat([anchor[:, :, None], rest.unflatten(1, (q.shape[1], frames - 1))], dim=2).flatten(2, 3)


# ------------------------------------------------------------------------------ blocks


def _attention(attn: Attention, x: Tensor, rope: Tensor, attention: str, frames: int) -> Tensor:
    """timm ``Attention.forward`` with rotary queries and keys and a frame pattern."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rot_embed_cat(q, rope), apply_rot_embed_cat(k, rope)
    dropout = attn.attn_drop.p if attn.training else 0.0
    x = attend(q, k, v, attention, frames, dropout).transpose(1, 2).reshape(b, n, attn.attn_dim)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def spacetime_block(
    block: Block, x: Tensor, frames: int, grid: tuple[int, int], attention: str, theta: float
) -> Tensor:
    """One timm ViT block (pre-norm, layer-scale, drop-path as timm has them) over (B, F * N, D)
    tokens, its attention with 3D RoPE and the frame pattern ``attention``."""
    rope = rope_3d(frames, grid, block.attn.head_dim, theta, x.device)
    x = x + block.drop_path1(block.ls1(_attention(block.attn, block.norm1(x), rope, attention, frames)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

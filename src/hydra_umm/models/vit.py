"""The tokenizer's ViT: timm's ``vit_intern300m_patch14_448`` (InternViT-300M) with the sizes of a
:class:`~hydra_umm.config.TokenizerConfig`.

The paper preset reproduces the timm model exactly (24 blocks, width 1024, 16 heads, patch 14,
448 px, layer-scale 0.1, no final norm); the tiny preset is the same architecture with smaller numbers.
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hydra_umm.config import TokenizerConfig

TIMM_ARCH = "vit_intern300m_patch14_448"


def build_vit(cfg: TokenizerConfig) -> VisionTransformer:
    """A randomly initialised timm InternViT of the configured size, without head or pooling.

    Its output keeps every token: (B, 1 + N, D), the class token first.
    """
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
    return timm.create_model(
        TIMM_ARCH,
        pretrained=False,
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        init_values=cfg.layer_scale,
        num_classes=0,
        global_pool="",
    )


def check_image_size(images: Tensor, cfg: TokenizerConfig) -> None:
    """Raise a ValueError naming the sizes unless ``images`` is (B, 3, S, S) with S = cfg.image_size."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    p, s = cfg.patch_size, cfg.image_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    if (h, w) != (s, s):
        raise ValueError(f"image size {h}x{w} does not match the configured image_size {s}x{s}")


class InputNormalization(nn.Module):
    """Pixels in [-1, 1] -> the ViT's input statistics: [0, 1], then (x - mean) / std per channel."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return ((images + 1) / 2 - self.mean) / self.std

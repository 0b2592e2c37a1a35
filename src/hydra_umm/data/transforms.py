"""PIL images <-> the project's pixel tensors: float (3, S, S) in [-1, 1].

Resize the shorter side to S, centre-crop S x S, scale to [-1, 1]. The encoder's own
normalisation (ImageNet mean/std for InternViT) happens inside the model, not here.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.functional import to_pil_image


class ImageTransform:
    """``transform(pil) -> (3, size, size)`` float tensor in [-1, 1]."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        self.size = size
        self.pipeline = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True),  # [0, 1]
                v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),  # [-1, 1]
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pipeline(image.convert("RGB")).clamp_(-1.0, 1.0)  # bicubic may overshoot


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> list of RGB PIL images."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) images, got shape {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [to_pil_image(p) for p in pixels]

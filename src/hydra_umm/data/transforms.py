"""PIL images <-> the project's pixel tensors: float (3, S, S) in [-1, 1]. The one place that converts.

Resize the shorter side to S (bicubic), centre-crop S x S, scale to [-1, 1]. The encoder's own
normalisation (ImageNet mean/std for InternViT) happens inside the model, not here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # image files the loaders pick up


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image. Integer grayscale of more than 8 bits (modes "I;16*" and "I", as PIL reads
    16-bit PNG and TIFF) is scaled from 0..65535 and float grayscale ("F") from 0..1; PIL's own
    ``convert("RGB")`` would clip them at 255 (all white)."""
    if image.mode == "F":
        scale = 255.0
    elif image.mode == "I" or image.mode.startswith("I;16"):
        scale = 1 / 257
    else:
        return image.convert("RGB")
    pixels = np.clip(np.asarray(image, dtype=np.float64) * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def resize_crop(image: Image.Image, size: int) -> Image.Image:
    """An RGB image whose shorter side is resized to ``size`` (bicubic) and centre-cropped square."""
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    image = to_rgb(image)
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """One RGB image -> (3, H, W), or a sequence of images of one size -> (B, 3, H, W), in [-1, 1]."""
    if isinstance(images, Image.Image):
        return to_tensor([images])[0]
    arrays = np.stack([np.asarray(to_rgb(im), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


class ImageTransform:
    """``transform(pil) -> (3, size, size)`` float tensor in [-1, 1]: :func:`resize_crop` then :func:`to_tensor`."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(resize_crop(image, self.size))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (any shape) -> uint8 [0, 255], rounded as a saved image is."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> list of RGB PIL images."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) images, got shape {tuple(images.shape)}")
    pixels = to_uint8(images.cpu())
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]

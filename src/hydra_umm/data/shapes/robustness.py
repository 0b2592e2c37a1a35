"""Corruptions for measuring the scorer's robustness: additive Gaussian noise and Gaussian blur."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def gaussian_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Add N(0, sigma^2) noise to every channel (sigma in units of the [0, 1] range), clipped."""
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    x = np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0)
    return Image.fromarray(np.round(x * 255).astype(np.uint8))


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma))

"""Rendering a scene: anti-aliased shapes on a light, slightly textured grey background.

Shapes are drawn on a supersampled canvas and box-filtered down, so every edge pixel holds the
exact area coverage. The background is grey (no hue), which is what lets the scorer find objects
by their saturation alone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hydra_umm.data.shapes.world import COLORS, Scene, shape_outline

MIN_SIZE, MAX_SIZE = 16, 1024


def background_texture(scene: Scene, size: int) -> np.ndarray:
    """(size, size) grey levels in [0, 1]: the scene's level, a soft linear gradient and a fine
    grain, all seeded by ``scene.texture_seed``."""
    rng = np.random.default_rng(scene.texture_seed)
    angle = rng.uniform(0, 2 * np.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    gradient = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]  # in [-0.7, 0.7]
    grain = rng.normal(0.0, 0.01, (size, size))
    return np.clip(scene.background + 0.04 * gradient + grain, 0.0, 1.0)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB ``PIL.Image`` of ``size`` x ``size`` pixels (deterministic)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"image size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    ss = 4 if size <= 256 else 2  # supersampling factor
    grey = np.round(background_texture(scene, size) * 255).astype(np.uint8)
    canvas = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).resize((size * ss, size * ss), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    side = size * ss
    for obj in scene.objects:
        fill = COLORS[obj.color]
        cx, cy, r = obj.cx * side, obj.cy * side, obj.radius * side
        outline = shape_outline(obj.shape)
        if outline is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx + x * r, cy + y * r) for x, y in outline], fill=fill)
    return canvas.resize((size, size), Image.BOX)


def to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as float (H, W, 3) in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0

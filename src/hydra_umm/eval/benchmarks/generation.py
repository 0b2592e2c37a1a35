"""Sampling settings and the one call every generation (``pipeline.generate``) and editing
(``pipeline.edit``) writer makes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class GenerationSettings:
    """Keyword arguments for ``pipeline.generate``; ``None`` keeps the pipeline's default."""

    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    seed: int | None = 0


def generate_images(pipeline: Any, prompt: str, n: int, settings: GenerationSettings) -> list[Image.Image]:
    """``n`` images for one prompt from one ``pipeline.generate`` call (the same seed for every
    prompt, as GenEval's generation script reseeds before each prompt)."""
    kwargs = {name: value for name, value in asdict(settings).items() if value is not None}
    images = list(pipeline.generate([prompt] * n, **kwargs))
    if len(images) != n or not all(isinstance(im, Image.Image) for im in images):
        raise TypeError(f"pipeline.generate must return {n} PIL images for {n} prompts, got {len(images)} items")
    return images


@dataclass(frozen=True)
class EditSettings:
    """Keyword arguments for ``pipeline.edit``; ``None`` keeps the pipeline's default."""

    steps: int | None = None
    cfg_scale: float | None = None
    image_cfg_scale: float | None = None
    sampler: str | None = None
    seed: int = 0
    strength: float | None = None


def edit_images(pipeline: Any, images: list[Image.Image], instructions: list[str],
                settings: EditSettings) -> list[Image.Image]:
    """One ``pipeline.edit`` call: an edited image per (source image, instruction)."""
    kwargs = {name: value for name, value in asdict(settings).items() if value is not None}
    edited = list(pipeline.edit(images, instructions, **kwargs))
    if len(edited) != len(images) or not all(isinstance(im, Image.Image) for im in edited):
        raise TypeError(f"pipeline.edit must return {len(images)} PIL images, got {len(edited)} items")
    return edited

"""Robustness of the shapes-world scorer: GenEval-style accuracy on ground-truth renderings of the
prompts under Gaussian noise and Gaussian blur, each beside the clean accuracy of the same images."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from hydra_umm.bench import Figure
from hydra_umm.data.shapes import gaussian_blur, gaussian_noise, generate_prompts, render_prompt, score_image, summarize

NOISE_SIGMAS = (0.05, 0.1, 0.2, 0.3)  # in units of the [0, 1] pixel range
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0)  # pixels


def accuracy(images: list[tuple[Image.Image, dict]], corrupt: Callable[[Image.Image], Image.Image]) -> float:
    """GenEval overall score (mean over categories) of the corrupted images."""
    results = [{"tag": meta["tag"], "metadata": meta, **score_image(corrupt(image), meta)} for image, meta in images]
    return summarize(results)["overall"]


def robustness(sizes: tuple[int, ...] = (64, 128), per_tag: int = 12) -> list[Figure]:
    """Clean, noisy and blurred accuracy at each image size (one rendering per prompt)."""
    rng = np.random.default_rng(0)
    prompts = generate_prompts(rng, per_tag=per_tag)
    figures = []
    for size in sizes:
        images = [(render_prompt(meta, rng, size)[0], meta) for meta in prompts]
        clean = accuracy(images, lambda im: im)
        reference = f"clean accuracy ({len(images)} images)"
        figures.append(Figure(f"shapes scorer {size}px clean", clean, "accuracy", "1.0 (all rendered to match)", 1.0))
        for sigma in NOISE_SIGMAS:
            noise_rng = np.random.default_rng(1)
            acc = accuracy(images, lambda im: gaussian_noise(im, sigma, noise_rng))
            figures.append(Figure(f"shapes scorer {size}px gaussian noise sigma={sigma}", acc, "accuracy", reference, clean))
        for sigma in BLUR_SIGMAS:
            acc = accuracy(images, lambda im: gaussian_blur(im, sigma))
            figures.append(Figure(f"shapes scorer {size}px gaussian blur sigma={sigma}px", acc, "accuracy", reference, clean))
    return figures


def run(include_paper: bool = True) -> list[Figure]:
    return robustness(sizes=(64, 128, 256) if include_paper else (64, 128))

"""Representation alignment measured with CKNNA (paper appendix F.2).

- HYDRA-TOK vs its teacher: the student's patch features after each block of
  ``tokenizer.distill_layers`` against the teacher's at the same block.
- HYDRA's two branches: the visual tokens the LLM reads for understanding (the clean GSB mean,
  t = 1) against those it reads for generation (the same image's latent noised to flow time t).
- Harmon's two branches (its shared MAR encoder): the visual tokens of the image with every latent
  token visible (understanding) against those with a random fraction 1 - t of them masked, as the
  encoder sees an image part-way through masked-autoregressive generation.

Features are averaged over tokens (one vector per image) before CKNNA.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from hydra_umm import flow
from hydra_umm.eval.cknna import cknna_pairs
from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.harmon.mar import mask_by_order, random_orders


@torch.no_grad()
def tokenizer_layer_features(tokenizer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``student/<l>`` and ``teacher/<l>`` patch features (B, N, D) for every distillation layer l."""
    student, teacher = tokenizer.student_features(images), tokenizer.teacher_features(images)
    return {**{f"student/{l}": f for l, f in student.items()}, **{f"teacher/{l}": f for l, f in teacher.items()}}


@torch.no_grad()
def branch_features(model, images: torch.Tensor, t: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``understanding`` and ``generation`` visual tokens (B, tokens, width) of the same images:
    for HYDRA clean (t = 1) and noised to time ``t``; for Harmon all visible and a fraction 1 - t masked."""
    z = model.latents(images)
    g = torch.Generator(device=z.device).manual_seed(seed)
    if isinstance(model, HarmonModel):
        masked = round((1 - t) * model.num_tokens)
        mask = mask_by_order(masked, random_orders(len(z), model.num_tokens, g, z.device))
        return {"understanding": model.visual_tokens(z), "generation": model.encode(z, mask)[1]}
    noise = torch.randn(z.shape, generator=g, device=z.device, dtype=z.dtype)
    ones, times = torch.ones(len(z), device=z.device), torch.full((len(z),), t, device=z.device)
    return {"understanding": model.visual_tokens(z, ones),
            "generation": model.visual_tokens(flow.interpolate(noise, z, times), times)}


def alignment_features(
    pipeline, images: Sequence[Image.Image], t: float = 0.5, seed: int = 0
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """The features to compare and the pairs to compare: every tokenizer layer against the teacher
    (HYDRA-TOK) and, for a HydraModel or HarmonModel pipeline, the generation branch against the
    understanding branch."""
    x = pipeline.pixels(images)
    features, pairs = {}, []
    if hasattr(pipeline, "tokenizer"):
        features = tokenizer_layer_features(pipeline.tokenizer, x)
        pairs = [(f"student/{l}", f"teacher/{l}") for l in pipeline.tokenizer.cfg.distill_layers]
    if hasattr(pipeline, "model"):
        features.update(branch_features(pipeline.model, x, t, seed))
        pairs.append(("generation", "understanding"))
    return features, pairs


def evaluate_cknna(pipeline, images: Sequence[Image.Image], k: int = 10, t: float = 0.5, seed: int = 0) -> dict:
    """CKNNA ("<a> vs <b>" -> score) of the pairs of :func:`alignment_features`."""
    if len(images) <= k:
        raise ValueError(f"CKNNA with k={k} needs more than {k} images, got {len(images)}")
    features, pairs = alignment_features(pipeline, images, t, seed)
    return cknna_pairs(features, pairs, k)

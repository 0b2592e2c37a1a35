"""How much the prompt steers HYDRA's generation: the held-out flow loss at fixed flow times, with each
image's own caption and with the empty prompt (the unconditional side of classifier-free guidance).

Near noise (small t) only the prompt says what to draw, so a model that has learnt text conditioning
predicts the velocity better with the caption there; where the two columns agree, guidance has
nothing to amplify and samples ignore their prompts.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from hydra_umm import flow

TIMES = (0.05, 0.2, 0.4, 0.6, 0.8)


@torch.no_grad()
def flow_loss_by_prompt(
    pipeline, images: Sequence[Image.Image], captions: Sequence[str], times: Sequence[float] = TIMES, seed: int = 0
) -> dict[str, float]:
    """``"t=<t> caption"`` and ``"t=<t> empty prompt"`` -> the mean squared velocity error of the vision
    head of ``pipeline`` (a HydraPipeline) on ``images`` noised to time t, the same noise for both."""
    if len(images) != len(captions):
        raise ValueError(f"one caption per image: got {len(images)} images and {len(captions)} captions")
    model = pipeline.model
    z = model.latents(pipeline.pixels(images))  # (B, N, c)
    x0 = torch.randn(z.shape, generator=torch.Generator(device=z.device).manual_seed(seed), device=z.device)
    target = flow.velocity_target(x0, z)
    table = {}
    for name, prompts in (("caption", list(captions)), ("empty prompt", [""] * len(captions))):
        # the velocity the sampler integrates, the prompts run once (KV cache) for every t
        velocity = pipeline.block_velocity([model.generation_prefix(p) for p in prompts], frames=1)
        for t in times:
            tt = torch.full((len(z),), float(t), device=z.device)
            v = velocity(flow.interpolate(x0, z, tt)[:, None], tt)[:, 0]
            table[f"t={t:g} {name}"] = F.mse_loss(v, target).item()
    return table

"""HarmonPipeline: HydraPipeline's interface (generate / answer / reconstruct) for a saved Harmon.

- ``generate``: masked-autoregressive sampling (DESIGN section 5). One random order per image, shared
  by the conditional and the unconditional ("") prompt; a cosine schedule over K steps
  (:func:`~hydra_umm.models.harmon.mar.mask_schedule`). At every step the MAR encoder reads the
  tokens revealed so far, the LLM runs the visual tokens against the prompt's KV cache (computed
  once, trimmed back to the prompt after the step), the MAR decoder gives every slot's condition
  and the diffusion head samples the tokens this step reveals, with classifier-free guidance on its
  noise prediction and a temperature. The KL autoencoder decodes the final tokens.
- ``answer`` / ``loglikelihood``: HydraPipeline's own, through Harmon's causal visual tokens.
- ``reconstruct``: through the KL autoencoder (posterior mode, deterministic).

``use_cache=False`` recomputes prompt and visual tokens together at every step (the reference).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image as PILImage
from torch import Tensor

from hydra_umm.data.transforms import to_pil
from hydra_umm.inference.kv_cache import CachedSequence
from hydra_umm.inference.pipeline import GenerationOptions, HydraPipeline, ImageInput, check_scales, check_texts
from hydra_umm.models.harmon.harmon import HarmonModel
from hydra_umm.models.harmon.mar import mask_by_order, mask_schedule, random_orders
from hydra_umm.models.llm import Image


class HarmonPipeline(HydraPipeline):
    """A saved HarmonModel: generate, answer and (through its autoencoder) reconstruct."""

    def __init__(self, model: HarmonModel):  # HydraPipeline's HYDRA-TOK has no counterpart here
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "HarmonPipeline":
        return cls(HarmonModel.from_pretrained(directory).to(device))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.model.cfg.harmon.image_size

    @property
    def generation_options(self) -> GenerationOptions:
        h = self.model.cfg.harmon
        return GenerationOptions(h.mar_steps, h.cfg_scale)

    @torch.no_grad()
    def reconstruct(self, images: Sequence[ImageInput], steps: Optional[int] = None,
                    seed: int = 0) -> list[PILImage.Image]:
        """Encode (posterior mode) and decode through the KL autoencoder; ``steps`` and ``seed`` are
        accepted for HydraPipeline's interface (this decoder is deterministic)."""
        vae = self.model.vae
        return to_pil(vae.decode(vae.encode(self.pixels(images))))

    # ------------------------------------------------------------------------------ text-to-image

    def _visual_hidden(self, prompts: list[str], use_cache: bool) -> Callable[[Tensor], Tensor]:
        """The LLM's hidden states of visual tokens (R, T, width) placed after each prompt's prefix."""
        model = self.model
        prefixes = [model.generation_prefix(p) for p in prompts]
        if use_cache:
            prefix = CachedSequence(model, model.layout(prefixes))
            return lambda tokens: prefix.extend(tokens, image_block=False, keep=False)

        def recompute(tokens: Tensor) -> Tensor:
            full = model.layout([p + [Image(tokens.shape[1])] for p in prefixes])
            hidden = model.sequence_hidden_states(full, tokens)
            return hidden[full.visual.to(hidden.device)].reshape(tokens.shape)

        return recompute

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: list[str],
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        temperature: Optional[float] = None,
        seed: int = 0,
        use_cache: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Tensor:
        """Prompts -> latent tokens (B, N, c) in K = ``steps`` masked-autoregressive steps (None: the
        config's harmon.mar_steps, cfg_scale, temperature); ``progress(step, K)`` after every step."""
        check_texts("prompts", prompts)
        model, h = self.model, self.model.cfg.harmon
        K = h.mar_steps if steps is None else steps
        scale = h.cfg_scale if cfg_scale is None else cfg_scale
        temperature = h.temperature if temperature is None else temperature
        check_scales(cfg_scale=scale)
        if not 0 < temperature < math.inf or K < 1:
            raise ValueError(f"Harmon samples with a finite temperature > 0 in steps >= 1, got {temperature} and {K}")
        B, N, guided = len(prompts), model.num_tokens, scale != 1.0
        copies = 2 if guided else 1  # cond rows, then uncond rows
        generator = self._generator(seed)
        visual_hidden = self._visual_hidden(list(prompts) + [""] * B * (copies - 1), use_cache)
        orders = random_orders(B, N, generator, self.device)
        tokens = torch.zeros(B, N, h.latent_dim, device=self.device)
        mask = torch.ones(B, N, dtype=torch.bool, device=self.device)
        for k, still_masked in enumerate(mask_schedule(N, K)):
            mask_next = mask_by_order(still_masked, orders)
            reveal = mask & ~mask_next  # (B, N), the same count in every row
            if reveal.any():
                x_enc, visual = model.encode(tokens.repeat(copies, 1, 1), mask.repeat(copies, 1))
                cond = model.decode_tokens(x_enc, visual_hidden(visual), mask.repeat(copies, 1))  # (copies B, N, W)
                uncond = cond[B:][reveal] if guided else None
                tokens[reveal] = model.head.sample(cond[:B][reveal], uncond, scale, temperature, generator,
                                                   h.sampling_steps, h.clip_denoised)
            mask = mask_next
            if progress is not None:
                progress(k + 1, K)
        return tokens

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        sampler: Optional[str] = None,
        seed: int = 0,
        use_cache: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
        temperature: Optional[float] = None,
    ) -> list[PILImage.Image]:
        """Text-to-image with HydraPipeline's signature; ``steps`` are masked-autoregressive steps and
        Harmon has no ODE ``sampler`` to choose (it must be None)."""
        if sampler is not None:
            raise ValueError(f"Harmon samples with its diffusion head; there is no sampler {sampler!r} to choose")
        tokens = self.generate_latents(prompts, steps, cfg_scale, temperature, seed, use_cache, progress)
        return to_pil(self.model.vae.decode(tokens))

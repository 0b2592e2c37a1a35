"""HydraPipeline: text-to-image, image understanding and reconstruction with a saved HYDRA model.

- ``generate``: the prompt prefix (cond and uncond batched) is run once; every ODE step of
  :func:`hydra_umm.flow.sample` recomputes only the image block against the prefix's KV cache, the
  vision head gives the velocity, CFG combines it; HYDRA-TOK's pixel decoder turns z into pixels.
- ``answer``: prefill with the image block bidirectional, then token-by-token decoding with the
  KV cache; greedy at temperature 0, sampling otherwise.
- ``reconstruct``: HYDRA-TOK encode (GSB mean) and decode.

Every method takes a seed and is reproducible; ``use_cache=False`` recomputes the full sequence
at every step instead (the reference the cached paths are tested and benchmarked against).
PIL conversion happens here and nowhere in the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image as PILImage
from torch import Tensor

from hydra_umm import flow
from hydra_umm.data.transforms import ImageTransform, to_pil
from hydra_umm.inference.kv_cache import CachedSequence
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.llm import IGNORE, Image, Text

ImageInput = Union[PILImage.Image, Tensor]  # PIL image, or a (3, H, W) tensor in [-1, 1]


class TokenizerPipeline:
    """HYDRA-TOK alone (a directory written by ``HydraTok.save_pretrained``): reconstruction."""

    def __init__(self, tokenizer: HydraTok):
        self.tokenizer = tokenizer.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TokenizerPipeline":
        return cls(HydraTok.from_pretrained(directory).to(device))

    @property
    def device(self) -> torch.device:
        return self.tokenizer.normalise.mean.device

    @property
    def image_size(self) -> int:
        """The side of the square images the model reads and writes."""
        return self.tokenizer.cfg.image_size

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def pixels(self, images: Sequence[ImageInput]) -> Tensor:
        """PIL images (resized to the model's size) or (3, H, W) tensors -> (B, 3, H, W) in [-1, 1] on the device."""
        transform = ImageTransform(self.image_size)
        x = [transform(im) if isinstance(im, PILImage.Image) else im for im in images]
        return torch.stack(x).to(self.device)

    @torch.no_grad()
    def reconstruct(
        self, images: Sequence[ImageInput], steps: Optional[int] = None, seed: int = 0
    ) -> list[PILImage.Image]:
        """Encode (GSB mean) and decode through HYDRA-TOK; ``steps`` of the pixel decoder's ODE."""
        z = self.tokenizer.encode(self.pixels(images))
        return to_pil(self.tokenizer.decode(z, steps=steps, generator=self._generator(seed)))


@dataclass(frozen=True)
class GenerationOptions:
    """What ``generate`` takes by default, and the ODE samplers it can choose from (none: the
    pipeline samples another way and ``sampler`` must be None)."""

    steps: int
    cfg_scale: float
    samplers: tuple[str, ...] = ()
    sampler: Optional[str] = None


class HydraPipeline(TokenizerPipeline):
    """A saved HydraModel: generate, answer and (through its HYDRA-TOK) reconstruct."""

    def __init__(self, model: HydraModel):
        super().__init__(model.tokenizer)
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "HydraPipeline":
        return cls(HydraModel.from_pretrained(directory).to(device))

    # ------------------------------------------------------------------------------ text-to-image

    def velocity_fn(self, prompts: list[str], cfg_scale: float, use_cache: bool = True) -> flow.VelocityFn:
        """The guided velocity (B, N, c) of the image block after each prompt, as a function of
        (z_t (B, N, c), t (B,)). Cond and uncond ("" prompt) run as one batch unless cfg_scale == 1."""
        model, B, N = self.model, len(prompts), self.model.num_image_tokens
        guided = cfg_scale != 1.0
        prefixes = [model.generation_prefix(p) for p in prompts + ([""] * B if guided else [])]
        if use_cache:
            prefix = CachedSequence(model, model.layout(prefixes))

            def block_hidden(tokens: Tensor) -> Tensor:
                return prefix.extend(tokens, image_block=True, keep=False)

        else:
            full = model.layout([p + [Image(N)] for p in prefixes])

            def block_hidden(tokens: Tensor) -> Tensor:
                return model.block_hidden(model.sequence_hidden_states(full, tokens), full)

        def velocity(z_t: Tensor, t: Tensor) -> Tensor:
            z_t, t = (torch.cat([z_t, z_t]), torch.cat([t, t])) if guided else (z_t, t)
            v = model.vision_head(block_hidden(model.visual_tokens(z_t, t)), t)
            return flow.cfg_combine(v[:B], v[B:], cfg_scale) if guided else v

        return velocity

    @property
    def generation_options(self) -> GenerationOptions:
        umm = self.model.cfg.umm
        return GenerationOptions(umm.flow.steps, umm.cfg_scale, flow.SAMPLERS, umm.flow.sampler)

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: list[str],
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        sampler: Optional[str] = None,
        seed: int = 0,
        use_cache: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Tensor:
        """Prompts -> latents z (B, N, c) by integrating the vision head's flow from noise;
        ``progress(step, steps)`` after every ODE step."""
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        cfg, fc = self.model.cfg, self.model.cfg.umm.flow
        scale = cfg.umm.cfg_scale if cfg_scale is None else cfg_scale
        x0 = torch.randn(
            (len(prompts), self.model.num_image_tokens, cfg.tokenizer.latent_dim),
            generator=self._generator(seed),
            device=self.device,
        )
        velocity = self.velocity_fn(list(prompts), scale, use_cache)
        return flow.sample(velocity, x0, steps or fc.steps, sampler or fc.sampler, fc.shift, progress)

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
    ) -> list[PILImage.Image]:
        """Text-to-image; None means the config default (umm.flow.steps, umm.cfg_scale, umm.flow.sampler);
        ``progress(step, steps)`` after every ODE step."""
        z = self.generate_latents(prompts, steps, cfg_scale, sampler, seed, use_cache, progress)
        return to_pil(self.model.decode(z, generator=self._generator(seed + 1)))

    # ------------------------------------------------------------------------------ understanding

    @torch.no_grad()
    def answer_ids(
        self,
        images: Sequence[ImageInput],
        questions: list[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        use_cache: bool = True,
        on_token: Optional[Callable[[Tensor], None]] = None,
    ) -> list[list[int]]:
        """The generated token ids of every answer, up to (not including) eos. ``on_token(tokens)``
        receives each decoding step's (B,) ids as they come (eos once a row is done), for streaming."""
        if len(images) != len(questions) or not questions:
            raise ValueError(
                f"answer needs one image per question, got {len(images)} images, {len(questions)} questions"
            )
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        model, B, eos = self.model, len(questions), self.model.ids["eos"]
        generator = self._generator(seed)
        prompts = [model.understanding_segments(q) for q in questions]
        visual = model.visual_tokens(model.latents(self.pixels(images)), torch.ones(B, device=self.device))
        lm_head, embed_tokens = model.llm.lm_head, model.llm.get_input_embeddings()
        generated: list[Tensor] = []  # each (B,)

        if use_cache:
            sequence = CachedSequence(model, model.layout(prompts), visual)
            logits = lm_head(sequence.hidden[:, -1])

            def next_logits(token: Tensor) -> Tensor:
                return lm_head(sequence.extend(embed_tokens(token[:, None]), image_block=False, keep=True)[:, -1])

        else:

            def next_logits(token: Optional[Tensor] = None) -> Tensor:
                """Recompute the prompt and every token generated so far (``token`` is the last of them)."""
                tails = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(B)]
                lay = model.layout([p + [Text(tail)] for p, tail in zip(prompts, tails)])
                return lm_head(model.sequence_hidden_states(lay, visual)[:, -1])

            logits = next_logits()

        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            if temperature == 0:
                token = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            token = torch.where(done, eos, token)  # finished rows keep emitting eos
            generated.append(token)
            if on_token is not None:
                on_token(token)
            done |= token == eos
            if done.all():
                break
            logits = next_logits(token)
        rows = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(B)]
        return [row[: row.index(eos)] if eos in row else row for row in rows]

    @torch.no_grad()
    def loglikelihood_ids(
        self, images: Sequence[ImageInput], contexts: list[str], continuations: list[list[int]]
    ) -> list[tuple[float, bool]]:
        """For each (image, context, continuation token ids): log p(continuation | image, context)
        and whether greedy decoding would produce exactly the continuation."""
        if not len(images) == len(contexts) == len(continuations) or not contexts:
            raise ValueError("loglikelihood needs one image and one continuation per context")
        if not all(continuations):
            raise ValueError("every continuation needs at least one token")
        model = self.model
        samples = [model.understanding_segments(c) + [Text(list(ids), target=True)]
                   for c, ids in zip(contexts, continuations)]
        lay = model.layout(samples)
        visual = model.visual_tokens(model.latents(self.pixels(images)), torch.ones(len(images), device=self.device))
        logp = model.llm.lm_head(model.sequence_hidden_states(lay, visual)[:, :-1]).float().log_softmax(dim=-1)
        targets = lay.labels[:, 1:].to(self.device)
        scored = targets != IGNORE
        token_logp = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        total = (token_logp * scored).sum(dim=1)
        greedy = ((logp.argmax(dim=-1) == targets) | ~scored).all(dim=1)
        return [(float(lp), bool(g)) for lp, g in zip(total, greedy)]

    def loglikelihood(
        self, images: Sequence[ImageInput], contexts: list[str], continuations: list[str]
    ) -> list[tuple[float, bool]]:
        """:meth:`loglikelihood_ids` of continuation strings (multiple-choice scoring, lmms-eval)."""
        tokenize = self.model.text_tokenizer
        return self.loglikelihood_ids(
            images, contexts, [tokenize(c, add_special_tokens=False).input_ids for c in continuations]
        )

    def answer(
        self,
        images: Sequence[ImageInput],
        questions: list[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        use_cache: bool = True,
    ) -> list[str]:
        """One answer per (image, question); greedy when temperature == 0."""
        ids = self.answer_ids(images, questions, max_new_tokens, temperature, seed, use_cache)
        return [self.model.text_tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def load_pipeline(directory: str | Path, device: str | torch.device = "cpu") -> TokenizerPipeline:
    """The pipeline a saved directory supports: a HarmonModel (its model_type.json names harmon), a
    HydraModel (it has an ``llm/`` folder) or HYDRA-TOK alone."""
    from hydra_umm.inference.harmon_pipeline import HarmonPipeline  # it imports this module
    from hydra_umm.models.harmon import HarmonModel

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    if HarmonModel.is_pretrained(directory):
        return HarmonPipeline.from_pretrained(directory, device)
    kind = HydraPipeline if (directory / "llm").is_dir() else TokenizerPipeline
    return kind.from_pretrained(directory, device)

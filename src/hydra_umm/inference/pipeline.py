"""HydraPipeline: text-to-image, image understanding and reconstruction with a saved HYDRA model;
with HYDRA-X (``umm.xtok``) also text-to-video, video understanding and instruction-based editing.

- ``generate`` / ``generate_video``: the prompt prefix (cond and uncond batched) is run once; every
  ODE step of :func:`hydra_umm.flow.sample` recomputes only the image block (every latent frame of a
  clip) against the prefix's KV cache, the vision head gives the velocity, CFG combines it; the
  tokenizer's decoder turns z into pixels.
- ``edit``: the instruction prefix is cached likewise; the block is [source; noised target], the
  source clean at t = 1, and three conditions (instruction + source, source alone, neither) give
  separate instruction and image guidance.
- ``answer``: prefill with the image block (an image or a clip's latent frames) bidirectional, then
  token-by-token decoding with the KV cache; greedy at temperature 0 (below GREEDY_BELOW), sampling otherwise.
- ``reconstruct``: HYDRA-TOK encode (GSB mean) and decode.

Every method takes a seed and is reproducible; ``use_cache=False`` recomputes the full sequence
at every step instead (the reference the cached paths are tested and benchmarked against).
PIL conversion happens here and nowhere in the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image as PILImage
from torch import Tensor

from hydra_umm import flow
from hydra_umm.data.transforms import ImageTransform, resize_crop, to_pil
from hydra_umm.data.video import check_frame_count, clip_to_tensor, tensor_to_frames
from hydra_umm.inference.kv_cache import CachedSequence
from hydra_umm.models.hydra import HydraModel, load_tokenizer
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.hydra_xtok import TIME_COMPRESSION
from hydra_umm.models.llm import IGNORE, Image, Segment, Text

ImageInput = Union[PILImage.Image, Tensor]  # PIL image, or a (3, H, W) tensor in [-1, 1]
VideoInput = Union[Sequence[PILImage.Image], Tensor]  # PIL frames, or a (3, 1 + T, H, W) tensor in [-1, 1]
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (logits / t would overflow, or t round to 0)


def check_texts(name: str, texts: Sequence[str]) -> None:
    """A non-empty list of strings (a bare string would be read character by character)."""
    if isinstance(texts, str) or not texts:
        raise ValueError(f"{name} must be a non-empty list of strings, got {texts!r:.80}")


def check_scales(**scales: float) -> None:
    """Guidance scales are finite (NaN or inf would integrate to blank images)."""
    for name, value in scales.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


class TokenizerPipeline:
    """HYDRA-TOK (or HYDRA-XTok) alone (a directory its ``save_pretrained`` wrote): reconstruction."""

    def __init__(self, tokenizer: HydraTok):
        self.tokenizer = tokenizer.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TokenizerPipeline":
        return cls(load_tokenizer(directory).to(device))

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

    # ---------------------------------------------------------------------------------- generation

    def block_velocity(
        self, prefixes: list[list[Segment]], frames: int, clean: Optional[Tensor] = None, use_cache: bool = True
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """The vision head's velocity of a generated block after each prefix, as a function of
        (z_t (R, G, N, c), t (R,)) -> (R, G, N, c) for ``frames`` = G generated latent frames. With
        ``clean`` (R, C, N, c) the block holds those frames first, at t = 1 (an edit's source: Sem-ViT
        runs the pair as an edit), then the generated ones. Cached: the prefixes run once and every call
        recomputes only the block against their KV cache."""
        model, N = self.model, self.model.num_image_tokens
        C = 0 if clean is None else clean.shape[1]
        form = "edit" if C else ("image" if frames == 1 else "video")
        if use_cache:
            prefix = CachedSequence(model, model.layout(prefixes))

            def block_hidden(tokens: Tensor) -> Tensor:
                return prefix.extend(tokens, image_block=True, keep=False)

        else:
            full = model.layout([p + [Image((C + frames) * N)] for p in prefixes])

            def block_hidden(tokens: Tensor) -> Tensor:
                return model.block_hidden(model.sequence_hidden_states(full, tokens), full).unflatten(0, (len(tokens), -1))

        def velocity(z_t: Tensor, t: Tensor) -> Tensor:
            R = len(z_t)
            z = z_t if clean is None else torch.cat([clean, z_t], dim=1)
            times = torch.cat([torch.ones(R, C, device=t.device), t[:, None].expand(R, frames)], dim=1)
            tokens = model.visual_tokens(z, times, form).flatten(1, 2)  # (R, (C + G) N, width)
            hidden = block_hidden(tokens).reshape(R, C + frames, N, -1)[:, C:]  # (R, G, N, width)
            return model.vision_head(hidden.flatten(0, 1), t.repeat_interleave(frames)).unflatten(0, (R, frames))

        return velocity

    def velocity_fn(
        self, prompts: list[str], cfg_scale: float, use_cache: bool = True, frames: int = 1
    ) -> flow.VelocityFn:
        """The guided velocity of the image block after each prompt, as a function of (z_t, t (B,)):
        z_t (B, N, c) for an image, (B, G, N, c) for ``frames`` = G latent frames of a clip. Cond and
        uncond ("" prompt) run as one batch unless cfg_scale == 1."""
        model, B = self.model, len(prompts)
        guided = cfg_scale != 1.0
        prefixes = [model.generation_prefix(p) for p in prompts + ([""] * B if guided else [])]
        block = self.block_velocity(prefixes, frames, use_cache=use_cache)

        def velocity(z_t: Tensor, t: Tensor) -> Tensor:
            z = z_t[:, None] if frames == 1 else z_t
            z, t = (torch.cat([z, z]), torch.cat([t, t])) if guided else (z, t)
            v = block(z, t)
            v = flow.cfg_combine(v[:B], v[B:], cfg_scale) if guided else v
            return v[:, 0] if frames == 1 else v

        return velocity

    def edit_velocity_fn(
        self, instructions: list[str], source: Tensor, cfg_scale: float, image_cfg_scale: float, use_cache: bool = True
    ) -> flow.VelocityFn:
        """The guided velocity (B, N, c) of each edit's target, as a function of (z_t (B, N, c), t (B,)),
        with the source latents ``source`` (B, N, c). Instruction and image guidance as separate scales
        (InstructPix2Pix): v = v(0, 0) + s_img (v(0, src) - v(0, 0)) + s_txt (v(instr, src) - v(0, src)),
        0 being the "" instruction or the null source latent; the three run as one batch unless both
        scales are 1."""
        model, B = self.model, len(instructions)
        guided = cfg_scale != 1.0 or image_cfg_scale != 1.0
        prompts = instructions + ([""] * 2 * B if guided else [])
        clean = torch.cat([source, source, torch.zeros_like(source)]) if guided else source
        block = self.block_velocity([model.generation_prefix(p) for p in prompts], 1, clean[:, None], use_cache)

        def velocity(z_t: Tensor, t: Tensor) -> Tensor:
            if not guided:
                return block(z_t[:, None], t)[:, 0]
            v_full, v_source, v_none = block(z_t[:, None].repeat(3, 1, 1, 1), t.repeat(3))[:, 0].split(B)
            return v_none + image_cfg_scale * (v_source - v_none) + cfg_scale * (v_full - v_source)

        return velocity

    @property
    def generation_options(self) -> GenerationOptions:
        umm = self.model.cfg.umm
        return GenerationOptions(umm.flow.steps, umm.cfg_scale, flow.SAMPLERS, umm.flow.sampler)

    def _integrate(
        self, velocity: flow.VelocityFn, shape: tuple[int, ...], steps: Optional[int], sampler: Optional[str],
        seed: int, progress: Optional[Callable[[int, int], None]], start: Optional[tuple[Tensor, float]] = None,
    ) -> Tensor:
        """Integrate the flow from noise of ``shape`` drawn with ``seed`` (None: the config's steps and
        sampler); ``start`` = (latents z of ``shape``, t0) begins instead at t0 from z noised to t0."""
        fc = self.model.cfg.umm.flow
        x0 = torch.randn(shape, generator=self._generator(seed), device=self.device)
        t0 = 0.0
        if start is not None:
            z, t0 = start
            x0 = flow.interpolate(x0, z, torch.full((len(z),), t0, device=self.device))
        steps = fc.steps if steps is None else steps
        return flow.sample(velocity, x0, steps, sampler or fc.sampler, fc.shift, progress, start=t0)

    def _latent_shape(self, count: int, frames: int = 1) -> tuple[int, ...]:
        model = self.model
        grid = (model.num_image_tokens, model.cfg.tokenizer.latent_dim)
        return (count, *grid) if frames == 1 else (count, frames, *grid)

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
        frames: int = 1,
    ) -> Tensor:
        """Prompts -> latents z (B, N, c), or (B, G, N, c) for ``frames`` = G latent frames of a clip, by
        integrating the vision head's flow from noise; ``progress(step, steps)`` after every ODE step."""
        scale = self.model.cfg.umm.cfg_scale if cfg_scale is None else cfg_scale
        check_texts("prompts", prompts)
        check_scales(cfg_scale=scale)
        velocity = self.velocity_fn(list(prompts), scale, use_cache, frames)
        return self._integrate(velocity, self._latent_shape(len(prompts), frames), steps, sampler, seed, progress)

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

    @property
    def reads_clips(self) -> bool:
        """Whether the model is a HYDRA-X one (over HYDRA-XTok): videos and edits."""
        return self.model.cfg.umm.xtok

    def _check_video(self) -> None:
        if not self.reads_clips:
            raise ValueError("videos and edits need a HYDRA-X model (umm.xtok: HYDRA-XTok); this one reads images only")

    @torch.no_grad()
    def generate_video(
        self,
        prompts: list[str],
        frames: int = 17,
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        sampler: Optional[str] = None,
        seed: int = 0,
        use_cache: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> list[list[PILImage.Image]]:
        """Text-to-video: one clip of ``frames`` = 1 + 4k frames per prompt, as PIL frames (write them
        with ``hydra_umm.data.video.write_clip``, e.g. to an mp4). Every latent frame is generated at once."""
        self._check_video()
        check_frame_count(frames)
        z = self.generate_latents(prompts, steps, cfg_scale, sampler, seed, use_cache, progress,
                                  frames=1 + (frames - 1) // TIME_COMPRESSION)
        clips = self.model.decode(z if frames > 1 else z[:, None], generator=self._generator(seed + 1))
        return [tensor_to_frames(c) for c in clips]  # c: (3, frames, H, W)

    @torch.no_grad()
    def edit(
        self,
        images: Sequence[ImageInput],
        instructions: list[str],
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        image_cfg_scale: Optional[float] = None,
        seed: int = 0,
        sampler: Optional[str] = None,
        use_cache: bool = True,
        progress: Optional[Callable[[int, int], None]] = None,
        strength: float = 1.0,
    ) -> list[PILImage.Image]:
        """Instruction-based editing: each source image edited as its instruction says. ``cfg_scale``
        guides by the instruction, ``image_cfg_scale`` by the source (defaults: umm.cfg_scale,
        umm.image_cfg_scale). ``strength`` 1 generates the target from noise (the paper's); below 1 the
        flow starts at t0 = 1 - strength from the source's latents noised to t0 (SDEdit's start, as
        img2img's strength), all ``steps`` spent on [t0, 1]."""
        self._check_video()
        check_texts("instructions", instructions)
        if len(images) != len(instructions):
            raise ValueError(f"edit needs one image per instruction, got {len(images)} images, "
                             f"{len(instructions)} instructions")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1] (1: from noise), got {strength}")
        umm = self.model.cfg.umm
        scales = {"cfg_scale": umm.cfg_scale if cfg_scale is None else cfg_scale,
                  "image_cfg_scale": umm.image_cfg_scale if image_cfg_scale is None else image_cfg_scale}
        check_scales(**scales)
        source = self.model.latents(self.pixels(images))
        velocity = self.edit_velocity_fn(list(instructions), source, *scales.values(), use_cache)
        start = None if strength == 1.0 else (source, 1.0 - strength)
        z = self._integrate(velocity, self._latent_shape(len(images)), steps, sampler, seed, progress, start)
        return to_pil(self.model.decode(z, generator=self._generator(seed + 1)))

    # ------------------------------------------------------------------------------ understanding

    def clips(self, videos: Sequence[VideoInput]) -> Tensor:
        """Clips as lists of PIL frames (each resized to the model's size) or (3, 1 + T, H, W) tensors
        -> (B, 3, 1 + T, H, W) in [-1, 1] on the device; every clip of one call has the same length."""
        x = [v if isinstance(v, Tensor) else clip_to_tensor([resize_crop(f, self.image_size) for f in v]) for v in videos]
        lengths = sorted({c.shape[1] for c in x})
        if len(lengths) > 1:
            raise ValueError(f"clips of different lengths in one call: {lengths} frames")
        check_frame_count(lengths[0])
        return torch.stack(x).to(self.device)

    def _understood(
        self, images: Optional[Sequence[ImageInput]], videos: Optional[Sequence[VideoInput]], count: int, what: str
    ) -> tuple[int, Tensor]:
        """The visual input of ``count`` understanding prompts: images or (HYDRA-X) clips, one per prompt
        -> (latent frames per block F, clean visual tokens (count F, N, width) in layout order)."""
        if (images is None) == (videos is None):
            raise ValueError(f"{what} takes images or videos (one of them)")
        given = images if videos is None else videos
        if len(given) != count or not count:
            raise ValueError(f"{what} needs one {'image' if videos is None else 'video'} per question, got "
                             f"{len(given)} for {count} questions")
        model = self.model
        if videos is None:
            return 1, model.visual_tokens(model.latents(self.pixels(images)), torch.ones(count, device=self.device))
        self._check_video()
        z = model.latents(self.clips(videos))  # (B, F, N, c)
        frames = z.shape[1]
        return frames, model.visual_tokens(z, torch.ones(z.shape[:2], device=self.device), "video").flatten(0, 1)

    @torch.no_grad()
    def answer_ids(
        self,
        images: Optional[Sequence[ImageInput]] = None,
        questions: Sequence[str] = (),
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        use_cache: bool = True,
        on_token: Optional[Callable[[Tensor], None]] = None,
        videos: Optional[Sequence[VideoInput]] = None,
    ) -> list[list[int]]:
        """The generated token ids of every answer, up to (not including) eos, about an image or (with
        HYDRA-X) a clip per question. ``on_token(tokens)`` receives each decoding step's (B,) ids as they
        come (eos once a row is done), for streaming."""
        check_texts("questions", questions)
        if not 0 <= temperature < math.inf or max_new_tokens < 1:
            raise ValueError(f"answers need a finite temperature >= 0 and max_new_tokens >= 1, got {temperature} "
                             f"and {max_new_tokens}")
        model, B, eos = self.model, len(questions), self.model.ids["eos"]
        frames, visual = self._understood(images, videos, B, "answer")
        generator = self._generator(seed)
        prompts = [model.understanding_segments(q, frames=frames) for q in questions]
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
            if temperature < GREEDY_BELOW:
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
        self,
        images: Optional[Sequence[ImageInput]],
        contexts: list[str],
        continuations: list[list[int]],
        videos: Optional[Sequence[VideoInput]] = None,
    ) -> list[tuple[float, bool]]:
        """For each (image or clip, context, continuation token ids): log p(continuation | visual, context)
        and whether greedy decoding would produce exactly the continuation."""
        if len(contexts) != len(continuations):
            raise ValueError("loglikelihood needs one continuation per context")
        if not all(continuations):
            raise ValueError("every continuation needs at least one token")
        model = self.model
        frames, visual = self._understood(images, videos, len(contexts), "loglikelihood")
        samples = [model.understanding_segments(c, frames=frames) + [Text(list(ids), target=True)]
                   for c, ids in zip(contexts, continuations)]
        lay = model.layout(samples)
        logp = model.llm.lm_head(model.sequence_hidden_states(lay, visual)[:, :-1]).float().log_softmax(dim=-1)
        targets = lay.labels[:, 1:].to(self.device)
        scored = targets != IGNORE
        token_logp = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        total = (token_logp * scored).sum(dim=1)
        greedy = ((logp.argmax(dim=-1) == targets) | ~scored).all(dim=1)
        return [(float(lp), bool(g)) for lp, g in zip(total, greedy)]

    def loglikelihood(
        self,
        images: Optional[Sequence[ImageInput]],
        contexts: list[str],
        continuations: list[str],
        videos: Optional[Sequence[VideoInput]] = None,
    ) -> list[tuple[float, bool]]:
        """:meth:`loglikelihood_ids` of continuation strings (multiple-choice scoring, lmms-eval)."""
        tokenize = self.model.text_tokenizer
        return self.loglikelihood_ids(
            images, contexts, [tokenize(c, add_special_tokens=False).input_ids for c in continuations], videos
        )

    def answer(
        self,
        images: Optional[Sequence[ImageInput]] = None,
        questions: Sequence[str] = (),
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        use_cache: bool = True,
        videos: Optional[Sequence[VideoInput]] = None,
    ) -> list[str]:
        """One answer per (image, question), or per (clip, question) with ``videos`` (HYDRA-X); greedy
        when temperature == 0."""
        ids = self.answer_ids(images, questions, max_new_tokens, temperature, seed, use_cache, videos=videos)
        return [self.model.text_tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def load_pipeline(directory: str | Path, device: str | torch.device = "cpu") -> TokenizerPipeline:
    """The pipeline a saved directory supports: a HarmonModel (its model_type.json names harmon), a
    HydraModel (it has an ``llm/`` folder) or HYDRA-TOK alone."""
    from hydra_umm.inference.harmon_pipeline import HarmonPipeline  # it imports this module
    from hydra_umm.models.harmon import HarmonModel

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: cpu, cuda, cuda:<index>, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but no CUDA GPU is visible here")
    if HarmonModel.is_pretrained(directory):
        return HarmonPipeline.from_pretrained(directory, device)
    kind = HydraPipeline if (directory / "llm").is_dir() else TokenizerPipeline
    return kind.from_pretrained(directory, device)

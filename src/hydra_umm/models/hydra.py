"""HYDRA, the unified model (DESIGN sections 3 and 4).

HYDRA-TOK's encoder feeds a causal LM through one visual path for both tasks:

    image -> Gen-ViT -> GSB mean, standardised per channel -> z   (frozen: the latent space must stay decodable)
    z_t = t z + (1 - t) x0                   (generation: the flow's x_t; understanding: t = 1, z_t = z)
    z_t -> Sem-ViT (through the GSB reconstruct layer) -> projector (+ timestep embedding of t) -> visual tokens

Text embeddings and visual tokens form one stream, each image block between vision-start and
vision-end tokens, with causal attention for text and bidirectional attention inside a block.
The LM head gives the next-token loss on target text; the vision head reads the final hidden states
of a generation block and predicts the velocity of its latent tokens, latent frame by latent frame:

    loss = loss_ntp + lambda_flow * loss_flow

With HYDRA-XTok (``umm.xtok``, DESIGN section 4) an image block may hold several latent frames:
a clip (3, 1 + T, H, W) enters as its 1 + T/4 latent frames, through Sem-ViT with the tokenizer's
frame pattern, and a generated clip has every latent frame noised (one t per clip). An edit is a
(source, target) pair: Gen-ViT encodes each image alone, Sem-ViT runs over [z_src; z_t,tgt] with the
tubelet mask ("sti": s_src sees z_src only, s_tgt both) or over each alone ("indep"), and the flow
loss is on the target frame. The source is clean (t = 1), or the null latent 0 with probability
``umm.source_dropout`` (the unconditional side of image guidance), in min(caption_dropout / 2,
source_dropout) of edits together with the instruction (the fully unconditional side).

Sample kinds (dicts with ``kind``, ``image``, ``prompt``, ``target``; an edit also ``source``), as
laid out by :meth:`collate`:

    "text": prompt, target, eos                               (loss on target + eos)
    "und":  <vs> image|clip <ve> prompt, target, eos          (loss on target + eos; clean)
    "gen":  prompt <vs> image|clip <ve>                       (flow loss on the block at time t)
    "edit": instruction <vs> source target <ve>               (flow loss on the target; HYDRA-X only)

The latent z is the GSB posterior mean (not a sample), the same for both tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_file, save_model
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from hydra_umm import flow
from hydra_umm.config import Config, load_config, to_dict
from hydra_umm.models.adaln import TimestepEmbedder
from hydra_umm.models.hydra_tok import CONFIG_FILE, HydraTok
from hydra_umm.models.hydra_xtok import TIME_COMPRESSION, HydraXTok
from hydra_umm.models.llm import (
    IGNORE,
    Image,
    Layout,
    Segment,
    Text,
    build_language_model,
    layout,
    mixed_attention_mask,
)
from hydra_umm.models.text_tokenizer import (
    EOS,
    IMAGE_PAD,
    PAD,
    SPECIAL_TOKENS,
    VISION_END,
    VISION_START,
    load_text_tokenizer,
)
from hydra_umm.models.vision_head import VisionHead

COMPONENTS = ("sem_vit", "projector", "vision_head", "llm")
STAGES = {"I": ("sem_vit", "projector", "vision_head"), "II": COMPONENTS, "III": COMPONENTS}
KINDS = ("text", "und", "gen", "edit")
EDIT_LAYOUTS = ("sti", "indep")


@dataclass
class VisualBlock:
    """The pixels of one image block, in [-1, 1]: an image (3, H, W), a clip (3, 1 + T, H, W), or
    an edit's (source, target) pair (2, 3, H, W)."""

    form: str  # "image" | "video" | "edit"
    pixels: Tensor
    generated: bool  # a generation target: every latent frame noised (an edit: the target's only)
    keep_source: bool = True  # edit: False puts the null latent 0 in the source's place


@dataclass
class HydraBatch:
    """A collated batch: the laid-out sequences and one visual block per image block, in layout order."""

    layout: Layout
    blocks: list[VisualBlock]

    @property
    def images(self) -> Tensor:
        """(M, 3, H, W): the image blocks' pixels (not the clips' or edits')."""
        images = [b.pixels for b in self.blocks if b.form == "image"]
        return torch.stack(images) if images else torch.zeros(0, 3, 0, 0)

    @property
    def noised(self) -> Tensor:
        """(M,) bool: which image blocks are generation targets."""
        return torch.tensor([b.generated for b in self.blocks if b.form == "image"], dtype=torch.bool)


def tokenizer_class(directory: str | Path) -> type[HydraTok]:
    """The class of a saved tokenizer: HYDRA-XTok when its config has the ``xtok`` section, else HYDRA-TOK."""
    config = Path(directory) / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"not a saved tokenizer: {config} is missing")
    saved = json.loads(config.read_text())
    if "llm" in saved:
        raise ValueError(f"{directory} holds a unified model (HYDRA or Harmon), not a tokenizer: give the directory "
                         "of a tokenizer run's model")
    return HydraXTok if "xtok" in saved else HydraTok


def load_tokenizer(directory: str | Path) -> HydraTok:
    """A saved HYDRA-TOK or HYDRA-XTok."""
    return tokenizer_class(directory).from_pretrained(directory)


def latent_frames(block: VisualBlock) -> int:
    """Latent frames of a block: 1 for an image, 2 for an edit pair, 1 + T/4 for a clip of 1 + T frames."""
    if block.form == "video":
        return 1 + (block.pixels.shape[1] - 1) // TIME_COMPRESSION
    return 2 if block.form == "edit" else 1


def _rows(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A column dict of samples -> the list of sample dicts :meth:`HydraModel.collate` takes."""
    missing = [k for k in ("kind", "image", "has_image", "prompt", "target") if k not in columns]
    if missing:
        raise ValueError(f"a batch dict needs the keys kind, image, has_image, prompt, target; missing {missing}")
    images, has_image = columns["image"], columns["has_image"]
    sources = columns.get("source")
    return [
        {"kind": kind, "image": images[i] if has_image[i] else None, "prompt": prompt, "target": target,
         **({"source": sources[i]} if kind == "edit" else {})}
        for i, (kind, prompt, target) in enumerate(zip(columns["kind"], columns["prompt"], columns["target"]))
    ]


class HydraModel(nn.Module):
    """HYDRA-TOK + projector + causal LM + vision head. ``text_tokenizer`` must carry HYDRA's
    special tokens (see :mod:`hydra_umm.models.text_tokenizer`).

    With ``llm_config`` the LM is built empty from it and HYDRA-TOK from ``cfg.tokenizer`` (nothing
    is read from ``cfg.llm.path`` or ``cfg.umm.tokenizer_path``): the skeleton of :meth:`from_pretrained`.
    """

    def __init__(
        self, cfg: Config, text_tokenizer: PreTrainedTokenizerBase, llm_config: PretrainedConfig | None = None
    ):
        super().__init__()
        self.cfg = cfg
        self.text_tokenizer = text_tokenizer
        missing = [t for t in SPECIAL_TOKENS if t not in text_tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the text tokenizer lacks HYDRA's special tokens {missing}; see add_special_tokens")
        special = text_tokenizer.convert_tokens_to_ids([PAD, EOS, VISION_START, VISION_END, IMAGE_PAD])
        self.ids = dict(zip(("pad", "eos", "vs", "ve", "image"), special))
        if cfg.umm.edit_layout not in EDIT_LAYOUTS:
            raise ValueError(f"unknown umm.edit_layout {cfg.umm.edit_layout!r}; use one of {', '.join(EDIT_LAYOUTS)}")
        if cfg.umm.tokenizer_path and llm_config is None:
            self.tokenizer = load_tokenizer(cfg.umm.tokenizer_path)
            cfg.tokenizer, cfg.umm.xtok = self.tokenizer.cfg, isinstance(self.tokenizer, HydraXTok)
            if cfg.umm.xtok:
                cfg.xtok = self.tokenizer.xcfg
        elif cfg.umm.xtok:
            self.tokenizer = HydraXTok(cfg.tokenizer, cfg.xtok, load_weights=llm_config is None)
        else:
            self.tokenizer = HydraTok(cfg.tokenizer, load_weights=llm_config is None)
        self.llm = build_language_model(cfg.llm, llm_config)
        rows, tokens = self.llm.get_input_embeddings().num_embeddings, len(text_tokenizer)
        fresh = llm_config is None and not cfg.llm.path  # a random LM gets exactly one row per token
        if tokens > rows or (fresh and tokens != rows):
            self.llm.resize_token_embeddings(tokens)
        width = self.llm.config.hidden_size
        self.num_image_tokens = self.tokenizer.grid[0] * self.tokenizer.grid[1]
        self.projector = nn.Sequential(nn.Linear(cfg.tokenizer.width, width), nn.GELU(), nn.Linear(width, width))
        self.visual_time = TimestepEmbedder(width)  # the timestep signal of the visual tokens
        umm = cfg.umm
        self.vision_head = VisionHead(width, umm.head_width, umm.head_depth, umm.head_heads, cfg.tokenizer.latent_dim)
        self.set_stage("II")

    # ------------------------------------------------------------------------- components, stages

    def components(self) -> dict[str, list[nn.Parameter]]:
        """The trainable components' parameters. Sem-ViT includes the GSB reconstruct layer (its input
        stem); the projector includes the visual timestep embedding. Every other HYDRA-TOK parameter
        (Gen-ViT, GSB compressor, pixel decoder, ...) belongs to none and is always frozen."""
        frozen = {id(p) for m in self.tokenizer.gen_vit_modules() for p in m.parameters()}
        sem_vit = [p for p in self.tokenizer.vit.parameters() if id(p) not in frozen]
        return {
            "sem_vit": list(self.tokenizer.bottleneck.reconstruct.parameters()) + sem_vit,
            "projector": list(self.projector.parameters()) + list(self.visual_time.parameters()),
            "vision_head": list(self.vision_head.parameters()),
            "llm": list(self.llm.parameters()),
        }

    def set_stage(self, stage: str) -> None:
        """Training stage of paper Tab. 6: "I" trains Sem-ViT, projector and vision head with the LLM
        frozen; "II" and "III" train the LLM too. Gen-ViT and the GSB compressor never train."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        self.requires_grad_(False)
        parts = self.components()
        for name in STAGES[stage]:
            for p in parts[name]:
                p.requires_grad_(True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The currently trainable parameters per component (for per-component learning rates)."""
        return {name: [p for p in ps if p.requires_grad] for name, ps in self.components().items()}

    # --------------------------------------------------------------------------- sequence building

    def _ids(self, text: str) -> list[int]:
        """Token ids of ``text``, cut to the first ``cfg.umm.max_text_len``."""
        return self.text_tokenizer(text, add_special_tokens=False).input_ids[: self.cfg.umm.max_text_len]

    def text_segments(self, prompt: str, target: Optional[str] = None) -> list[Segment]:
        segments: list[Segment] = [Text(self._ids(prompt))]
        return segments + ([] if target is None else [Text(self._ids(target) + [self.ids["eos"]], target=True)])

    def understanding_segments(self, prompt: str, target: Optional[str] = None, frames: int = 1) -> list[Segment]:
        """<vs> image <ve> prompt [target eos] (an image block of ``frames`` latent frames); without a
        target, the prefix that answering continues."""
        head = [Text([self.ids["vs"]]), Image(frames * self.num_image_tokens), Text([self.ids["ve"]])]
        return head + self.text_segments(prompt, target)

    def generation_prefix(self, prompt: str) -> list[Segment]:
        """prompt <vs>: what precedes a generated image block ("" is the unconditional prompt)."""
        return [Text(self._ids(prompt) + [self.ids["vs"]])]

    def generation_block(self, frames: int = 1) -> list[Segment]:
        """A generated image block of ``frames`` latent frames, then <ve>."""
        return [Image(frames * self.num_image_tokens), Text([self.ids["ve"]])]

    def layout(self, samples: list[list[Segment]]) -> Layout:
        return layout(samples, pad_id=self.ids["pad"], image_id=self.ids["image"])

    def collate(
        self,
        samples: list[dict[str, Any]],
        caption_dropout: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        source_dropout: Optional[float] = None,
    ) -> HydraBatch:
        """Samples ``{"kind": "text"|"und"|"gen"|"edit", "image": (3, H, W) or, with HYDRA-X, a clip
        (3, 1 + T, H, W), in [-1, 1], or None, "prompt": str, "target": str}`` (an edit: ``image`` the
        target, ``source`` the source image, ``prompt`` the instruction) -> :class:`HydraBatch`. A "gen"
        or "edit" sample's prompt is replaced by "" with probability ``caption_dropout`` and an edit's
        source by the null latent with probability ``source_dropout`` (defaults: ``cfg.umm``'s; 0 for
        evaluation)."""
        umm = self.cfg.umm
        sequences, blocks = self.sample_sequences(
            samples, self.generation_block, self.cfg.tokenizer.image_size,
            umm.caption_dropout if caption_dropout is None else caption_dropout, generator,
            video=umm.xtok, source_dropout=umm.source_dropout if source_dropout is None else source_dropout,
        )
        return HydraBatch(layout=self.layout(sequences), blocks=blocks)

    def sample_sequences(
        self,
        samples: list[dict[str, Any]],
        generation_block: Callable[[int], list[Segment]],
        image_size: int,
        caption_dropout: float,
        generator: Optional[torch.Generator] = None,
        video: bool = False,
        source_dropout: float = 0.0,
    ) -> tuple[list[list[Segment]], list[VisualBlock]]:
        """Each sample's segments (text; understanding; a generation or edit sample's prompt prefix, its
        caption replaced by "" with probability ``caption_dropout``, then ``generation_block(latent
        frames)``) and its visual block. ``video``: clips and edits are allowed (HYDRA-X). A malformed
        sample is an error naming it."""
        kinds = KINDS if video else KINDS[:3]
        image_shape = (3, image_size, image_size)
        sequences, blocks = [], []
        for i, sample in enumerate(samples):
            kind, pixels = sample.get("kind"), sample.get("image")
            if kind not in kinds:
                hint = "" if video else " (edits and clips need HYDRA-X: umm.xtok=true)"
                raise ValueError(f"sample {i}: kind must be one of {kinds}, got {kind!r}{hint}")
            if (pixels is None) != (kind == "text"):
                raise ValueError(f"sample {i}: a {kind!r} sample {'has no' if kind == 'text' else 'needs an'} image")
            prompt, target = sample.get("prompt", ""), sample.get("target", "")
            if kind == "text":
                sequences.append(self.text_segments(prompt, target))
                continue
            is_clip = video and kind != "edit" and pixels.dim() == 4
            if is_clip:
                ok = pixels.shape[0] == 3 and pixels.shape[2:] == image_shape[1:]
                if not ok or (pixels.shape[1] - 1) % TIME_COMPRESSION:
                    raise ValueError(f"sample {i}: a clip must be (3, 1 + T, {image_size}, {image_size}) with T a "
                                     f"multiple of {TIME_COMPRESSION}, got {tuple(pixels.shape)}")
            elif tuple(pixels.shape) != image_shape:
                raise ValueError(f"sample {i}: image must be {image_shape}"
                                 f"{' (or a clip (3, 1 + T, H, W))' if video else ''}, got {tuple(pixels.shape)}")
            source = sample.get("source")
            if kind == "edit" and (source is None or tuple(source.shape) != image_shape):
                shape = None if source is None else tuple(source.shape)
                raise ValueError(f"sample {i}: an edit needs a source image {image_shape}, got {shape}")
            drops = caption_dropout > 0 or (kind == "edit" and source_dropout > 0)
            u = torch.rand((), generator=generator).item() if kind != "und" and drops else 1.0
            if u < caption_dropout:
                prompt = ""
            if kind == "edit":
                # the same draw places the source's interval half a caption interval on (wrapping round),
                # so that both conditions go together as InstructPix2Pix trains them: at 0.1 and 0.1, 5 %
                # of edits lose the instruction only, 5 % the source only and 5 % both
                keep = (u - caption_dropout / 2) % 1.0 >= source_dropout
                block = VisualBlock("edit", torch.stack([source, pixels]), True, keep)
            else:
                block = VisualBlock("video" if is_clip else "image", pixels, kind == "gen")
            frames = latent_frames(block)
            if kind == "und":
                sequences.append(self.understanding_segments(prompt, target, frames))
            else:
                sequences.append(self.generation_prefix(prompt) + generation_block(frames))
            blocks.append(block)
        return sequences, blocks

    # ------------------------------------------------------------------------------ visual path

    @torch.no_grad()
    def latents(self, pixels: Tensor) -> Tensor:
        """Images (M, 3, H, W) in [-1, 1] -> z (M, N, c); clips (M, 3, 1 + T, H, W) -> z (M, 1 + T/4, N, c):
        the GSB mean through the frozen Gen-ViT, standardised with the tokenizer's recorded statistics
        (the flow's data side, matched to its N(0, I) noise)."""
        z = self.tokenizer.encode(pixels, sample=False)
        return self.tokenizer.standardise(z.flatten(2, 3) if pixels.dim() == 5 else z)

    @torch.no_grad()
    def decode(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Standardised latents -> pixels through the tokenizer's decoder: z (M, N, c) -> images
        (M, 3, H, W); latent frames of clips (M, 1 + k, N, c) -> clips (M, 3, 1 + 4k, H, W)."""
        z = self.tokenizer.unstandardise(z)
        return self.tokenizer.decode(z.unflatten(2, self.tokenizer.grid) if z.dim() == 4 else z, generator=generator)

    def semantic(self, z: Tensor, form: str) -> Tensor:
        """Sem-ViT over standardised latent frames z (M, F, N, c) -> s (M, F, N, D): a clip's frames
        under the tokenizer's frame pattern, an edit pair under the tubelet mask ("sti") or each frame
        on its own ("indep")."""
        tok = self.tokenizer
        if form == "edit" and self.cfg.umm.edit_layout == "indep":
            return self.semantic(z.flatten(0, 1)[:, None], "image").unflatten(0, z.shape[:2])[:, :, 0]
        if isinstance(tok, HydraXTok):
            return tok.sem_latents(z.unflatten(2, tok.grid), "tubelet" if form == "edit" else None).flatten(2, 3)
        # HYDRA-TOK (images): its Sem-ViT reads the GSB reconstruction of unstandardised latents
        return tok.sem_features(tok.sem_input(tok.unstandardise(z.flatten(0, 1)))).unflatten(0, z.shape[:2])

    def visual_tokens(self, z_t: Tensor, t: Tensor, form: str = "image") -> Tensor:
        """Standardised latents at flow time t -> LLM inputs: images z_t (M, N, c), t (M,) -> (M, N, width);
        latent frames z_t (M, F, N, c), t (M, F) (a time per frame: an edit's source is clean, t = 1)
        -> (M, F, N, width), through Sem-ViT as :meth:`semantic` runs a ``form`` ("video" | "edit")."""
        if z_t.dim() == 3:
            return self.visual_tokens(z_t[:, None], t[:, None], form)[:, 0]
        time = self.visual_time(t.flatten()).unflatten(0, t.shape)  # (M, F, width)
        return self.projector(self.semantic(z_t, form)) + time[:, :, None]

    def frame_inputs(self, blocks: list[VisualBlock], generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Every block's latent frames, in layout order (F_total frames): ``z`` and the noise ``x0``
        (F_total, N, c), the flow time ``t`` and ``noised`` (F_total,) and the LLM inputs ``visual``
        (F_total, N, width). Blocks of one form and shape are encoded together; each generated block
        draws one t (generated frames are at t, the rest at 1), then noise for its frames."""
        if not blocks:
            return {}
        device, fc = self.device, self.cfg.umm.flow
        groups: dict[tuple, list[int]] = {}
        for i, block in enumerate(blocks):
            groups.setdefault((block.form, tuple(block.pixels.shape)), []).append(i)
        frames: dict[int, dict[str, Tensor]] = {}
        for (form, _), members in groups.items():
            group = [blocks[i] for i in members]
            pixels = torch.stack([b.pixels for b in group]).to(device)
            if form == "edit":  # each image alone through Gen-ViT; a dropped source is the null latent
                keep = torch.tensor([b.keep_source for b in group], device=device)
                z = torch.stack([self.latents(pixels[:, 0]) * keep[:, None, None], self.latents(pixels[:, 1])], dim=1)
                noised = torch.tensor([[False, b.generated] for b in group], device=device)
            else:
                z = self.latents(pixels)
                z = z[:, None] if form == "image" else z  # (X, F, N, c)
                noised = torch.tensor([b.generated for b in group], device=device)[:, None].expand(z.shape[:2])
            t_block = flow.sample_t(len(z), fc.t_sampling, fc.t_mean, fc.t_std, device=device, generator=generator)
            t = torch.where(noised, t_block[:, None], 1.0)  # (X, F)
            x0 = torch.randn(z.shape, device=device, generator=generator)
            z_t = torch.where(noised[..., None, None], flow.interpolate(x0.flatten(0, 1), z.flatten(0, 1),
                                                                    t.flatten()).view_as(z), z)
            visual = self.visual_tokens(z_t, t, form)
            for row, i in enumerate(members):
                frames[i] = {"z": z[row], "x0": x0[row], "t": t[row], "noised": noised[row], "visual": visual[row]}
        keys = ("z", "x0", "t", "noised", "visual")
        return {k: torch.cat([frames[i][k] for i in range(len(blocks))]) for k in keys}

    def embed(self, lay: Layout, visual: Optional[Tensor]) -> Tensor:
        """Text embeddings with the visual tokens (M, N, width) written into the image blocks in order."""
        x = self.llm.get_input_embeddings()(lay.input_ids.to(self.device))
        count = int(lay.visual.sum())
        given = 0 if visual is None else visual.shape[0] * visual.shape[1]
        if count != given:
            raise ValueError(f"the layout has {count} visual positions but {given} visual tokens were given")
        if visual is None:
            return x
        return x.masked_scatter(lay.visual.to(x.device)[..., None], visual.to(x.dtype))

    def hidden_states(self, embeds: Tensor, mask: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """The LM's final hidden states (B, Q, width); with ``cache`` (a DynamicCache) the Q new
        positions attend to the cached ones too and are appended to it."""
        out = self.llm.model(
            inputs_embeds=embeds,
            attention_mask=mask.to(embeds.device, embeds.dtype),
            position_ids=position_ids.to(embeds.device),
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def sequence_hidden_states(self, lay: Layout, visual: Optional[Tensor]) -> Tensor:
        """The whole laid-out batch through the LM with the mixed mask: (B, L, width)."""
        embeds = self.embed(lay, visual)
        mask = mixed_attention_mask(lay.valid, lay.block, dtype=embeds.dtype)
        return self.hidden_states(embeds, mask, lay.position_ids)

    def block_hidden(self, hidden: Tensor, lay: Layout) -> Tensor:
        """(B, L, width) -> the image blocks' hidden states per latent frame (F_total, N, width), in layout order."""
        return hidden[lay.visual.to(hidden.device)].reshape(-1, self.num_image_tokens, hidden.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    def next_token_loss(self, hidden: Tensor, lay: Layout) -> Tensor:
        """Cross-entropy of the language head on the layout's text targets, each predicted from the
        position before it when that is no padding (a row's first token has nothing to be predicted
        from, padded or not); without any, the head's output weighted 0 (it still takes part in the graph)."""
        targets = lay.labels[:, 1:].to(hidden.device)
        has_target = (targets != IGNORE) & lay.valid[:, :-1].to(hidden.device)
        if not has_target.any():
            return 0.0 * self.llm.lm_head(hidden[:, :1]).float().sum()
        return F.cross_entropy(self.llm.lm_head(hidden[:, :-1][has_target]).float(), targets[has_target])

    # ------------------------------------------------------------------------------- training loss

    def forward(
        self, batch: HydraBatch | Mapping[str, Any], generator: Optional[torch.Generator] = None
    ) -> dict[str, Tensor]:
        """Losses: loss_ntp (target text only), loss_flow (generation blocks) and loss.

        ``batch`` is a :class:`HydraBatch`, or a column dict (``kind``, ``image``, ``has_image``,
        ``prompt``, ``target``, for edits ``source``; as made by ``hydra_umm.data.datasets.collate_items``)
        which is collated here, with caption and source dropout in training mode only."""
        if not isinstance(batch, HydraBatch):
            dropout = None if self.training else 0.0
            batch = self.collate(_rows(batch), dropout, generator, source_dropout=dropout)
        lay = batch.layout
        frames = self.frame_inputs(batch.blocks, generator)
        hidden = self.sequence_hidden_states(lay, frames.get("visual"))

        # Both heads and the visual path run on every batch; a term without samples is their output
        # weighted 0, so every rank yields a gradient for every trainable parameter, as sharded
        # training (FSDP2) needs.
        loss_ntp = self.next_token_loss(hidden, lay)
        if frames and frames["noised"].any():
            noised, t = frames["noised"], frames["t"]
            v_hat = self.vision_head(self.block_hidden(hidden, lay)[noised], t[noised])
            target = flow.velocity_target(frames["x0"], frames["z"])[noised]
            loss_flow = F.mse_loss(v_hat.float(), target.float())
        else:
            loss_flow = 0.0 * self.vision_head(hidden[:, :1], hidden.new_zeros(len(hidden))).float().sum()
        loss = loss_ntp + self.cfg.umm.lambda_flow * loss_flow
        if not frames:  # a text-only batch
            idle = hidden.new_zeros(1, self.num_image_tokens, self.cfg.tokenizer.latent_dim)
            loss = loss + 0.0 * self.visual_tokens(idle, hidden.new_ones(1)).float().sum()
        return {"loss": loss, "loss_ntp": loss_ntp.detach(), "loss_flow": loss_flow.detach()}

    # ------------------------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | Path, state_dict: Optional[dict[str, Tensor]] = None) -> None:
        """config.json (the full Config), model.safetensors, the text tokenizer's files and the LM's
        transformers config under llm/. ``state_dict``: the full weights when the model's own are
        sharded (gathered by the caller, e.g. hydra_umm.train.distributed.full_model_state)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        if state_dict is None:
            save_model(self, str(directory / "model.safetensors"))
        else:  # clones: tied weights must not share memory in a safetensors file
            save_file({k: v.detach().clone() for k, v in state_dict.items()}, str(directory / "model.safetensors"))
        self.text_tokenizer.save_pretrained(str(directory))
        self.llm.config.save_pretrained(str(directory / "llm"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "HydraModel":
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file():
            raise FileNotFoundError(f"{directory} holds no model.safetensors; write one with save_pretrained")
        if not (directory / "llm").is_dir():
            raise FileNotFoundError(f"{directory} is not a HydraModel directory (no llm/ folder); a HYDRA-TOK "
                                    "directory supports reconstruction only (hydra_umm.inference.load_pipeline)")
        return load_unified(cls, directory)


def load_unified(cls: type, directory: Path) -> nn.Module:
    """A unified model of class ``cls`` (HydraModel, HarmonModel) from a directory its
    ``save_pretrained`` wrote: built from config.json, the text tokenizer and llm/, then its weights."""
    cfg = load_config(directory / "config.json")
    llm_config = AutoConfig.from_pretrained(str(directory / "llm"))
    model = cls(cfg, load_text_tokenizer(str(directory)), llm_config=llm_config)
    weights = directory / "model.safetensors"
    try:
        load_model(model, str(weights))  # safetensors' loader: it restores tied weights saved once
    except Exception as e:  # an unreadable file, or weights of another size than config.json says
        raise ValueError(f"{weights} does not load into the {cls.__name__} its config.json describes "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    return model


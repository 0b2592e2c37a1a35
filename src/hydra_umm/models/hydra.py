"""HYDRA, the unified model (DESIGN section 3).

HYDRA-TOK's encoder feeds a causal LM through one visual path for both tasks:

    image -> Gen-ViT -> GSB mean, standardised per channel -> z   (frozen: the latent space must stay decodable)
    z_t = t z + (1 - t) x0                   (generation: the flow's x_t; understanding: t = 1, z_t = z)
    z_t -> unstandardise -> GSB reconstruct -> Sem-ViT -> projector (+ timestep embedding of t) -> visual tokens

Text embeddings and visual tokens form one stream, each image block between vision-start and
vision-end tokens, with causal attention for text and bidirectional attention inside a block.
The LM head gives the next-token loss on target text; the vision head reads the final hidden states
of a generation block and predicts the velocity of its latent tokens:

    loss = loss_ntp + lambda_flow * loss_flow

Sample kinds (dicts with ``kind``, ``image``, ``prompt``, ``target``), as laid out by :meth:`collate`:

    "text": prompt, target, eos                               (loss on target + eos)
    "und":  <vs> image <ve> prompt, target, eos               (loss on target + eos; clean image)
    "gen":  prompt <vs> image <ve>                            (flow loss on the image block at time t)

The latent z is the GSB posterior mean (not a sample), the same for both tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_file, save_model
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from hydra_umm import flow
from hydra_umm.config import Config, load_config, to_dict
from hydra_umm.models.adaln import TimestepEmbedder
from hydra_umm.models.hydra_tok import HydraTok
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
KINDS = ("text", "und", "gen")


@dataclass
class HydraBatch:
    """A collated batch: the laid-out sequences and one image per image block, in layout order."""

    layout: Layout
    images: Tensor  # (M, 3, H, W) in [-1, 1]; M = number of image blocks in the batch
    noised: Tensor  # (M,) bool: True for generation targets (noised, flow loss), False for clean inputs


def _rows(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A column dict of samples -> the list of sample dicts :meth:`HydraModel.collate` takes."""
    missing = [k for k in ("kind", "image", "has_image", "prompt", "target") if k not in columns]
    if missing:
        raise ValueError(f"a batch dict needs the keys kind, image, has_image, prompt, target; missing {missing}")
    images, has_image = columns["image"], columns["has_image"]
    return [
        {"kind": kind, "image": images[i] if has_image[i] else None, "prompt": prompt, "target": target}
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
        if cfg.umm.tokenizer_path and llm_config is None:
            self.tokenizer = HydraTok.from_pretrained(cfg.umm.tokenizer_path)
            cfg.tokenizer = self.tokenizer.cfg
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

    def understanding_segments(self, prompt: str, target: Optional[str] = None) -> list[Segment]:
        """<vs> image <ve> prompt [target eos]; without a target, the prefix that answering continues."""
        head = [Text([self.ids["vs"]]), Image(self.num_image_tokens), Text([self.ids["ve"]])]
        return head + self.text_segments(prompt, target)

    def generation_prefix(self, prompt: str) -> list[Segment]:
        """prompt <vs>: what precedes a generated image block ("" is the unconditional prompt)."""
        return [Text(self._ids(prompt) + [self.ids["vs"]])]

    def layout(self, samples: list[list[Segment]]) -> Layout:
        return layout(samples, pad_id=self.ids["pad"], image_id=self.ids["image"])

    def collate(
        self,
        samples: list[dict[str, Any]],
        caption_dropout: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> HydraBatch:
        """Samples ``{"kind": "text"|"und"|"gen", "image": (3, H, W) tensor in [-1, 1] or None,
        "prompt": str, "target": str}`` -> :class:`HydraBatch`. A "gen" sample's prompt (its caption)
        is replaced by the unconditional "" with probability ``caption_dropout`` (default
        ``cfg.umm.caption_dropout``; 0 for evaluation)."""
        p_drop = self.cfg.umm.caption_dropout if caption_dropout is None else caption_dropout
        block = [Image(self.num_image_tokens), Text([self.ids["ve"]])]
        sequences, images, noised = self.sample_sequences(samples, block, self.cfg.tokenizer.image_size, p_drop,
                                                          generator)
        return HydraBatch(layout=self.layout(sequences), images=images, noised=noised)

    def sample_sequences(
        self,
        samples: list[dict[str, Any]],
        generation_block: list[Segment],
        image_size: int,
        caption_dropout: float,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[list[list[Segment]], Tensor, Tensor]:
        """Each sample's segments (text; understanding; a generation sample's prompt prefix, its caption
        replaced by "" with probability ``caption_dropout``, then ``generation_block``), the images
        (M, 3, S, S) in sample order and whether each is generated (M,) bool. A malformed sample is an
        error naming it."""
        sequences, images, generated = [], [], []
        for i, sample in enumerate(samples):
            kind, image = sample.get("kind"), sample.get("image")
            if kind not in KINDS:
                raise ValueError(f"sample {i}: kind must be one of {KINDS}, got {kind!r}")
            if (image is None) != (kind == "text"):
                raise ValueError(f"sample {i}: a {kind!r} sample {'has no' if kind == 'text' else 'needs an'} image")
            prompt, target = sample.get("prompt", ""), sample.get("target", "")
            if kind == "text":
                sequences.append(self.text_segments(prompt, target))
            elif kind == "und":
                sequences.append(self.understanding_segments(prompt, target))
            else:
                if caption_dropout > 0 and torch.rand((), generator=generator).item() < caption_dropout:
                    prompt = ""
                sequences.append(self.generation_prefix(prompt) + generation_block)
            if image is not None:
                if tuple(image.shape) != (3, image_size, image_size):
                    raise ValueError(f"sample {i}: image must be (3, {image_size}, {image_size}), "
                                     f"got {tuple(image.shape)}")
                images.append(image)
                generated.append(kind == "gen")
        stacked = torch.stack(images) if images else torch.zeros(0, 3, image_size, image_size)
        return sequences, stacked, torch.tensor(generated, dtype=torch.bool)

    # ------------------------------------------------------------------------------ visual path

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """(M, 3, H, W) in [-1, 1] -> z (M, N, c): the GSB mean through the frozen Gen-ViT, standardised
        with the tokenizer's recorded statistics (the flow's data side, matched to its N(0, I) noise)."""
        return self.tokenizer.standardise(self.tokenizer.encode(images, sample=False))

    @torch.no_grad()
    def decode(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Standardised latents z (M, N, c) -> images (M, 3, H, W) through the tokenizer's decoder."""
        return self.tokenizer.decode(self.tokenizer.unstandardise(z), generator=generator)

    def visual_tokens(self, z_t: Tensor, t: Tensor) -> Tensor:
        """Standardised latents z_t (M, N, c) at flow time t (M,) -> LLM inputs (M, N, width)."""
        s = self.tokenizer.sem_features(self.tokenizer.bottleneck.reconstruct(self.tokenizer.unstandardise(z_t)))
        return self.projector(s) + self.visual_time(t)[:, None]

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
        """(B, L, width) -> the image blocks' hidden states (M, N, width), in layout order."""
        return hidden[lay.visual.to(hidden.device)].reshape(-1, self.num_image_tokens, hidden.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    # ------------------------------------------------------------------------------- training loss

    def forward(
        self, batch: HydraBatch | Mapping[str, Any], generator: Optional[torch.Generator] = None
    ) -> dict[str, Tensor]:
        """Losses: loss_ntp (target text only), loss_flow (generation blocks) and loss.

        ``batch`` is a :class:`HydraBatch`, or a column dict (``kind``, ``image`` (B, 3, S, S) or None,
        ``has_image``, ``prompt``, ``target``; as made by ``hydra_umm.data.datasets.collate_items``)
        which is collated here, with caption dropout in training mode only."""
        if not isinstance(batch, HydraBatch):
            batch = self.collate(_rows(batch), caption_dropout=None if self.training else 0.0, generator=generator)
        lay, device = batch.layout, self.device
        noised = batch.noised.to(device)
        M = noised.shape[0]
        visual = None
        if M:
            z = self.latents(batch.images.to(device))  # (M, N, c)
            fc = self.cfg.umm.flow
            t = torch.where(
                noised, flow.sample_t(M, fc.t_sampling, fc.t_mean, fc.t_std, device=device, generator=generator), 1.0
            )
            x0 = torch.randn(z.shape, device=device, generator=generator)
            z_t = torch.where(noised[:, None, None], flow.interpolate(x0, z, t), z)
            visual = self.visual_tokens(z_t, t)
        hidden = self.sequence_hidden_states(lay, visual)

        targets = lay.labels[:, 1:].to(device)
        # Both heads run on every batch; a term without samples is the head's output weighted 0, so
        # every rank yields a gradient for every trainable parameter, as sharded training (FSDP2) needs.
        has_target = targets != IGNORE
        if has_target.any():
            logits = self.llm.lm_head(hidden[:, :-1][has_target])
            loss_ntp = F.cross_entropy(logits.float(), targets[has_target])
        else:
            loss_ntp = 0.0 * self.llm.lm_head(hidden[:, :1]).float().sum()
        if noised.any():
            v_hat = self.vision_head(self.block_hidden(hidden, lay)[noised], t[noised])
            loss_flow = F.mse_loss(v_hat.float(), flow.velocity_target(x0, z)[noised].float())
        else:
            loss_flow = 0.0 * self.vision_head(hidden[:, :1], hidden.new_zeros(len(hidden))).float().sum()
        loss = loss_ntp + self.cfg.umm.lambda_flow * loss_flow
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
        cfg = load_config(directory / "config.json")
        llm_config = AutoConfig.from_pretrained(str(directory / "llm"))
        model = cls(cfg, load_text_tokenizer(str(directory)), llm_config=llm_config)
        load_model(model, str(directory / "model.safetensors"))
        return model


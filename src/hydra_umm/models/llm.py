"""The language model of HYDRA: a transformers causal LM, the mixed sequence layout and its mask.

A sample is a list of segments: text (token ids, optionally a next-token target) and image blocks
of N visual positions. :func:`layout` left-pads a batch of such samples into one stream; visual
positions hold a placeholder id whose embedding the caller replaces by visual tokens.
:func:`mixed_attention_mask` is the additive mask of that stream (DESIGN section 3): causal for
text, bidirectional inside each image block, padding never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, Qwen2Config

from hydra_umm.config import LLMConfig

IGNORE = -100  # label of positions without a next-token target


def qwen2_config(cfg: LLMConfig) -> Qwen2Config:
    """A randomly initialisable Qwen2 of the sizes in ``cfg`` (tiny presets)."""
    return Qwen2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
    )


def build_language_model(cfg: LLMConfig, config: PretrainedConfig | None = None) -> PreTrainedModel:
    """The causal LM: the weights in ``cfg.path`` if set, else random weights of ``config`` (default:
    :func:`qwen2_config` of ``cfg``). Pass ``config`` to build an empty skeleton for saved weights.
    The weights are float32 like the rest of HYDRA even when the checkpoint's config names bfloat16
    (as Qwen2.5's does; transformers would keep that dtype): bf16 runs autocast over fp32 masters."""
    if config is None and cfg.path:
        if not Path(cfg.path).is_dir():
            raise FileNotFoundError(f"llm.path {cfg.path}: no such folder (a local Qwen2.5 checkpoint; nothing is "
                                    "downloaded)")
        return AutoModelForCausalLM.from_pretrained(cfg.path, attn_implementation=cfg.attn_implementation,
                                                    dtype=torch.float32)
    config = config if config is not None else qwen2_config(cfg)
    return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation, dtype=torch.float32)


# ------------------------------------------------------------------------------ sequence layout


@dataclass
class Text:
    """A run of text tokens; ``target`` marks them as next-token targets (the loss predicts each)."""

    ids: list[int]
    target: bool = False


@dataclass
class Image:
    """An image block of ``length`` visual positions."""

    length: int


Segment = Union[Text, Image]


@dataclass
class Layout:
    """A left-padded batch of mixed sequences, all (B, L)."""

    input_ids: Tensor  # text ids; ``image_id`` at visual positions, ``pad_id`` at padding
    labels: Tensor  # the id to predict AT this position (shift by one for next-token loss), IGNORE elsewhere
    valid: Tensor  # bool, False at padding
    block: Tensor  # long, 0 for text and padding, k >= 1 for the k-th image block of the row
    position_ids: Tensor  # 0, 1, ... over valid positions (padding gets 0)

    @property
    def visual(self) -> Tensor:  # (B, L) bool
        return self.block > 0


def layout(samples: list[list[Segment]], pad_id: int, image_id: int) -> Layout:
    """Lay out each sample's segments in order and left-pad them to a common length."""
    if not samples:
        raise ValueError("layout needs at least one sample")
    rows = []
    for segments in samples:
        ids, labels, block = [], [], []
        for segment in segments:
            if isinstance(segment, Text):
                ids += segment.ids
                labels += segment.ids if segment.target else [IGNORE] * len(segment.ids)
                block += [0] * len(segment.ids)
            elif isinstance(segment, Image):
                k = max(block, default=0) + 1
                ids += [image_id] * segment.length
                labels += [IGNORE] * segment.length
                block += [k] * segment.length
            else:
                raise TypeError(f"a segment is Text or Image, got {type(segment).__name__}")
        if not ids:
            raise ValueError("a sample has no tokens")
        rows.append((ids, labels, block))
    length = max(len(ids) for ids, _, _ in rows)
    B = len(rows)
    out = Layout(
        input_ids=torch.full((B, length), pad_id, dtype=torch.long),
        labels=torch.full((B, length), IGNORE, dtype=torch.long),
        valid=torch.zeros(B, length, dtype=torch.bool),
        block=torch.zeros(B, length, dtype=torch.long),
        position_ids=torch.zeros(B, length, dtype=torch.long),
    )
    for b, (ids, labels, block) in enumerate(rows):
        n = len(ids)
        out.input_ids[b, length - n :] = torch.tensor(ids)
        out.labels[b, length - n :] = torch.tensor(labels)
        out.valid[b, length - n :] = True
        out.block[b, length - n :] = torch.tensor(block)
        out.position_ids[b, length - n :] = torch.arange(n)
    return out


def mixed_attention_mask(
    valid: Tensor, block: Tensor, num_queries: int | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Additive mask (B, 1, Q, K) for the last Q of K positions (Q = K by default).

    Key k is visible to query q iff k is valid and (k is not after q, or both lie in the same image
    block). A padding query sees only itself, so no row is empty. ``valid`` and ``block`` are (B, K);
    blocks are numbered >= 1 per row, 0 meaning text.
    """
    B, K = valid.shape
    Q = K if num_queries is None else num_queries
    if not 1 <= Q <= K:
        raise ValueError(f"num_queries must be in [1, {K}], got {Q}")
    kpos = torch.arange(K, device=valid.device)
    qpos = kpos[K - Q :]
    q_block, k_block = block[:, K - Q :, None], block[:, None, :]  # (B, Q, 1), (B, 1, K)
    causal = (kpos[None, :] <= qpos[:, None])[None]  # (1, Q, K)
    same_block = (q_block == k_block) & (q_block > 0)
    allowed = (causal | same_block) & valid[:, None, :] & valid[:, K - Q :, None]
    allowed |= (~valid[:, K - Q :, None]) & (kpos[None, :] == qpos[:, None])[None]
    mask = torch.zeros(B, 1, Q, K, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)

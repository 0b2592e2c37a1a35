"""KV-cache handling for HYDRA inference (DESIGN section 3).

A :class:`CachedSequence` runs a laid-out prefix through the LM once and keeps its DynamicCache.
Later positions attend to the cached ones under the same mixed mask: an image block (bidirectional
inside, causal to the prefix) or text tokens. ``keep=False`` crops the new positions off again, so a
text-to-image prompt is run once and every ODE step recomputes only the image block; ``keep=True``
appends them, as token-by-token decoding does.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from transformers import DynamicCache

from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.llm import Layout, mixed_attention_mask


class CachedSequence:
    def __init__(self, model: HydraModel, lay: Layout, visual: Optional[Tensor] = None):
        self.model = model
        device = model.device
        self.cache = DynamicCache(config=model.llm.config)
        self.valid, self.block = lay.valid.to(device), lay.block.to(device)
        self.length = self.valid.sum(dim=1)  # (B,) the next position id of every row
        embeds = model.embed(lay, visual)
        mask = mixed_attention_mask(self.valid, self.block, dtype=embeds.dtype)
        self.hidden = model.hidden_states(embeds, mask, lay.position_ids, self.cache)  # (B, L, width)

    def extend(self, embeds: Tensor, image_block: bool, keep: bool) -> Tensor:
        """Run Q new positions ``embeds`` (B, Q, width) after the cached ones -> hidden (B, Q, width).
        ``image_block``: the Q positions form one bidirectional image block, else causal text."""
        B, Q = embeds.shape[:2]
        new_block = torch.full((B, Q), int(self.block.max()) + 1 if image_block else 0, device=self.block.device)
        valid = torch.cat([self.valid, torch.ones(B, Q, dtype=torch.bool, device=self.valid.device)], dim=1)
        block = torch.cat([self.block, new_block], dim=1)
        mask = mixed_attention_mask(valid, block, num_queries=Q, dtype=embeds.dtype)
        positions = self.length[:, None] + torch.arange(Q, device=self.length.device)
        hidden = self.model.hidden_states(embeds, mask, positions, self.cache)
        if keep:
            self.valid, self.block, self.length = valid, block, self.length + Q
        else:
            self.cache.crop(-Q)
        return hidden

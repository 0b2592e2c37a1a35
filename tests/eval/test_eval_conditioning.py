"""The caption-vs-empty-prompt flow loss against a reference computed without the KV cache."""

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_umm import flow
from hydra_umm.config import load_config
from hydra_umm.eval.conditioning import flow_loss_by_prompt
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer

CAPTIONS = ["a red circle", "two blue squares and a green star", "a star"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["tokenizer.image_size=32"])
    model = HydraModel(cfg, train_text_tokenizer(CAPTIONS * 8, 300)).eval()
    with torch.no_grad():  # the zero-initialised head layers, randomised: velocities are not all 0
        for p in model.vision_head.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return HydraPipeline(model)


def images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_matches_the_flow_loss_recomputed_without_the_cache(pipe):
    ims = images(3)
    table = flow_loss_by_prompt(pipe, ims, CAPTIONS, times=(0.2, 0.7), seed=3)
    assert set(table) == {f"t={t} {p}" for t in (0.2, 0.7) for p in ("caption", "empty prompt")}
    model = pipe.model
    z = model.latents(pipe.pixels(ims))
    x0 = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    for name, prompts in (("caption", CAPTIONS), ("empty prompt", [""] * 3)):
        # the whole sequence through the LM at once, as training lays it out
        lay = model.layout([model.generation_prefix(p) + model.generation_block() for p in prompts])
        for t in (0.2, 0.7):
            tt = torch.full((3,), t)
            with torch.no_grad():
                z_t = flow.interpolate(x0, z, tt)
                hidden = model.block_hidden(model.sequence_hidden_states(lay, model.visual_tokens(z_t, tt)), lay)
                v = model.vision_head(hidden, tt)
            reference = ((v - (z - x0)) ** 2).mean().item()
            assert table[f"t={t} {name}"] == pytest.approx(reference, rel=1e-5)
    assert table["t=0.2 caption"] != table["t=0.2 empty prompt"]


def test_one_caption_per_image(pipe):
    with pytest.raises(ValueError, match="one caption per image"):
        flow_loss_by_prompt(pipe, images(2), CAPTIONS)

"""Tiny random pipelines for the pipeline tests."""

import pytest
import torch

from hydra_umm.config import load_config
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer


@pytest.fixture(scope="session")
def random_pipeline():
    """``make(preset, overrides, texts)``: a tiny random HydraModel's pipeline whose zero-initialised
    vision-head layers are randomised, so that velocities are not trivially zero."""

    def make(preset: str, overrides: list[str], texts: list[str]) -> HydraPipeline:
        torch.manual_seed(0)
        cfg = load_config(preset, overrides)
        model = HydraModel(cfg, train_text_tokenizer(texts * 4, cfg.llm.vocab_size))
        with torch.no_grad():
            for p in model.vision_head.parameters():
                if not p.any():
                    p.normal_(0.0, 0.05)
        return HydraPipeline(model)

    return make

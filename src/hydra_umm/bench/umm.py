"""HYDRA (the unified model) speed figures, each against a reference measured in the same run:

- HydraModel forward on a mixed generation/understanding batch vs the bare transformers LM forward
  on token ids of the same sequence length (the cost of the visual path, mixed mask and heads);
- text-to-image sampling at a long prompt with the prefix KV cache vs recomputing the full sequence
  at every ODE step;
- understanding decode throughput (tokens/s) with the KV cache vs without.

Tiny preset only: a paper-scale HYDRA needs local Qwen2.5 weights and is not cheap on CPU.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import PretrainedConfig

from hydra_umm.bench import Figure, timeit
from hydra_umm.config import Config, load_config
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraBatch, HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
LONG_PROMPT = " and ".join(f"a {c} {s} next to a small {c} {s}" for c in COLOURS for s in SHAPES)
QUESTION = "what colour is the shape?"


def random_model(cfg: Config, llm_config: Optional[PretrainedConfig] = None) -> HydraModel:
    """A randomly initialised HydraModel of ``cfg``'s sizes with a text tokenizer trained on shapes
    captions; ``llm_config`` keeps the LM's own vocabulary size (paper shapes) instead of shrinking
    it to the tokenizer's."""
    torch.manual_seed(0)
    texts = [f"a {c} {s} on the {side}" for c in COLOURS for s in SHAPES for side in ("left", "right")]
    return HydraModel(cfg, train_text_tokenizer(texts + [QUESTION], cfg.llm.vocab_size), llm_config)


def mixed_batch(model: HydraModel, size: int) -> HydraBatch:
    """``size`` samples, half text-to-image and half understanding, on random images."""
    g = torch.Generator().manual_seed(0)
    side = model.cfg.tokenizer.image_size
    images = torch.rand(size, 3, side, side, generator=g) * 2 - 1
    samples = [
        {"kind": "gen", "image": images[i], "prompt": f"a {COLOURS[i % len(COLOURS)]} circle", "target": ""}
        if i < size // 2 else {"kind": "und", "image": images[i], "prompt": QUESTION, "target": "red"}
        for i in range(size)
    ]
    return model.collate(samples, caption_dropout=0.0)


def _forward_figure(pipe: HydraPipeline) -> Figure:
    model = pipe.model
    g = torch.Generator().manual_seed(0)
    batch = mixed_batch(model, 4)
    ids = torch.randint(0, model.llm.config.vocab_size, batch.layout.input_ids.shape, generator=g)
    with torch.no_grad():
        hydra = timeit(lambda: model(batch, generator=torch.Generator().manual_seed(0)), iters=5)
        bare = timeit(lambda: model.llm(input_ids=ids), iters=5)
    B, L = ids.shape
    return Figure(f"umm tiny: HydraModel forward, B={B} L={L}", hydra, "s", "bare Qwen2 forward, same B and L", bare)


def _sampling_figure(pipe: HydraPipeline) -> Figure:
    steps = 10
    prompt_len = len(pipe.model.text_tokenizer(LONG_PROMPT, add_special_tokens=False).input_ids)
    cached = timeit(lambda: pipe.generate_latents([LONG_PROMPT], steps=steps, seed=0), iters=3)
    full = timeit(lambda: pipe.generate_latents([LONG_PROMPT], steps=steps, seed=0, use_cache=False), iters=3)
    return Figure(
        f"umm tiny: T2I latents, {steps} steps+CFG, {prompt_len}-tok prompt, cached",
        cached,
        "s",
        "full sequence recomputed every step",
        full,
    )


def _decode_figure(pipe: HydraPipeline) -> Figure:
    size = pipe.model.cfg.tokenizer.image_size
    images = list(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    questions = [QUESTION] * 2

    max_new = 32

    def tokens_per_second(use_cache: bool) -> float:
        def run():
            return pipe.answer_ids(images, questions, max_new, temperature=0.0, seed=0, use_cache=use_cache)

        steps = min(max_new, max(len(row) for row in run()) + 1)  # decoding stops after the last eos
        return len(questions) * steps / timeit(run, iters=3)

    return Figure(
        "umm tiny: understanding decode, KV cache",
        tokens_per_second(True),
        "tok/s",
        "no cache (full recompute per token)",
        tokens_per_second(False),
    )


def run(include_paper: bool = True) -> list[Figure]:
    pipe = HydraPipeline(random_model(load_config("tiny")))
    return [_forward_figure(pipe), _sampling_figure(pipe), _decode_figure(pipe)]

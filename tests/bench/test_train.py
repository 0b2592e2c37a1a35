"""Training-step throughput figures: the Trainer really steps the trained parts only, and the
figures are consistent with the analytic FLOPs."""

import pytest
import torch

from hydra_umm.bench import FLOP_RATE, flops
from hydra_umm.bench.train import (StepTiming, hydra_costs, hydra_figures, step_figures, time_step,
                                   tokenizer_figures, tokenizer_stage1, trainer)
from hydra_umm.bench.umm import mixed_batch, random_model
from hydra_umm.config import load_config


def test_time_step_trains_the_trained_components_only():
    cfg = load_config("tiny", ["tokenizer.image_size=32", "tokenizer.lambda_lpips=0"]).tokenizer
    torch.manual_seed(0)
    objective, components = tokenizer_stage1(cfg)
    tok = objective.tokenizer
    before = {name: p.detach().clone() for name, p in tok.named_parameters()}
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    timing = time_step(trainer(objective, components), {"image": images}, iters=1, warmup=0)
    assert timing.step > 0 and timing.forward > 0
    changed = {name for name, p in tok.named_parameters() if not torch.equal(p, before[name])}
    assert "vit.blocks.0.attn.qkv.weight" in changed and "decoder.final.proj.weight" in changed
    assert "bottleneck.compress.proj.weight" in changed
    assert not any(name.startswith(("teacher.", "discriminator.")) for name in changed)


def test_step_figures_rates():
    a, b, c = step_figures("x", StepTiming(step=2.0, forward=0.5), samples=4, tokens=40, step_flops=8 * 10**9)
    assert (a.value, a.unit, a.ratio) == (2.0, "samples/s", pytest.approx(0.25))
    assert (b.value, b.reference_value) == (20.0, 80.0)
    assert (c.value, c.unit) == (4.0, FLOP_RATE)


def check_rates(figures, batch: int, tokens_per_sample: int, step_flops: int) -> None:
    """samples/s, tokens/s and the FLOP rate must describe one and the same step time."""
    samples, tokens, rate = figures
    assert (samples.unit, tokens.unit, rate.unit) == ("samples/s", "tokens/s", FLOP_RATE)
    assert samples.value > 0 and samples.reference_value > 0
    assert tokens.value == pytest.approx(samples.value * tokens_per_sample)
    assert rate.value == pytest.approx(step_flops * samples.value / batch / 1e9)


def test_tokenizer_figures_agree_with_the_analytic_flops():
    cfg = load_config("tiny").tokenizer
    figures = tokenizer_figures(batch_size=2, iters=1)
    check_rates(figures, 2, (cfg.image_size // cfg.patch_size) ** 2, flops.total(flops.tokenizer_step(cfg, 2)))


def test_hydra_figures_agree_with_the_analytic_flops():
    model = random_model(load_config("tiny"))
    batch = mixed_batch(model, 2)
    B, L = batch.layout.input_ids.shape
    figures = hydra_figures(batch_size=2, iters=1)
    assert f"B={B} L={L}" in figures[0].name
    check_rates(figures, B, L, flops.total(hydra_costs(model, batch)))


def test_hydra_costs_read_the_batch():
    model = random_model(load_config("tiny", ["tokenizer.image_size=32"]))
    batch = mixed_batch(model, 4)
    costs = hydra_costs(model, batch)
    vision_one = flops.vision_head(model.cfg, 1)
    assert costs["vision_head"].forward == 2 * vision_one  # two of the four samples generate
    tok = model.cfg.tokenizer
    assert costs["gen_vit"].forward == 4 * (flops.gen_vit(tok, 1) + flops.gsb_compress(tok, 1))
    B, L = batch.layout.input_ids.shape
    targets = int((batch.layout.labels[:, 1:] != -100).sum())
    assert targets > 0
    assert costs["llm"].forward == flops.llm(model.cfg.llm, B, L, targets, model.llm.lm_head.out_features)

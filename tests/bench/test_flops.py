"""Analytic training-step FLOPs against torch.utils.flop_counter on the tiny preset, component by
component (each run alone, forward and, where it trains or passes gradients, backward), and MFU."""

import pytest
import torch

from hydra_umm.bench import Figure, FLOP_RATE, flops, with_peak
from hydra_umm.bench.train import hydra_costs
from hydra_umm.bench.umm import mixed_batch, random_model
from hydra_umm.config import load_config
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.llm import build_language_model

TOLERANCE = 0.03  # the analytic 3x rule vs the kernels' actual backward (e.g. attention's recomputed scores)


def measured(fn) -> int:
    with flops.flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def backward(out: torch.Tensor) -> None:
    out.float().sum().backward()


def assert_close(analytic: int, counted: int) -> None:
    assert counted > 0
    assert abs(analytic / counted - 1) < TOLERANCE, (analytic, counted)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return HydraTok(load_config("tiny", ["tokenizer.lambda_lpips=0"]).tokenizer)


@pytest.fixture(scope="module")
def images(tok):
    size = tok.cfg.image_size
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_building_blocks_are_the_textbook_formulas():
    assert flops.linear(3, 4, 5) == 2 * 3 * 4 * 5
    assert flops.attention(2, 7, 16) == 2 * (2 * 2 * 7 * 7 * 16)  # Q K^T and A V
    assert flops.attention(2, 1, 16, keys=9) == 2 * 2 * 2 * 9 * 16
    assert flops.transformer_block(1, 10, 8, 32) == 2 * 10 * (3 * 64 + 64 + 2 * 8 * 32) + 4 * 100 * 8
    cost = flops.Cost(forward=10, multiplier=flops.TRAINED)
    assert cost.step == 30 and flops.total({"a": cost, "b": flops.Cost(5, flops.NO_GRAD)}) == 35
    # frozen on the gradient's path: weights 2x, attention (no weights, both operands need gradients) 3x
    assert flops.Cost(10, flops.GRAD_THROUGH, attention=4).step == 6 * 2 + 4 * 3
    assert flops.Cost(10, flops.NO_GRAD, attention=4).step == 10


def test_tokenizer_stage1_components_match_the_flop_counter(tok, images):
    cfg, B, n = tok.cfg, len(images), tok.grid[0] * tok.grid[1]
    costs = flops.tokenizer_step(cfg, B)
    h = torch.randn(B, n, cfg.width, requires_grad=True)
    z = torch.randn(B, n, cfg.latent_dim, requires_grad=True)

    def gsb():
        mu, logvar = tok.bottleneck.compress(h)
        backward(tok.bottleneck.reconstruct(tok.bottleneck.sample(mu, logvar)))

    counted = {
        "gen_vit": measured(lambda: backward(tok.gen_features(images))),
        "gsb": measured(gsb),
        "sem_vit": measured(lambda: backward(tok.sem_features(h))),
        "teacher": measured(lambda: tok.teacher_features(images)),
        "pixel_decoder": measured(lambda: backward(tok.decoder(images, torch.rand(B), z))),
    }
    # the tiny preset distils from the last block: every Sem-ViT block trains
    assert costs["sem_vit_untrained_tail"].forward == 0
    for name, count in counted.items():
        assert_close(costs[name].step, count)
    assert costs["teacher"].multiplier == flops.NO_GRAD and costs["pixel_decoder"].multiplier == flops.TRAINED


def test_vit_decoder_matches_the_flop_counter():
    torch.manual_seed(0)
    tok = HydraTok(load_config("tiny", ["tokenizer.decoder=vit", "tokenizer.image_size=32"]).tokenizer)
    z = torch.randn(2, tok.grid[0] * tok.grid[1], tok.cfg.latent_dim, requires_grad=True)
    assert_close(flops.tokenizer_step(tok.cfg, 2)["pixel_decoder"].step, measured(lambda: backward(tok.decoder(z))))


def test_tokenizer_stage1_step_matches_the_flop_counter(tok, images):
    step = measured(lambda: tok(images, stage=1)["loss"].backward())
    assert_close(flops.total(flops.tokenizer_step(tok.cfg, len(images))), step)
    tok.zero_grad(set_to_none=True)


def test_sem_vit_blocks_after_the_last_distilled_layer_get_no_backward():
    cfg = load_config("tiny", ["tokenizer.distill_layers=[1, 3]"]).tokenizer  # blocks 4, 5 reach no loss
    costs = flops.tokenizer_step(cfg, 1)
    assert costs["sem_vit_untrained_tail"].forward == costs["sem_vit"].forward * 2
    assert costs["sem_vit_untrained_tail"].multiplier == flops.NO_GRAD


@pytest.fixture(scope="module")
def hydra():
    model = random_model(load_config("tiny"))
    return model, mixed_batch(model, 4)


def _llm_pass(model, batch, visual):
    lay = batch.layout
    hidden = model.sequence_hidden_states(lay, visual)
    targets = lay.labels[:, 1:] != -100
    backward(model.llm.lm_head(hidden[:, :-1][targets]))


def test_hydra_components_match_the_flop_counter(hydra):
    model, batch = hydra
    model.set_stage("II")
    costs = hydra_costs(model, batch)
    M, G = len(batch.images), int(batch.noised.sum())
    assert (M, G) == (4, 2)
    n, tok = model.num_image_tokens, model.tokenizer
    z = torch.randn(M, n, tok.cfg.latent_dim, requires_grad=True)
    s = torch.randn(M, n, tok.cfg.width, requires_grad=True)
    t = torch.rand(M)
    visual = torch.randn(M, n, model.llm.config.hidden_size, requires_grad=True)
    hidden = torch.randn(G, n, model.llm.config.hidden_size, requires_grad=True)
    counted = {
        "gen_vit": measured(lambda: model.latents(batch.images)),
        "sem_vit": measured(lambda: backward(tok.sem_features(tok.bottleneck.reconstruct(z)))),
        "projector": measured(lambda: backward(model.projector(s) + model.visual_time(t)[:, None])),
        "llm": measured(lambda: _llm_pass(model, batch, visual)),
        "vision_head": measured(lambda: backward(model.vision_head(hidden, t[:G]))),
    }
    for name, count in counted.items():
        assert_close(costs[name].step, count)
    model.zero_grad(set_to_none=True)


def test_hydra_step_matches_the_flop_counter_and_stage_I_passes_gradients_through_the_llm(hydra):
    model, batch = hydra
    model.set_stage("II")
    step = measured(lambda: model(batch, generator=torch.Generator().manual_seed(0))["loss"].backward())
    assert_close(flops.total(hydra_costs(model, batch)), step)

    with pytest.raises(ValueError, match="stages I, II and III"):
        hydra_costs(model, batch, stage="IV")
    model.set_stage("I")  # LLM frozen: forward and input gradients only
    try:
        costs = hydra_costs(model, batch, stage="I")
        assert costs["llm"].multiplier == flops.GRAD_THROUGH
        visual = torch.randn(len(batch.images), model.num_image_tokens, model.llm.config.hidden_size,
                             requires_grad=True)
        assert_close(costs["llm"].step, measured(lambda: _llm_pass(model, batch, visual)))
    finally:
        model.set_stage("II")
        model.zero_grad(set_to_none=True)


def test_paper_llm_matches_the_flop_counter_on_meta_tensors():
    """Qwen2.5-1.5B's sizes (grouped-query attention, 12 query and 2 key-value heads), counted
    without computing anything."""
    cfg = load_config("paper-1.5b").llm
    B, L, targets = 2, 300, 10
    with torch.device("meta"):
        lm = build_language_model(cfg)
        embeds = torch.zeros(B, L, cfg.hidden_size, requires_grad=True)
        mask, positions = torch.zeros(B, 1, L, L), torch.arange(L)[None].expand(B, L)

    def step():
        hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        backward(lm.lm_head(hidden[:, :targets]))

    assert_close(3 * flops.llm(cfg, B, L, B * targets), measured(step))


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.4)),
    ("NVIDIA H100 PCIe", ("H100 PCIe", 756.5)),
    ("NVIDIA H100 NVL", ("H100 NVL", 835.5)),
    ("NVIDIA H200", ("H200", 989.4)),
    ("NVIDIA H200 NVL", ("H200 NVL", 835.5)),
    ("NVIDIA GH200 480GB", ("GH200", 989.4)),
    ("NVIDIA A100-SXM4-80GB", ("A100", 312.0)),
    ("NVIDIA A10", ("A10", 125.0)),
    ("NVIDIA L4", ("L4", 121.0)),
    ("NVIDIA L40S", ("L40S", 362.05)),
    ("NVIDIA L40", ("L40", 181.05)),
    ("Tesla T4", None),
])
def test_peak_table(name, expected):
    assert flops.peak_bf16_tflops(name) == expected


def test_device_peak_on_cpu_is_only_the_given_one():
    cpu = torch.device("cpu")
    assert flops.device_peak(cpu)[0] is None
    assert flops.device_peak(cpu, 2.5) == (2.5, "given peak 2.5 TFLOP/s")
    with pytest.raises(ValueError, match="positive"):
        flops.device_peak(cpu, 0.0)


def test_mfu_is_the_achieved_rate_over_the_peak():
    figures = [Figure("step: model FLOP rate", 450.0, FLOP_RATE), Figure("step: samples/s", 3.0, "samples/s")]
    rate, other = with_peak(figures, 1.0, "given peak 1 TFLOP/s")
    assert rate.ratio == pytest.approx(0.45) and "MFU" in rate.reference
    assert other == figures[1]
    unpeaked = with_peak(figures, None, "no peak for a CPU")[0]
    assert unpeaked.ratio is None and unpeaked.reference == "no peak for a CPU"

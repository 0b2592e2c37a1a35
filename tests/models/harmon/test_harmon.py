"""HarmonModel: batch layout with causal image tokens, losses and where their gradients go, the
caption loss's scaled gradient into the visual path, save/load, and a tiny model that overfits."""

import copy

import pytest
import torch
from harmon_samples import build_model
from square_samples import COLOURS, gen, square, und

from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.harmon.mar import mask_by_order, random_orders
from hydra_umm.models.llm import IGNORE

N, S = 16, 4


def test_batch_layout_and_forward(harmon_model):
    model = harmon_model
    assert (model.num_tokens, model.buffer_size, model.num_image_tokens) == (N, S, N + S)
    batch = model.collate([gen("red"), und("blue"), {"kind": "text", "image": None, "prompt": "a", "target": "red"}],
                          generator=torch.Generator().manual_seed(0))
    lay = batch.layout
    masked = int(batch.mask.sum())
    assert batch.mask.shape == (1, N) and 12 <= masked <= N  # ceil(0.7 N) .. N
    assert batch.generate.tolist() == [True, False]
    assert lay.block.eq(0).all()  # no bidirectional image block: Harmon's image tokens are causal
    assert lay.visual.sum(dim=1).tolist() == [N - masked + S, N + S, 0]
    ids = model.ids
    gen_row = lay.input_ids[0][lay.valid[0]].tolist()
    assert gen_row[-(N - masked + S) - 1] == ids["vs"] and lay.visual[0, -1]  # caption <vs> image, image last
    und_row = lay.input_ids[1][lay.valid[1]].tolist()
    assert und_row[0] == ids["vs"] and und_row[N + S + 1] == ids["ve"] and und_row[-1] == ids["eos"]
    assert lay.labels[0].eq(IGNORE).all()
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_ntp", "loss_diff"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["loss_ntp"] + out["loss_diff"])
    # the column-dict form the training stream gives
    from hydra_umm.data.datasets import collate_items

    model.eval()
    assert set(model(collate_items([gen("red"), und("blue")]))) == {"loss", "loss_ntp", "loss_diff"}


def test_the_diffusion_loss_is_on_the_masked_tokens_only(harmon_model, monkeypatch):
    model = harmon_model
    batch = model.collate([gen("red")], generator=torch.Generator().manual_seed(1))
    assert 0 < int(batch.mask.sum()) < N  # some tokens masked, some visible: the two sets differ
    targets, head = [], model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda x, *rest: targets.append(x) or head(x, *rest))
    with torch.no_grad():
        model(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(targets[0], model.latents(batch.images)[batch.mask].float())


def test_bad_samples_are_refused_with_clear_errors(harmon_model):
    with pytest.raises(ValueError, match="kind must be one of"):
        harmon_model.collate([{"kind": "edit", "image": square("red"), "prompt": "", "target": ""}])
    with pytest.raises(ValueError, match="needs an image"):
        harmon_model.collate([{"kind": "gen", "image": None, "prompt": "a", "target": ""}])
    with pytest.raises(ValueError, match=r"image must be \(3, 32, 32\)"):
        harmon_model.collate([{"kind": "und", "image": torch.zeros(3, 64, 64), "prompt": "a", "target": "b"}])
    with pytest.raises(ValueError, match="clean latents only"):
        harmon_model.visual_tokens(torch.zeros(1, N, 16), torch.zeros(1))


def test_image_tokens_are_causal_in_the_llm(harmon_model):
    model = harmon_model.eval()
    lay = model.collate([und("red")]).layout
    visual = model.visual_tokens(model.latents(square("red")[None]))
    hidden = model.sequence_hidden_states(lay, visual)
    changed = visual.clone()
    changed[:, -1] += 1.0  # the last visual token (a buffer)
    hidden2 = model.sequence_hidden_states(lay, changed)
    where = lay.visual[0].nonzero()[:, 0]
    assert torch.allclose(hidden[0, where[:-1]], hidden2[0, where[:-1]], atol=1e-6)  # earlier ones do not see it
    assert not torch.allclose(hidden[0, where[-1]], hidden2[0, where[-1]])


def test_generation_never_reads_a_masked_latent(harmon_model):
    model = harmon_model.eval()
    x = model.latents(torch.stack([square("red"), square("blue")]))
    mask = mask_by_order(12, random_orders(2, N, torch.Generator().manual_seed(0)))
    x_enc, tokens = model.encode(x, mask)
    assert x_enc.shape[1] == tokens.shape[1] == N - 12 + S
    x2 = torch.where(mask[..., None], torch.randn_like(x) * 100, x)
    x_enc2, tokens2 = model.encode(x2, mask)
    assert torch.equal(x_enc, x_enc2) and torch.equal(tokens, tokens2)
    hidden = torch.randn(2, N - 12 + S, model.llm.config.hidden_size)
    assert torch.equal(model.decode_tokens(x_enc, hidden, mask), model.decode_tokens(x_enc2, hidden, mask))


def _grads(model: HarmonModel, samples: list[dict]) -> dict[str, bool]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(model.collate(samples, caption_dropout=0.0, generator=torch.Generator().manual_seed(1)),
          generator=torch.Generator().manual_seed(1))["loss"].backward()
    parts = {**model.components(), "vae": list(model.vae.parameters())}
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps) for name, ps in parts.items()}


def test_gradients_reach_the_right_parts(harmon_model):
    model = copy.deepcopy(harmon_model)
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert _grads(model, [gen("red")])["decoder"] is False  # the zero-initialised head passes no gradient yet
    with torch.no_grad():  # as after a few optimiser steps
        for p in model.head.parameters():
            p.add_(0.02 * torch.randn_like(p))
    both = _grads(model, [gen("red"), und("blue")])
    assert both == {"encoder": True, "decoder": True, "projector": True, "vision_head": True, "llm": True,
                    "vae": False}
    und_only = _grads(model, [und("blue")])
    # every trainable parameter still gets a (zero) gradient, as DDP needs on every rank
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert und_only == {"encoder": True, "decoder": False, "projector": True, "vision_head": False, "llm": True,
                        "vae": False}


def test_the_caption_loss_reaches_the_visual_path_scaled(harmon_model):
    model = harmon_model
    model.eval()  # no dropout: the two backward passes see the same function

    def grads(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        model.cfg.harmon.und_grad_scale = scale
        model.zero_grad(set_to_none=True)
        model(model.collate([und("green")]))["loss"].backward()
        return model.encoder.z_proj.weight.grad.clone(), model.llm.lm_head.weight.grad.clone()

    full_encoder, full_lm = grads(1.0)
    scaled_encoder, scaled_lm = grads(0.1)
    model.cfg.harmon.und_grad_scale = 0.1
    model.zero_grad(set_to_none=True)
    assert torch.allclose(scaled_encoder, 0.1 * full_encoder, rtol=1e-4, atol=1e-9)
    assert torch.allclose(scaled_lm, full_lm)  # the LM's own gradient is untouched


def test_save_and_load_round_trip(harmon_model, tmp_path):
    model = harmon_model.eval()
    model.save_pretrained(tmp_path / "harmon")
    assert HarmonModel.is_pretrained(tmp_path / "harmon") and not HarmonModel.is_pretrained(tmp_path)
    loaded = HarmonModel.from_pretrained(tmp_path / "harmon").eval()
    batch = model.collate([gen("red"), und("blue")], generator=torch.Generator().manual_seed(0))
    a = model(batch, generator=torch.Generator().manual_seed(0))
    b = loaded(batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="not a saved HarmonModel"):
        HarmonModel.from_pretrained(tmp_path)


def test_a_tiny_harmon_overfits_a_few_shapes_samples():
    """Four squares, each captioned and described: loss_ntp and loss_diff (the same masks, t and
    noise before and after) both fall by at least half in 25 steps. Measured: ntp 5.8 -> ~0.5,
    diff 4.0 -> ~0.3."""
    model = build_model()
    samples = [gen(c) for c in COLOURS] + [und(c) for c in COLOURS]

    def measure() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            outs = [model(model.collate(samples, caption_dropout=0.0, generator=torch.Generator().manual_seed(s)),
                          generator=torch.Generator().manual_seed(s)) for s in range(3)]
        return {k: sum(float(o[k]) for o in outs) / len(outs) for k in ("loss_ntp", "loss_diff")}

    before = measure()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        model(model.collate(samples, caption_dropout=0.0, generator=g), generator=g)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = measure()
    print(f"overfit: {before} -> {after}")
    assert after["loss_ntp"] < 0.5 * before["loss_ntp"] and after["loss_diff"] < 0.5 * before["loss_diff"]

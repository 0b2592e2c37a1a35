"""HydraModel over HYDRA-XTok (hydra-x-tiny at 32 px, 4 x 4 latent grid): the sequence layout of
clip and edit samples against hand-built references, the latent frames each block contributes, the
flow loss on exactly the generated frames, source-target interaction against Indep, and gradients."""

import copy
from collections import Counter

import pytest
import torch

from hydra_umm import flow
from hydra_umm.config import load_config
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.hydra_xtok import HydraXTok
from hydra_umm.models.llm import IGNORE, mixed_attention_mask
from hydra_umm.models.text_tokenizer import train_text_tokenizer

from square_samples import TEXTS, square

SIZE, T = 32, 8  # clips of 1 + 8 frames -> 3 latent frames
INSTRUCTION = "make the square blue"


def clip(colour: str = "red") -> torch.Tensor:
    """A (3, 1 + T, SIZE, SIZE) clip: the square, fading towards black frame by frame."""
    return torch.stack([square(colour) * (1 - i / (2 * T)) for i in range(1 + T)], dim=1)


def video_und(colour: str = "red") -> dict:
    return {"kind": "und", "image": clip(colour), "prompt": "what colour is the square?", "target": colour}


def video_gen(colour: str = "red") -> dict:
    return {"kind": "gen", "image": clip(colour), "prompt": f"a {colour} square", "target": ""}


def edit(source: str = "red", target: str = "blue") -> dict:
    return {"kind": "edit", "source": square(source), "image": square(target), "prompt": f"make the square {target}",
            "target": ""}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = load_config("hydra-x-tiny", [f"tokenizer.image_size={SIZE}", "tokenizer.lambda_lpips=0"])
    return HydraModel(cfg, train_text_tokenizer(TEXTS * 4 + [INSTRUCTION], cfg.llm.vocab_size)).eval()


def test_hydra_x_builds_over_hydra_xtok(model):
    assert isinstance(model.tokenizer, HydraXTok) and model.cfg.umm.xtok
    assert model.num_image_tokens == 16


def test_clip_and_edit_layouts_match_hand_built_sequences(model):
    N, ids = model.num_image_tokens, model.ids

    def tokens(text):
        return model.text_tokenizer(text, add_special_tokens=False).input_ids

    samples = [video_und("red"), video_gen("green"), edit("red", "blue")]
    batch = model.collate(samples, caption_dropout=0.0, source_dropout=0.0)
    lay = batch.layout
    F = 1 + T // 4
    expected = [
        [ids["vs"], *[ids["image"]] * (F * N), ids["ve"], *tokens("what colour is the square?"), *tokens("red"),
         ids["eos"]],
        [*tokens("a green square"), ids["vs"], *[ids["image"]] * (F * N), ids["ve"]],
        [*tokens("make the square blue"), ids["vs"], *[ids["image"]] * (2 * N), ids["ve"]],
    ]
    for row, want in enumerate(expected):
        assert lay.input_ids[row][lay.valid[row]].tolist() == want
        visual = lay.block[row][lay.valid[row]]
        assert set(visual[visual > 0].tolist()) == {1}  # one bidirectional block per clip or pair
    # the mask, against a slow reference: causal text, each clip / pair one bidirectional block, no padding
    mask = mixed_attention_mask(lay.valid, lay.block)[:, 0] == 0
    for b in range(len(samples)):
        valid, block = lay.valid[b].tolist(), lay.block[b].tolist()
        for q in range(len(valid)):
            for k in range(len(valid)):
                allowed = valid[q] and valid[k] and (k <= q or block[q] == block[k] > 0)
                assert mask[b, q, k] == (allowed or (not valid[q] and q == k)), (b, q, k)
    assert lay.labels[0][lay.labels[0] != IGNORE].tolist() == tokens("red") + [ids["eos"]]
    assert lay.labels[1:].eq(IGNORE).all()
    assert [(b.form, b.generated) for b in batch.blocks] == [("video", False), ("video", True), ("edit", True)]
    assert batch.blocks[2].pixels.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(batch.blocks[2].pixels[0], square("red")) and torch.equal(batch.blocks[2].pixels[1], square("blue"))


def test_bad_clip_and_edit_samples_are_refused(model):
    with pytest.raises(ValueError, match=r"T a multiple of 4"):
        model.collate([{"kind": "und", "image": torch.zeros(3, 6, SIZE, SIZE), "prompt": "a", "target": "b"}])
    with pytest.raises(ValueError, match="needs a source image"):
        model.collate([{"kind": "edit", "image": square("red"), "prompt": "a", "target": ""}])
    with pytest.raises(ValueError, match="needs a source image"):
        model.collate([{"kind": "edit", "image": square("red"), "source": clip(), "prompt": "a", "target": ""}])
    with pytest.raises(ValueError, match="unknown umm.edit_layout"):
        HydraModel(load_config("hydra-x-tiny", ["umm.edit_layout=side"]), model.text_tokenizer)


def test_frame_inputs_noise_exactly_the_generated_frames(model):
    batch = model.collate([video_und("red"), video_gen("green"), edit("red", "blue")], caption_dropout=0.0,
                          source_dropout=0.0)
    with torch.no_grad():
        frames = model.frame_inputs(batch.blocks, torch.Generator().manual_seed(0))
        z_clip = model.latents(torch.stack([clip("red"), clip("green")]))  # (2, 3, N, c)
        z_src, z_tgt = model.latents(square("red")[None]), model.latents(square("blue")[None])
    F = 1 + T // 4
    assert frames["z"].shape == (2 * F + 2, model.num_image_tokens, model.cfg.tokenizer.latent_dim)
    assert torch.allclose(frames["z"], torch.cat([z_clip[0], z_clip[1], z_src, z_tgt]), atol=1e-5)
    assert frames["noised"].tolist() == [False] * F + [True] * F + [False, True]
    t = frames["t"]
    assert torch.all(t[:F] == 1) and t[-2] == 1 and torch.all(t[F : 2 * F] == t[F]) and 0 < t[F] < 1
    assert frames["visual"].shape == (2 * F + 2, model.num_image_tokens, model.cfg.llm.hidden_size)


def test_visual_tokens_follow_sem_vit_over_the_latent_frames(model):
    """A clip's visual tokens are the projector of HYDRA-XTok's Sem-ViT over its latent frames (the
    tubelet pattern) plus the timestep embedding; Sem-ViT reads the standardised latents."""
    with torch.no_grad():
        z = model.latents(clip()[None])  # (1, 3, N, c)
        t = torch.tensor([[0.2, 0.5, 0.9]])
        ours = model.visual_tokens(z, t, "video")
        s = model.tokenizer.sem_latents(z.unflatten(2, (4, 4)), "tubelet").flatten(2, 3)
        reference = model.projector(s) + model.visual_time(t[0])[None, :, None]
        assert torch.allclose(ours, reference, atol=1e-5)
        # an image is a one-frame clip
        image = square("red")[None]
        assert torch.allclose(model.visual_tokens(model.latents(image), torch.ones(1)),
                              model.visual_tokens(model.latents(image)[:, None], torch.ones(1, 1), "video")[:, 0],
                              atol=1e-5)


def _pair_tokens(model, layout, z):
    model = copy.deepcopy(model)
    model.cfg.umm.edit_layout = layout
    return model.visual_tokens(z, torch.tensor([[1.0, 0.4]]), "edit")


def test_sti_lets_the_target_see_the_source_and_indep_does_not(model):
    """Gradients: under STI the target's visual tokens depend on the source latent through Sem-ViT,
    and the source's never on the target (tubelet mask); under Indep neither depends on the other."""
    z = torch.stack([model.latents(square("red")[None]), model.latents(square("blue")[None])], dim=1)
    for layout, target_sees_source in (("sti", True), ("indep", False)):
        z_in = z.clone().requires_grad_(True)
        _pair_tokens(model, layout, z_in)[:, 1].pow(2).sum().backward()
        assert (z_in.grad[:, 0].abs().sum() > 0) == target_sees_source, layout
        assert z_in.grad[:, 1].abs().sum() > 0
        z_in = z.clone().requires_grad_(True)
        _pair_tokens(model, layout, z_in)[:, 0].pow(2).sum().backward()
        assert z_in.grad[:, 1].abs().sum() == 0, layout
    # Indep is each image through Sem-ViT alone: the target's tokens equal an image's at its time
    with torch.no_grad():
        alone = model.visual_tokens(z[:, 1], torch.tensor([0.4]))
        assert torch.allclose(_pair_tokens(model, "indep", z)[:, 1], alone, atol=1e-5)
        assert (_pair_tokens(model, "sti", z)[:, 1] - alone).abs().max() > 1e-5


def test_flow_loss_is_the_velocity_mse_of_the_generated_frames_only(model):
    """At initialisation the head predicts 0: loss_flow = mean (z - x0)^2 over the edit's target frame
    and every latent frame of the generated clip, with each group's t and then noise drawn in turn."""
    batch = model.collate([edit("red", "blue"), video_gen("green")], caption_dropout=0.0, source_dropout=0.0)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(5))
        z_edit = torch.stack([model.latents(square("red")[None]), model.latents(square("blue")[None])], dim=1)
        z_clip = model.latents(clip("green")[None])
    g = torch.Generator().manual_seed(5)
    fc = model.cfg.umm.flow
    flow.sample_t(1, fc.t_sampling, fc.t_mean, fc.t_std, generator=g)
    x0_edit = torch.randn(z_edit.shape, generator=g)
    flow.sample_t(1, fc.t_sampling, fc.t_mean, fc.t_std, generator=g)
    x0_clip = torch.randn(z_clip.shape, generator=g)
    errors = torch.cat([(z_edit - x0_edit)[0, 1:], (z_clip - x0_clip)[0]])
    assert torch.allclose(out["loss_flow"], errors.pow(2).mean(), rtol=1e-5)
    assert out["loss_ntp"] == 0


def test_source_dropout_puts_the_null_latent_in_the_source_place(model):
    dropped = model.collate([edit()], caption_dropout=0.0, source_dropout=1.0)
    kept = model.collate([edit()], caption_dropout=0.0, source_dropout=0.0)
    assert not dropped.blocks[0].keep_source and kept.blocks[0].keep_source
    with torch.no_grad():
        a = model.frame_inputs(dropped.blocks, torch.Generator().manual_seed(0))
        b = model.frame_inputs(kept.blocks, torch.Generator().manual_seed(0))
    assert torch.equal(a["z"][0], torch.zeros_like(a["z"][0])) and not torch.equal(b["z"][0], a["z"][0])
    assert torch.equal(a["z"][1], b["z"][1])
    many = model.collate([edit()] * 300, caption_dropout=0.0, source_dropout=0.2,
                         generator=torch.Generator().manual_seed(0))
    rate = sum(not b.keep_source for b in many.blocks) / 300
    assert 0.13 < rate < 0.27


def test_edits_lose_instruction_source_or_both_as_instructpix2pix_trains(model):
    """At caption and source dropout 0.2 each: 10 % of edits lose the instruction only, 10 % the source
    only, 10 % both (independent draws would give 16 %, 16 % and 4 %)."""
    n = 1000
    sequences, blocks = model.sample_sequences([edit()] * n, model.generation_block, model.cfg.tokenizer.image_size,
                                               0.2, torch.Generator().manual_seed(0), video=True, source_dropout=0.2)
    unconditional = model.generation_prefix("")[0].ids
    no_text = [seq[0].ids == unconditional for seq in sequences]
    no_source = [not b.keep_source for b in blocks]
    cases = Counter(zip(no_text, no_source))
    for case in [(True, False), (False, True), (True, True)]:
        assert 70 < cases[case] < 130, cases


def test_clip_and_edit_gradients_reach_the_trained_parts_only(model):
    student = copy.deepcopy(model).train()
    student.set_stage("II")
    batch = student.collate([video_und(), video_gen(), edit()], caption_dropout=0.0, source_dropout=0.0)
    student(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
    for name, params in student.components().items():
        assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0, name
    tok = student.tokenizer
    frozen = [p for m in tok.gen_vit_modules() for p in m.parameters()] + list(tok.bottleneck.compress.parameters())
    frozen += list(tok.decoder.parameters()) + list(tok.latent_decompressor.parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)

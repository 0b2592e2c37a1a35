"""HYDRA-XTok on the xtok-tiny preset at 32 px (4 x 4 latent grid): masks, RoPE, causality,
shapes of every stage, image/clip agreement, the Decompressor, editing layout, losses, gradient
routing, save/load, and a tiny model overfitting moving-square clips."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import apply_rot_embed_cat
from timm.models.vision_transformer import Block

from hydra_umm.config import ConfigError, load_config, to_dict
from hydra_umm.inference import load_pipeline
from hydra_umm.losses.distillation import cosine_distance
from hydra_umm.models.decompressor import Decompressor
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.hydra_xtok import HydraXTok
from hydra_umm.models.spacetime import attend, frame_mask, rope_3d, spacetime_block, temporal_groups

from gradient_checks import reaches, take_grads, untouched

SIZE, GRID, B = 32, (4, 4), 2
BASE = ["tokenizer.lambda_lpips=0", f"tokenizer.image_size={SIZE}"]


def make(*overrides: str, seed: int = 0) -> HydraXTok:
    cfg = load_config("xtok-tiny", [*BASE, *overrides])
    torch.manual_seed(seed)
    return HydraXTok(cfg.tokenizer, cfg.xtok).eval()


def moving_squares(n: int, frames: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """n clips (n, 3, frames, size, size) in [-1, 1]: a flat background and a square moving at constant
    velocity, bouncing at the borders."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clips = []
    for _ in range(n):
        background, colour = torch.rand(3, 1, 1, generator=g) * 2 - 1, torch.rand(3, 1, generator=g) * 2 - 1
        side = int(torch.randint(size // 5, size // 3, (1,), generator=g))
        room = size - side
        start, velocity = torch.rand(2, generator=g) * room, (torch.rand(2, generator=g) * 2 - 1) * 2
        frames_ = []
        for t in range(frames):
            p = (start + velocity * t) % (2 * room)
            p = torch.where(p > room, 2 * room - p, p)  # bounce
            img = background.expand(3, size, size).clone()
            img[:, (xx >= p[0]) & (xx < p[0] + side) & (yy >= p[1]) & (yy < p[1] + side)] = colour
            frames_.append(img)
        clips.append(torch.stack(frames_, dim=1))
    return torch.stack(clips)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return (10 * torch.log10(4 / ((x - y) ** 2).mean())).item()


@pytest.fixture(scope="module")
def model():
    return make()  # tubelet attention, hierarchical compression (merge after Gen-ViT block 1 of 3)


@pytest.fixture(scope="module")
def clip():
    return moving_squares(B, 17, seed=3)


# ------------------------------------------------------------------------------ masks, RoPE, patchify


def _slow_mask(attention, frames, tokens):
    n = frames * tokens
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            fq, fk = q // tokens, k // tokens
            mask[q, k] = {"full": True, "causal": fk <= fq, "tubelet": fq - 1 <= fk <= fq}[attention]
    return mask


@pytest.mark.parametrize("attention", ["full", "causal", "tubelet"])
@pytest.mark.parametrize("frames,tokens", [(1, 3), (2, 2), (5, 3)])
def test_frame_mask_matches_a_slow_reference_and_is_cached(attention, frames, tokens):
    mask = frame_mask(attention, frames, tokens, torch.device("cpu"))
    assert torch.equal(mask, _slow_mask(attention, frames, tokens))
    assert frame_mask(attention, frames, tokens, torch.device("cpu")) is mask  # built once per shape
    with pytest.raises(ValueError, match="unknown attention 'sparse'.*full, causal, tubelet"):
        frame_mask("sparse", frames, tokens, torch.device("cpu"))


@pytest.mark.parametrize("attention", ["full", "causal", "tubelet"])
def test_attention_equals_dense_softmax_attention_under_the_mask(attention):
    g = torch.Generator().manual_seed(0)
    frames, tokens = 4, 3
    q, k, v = (torch.randn(2, 2, frames * tokens, 8, generator=g) for _ in range(3))
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(~_slow_mask(attention, frames, tokens), float("-inf"))
    assert torch.allclose(attend(q, k, v, attention, frames), scores.softmax(-1) @ v, atol=1e-6)


def test_rope_scores_depend_only_on_the_offset_in_time_row_and_column():
    frames, grid, head_dim = 3, (4, 4), 32
    rope = rope_3d(frames, grid, head_dim, 10000.0, torch.device("cpu"))
    assert rope.shape == (frames * 16, 2 * head_dim)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)

    def score(p, r):  # q at position p, k at position r, each (frame, row, column)
        i, j = (f * 16 + y * 4 + x for f, y, x in (p, r))
        return apply_rot_embed_cat(q, rope[i]) @ apply_rot_embed_cat(k, rope[j])

    assert torch.allclose(score((0, 0, 0), (1, 2, 1)), score((1, 1, 2), (2, 3, 3)), atol=1e-5)
    for moved in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:  # each axis carries position
        assert not torch.allclose(score((0, 0, 0), (0, 0, 0)), score((0, 0, 0), moved), atol=1e-3)
    assert torch.allclose(apply_rot_embed_cat(q, rope[5]).norm(), q.norm(), atol=1e-5)  # a rotation


def test_temporal_groups_zero_pad_the_anchor_in_front():
    x = torch.arange(1, 6).float().view(1, 5, 1)  # frames 1..5
    assert torch.equal(temporal_groups(x, 2)[0, :, :, 0], torch.tensor([[0.0, 1], [2, 3], [4, 5]]))
    assert torch.equal(temporal_groups(x, 4)[0, :, :, 0], torch.tensor([[0.0, 0, 0, 1], [2, 3, 4, 5]]))
    with pytest.raises(ValueError, match="4 frames are not 1 \\+ a multiple of 2"):
        temporal_groups(x[:, :4], 2)


@pytest.mark.parametrize("attention", ["tubelet", "causal"])
def test_one_block_output_of_frame_i_depends_on_the_frames_its_pattern_allows(attention):
    torch.manual_seed(0)
    block, frames, n = Block(32, 2, qkv_bias=True), 4, 4
    x = torch.randn(1, frames * n, 32, requires_grad=True)
    out = spacetime_block(block, x, frames, (2, 2), attention, 10000.0).view(frames, n, 32)
    for i in range(frames):
        (grad,) = torch.autograd.grad(out[i].sum(), x, retain_graph=True)
        reached = grad.view(frames, n, 32).abs().sum((1, 2)) > 0
        allowed = [(i - 1 <= j <= i) if attention == "tubelet" else (j <= i) for j in range(frames)]
        assert reached.tolist() == allowed, (i, reached.tolist())


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("compression", ["hier", "single"])
@pytest.mark.parametrize("t", [0, 4, 16])
def test_every_stage_has_its_shape(compression, t):
    tok = make(f"xtok.temporal_compression={compression}")
    cfg, (h, w) = tok.cfg, GRID
    x = moving_squares(1, 1 + t)
    taps = dict.fromkeys(range(cfg.depth))
    with torch.no_grad():
        gen = tok._gen_clip(x, taps)
        tok._sem_clip(gen, taps)
        z, s = tok.encode(x), tok.semantic(x)
        decoded = tok.decode(z)
    latent_frames = 1 + t // 4
    first = 1 + t // 2 if compression == "hier" else latent_frames  # block 0 runs before the hier merge
    assert taps[0].shape == (1, first, h * w, cfg.width)
    assert all(taps[i].shape == (1, latent_frames, h * w, cfg.width) for i in range(1, cfg.depth))
    assert gen.shape == (1, latent_frames, h * w, cfg.width)
    assert z.shape == (1, latent_frames, h, w, cfg.latent_dim)
    assert s.shape == (1, latent_frames, h, w, cfg.width)
    assert decoded.shape == x.shape and decoded.abs().max() <= 1


def test_the_paper_preset_gives_the_papers_latent_of_a_17_frame_clip():
    cfg = load_config("paper")
    with torch.device("meta"):  # shapes only: no initialisation of three 300M-parameter ViTs
        tok = HydraXTok(cfg.tokenizer, cfg.xtok)
        z = tok.encode(torch.zeros(1, 3, 17, 448, 448))
    assert z.shape == (1, 5, 32, 32, 64)  # (B, 1 + T/4, H/p, W/p, c)


def test_bad_frame_counts_and_settings_are_refused_with_the_problem_named(model):
    with pytest.raises(ValueError, match="T a multiple of 4.*got 6 frames"):
        model.encode(torch.zeros(1, 3, 6, SIZE, SIZE))
    with pytest.raises(ValueError, match="expected a clip of shape"):
        model(torch.zeros(1, 1, 3, 5, SIZE, SIZE))
    with pytest.raises(ValueError, match="does not match the configured image_size 32x32"):
        model.encode(torch.zeros(1, 3, 5, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 1 \+ k, 4, 4, 32\)"):
        model.decode(torch.zeros(1, 2, 4, 4, 16))
    with pytest.raises(ValueError, match="unknown attention 'window'"):
        make("xtok.attention=window")
    with pytest.raises(ValueError, match="unknown temporal_compression 'triple'.*hier, single"):
        make("xtok.temporal_compression=triple")
    with pytest.raises(ValueError, match=r"merge_after must be in \[1, gen_depth\] = \[1, 3\], got 4"):
        make("xtok.merge_after=4")
    with pytest.raises(ConfigError, match="xtok.attention"):
        load_config("xtok-tiny", ["xtok.atention=full"])
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        model(torch.zeros(1, 3, 1, SIZE, SIZE), stage=4)


# ------------------------------------------------------------------------------ causality, images, editing


@pytest.mark.parametrize("attention", ["tubelet", "causal", "full"])
@pytest.mark.parametrize("compression", ["hier", "single"])
def test_a_later_frame_never_changes_an_earlier_latent_frame(attention, compression, clip):
    tok = make(f"xtok.attention={attention}", f"xtok.temporal_compression={compression}")
    later = clip.clone()
    later[:, :, 9:] = moving_squares(B, 8, seed=11)  # frames 9..16 = latent frames 3 and 4
    with torch.no_grad():
        z, z_later = tok.encode(clip), tok.encode(later)
        s, s_later = tok.semantic(clip), tok.semantic(later)
    earlier_same = [torch.allclose(a[:, :3], b[:, :3], atol=1e-5) for a, b in ((z, z_later), (s, s_later))]
    assert earlier_same == [attention != "full"] * 2  # full attention is the control: everything mixes
    assert not torch.allclose(z[:, 3:], z_later[:, 3:], atol=1e-3)


@pytest.mark.parametrize("compression", ["hier", "single"])
def test_an_image_as_a_one_frame_clip_gives_exactly_the_image_path(compression):
    tok = make(f"xtok.temporal_compression={compression}")
    torch.nn.init.normal_(tok.temporal_embed.weight)  # trained-looking weights for the earlier frames
    if tok.temporal_merge is not None:
        torch.nn.init.normal_(tok.temporal_merge.weight, std=0.02)
    images = moving_squares(B, 1, seed=5)[:, :, 0]
    clip_of_one = images[:, :, None]
    with torch.no_grad():
        z = tok.encode(images)
        assert torch.equal(tok.encode(clip_of_one)[:, 0].flatten(1, 2), z)
        assert torch.equal(tok.semantic(clip_of_one)[:, 0].flatten(1, 2), tok.semantic(images))
        assert torch.equal(tok.decode(z[:, None].unflatten(2, GRID))[:, :, 0], tok.decode(z))
        assert torch.equal(tok.gen_features(images), tok._gen_clip(clip_of_one, {})[:, 0])
        # in a longer clip the anchor still is the image alone (tubelet attention, zero-padded anchor)
        longer = torch.cat([clip_of_one, moving_squares(B, 4, seed=6)], dim=2)
        assert torch.allclose(tok.encode(longer)[:, 0].flatten(1, 2), z, atol=1e-5)
        # and a longer clip's first frame decodes from the anchor latent alone, as that image
        z_clip = tok.encode(longer)
        torch.testing.assert_close(tok.decode(z_clip, generator=torch.Generator().manual_seed(0))[:, :, 0],
                                   tok.decode(z_clip[:, 0].flatten(1, 2), generator=torch.Generator().manual_seed(0)),
                                   atol=1e-5, rtol=0)
    g = [torch.Generator().manual_seed(1) for _ in range(2)]
    image_losses, clip_losses = tok(images, generator=g[0]), tok(clip_of_one, generator=g[1])
    assert {k: v.item() for k, v in image_losses.items()} == {k: v.item() for k, v in clip_losses.items()}


def test_hydra_tok_image_interface_holds(model):
    images = moving_squares(B, 1, seed=4)[:, :, 0]
    n, d = GRID[0] * GRID[1], model.cfg.width
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.latent_mean.fill_(0.3), model.latent_std.fill_(2.0)  # recorded statistics: Sem-ViT reads standardised z
        student, teacher = model.student_features(images), model.teacher_features(images)
        assert set(student) == set(teacher) == set(model.cfg.distill_layers)
        assert all(student[i].shape == teacher[i].shape == (B, n, d) for i in student)
        h = model.gen_features(images)
        s = model.sem_features(model.bottleneck.reconstruct(model.standardise(model.encode(images))))
        assert h.shape == s.shape == (B, n, d)
        assert torch.equal(student[model.cfg.distill_layers[-1]], s)  # the last block's tokens (no final norm)


def test_editing_layout_encodes_each_image_alone_and_the_source_ignores_the_target(model):
    source, target, other = moving_squares(3 * B, 1, seed=8)[:, :, 0].chunk(3)
    with torch.no_grad():
        z, s = model.edit_features(source, target)
        _, s2 = model.edit_features(source, other)
        _, s3 = model.edit_features(other, target)
        assert torch.equal(z[:, 0], model.encode(source)) and torch.equal(z[:, 1], model.encode(target))
        assert torch.allclose(s[:, 0], s2[:, 0], atol=1e-6)  # s_src does not see the target
        assert torch.allclose(s[:, 0], model.semantic(source), atol=1e-5)  # it is the source's own semantics
        assert not torch.allclose(s[:, 1], s3[:, 1], atol=1e-3)  # s_tgt sees the source


# ------------------------------------------------------------------------------ Decompressor, teachers


@pytest.mark.parametrize("t", [4, 16])
def test_decompressor_output_has_the_video_teachers_frame_count(model, t):
    x = moving_squares(1, 1 + t)
    with torch.no_grad():
        s = model.semantic(x)  # (1, 1 + t/4, h, w, D)
        lifted = model.decompress(s[:, 1:])
        teacher = model.video_teacher(x[:, :, 1:])
    assert lifted.shape == (1, t, *GRID, model.cfg.width)
    assert teacher.shape == (1, t, GRID[0] * GRID[1], model.cfg.width)


def test_decompressor_turns_channel_halves_into_consecutive_frames():
    dec = Decompressor(6, 6, 6, 1, (1, 1))
    with torch.no_grad():
        for expand in dec.expand:  # 1x1 conv x -> [x, -x]
            expand.weight.copy_(torch.cat([torch.eye(6), -torch.eye(6)]))
            expand.bias.zero_()
        for block in dec.blocks:  # residual blocks that add nothing
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
        dec.out.weight.copy_(torch.eye(6))
        dec.out.bias.zero_()
        x = torch.randn(1, 2, 1, 6)
        out = dec(x)[0, :, 0]  # (8, 6): each frame f -> [x_f, -x_f] -> [x_f, -x_f, -x_f, x_f]
    expected = torch.stack([sign * x[0, f, 0] for f in range(2) for sign in (1, -1, -1, 1)])
    assert torch.equal(out, expected)


def test_student_vit_starts_from_the_image_teacher_and_the_video_teacher_loads_from_a_file(model, tmp_path):
    teacher = model.teacher.state_dict()
    for name, p in model.vit.state_dict().items():
        assert torch.equal(p, teacher[name]), name
    assert "vit.cls_token" not in model.state_dict() and "vit.pos_embed" not in model.state_dict()  # 3D RoPE only
    torch.manual_seed(7)
    trained = make(seed=7).video_teacher.vit.state_dict()
    path = tmp_path / "video_teacher.safetensors"
    save_file(trained, str(path))
    tok = make(f"xtok.video_teacher_weights={path}")
    assert all(torch.equal(tok.video_teacher.vit.state_dict()[k], v) for k, v in trained.items())
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        tok.video_teacher.load(tmp_path / "nowhere.safetensors")


# ------------------------------------------------------------------------------ losses and gradients


@pytest.fixture(scope="module")
def stages(model, clip):
    """Losses and gradients of stages 1-3 on a 5-frame clip (stage 2: of loss, then of loss_disc)."""
    x, out = clip[:, :, :5], {}
    model.train()
    for stage in (1, 2, 3):
        model.zero_grad(set_to_none=True)
        losses = model(x, stage=stage, generator=torch.Generator().manual_seed(0))
        losses["loss"].backward(retain_graph=stage == 2)
        grads = take_grads(model)
        if stage == 2:
            losses["loss_disc"].backward()
            out["disc"] = take_grads(model)
        out[stage] = ({k: v.detach() for k, v in losses.items()}, grads)
    model.eval()
    return out


def test_each_stage_returns_its_terms_and_their_weighted_total(model, stages):
    cfg, x = model.cfg, model.xcfg
    weights = {"loss_l1": cfg.lambda_l1, "loss_kl": cfg.lambda_kl, "loss_cons": cfg.lambda_cons,
               "loss_distill": cfg.lambda_distill, "loss_distill_video": x.lambda_distill_video,
               "loss_gan": cfg.lambda_gan}
    keys = {1: {"loss_l1", "loss_kl", "loss_cons", "loss_distill", "loss_distill_video"},
            2: {"loss_l1", "loss_gan"}, 3: {"loss_cons", "loss_distill", "loss_distill_video"}}
    for stage, terms in keys.items():
        out, _ = stages[stage]
        assert set(out) == terms | {"loss"} | ({"loss_disc"} if stage == 2 else set())
        assert torch.allclose(out["loss"], sum(weights[k] * out[k] for k in terms))
        assert all(torch.isfinite(v) for v in out.values())


def test_distillation_terms_are_the_teachers_cosine_distances(model, clip):
    x = clip[:, :, :5]
    with torch.no_grad():
        out = model(x, stage=3)
        s = model.semantic(x).flatten(2, 3)  # stage 3 reads the posterior mean, as semantic does
        image = cosine_distance(s[:, 0], model.image_teacher_features(x[:, :, 0]))
        video = cosine_distance(model.decompressor(s[:, 1:]), model.video_teacher(x[:, :, 1:]))
        images_only = model(x[:, :, 0], stage=3)
    assert out["loss_distill"].item() == pytest.approx(image.item(), abs=1e-6)
    assert out["loss_distill_video"].item() == pytest.approx(video.item(), abs=1e-6)
    assert images_only["loss_distill_video"].item() == 0.0  # the video term is masked for images


def test_stage1_trains_everything_but_the_teachers_and_the_discriminator(stages):
    _, grads = stages[1]
    for prefix in ("vit.patch_embed", "temporal_embed", "temporal_merge", "vit.blocks.0.", "vit.blocks.5.",
                   "bottleneck.compress", "bottleneck.reconstruct", "decompressor.", "latent_decompressor.",
                   "decoder."):
        assert reaches(grads, prefix), prefix
    for prefix in ("teacher.", "video_teacher.", "discriminator."):
        assert untouched(grads, prefix, zero_ok=True), prefix


def test_stage2_trains_the_decoder_and_loss_disc_the_discriminator(stages):
    _, grads = stages[2]
    assert reaches(grads, "decoder.") and reaches(grads, "latent_decompressor.")
    for prefix in ("vit.", "temporal_", "bottleneck.", "decompressor.", "teacher.", "video_teacher.", "discriminator."):
        assert untouched(grads, prefix, zero_ok=True), prefix
    assert reaches(stages["disc"], "discriminator.") and untouched(stages["disc"], "decoder.", zero_ok=True)


def test_stage3_trains_sem_vit_on_standardised_latents_only(model, stages):
    _, grads = stages[3]
    for prefix in ("bottleneck.reconstruct", "vit.blocks.3.", "vit.blocks.5.", "decompressor."):
        assert reaches(grads, prefix), prefix
    for prefix in ("vit.patch_embed", "temporal_", "vit.blocks.0.", "vit.blocks.2.", "bottleneck.compress", "decoder.",
                   "latent_decompressor.", "teacher.", "video_teacher.", "discriminator."):
        assert untouched(grads, prefix, zero_ok=True), prefix
    sem_vit = {id(p) for m in model.sem_vit_modules() for p in m.parameters()}
    assert all(id(p) in sem_vit for n, p in model.named_parameters() if grads[n] is not None and grads[n].abs().sum())


def test_the_pixel_flow_decoder_stays_an_option_for_clips(clip):
    tok = make("tokenizer.decoder=flow")
    x = clip[:, :, :5]
    out = tok(x, stage=1, generator=torch.Generator().manual_seed(0))
    assert "loss_flow" in out and "loss_l1" not in out
    out["loss"].backward()
    assert reaches(take_grads(tok), "decoder.final")  # AdaLN-Zero: only the zero-initialised output layer at step 0
    z = tok.encode(x)
    decoded = [tok.decode(z, steps=2, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert decoded[0].shape == x.shape and torch.equal(decoded[0], decoded[1])
    assert not torch.equal(decoded[0], decoded[2])  # sampled from noise


def test_latent_statistics_come_from_clips_and_feed_sem_vit(model, clip):
    with torch.no_grad():
        z = model.encode(clip).reshape(-1, model.cfg.latent_dim)
        s_before = model.semantic(clip)
    model.record_latent_stats([clip[:1], clip[1:]])
    try:
        assert torch.allclose(model.latent_mean, z.mean(0), atol=1e-5)
        assert torch.allclose(model.latent_std, z.std(0, unbiased=False), atol=1e-5)
        with torch.no_grad():
            s_after = model.semantic(clip)
            expected = model.sem_latents(model.standardise(model.encode(clip)))
        assert torch.equal(s_after, expected) and not torch.allclose(s_after, s_before, atol=1e-3)
    finally:
        model.latent_mean.zero_()
        model.latent_std.fill_(1.0)
    with pytest.raises(ValueError, match="at least one batch"):
        model.record_latent_stats([])


def test_save_and_load_round_trip(model, clip, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = HydraXTok.from_pretrained(tmp_path)
    assert to_dict(loaded.xcfg) == to_dict(model.xcfg) and to_dict(loaded.cfg) == to_dict(model.cfg)
    with torch.no_grad():
        z = model.encode(clip[:, :, :5])
        assert torch.equal(loaded.encode(clip[:, :, :5]), z)
        assert torch.equal(loaded.decode(z), model.decode(z))
        assert torch.equal(loaded.video_teacher(clip[:, :, 1:5]), model.video_teacher(clip[:, :, 1:5]))
    with pytest.raises(ValueError, match="is the config of a HYDRA-XTok, not of a HYDRA-TOK"):
        HydraTok.from_pretrained(tmp_path)  # where an image tokenizer is asked for
    (recon,) = load_pipeline(tmp_path).reconstruct([clip[0, :, 0]])  # reconstruct reads HYDRA-XTok directories
    assert recon.size == (SIZE, SIZE)


# ------------------------------------------------------------------------------ learning


def test_tiny_hydra_xtok_overfits_moving_square_clips():
    tok = make(seed=0)
    x = moving_squares(4, 5, seed=1)

    def clip_psnr() -> float:
        with torch.no_grad():
            return psnr(tok.decode(tok.encode(x)), x)

    before = clip_psnr()
    tok.train()
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        loss = tok(x, stage=1, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    after = clip_psnr()
    assert after - before >= 6.0, f"clip PSNR {before:.2f} dB -> {after:.2f} dB"

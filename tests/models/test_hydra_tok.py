"""HYDRA-TOK on the tiny preset: shapes, losses, gradient routing, save/load, weights, and a tiny overfit."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from hydra_umm import HydraTok, load_config
from hydra_umm.config import to_dict
from hydra_umm.models.bottleneck import kl_loss
from hydra_umm.models.pixel_decoder import PixelFlowDecoder, patchify, unpatchify
from hydra_umm.models.vit import build_vit
from hydra_umm.models.vit_decoder import ViTDecoder

from gradient_checks import reaches, take_grads, untouched

B = 2


def draw_shapes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n images in [-1, 1]: a flat background, one disc and one rectangle in random colours."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = []
    for _ in range(n):
        img = (torch.rand(3, 1, 1, generator=g) * 2 - 1).expand(3, size, size).clone()
        for kind in ("disc", "rect"):
            colour = torch.rand(3, 1, generator=g) * 2 - 1
            cx, cy = torch.randint(12, size - 12, (2,), generator=g)
            r = int(torch.randint(6, 14, (1,), generator=g))
            if kind == "disc":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            else:
                mask = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r // 2 + 3)
            img[:, mask] = colour
        images.append(img)
    return torch.stack(images)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    return (10 * torch.log10(4 / ((x - y) ** 2).mean())).item()


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny").tokenizer


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return HydraTok(cfg)


@pytest.fixture(scope="module")
def images():
    return draw_shapes(B)


@pytest.fixture(scope="module")
def stage1(model, images):
    model.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="randomly initialised VGG16"):  # LPIPS is built on first use
        out = model(images, stage=1, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, take_grads(model)


@pytest.fixture(scope="module")
def stage2(model, images):
    model.zero_grad(set_to_none=True)
    out = model(images, stage=2, generator=torch.Generator().manual_seed(0))
    (gan_grad,) = torch.autograd.grad(out["loss_gan"], model.decoder.final.proj.weight, retain_graph=True)
    assert gan_grad.abs().sum() > 0  # the adversarial term trains the decoder
    out["loss"].backward()
    loss_grads = take_grads(model)
    out["loss_disc"].backward()
    return {k: v.detach() for k, v in out.items()}, loss_grads, take_grads(model)


# ------------------------------------------------------------------------------ shapes


def test_every_output_has_its_shape(model, cfg, images):
    n, d, c = 64, cfg.width, cfg.latent_dim
    assert model.grid == (8, 8)
    with torch.no_grad():
        h = model.gen_features(images)
        mu, logvar = model.bottleneck.compress(h)
        h_prime = model.bottleneck.reconstruct(mu)
        assert h.shape == h_prime.shape == (B, n, d)
        assert mu.shape == logvar.shape == (B, n, c)
        assert model.sem_features(h_prime).shape == (B, n, d)
        assert model.encode(images).shape == (B, n, c)
        assert model.semantic(images).shape == (B, n, d)
        assert model.discriminator(images).shape == (B, 1, 6, 6)
        assert set(model.teacher_features(images)) == set(cfg.distill_layers)
    decoded = model.decode(mu, steps=2, generator=torch.Generator().manual_seed(0))
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as validation runs on CUDA
        assert model.decode(mu.bfloat16(), steps=2).dtype == torch.float32  # the ODE integrates in fp32


def test_pixel_patches_round_trip_and_a_too_narrow_decoder_is_flagged():
    x = torch.randn(2, 3, 16, 24)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 6, 192)
    assert torch.equal(tokens[0, 1], x[0, :, 0:8, 8:16].permute(1, 2, 0).reshape(-1))  # row-major grid
    assert torch.equal(unpatchify(tokens, 8, (2, 3)), x)
    with pytest.warns(UserWarning, match="decoder width 128 is below the pixel patch size"):
        PixelFlowDecoder((8, 8), 8, 32, 128, 1, 4)


def test_the_paper_preset_is_timms_intern_vit_300m():
    import timm

    paper = load_config("paper").tokenizer
    with torch.device("meta"):  # shapes only: no 300M-parameter initialisation
        ours = build_vit(paper)
        reference = timm.create_model("vit_intern300m_patch14_448", pretrained=False, num_classes=0, global_pool="")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert len(ours.blocks) == 24 and ours.embed_dim == 1024 and ours.patch_embed.patch_size == (14, 14)


# ------------------------------------------------------------------------------ losses


def test_stage1_returns_every_term_and_their_weighted_total(model, cfg, images, stage1):
    out, _ = stage1
    assert set(out) == {"loss_flow", "loss_lpips", "loss_kl", "loss_cons", "loss_distill", "loss"}
    total = (
        out["loss_flow"]
        + cfg.lambda_lpips * out["loss_lpips"]
        + cfg.lambda_kl * out["loss_kl"]
        + cfg.lambda_cons * out["loss_cons"]
        + cfg.lambda_distill * out["loss_distill"]
    )
    assert torch.allclose(out["loss"], total)
    # the KL is that of the Gen-ViT posterior (deterministic in the images)
    with torch.no_grad():
        assert torch.allclose(out["loss_kl"], kl_loss(*model.bottleneck.compress(model.gen_features(images))))
    assert all(torch.isfinite(v) and v >= 0 for k, v in out.items() if k != "loss")


def test_stage2_returns_flow_lpips_gan_and_a_separate_discriminator_loss(cfg, stage2):
    out, _, _ = stage2
    assert set(out) == {"loss_flow", "loss_lpips", "loss_gan", "loss", "loss_disc"}
    total = out["loss_flow"] + cfg.lambda_lpips * out["loss_lpips"] + cfg.lambda_gan * out["loss_gan"]
    assert torch.allclose(out["loss"], total)


def test_student_starts_as_the_teacher(model, cfg, images):
    student, teacher = model.student_features(images), model.teacher_features(images)
    assert set(student) == set(teacher) == set(cfg.distill_layers)
    assert torch.allclose(student[1], teacher[1], atol=1e-6)  # a Gen-ViT layer (gen_depth = 3): same weights
    assert not torch.allclose(student[5], teacher[5], atol=1e-3)  # Sem-ViT reads h' from the untrained GSB
    assert student[5].shape == teacher[5].shape == (len(images), 64, cfg.width)
    for (name, p), q in zip(model.vit.named_parameters(), model.teacher.parameters()):
        assert torch.equal(p, q), name


def test_unknown_stage_is_refused(model, images):
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        model(images, stage=3)


# ------------------------------------------------------------------------------ gradients


def test_stage1_gradients_reach_every_part_but_the_teacher(model, stage1):
    _, grads = stage1
    for prefix in ("vit.patch_embed", "vit.blocks.0.", "bottleneck.compress", "bottleneck.reconstruct",
                   f"vit.blocks.{model.cfg.depth - 1}.", "decoder.final"):
        assert reaches(grads, prefix), prefix
    assert untouched(grads, "teacher.") and untouched(grads, "discriminator.")
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_stage2_loss_trains_only_the_decoder_and_loss_disc_only_the_discriminator(stage2):
    _, loss_grads, disc_grads = stage2
    assert reaches(loss_grads, "decoder.")
    for prefix in ("vit.", "bottleneck.", "teacher.", "discriminator."):
        assert untouched(loss_grads, prefix), prefix
    assert reaches(disc_grads, "discriminator.")
    for prefix in ("vit.", "bottleneck.", "teacher.", "decoder."):
        assert untouched(disc_grads, prefix), prefix


def test_gen_vit_modules_hold_everything_gen_vit_computes_with(model, images):
    modules = model.gen_vit_modules()
    try:
        for m in modules:
            m.requires_grad_(False)
        h = model.gen_features(images)
        assert not h.requires_grad  # nothing trainable is left on the Gen-ViT path
        assert model.sem_features(model.bottleneck.reconstruct(model.bottleneck.compress(h)[0])).requires_grad
    finally:
        for m in modules:
            m.requires_grad_(True)


def test_teacher_stays_in_eval_mode(model):
    model.train()
    assert model.vit.training and not model.teacher.training


# ------------------------------------------------------------------------------ API


def test_encode_is_the_posterior_mean_unless_sampling(model, images):
    with torch.no_grad():
        mean = model.encode(images)
        assert torch.equal(mean, model.encode(images))
        assert torch.equal(mean, model.bottleneck.compress(model.gen_features(images))[0])
        draw = model.encode(images, sample=True, generator=torch.Generator().manual_seed(5))
        again = model.encode(images, sample=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draw, again) and not torch.allclose(draw, mean)


def test_stage1_decodes_a_draw_from_the_posterior_not_its_mean(model, images, monkeypatch):
    decoded, posterior = [], []
    sample, decoder_losses = model.bottleneck.sample, model._decoder_losses
    monkeypatch.setattr(model.bottleneck, "sample",
                        lambda mu, logvar, g: posterior.append((mu, logvar)) or sample(mu, logvar, g))
    monkeypatch.setattr(model, "_decoder_losses", lambda x, z, g: decoded.append(z) or decoder_losses(x, z, g))
    with torch.no_grad():
        model(images, stage=1, generator=torch.Generator().manual_seed(0))
    (mu, logvar), (z,) = posterior[0], decoded
    eps = (z - mu) / torch.exp(logvar / 2)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1) and eps.mean().abs() < 0.1


def test_semantic_features_go_through_the_bottleneck(model, images):
    with torch.no_grad():
        expected = model.sem_features(model.bottleneck.reconstruct(model.encode(images)))
        assert torch.equal(model.semantic(images), expected)


def test_bad_sizes_are_refused_with_the_sizes_named(model, images):
    with pytest.raises(ValueError, match="60x60 is not a multiple of the patch size 8"):
        model.encode(torch.zeros(1, 3, 60, 60))
    with pytest.raises(ValueError, match="56x56 does not match the configured image_size 64x64"):
        model.encode(torch.zeros(1, 3, 56, 56))
    with pytest.raises(ValueError, match=r"\(B, 64, 32\)"):
        model.decode(torch.zeros(1, 10, 32))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        HydraTok(load_config("tiny", ["tokenizer.image_size=60"]).tokenizer)


def test_save_and_load_round_trip_gives_identical_outputs(model, images, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert not any("lpips" in k for k in load_file(tmp_path / "model.safetensors"))  # the VGG is not saved
    loaded = HydraTok.from_pretrained(tmp_path)
    assert to_dict(loaded.cfg) == to_dict(model.cfg)
    with torch.no_grad():
        z = model.encode(images)
        assert torch.equal(loaded.encode(images), z)
        assert torch.equal(loaded.semantic(images), model.semantic(images))
        assert torch.equal(loaded.teacher_features(images)[1], model.teacher_features(images)[1])
    decode = [m.decode(z, steps=2, generator=torch.Generator().manual_seed(0)) for m in (model, loaded)]
    assert torch.equal(*decode)
    with pytest.raises(FileNotFoundError, match="config.json"):
        HydraTok.from_pretrained(tmp_path / "missing")
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a copy cut short
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors weights file"):
        HydraTok.from_pretrained(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_internvit_fills_student_and_teacher(cfg, tmp_path, suffix):
    torch.manual_seed(123)
    vit = build_vit(cfg)
    state = vit.state_dict()
    path = tmp_path / f"internvit{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    tok = HydraTok(load_config("tiny", [f"tokenizer.teacher_weights={path}"]).tokenizer)
    for name, tensor in state.items():
        assert torch.equal(tok.teacher.state_dict()[name], tensor), name
        assert torch.equal(tok.vit.state_dict()[name], tensor), name
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        tok.load_internvit(tmp_path / "nowhere.safetensors")
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(ValueError, match="notes.pth is not a timm InternViT checkpoint"):
        tok.load_internvit(tmp_path / "notes.pth")


# ------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("decoder", ["flow", "vit"])
def test_tiny_hydra_tok_overfits_a_handful_of_images(decoder):
    torch.manual_seed(0)
    tok = HydraTok(load_config("tiny", ["tokenizer.lambda_lpips=0", f"tokenizer.decoder={decoder}"]).tokenizer)
    x = draw_shapes(4, seed=1)

    def reconstruction_psnr() -> float:
        with torch.no_grad():
            return psnr(tok.decode(tok.encode(x), generator=torch.Generator().manual_seed(1)), x)

    before = reconstruction_psnr()
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(140):
        loss = tok(x, stage=1, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reconstruction_psnr()
    assert after - before >= 6.0, f"decoded PSNR {before:.2f} dB -> {after:.2f} dB"


@pytest.fixture(scope="module")
def vit_decoded(images):
    torch.manual_seed(0)
    tok = HydraTok(load_config("tiny", ["tokenizer.decoder=vit", "tokenizer.lambda_lpips=0"]).tokenizer)
    tok.zero_grad(set_to_none=True)
    out = tok(images, stage=1, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    return tok, out, take_grads(tok)


def test_vit_decoder_is_deterministic_and_trained_by_l1(vit_decoded, images):
    tok, out, grads = vit_decoded
    assert isinstance(tok.decoder, ViTDecoder) and "loss_flow" not in out
    z = tok.encode(images)
    x_hat = tok.decoder(z)
    assert x_hat.shape == images.shape
    assert torch.equal(tok.decode(z), tok.decode(z, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(tok.decode(z), x_hat.clamp(-1, 1))
    mu, logvar = tok.bottleneck.compress(tok.gen_features(images))
    assert out["loss_kl"].item() == pytest.approx(kl_loss(mu, logvar).item(), rel=1e-5)
    terms = out["loss_l1"] + 1e-6 * out["loss_kl"] + out["loss_cons"] + out["loss_distill"]
    assert out["loss"].item() == pytest.approx(terms.item(), rel=1e-5)
    assert reaches(grads, "decoder.") and reaches(grads, "vit.") and untouched(grads, "teacher.")


def test_an_unknown_decoder_is_refused_with_the_choices_named():
    with pytest.raises(ValueError, match="unknown decoder 'vae'.*flow, vit"):
        HydraTok(load_config("tiny", ["tokenizer.decoder=vae"]).tokenizer)


def test_latent_statistics_standardise_every_channel(model, images):
    z = model.encode(images).flatten(0, 1)  # (B * N, c)
    assert torch.equal(model.standardise(z), z)  # identity before statistics are recorded
    model.record_latent_stats([images[:1], images[1:]])  # two batches: the same as one
    try:
        assert torch.allclose(model.latent_mean, z.mean(0), atol=1e-5)
        assert torch.allclose(model.latent_std, z.std(0, unbiased=False), atol=1e-5)
        zs = model.standardise(z)
        assert torch.allclose(zs.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
        assert torch.allclose(zs.std(0, unbiased=False), torch.ones(z.shape[1]), atol=1e-4)
        assert torch.allclose(model.unstandardise(zs), z, atol=1e-5)
        assert "latent_mean" in model.state_dict() and "latent_std" in model.state_dict()  # saved with the model
    finally:
        model.latent_mean.zero_()
        model.latent_std.fill_(1.0)
    with pytest.raises(ValueError, match="at least one batch"):
        model.record_latent_stats([])

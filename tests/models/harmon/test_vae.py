"""The KL autoencoder: grid and stride from the config, posterior mode and scale, LDM/MAR key names,
loading from a local file with clear errors, and a training loss that reconstructs."""

import pytest
import torch
from safetensors.torch import save_file

from hydra_umm.config import load_config
from hydra_umm.models.harmon.vae import AutoencoderKL


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(load_config("harmon-tiny", ["harmon.latent_scale=0.2325"]).harmon).eval()


def test_tokens_follow_the_stride_and_are_the_scaled_posterior_mode(vae):
    assert vae.stride == 8 and vae.grid == 8  # 64 px at stride 8: the 8x8 grid of the tiny preset
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 64, 16)
    mean, _ = vae.posterior(x)
    assert torch.equal(z, 0.2325 * mean.flatten(2).transpose(1, 2))  # row-major tokens, no sampling
    assert torch.equal(vae.encode(x), z)
    assert vae.decode(z).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected 64 latent tokens"):
        vae.decode(z[:, :10])


def test_any_width_gets_a_group_norm_that_divides_it():
    cfg = load_config("harmon-tiny", ["harmon.vae_channels=24", "harmon.vae_ch_mult=[1,2]", "harmon.image_size=16"])
    vae = AutoencoderKL(cfg.harmon)  # 24 and 48 channels: 8 and 16 groups
    assert {m.num_groups for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)} == {8, 16}
    assert vae.decode(vae.encode(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)


def test_paper_preset_is_mars_kl16_with_its_key_names():
    cfg = load_config("harmon").harmon
    assert (cfg.latent_dim, cfg.latent_scale, cfg.vae_ch_mult) == (16, 0.2325, [1, 1, 2, 2, 4])
    skeleton = AutoencoderKL(cfg)
    assert skeleton.stride == 16 and skeleton.grid == 16
    keys = skeleton.state_dict()
    for key in ("encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.4.attn.1.q.weight",
                "encoder.down.3.downsample.conv.weight", "encoder.mid.attn_1.proj_out.weight", "quant_conv.weight",
                "post_quant_conv.weight", "decoder.up.4.block.2.conv2.weight", "decoder.up.1.upsample.conv.weight",
                "decoder.up.3.block.0.nin_shortcut.weight", "decoder.conv_out.weight"):
        assert key in keys, key
    assert keys["quant_conv.weight"].shape == (32, 32, 1, 1)


def test_loads_from_a_local_file_and_refuses_a_missing_or_foreign_one(vae, tmp_path):
    cfg = load_config("harmon-tiny", ["harmon.latent_scale=0.2325"]).harmon
    path = tmp_path / "kl.ckpt"
    torch.save({"model": {**vae.state_dict(), "loss.discriminator.weight": torch.zeros(1)}}, path)
    other = AutoencoderKL(cfg)
    other.load_weights(path)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(other.eval().encode(x), vae.encode(x))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "kl.safetensors"))
    AutoencoderKL(cfg).load_weights(tmp_path / "kl.safetensors")
    with pytest.raises(FileNotFoundError, match="harmon.vae_path"):
        AutoencoderKL(cfg).load_weights(tmp_path / "nowhere.ckpt")
    torch.save({"model": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="missing keys"):
        AutoencoderKL(cfg).load_weights(tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="multiple of the autoencoder stride"):
        AutoencoderKL(load_config("harmon-tiny", ["harmon.image_size=60"]).harmon)


def test_the_training_loss_reconstructs_a_few_images():
    """L1 + KL on four flat-coloured squares: the reconstruction error at least halves in 20 steps."""
    torch.manual_seed(0)
    cfg = load_config("harmon-tiny", ["harmon.image_size=16"]).harmon
    vae = AutoencoderKL(cfg)
    x = -torch.ones(4, 3, 16, 16)
    for i, colour in enumerate([(1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1)]):
        x[i, :, 4:12, 4:12] = torch.tensor(colour, dtype=torch.float)[:, None, None]
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    first = vae(x, cfg.lambda_vae_kl, g)
    assert set(first) == {"loss", "loss_rec", "loss_kl"}
    for _ in range(20):
        out = vae(x, cfg.lambda_vae_kl, g)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        error = (vae.decode(vae.encode(x)) - x).abs().mean().item()
    assert error < 0.5 * first["loss_rec"].item()

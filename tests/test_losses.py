"""Every tokenizer loss against its formula on hand-made tensors, and LPIPS' VGG weight loading."""

import math

import pytest
import torch
import torch.nn.functional as F

from hydra_umm.losses import cosine_distance, distillation_loss, hinge_d_loss, hinge_g_loss
from hydra_umm.models.bottleneck import GenerationSemanticBottleneck, consistency_loss, kl_loss


def test_kl_matches_the_closed_form_per_token():
    # token 0: mu = (1, 0), sigma^2 = (1, e)  -> 0.5 * [(1 + 1 - 1 - 0) + (0 + e - 1 - 1)] = 0.5 * (e - 1)
    # token 1: mu = (0, 2), sigma^2 = (1, 1)  -> 0.5 * (0 + 4) = 2
    mu = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    logvar = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    expected = (0.5 * (math.e - 1) + 2.0) / 2  # summed over channels, averaged over tokens
    assert kl_loss(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert kl_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)).item() == 0.0  # the prior itself


def test_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    reference = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    assert torch.allclose(kl_loss(mu, logvar), reference, atol=1e-5)


def test_cosine_distance_on_known_angles():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # cos = 1, 0, -1
    assert cosine_distance(x, y).item() == pytest.approx((0 + 1 + 2) / 3)
    with pytest.raises(ValueError, match=r"\(1, 3, 2\) and \(1, 3, 3\)"):
        cosine_distance(x, torch.zeros(1, 3, 3))


def test_consistency_loss_and_its_stop_gradient():
    h = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], requires_grad=True)
    hp = torch.tensor([[[1.0, -1.0], [0.0, 5.0]]], requires_grad=True)  # cos = 0, 1
    loss = consistency_loss(hp, h, stop_grad=True)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert h.grad is None and hp.grad is not None
    consistency_loss(hp, h, stop_grad=False).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_distillation_is_the_mean_over_layers_of_token_cosines():
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(2, 4, 6, generator=g) for _ in range(3)]
    teacher = [torch.randn(2, 4, 6, generator=g) for _ in range(3)]
    per_layer = [(1 - F.cosine_similarity(s, t, dim=-1)).mean() for s, t in zip(student, teacher)]
    assert torch.allclose(distillation_loss(student, teacher), torch.stack(per_layer).mean())
    assert distillation_loss(student, student).abs().item() < 1e-6
    with pytest.raises(ValueError, match="same non-zero number of layers"):
        distillation_loss(student, teacher[:2])


def test_distillation_never_sends_gradient_to_the_teacher():
    s = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, requires_grad=True)
    distillation_loss([s], [t]).backward()
    assert t.grad is None and s.grad is not None


def test_hinge_losses_match_their_formulas():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x) = 0, 1, 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    # a discriminator beyond the margins on both sides has nothing left to learn
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_reparameterisation_draws_mean_plus_sigma_times_noise():
    mu, logvar = torch.full((1, 2, 3), 0.5), torch.full((1, 2, 3), math.log(4.0))
    z = GenerationSemanticBottleneck.sample(mu, logvar, torch.Generator().manual_seed(3))
    eps = torch.randn((1, 2, 3), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, 0.5 + 2.0 * eps)


def test_the_posterior_log_variance_is_bounded():
    gsb = GenerationSemanticBottleneck(4, 2)
    with torch.no_grad():
        gsb.compress.proj.bias.copy_(torch.tensor([0.0, 0.0, 500.0, -500.0]))  # mu 0, logvar +-500 unclamped
    mu, logvar = gsb.compress(torch.zeros(1, 3, 4))
    assert logvar[..., 0].eq(20).all() and logvar[..., 1].eq(-30).all() and torch.isfinite(kl_loss(mu, logvar))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random torchvision vgg16 state dict on disk, standing in for ImageNet weights."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    features = make_layers(cfgs["D"])  # torchvision's vgg16 feature stack (indices match `features.*`)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_lpips_loads_the_vgg_trunk_from_a_local_file(vgg_file):
    from hydra_umm.losses.perceptual import PerceptualLoss

    loss = PerceptualLoss(vgg_file)
    saved = torch.load(vgg_file)
    assert torch.equal(loss.lpips.net.slice1[0].weight, saved["features.0.weight"])
    assert torch.equal(getattr(loss.lpips.net.slice5, "28").bias, saved["features.28.bias"])
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, y).item() > 0
    assert torch.allclose(loss(x, y), loss.lpips(x, y).mean())  # the lpips package's own distance


def test_a_random_lpips_trunk_is_the_same_whenever_it_is_built_and_leaves_the_rng_alone():
    """A resumed run builds LPIPS at another global RNG state than the run it continues."""
    from hydra_umm.losses.perceptual import PerceptualLoss

    with pytest.warns(UserWarning, match="randomly initialised"):
        torch.manual_seed(0)
        first = PerceptualLoss().state_dict()
        torch.manual_seed(1)
        after = torch.rand(1)
        torch.manual_seed(1)
        second = PerceptualLoss().state_dict()
    assert torch.equal(torch.rand(1), after)  # the global stream is where it was
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_lpips_errors_name_the_bad_weight_file(tmp_path):
    from hydra_umm.losses.perceptual import PerceptualLoss

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        PerceptualLoss(tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="features.0.weight"):
        PerceptualLoss(tmp_path / "bad.pth")

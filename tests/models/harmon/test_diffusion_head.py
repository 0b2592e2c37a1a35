"""The diffusion head: the cosine schedule and its respacing, the loss against its formula on
hand-made tensors, gradients, guidance, and a tiny head that learns a 2-D toy distribution."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hydra_umm.models.harmon.diffusion_head import DiffusionHead, GaussianDiffusion, cosine_betas, respaced_steps


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(cosine_betas(1000))


def test_cosine_schedule_and_respacing(diffusion):
    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 998):
        assert diffusion.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert diffusion.betas.max().item() == pytest.approx(0.999)  # the clamp at the very end
    assert respaced_steps(1000, 100)[:3] == [0, 10, 20] and respaced_steps(1000, 100)[-1] == 999
    spaced = diffusion.respace(100)
    keep = respaced_steps(1000, 100)
    assert spaced.num_steps == 100 and spaced.timesteps.tolist() == keep
    # the respaced process has the same marginals q(x_t | x_0) at the steps it keeps
    assert torch.allclose(spaced.alphas_cumprod, diffusion.alphas_cumprod[keep], rtol=1e-12)
    for count in (2000, 1):  # one step could not start from noise
        with pytest.raises(ValueError, match="cannot respace"):
            diffusion.respace(count)


def test_loss_matches_its_formula_on_hand_made_tensors(diffusion):
    x0 = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.25]], dtype=torch.float64)
    noise = torch.tensor([[1.0, -0.5], [0.2, 0.7], [-1.2, 0.4]], dtype=torch.float64)
    eps = torch.tensor([[0.8, -0.4], [0.1, 0.9], [-1.0, 0.3]], dtype=torch.float64)
    v = torch.tensor([[0.5, -0.5], [0.0, 0.9], [-0.3, 0.2]], dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    loss = diffusion.training_losses(torch.cat([eps, v], dim=1), x0, x_t, t, noise)

    ab, beta = diffusion.alphas_cumprod, diffusion.betas
    expected = []
    for i, step in enumerate(t.tolist()):
        a, b = ab[step], beta[step]
        a_prev = ab[step - 1] if step > 0 else torch.tensor(1.0, dtype=torch.float64)
        assert torch.allclose(x_t[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])
        mse = ((noise[i] - eps[i]) ** 2).mean()
        x0_hat = (x_t[i] - (1 - a).sqrt() * eps[i]) / a.sqrt()
        coef_x0, coef_xt = b * a_prev.sqrt() / (1 - a), (1 - a_prev) * (1 - b).sqrt() / (1 - a)
        post_var = b * (1 - a_prev) / (1 - a)
        floor = post_var if step > 0 else beta[1] * (1 - ab[0]) / (1 - ab[1])  # the clipped log-variance at t = 0
        log_var = (v[i] + 1) / 2 * b.log() + (1 - v[i]) / 2 * floor.log()
        model = Normal(coef_x0 * x0_hat + coef_xt * x_t[i], (0.5 * log_var).exp())
        if step == 0:  # the discretised decoder's NLL over a bin of width 2/255
            bits = -torch.log(model.cdf(x0[i] + 1 / 255) - model.cdf(x0[i] - 1 / 255)) / math.log(2)
        else:
            bits = kl_divergence(Normal(coef_x0 * x0[i] + coef_xt * x_t[i], post_var.sqrt()), model) / math.log(2)
        expected.append(mse + bits.mean())
    assert torch.allclose(loss, torch.stack(expected), rtol=1e-6)


def test_the_variational_bound_trains_only_the_variance(diffusion):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    t = torch.randint(1, 1000, (8,), generator=g)
    out = torch.randn(8, 8, generator=g, requires_grad=True)
    diffusion.training_losses(out, x0, diffusion.q_sample(x0, t, noise), t, noise).sum().backward()
    eps = out.detach()[:, :4]
    assert torch.allclose(out.grad[:, :4], 2 * (eps - noise) / 4, atol=1e-6)  # the MSE's gradient alone
    assert out.grad[:, 4:].abs().min() > 0


def test_the_head_starts_at_zero_and_guidance_of_scale_one_is_no_guidance():
    torch.manual_seed(0)
    head = DiffusionHead(4, 8, 32, 2)
    assert head.net(torch.randn(5, 4), torch.randint(0, 1000, (5,)), torch.randn(5, 8)).abs().max() == 0
    for p in head.net.parameters():  # leave the zero init so guidance has something to mix
        p.data.add_(0.05 * torch.randn_like(p))
    cond, uncond = torch.randn(6, 8), torch.randn(6, 8)
    plain = head.sample(cond, generator=torch.Generator().manual_seed(3), steps=20)
    assert plain.shape == (6, 4)
    unguided = head.sample(cond, uncond, 1.0, generator=torch.Generator().manual_seed(3), steps=20)
    assert torch.allclose(unguided, plain, atol=1e-5)
    guided = head.sample(cond, uncond, 3.0, generator=torch.Generator().manual_seed(3), steps=20)
    assert not torch.allclose(guided, plain, atol=1e-3)
    assert torch.equal(guided, head.sample(cond, uncond, 3.0, generator=torch.Generator().manual_seed(3), steps=20))


MODES = torch.tensor([[[0.5, 0.5], [-0.5, -0.5]], [[0.5, -0.5], [-0.5, 0.5]]])  # class -> its two modes


def _draw(n: int, g: torch.Generator):
    cls, pick = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    return MODES[cls, pick] + 0.05 * torch.randn(n, 2, generator=g), torch.eye(2)[cls], cls


def _score(head: DiffusionHead, g: torch.Generator, n: int) -> tuple[float, float, float]:
    """Of n samples: the share within 0.15 of a mode of their own class, the share of samples
    closer to the other class's modes, and the share of the first mode among the hits."""
    _, cond, cls = _draw(n, g)
    samples = head.sample(cond, generator=g, steps=100, clip=2.0)
    own = (samples[:, None] - MODES[cls]).norm(dim=-1)
    other = (samples[:, None] - MODES[1 - cls]).norm(dim=-1).min(dim=1).values
    hit = own.min(dim=1).values < 0.15
    return hit.float().mean().item(), (other < own.min(dim=1).values).float().mean().item(), \
        (own.argmin(dim=1)[hit] == 0).float().mean().item()


def test_a_tiny_head_learns_a_two_dimensional_toy_distribution():
    """Two classes, each a mixture of two tight modes; sampled on Harmon's 100 respaced steps with the
    x0 estimate clipped to [-2, 2] (see the module note). Measured (seed 0, 300 steps): about 85% of
    samples land within 0.15 of one of their class's modes (0% before training), both modes filled."""
    torch.manual_seed(0)
    head = DiffusionHead(2, 2, 32, 2)
    g = torch.Generator().manual_seed(0)
    before, _, _ = _score(head, g, 100)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-3)
    for _ in range(300):
        x, cond, _ = _draw(256, g)
        head(x, cond, g, repeat=1).backward()
        optimizer.step()
        optimizer.zero_grad()
    hits, wrong_class, first_mode = _score(head, g, 500)
    print(f"toy 2-D: {hits:.1%} of samples within 0.15 of an own-class mode (before training {before:.1%}), "
          f"{wrong_class:.1%} closer to the other class, first-mode share {first_mode:.2f}")
    assert before < 0.05
    assert hits > 0.7 and wrong_class < 0.1 and 0.25 < first_mode < 0.75


def test_clipping_bounds_the_x0_estimate_only_when_asked(diffusion):
    x_t, t = torch.tensor([[3.0, -0.5]]), torch.tensor([999])
    out = torch.tensor([[0.0, 0.0, 0.2, -0.2]])  # eps_hat = 0: x0_hat = x_t / sqrt(alpha_bar), enormous
    x0_hat = x_t / diffusion.alphas_cumprod[999].sqrt().float()
    mean, _ = diffusion.p_mean_variance(out, x_t, t)
    assert torch.allclose(mean, diffusion.q_posterior(x0_hat, x_t, t)[0])
    clipped, _ = diffusion.p_mean_variance(out, x_t, t, clip=1.5)
    assert torch.allclose(clipped, diffusion.q_posterior(torch.tensor([[1.5, -1.5]]), x_t, t)[0])


import pytest
import torch

from hydra_umm import flow


def test_interpolation_target_and_clean_estimate_follow_the_convention():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow.interpolate(x0, x1, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[3], x1[3])  # t=0 noise, t=1 data
    assert torch.allclose(xt[1], 0.25 * x1[1] + 0.75 * x0[1])
    v = flow.velocity_target(x0, x1)
    assert torch.allclose(v, x1 - x0)
    # with the true velocity the clean estimate is exact at every t
    assert torch.allclose(flow.clean_estimate(xt, v, t), x1, atol=1e-6)


def test_t_sampling_ranges_and_logit_normal_moments():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t(200_000, "logit_normal", mean=0.5, std=0.8, generator=g)
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)
    u = flow.sample_t(100_000, "uniform", generator=g)
    assert u.mean().item() == pytest.approx(0.5, abs=0.01) and u.var().item() == pytest.approx(1 / 12, abs=2e-3)
    assert u.min() < 1e-3 and u.max() > 1 - 1e-3  # the whole of (0, 1)
    with pytest.raises(ValueError, match="unknown t sampling"):
        flow.sample_t(3, "beta")


def test_time_shift_matches_sd3_formula_on_noise_level():
    t = torch.linspace(0, 1, 11)
    s = 3.0
    sigma = 1 - t
    expected = 1 - s * sigma / (1 + (s - 1) * sigma)
    assert torch.allclose(flow.shift_time(t, s), expected, atol=1e-6)
    assert torch.allclose(flow.shift_time(t, 1.0), t)
    grid = flow.time_grid(10, shift=s)
    assert grid[0] == 0 and grid[-1] == 1 and torch.all(grid[1:] > grid[:-1])
    assert grid[1] < 0.1  # shift > 1 spends more steps near the noise end


def test_cfg_combine():
    vc, vu = torch.tensor([2.0]), torch.tensor([1.0])
    assert flow.cfg_combine(vc, vu, 1.0) == vc
    assert flow.cfg_combine(vc, vu, 0.0) == vu
    assert flow.cfg_combine(vc, vu, 3.0) == torch.tensor([4.0])


def test_samplers_transport_noise_to_data_with_exact_velocity():
    # For a straight path the conditional velocity x1 - x0 is constant: Euler is exact in 1 step.
    x0, x1 = torch.randn(2, 6), torch.randn(2, 6)
    out = flow.sample(lambda x, t: x1 - x0, x0, steps=1)
    assert torch.allclose(out, x1, atol=1e-6)
    # For a Gaussian data distribution N(m, s^2) the marginal velocity is analytic; Heun must be
    # far more accurate than Euler at the same number of steps.
    m, s = 2.0, 0.5

    def v(x, t):
        t = t[:, None]
        var = t**2 * s**2 + (1 - t) ** 2
        mean = t * m
        # E[x1 - x0 | x_t] for independent Gaussians
        ex1 = m + t * s**2 * (x - mean) / var
        ex0 = (1 - t) * (x - mean) / var
        return ex1 - ex0

    z = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    exact = m + s * z  # the flow map of this ODE is the affine map between the Gaussians
    err_euler = (flow.sample(v, z, 8, "euler") - exact).abs().mean()
    err_heun = (flow.sample(v, z, 8, "heun") - exact).abs().mean()
    assert err_heun < 0.2 * err_euler and err_heun < 1e-2
    calls = []
    flow.sample(lambda x, t: calls.append(t) or torch.zeros_like(x), z, 4, "heun", progress=lambda i, n: None)
    assert len(calls) == 8
    with pytest.raises(ValueError, match="unknown sampler"):
        flow.sample(v, z, 2, "rk4")


def test_sampling_from_a_later_start_spends_every_step_on_the_rest_of_the_path():
    x0, x1 = torch.randn(3, 5), torch.randn(3, 5)
    start = 0.4
    x_start = flow.interpolate(x0, x1, torch.full((3,), start))
    times = []

    def v(x, t):
        times.append(t[0].item())
        return x1 - x0  # the straight path's velocity: x_start + (1 - start) v = x1

    assert torch.allclose(flow.sample(v, x_start, 4, start=start), x1, atol=1e-6)
    assert times == pytest.approx([0.4, 0.55, 0.7, 0.85])
    shifted = flow.time_grid(4, 3.0, start=start)
    assert torch.allclose(shifted, start + (1 - start) * flow.time_grid(4, 3.0))  # the grid of [0, 1], mapped
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="starts at a time in \\[0, 1\\)"):
            flow.sample(v, x_start, 2, start=bad)

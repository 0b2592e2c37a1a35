"""The diffusion head of MAR / Harmon (DESIGN section 5): a small DDPM per token.

The head models each masked token x (c,) given its decoder condition z: a residual AdaLN MLP
eps_theta(x_t, t, z) predicts the noise and the interpolation v of the log-variance (learned-range
variance, Nichol & Dhariwal 2021) on a 1000-step cosine schedule. Training loss per token:

    L = mean_c (eps - eps_hat)^2 + L_vb,   L_vb = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) / ln 2
                                           (t > 0; at t = 0 the discretised Gaussian decoder NLL)

where L_vb sees the mean through a stop-gradient (it trains only the variance), t is uniform over the
steps and each token is repeated ``repeat`` times with different t. Sampling runs the ancestral
sampler on a respaced schedule (100 steps by default) with classifier-free guidance on the noise
prediction (shared noise for cond and uncond) and a temperature on the added noise.

Harmon's code samples without clipping the x0 estimate. Its first respaced step (t = 999, where
alpha_bar ~ 1e-8) multiplies the noise prediction's error by 1/sqrt(alpha) of the jump (~350 at 100
steps), which only a long-trained head keeps small; ``clip`` > 0 clamps the x0 estimate to
[-clip, clip] (guided-diffusion's ``clip_denoised`` with a bound for latents), which makes briefly
trained heads sample on respaced schedules. It is off (0) in the paper-scale preset.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from hydra_umm import flow
from hydra_umm.models.adaln import AdaLNFinalLayer, TimestepEmbedder, modulate

LN2 = math.log(2.0)


def cosine_betas(steps: int, max_beta: float = 0.999) -> Tensor:
    """beta_t of the cosine schedule: alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), s = t / T."""
    s = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def respaced_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of ``range(steps)``, first and last included (guided-diffusion):
    at least 2, since sampling starts from noise at the last step and ends at the first."""
    if not 2 <= count <= steps:
        raise ValueError(f"cannot respace {steps} diffusion steps to {count} (2 to {steps})")
    stride = (steps - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as (M, 1) in the dtype of ``like``."""
    return values.to(like.device)[t].to(like.dtype)[:, None]


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of a Gaussian integrated over the bin of width 2/255 around x (edge bins open), as the
    DDPM decoder term at t = 0."""
    normal = torch.distributions.Normal(mean, torch.exp(log_scale))
    cdf_plus, cdf_min = normal.cdf(x + 1 / 255), normal.cdf(x - 1 / 255)
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """A DDPM over the given betas. ``timesteps[i]`` is the original step that step i stands for
    (the network is always conditioned on original steps); a respaced copy comes from :meth:`respace`."""

    def __init__(self, betas: Tensor, timesteps: list[int] | None = None):
        self.betas = betas.double()
        self.num_steps = len(betas)
        self.timesteps = torch.tensor(timesteps if timesteps is not None else range(self.num_steps))
        alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = self.betas * (1 - prev) / (1 - self.alphas_cumprod)
        self.posterior_log_variance = torch.log(torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_coef_x0 = self.betas * prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_coef_xt = (1 - prev) * alphas.sqrt() / (1 - self.alphas_cumprod)

    def respace(self, count: int) -> "GaussianDiffusion":
        """The same process on ``count`` of its steps: betas recomputed from alpha_bar at those steps."""
        keep = respaced_steps(self.num_steps, count)
        alpha_bar = self.alphas_cumprod[keep]
        betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return GaussianDiffusion(betas, [int(self.timesteps[k]) for k in keep])

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        a = _gather(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x0)."""
        mean = _gather(self.posterior_coef_x0, t, x0) * x0 + _gather(self.posterior_coef_xt, t, x0) * x_t
        return mean, _gather(self.posterior_log_variance, t, x0).expand_as(x0)

    def p_mean_variance(self, out: Tensor, x_t: Tensor, t: Tensor, clip: float = 0.0) -> tuple[Tensor, Tensor]:
        """Network output (eps_hat, v) (M, 2c) -> mean and log-variance of p(x_{t-1} | x_t); ``clip`` > 0
        clamps the x0 estimate to [-clip, clip] first."""
        eps, v = out.chunk(2, dim=-1)
        frac = (v + 1) / 2
        log_var = frac * _gather(self.betas.log(), t, x_t) + (1 - frac) * _gather(self.posterior_log_variance, t, x_t)
        a = _gather(self.alphas_cumprod, t, x_t)
        x0_hat = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        if clip > 0:
            x0_hat = x0_hat.clamp(-clip, clip)
        mean, _ = self.q_posterior(x0_hat, x_t, t)
        return mean, log_var

    def training_losses(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Per-token loss (M,): MSE on eps + the variational bound through a stop-gradient on the mean."""
        eps = out.chunk(2, dim=-1)[0]
        mse = (noise - eps).pow(2).mean(dim=-1)
        mean, log_var = self.p_mean_variance(torch.cat([eps.detach(), out.chunk(2, dim=-1)[1]], dim=-1), x_t, t)
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean).pow(2) * torch.exp(-log_var))
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        vb = torch.where(t[:, None] == 0, nll, kl).mean(dim=-1) / LN2
        return mse + vb

    def sample(self, model: Callable[[Tensor, Tensor], Tensor], noise: Tensor, temperature: float = 1.0,
               clip: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling from ``noise`` (M, c); ``model(x_t, original_t)`` -> (M, 2c), t of shape (1,);
        ``clip``: see :meth:`p_mean_variance`."""
        x, timesteps = noise, self.timesteps.to(noise.device)
        for i in reversed(range(self.num_steps)):
            t = torch.full((1,), i, device=x.device, dtype=torch.long)  # one step for all tokens: (1,) broadcasts
            mean, log_var = self.p_mean_variance(model(x, timesteps[t]), x, t, clip)
            if i == 0:
                return mean
            z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = mean + torch.exp(0.5 * log_var) * z * temperature
        return x


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)), shift / scale / gate regressed from y, zero-initialised."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class MLPAdaLN(nn.Module):
    """MAR's SimpleMLPAdaLN: (x_t (M, c), t (M,) or (1,) original step, z (M, cond_dim)) -> (eps_hat, v) (M, 2c)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, num_steps: int):
        super().__init__()
        self.num_steps = num_steps
        self.time_embed = TimestepEmbedder(width)  # reads t / num_steps in [0, 1)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final = AdaLNFinalLayer(width, 2 * token_dim, width)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in self.time_embed.mlp[0], self.time_embed.mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [b.modulation[1] for b in self.blocks] + [self.final.modulation[1], self.final.proj]:
            nn.init.zeros_(layer.weight)  # the last layer and every modulation start at zero
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        y = (self.time_embed(t.float() / self.num_steps) + self.cond_embed(z))[:, None]  # (M, 1, width)
        h = self.input_proj(x)[:, None]  # each token a sequence of one, as the AdaLN layers expect
        for block in self.blocks:
            h = block(h, y)
        return self.final(h, y)[:, 0]


class DiffusionHead(nn.Module):
    """Per-token diffusion loss and sampler on the MLP above. How it trains (``repeat``) and samples
    (``steps``, ``clip``) is given per call, so a loaded model follows the run's settings."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, steps: int = 1000):
        super().__init__()
        self.token_dim = token_dim
        self.net = MLPAdaLN(token_dim, cond_dim, width, depth, steps)
        self.train_diffusion = GaussianDiffusion(cosine_betas(steps))
        self._respaced: dict[int, GaussianDiffusion] = {}

    def forward(self, target: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                repeat: int = 4) -> Tensor:
        """Mean loss over tokens ``target`` (M, c) with conditions ``cond`` (M, cond_dim), each token
        repeated ``repeat`` times with its own t and noise."""
        x0, z = target.repeat(repeat, 1), cond.repeat(repeat, 1)
        t = torch.randint(0, self.train_diffusion.num_steps, (len(x0),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.train_diffusion.q_sample(x0, t, noise)
        return self.train_diffusion.training_losses(self.net(x_t, t, z), x0, x_t, t, noise).mean()

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None = None, cfg_scale: float = 1.0, temperature: float = 1.0,
               generator: torch.Generator | None = None, steps: int = 100, clip: float = 0.0) -> Tensor:
        """Tokens (M, c) for conditions ``cond`` (M, cond_dim) on ``steps`` respaced steps; with ``uncond``
        the noise prediction is guided, eps = eps_u + s (eps_c - eps_u), for one shared noise; the
        variance is the conditional one. ``clip``: see :meth:`GaussianDiffusion.p_mean_variance`."""
        noise = torch.randn(len(cond), self.token_dim, device=cond.device, dtype=cond.dtype, generator=generator)

        def model(x: Tensor, t: Tensor) -> Tensor:
            if uncond is None:
                return self.net(x, t, cond)
            out_c, out_u = self.net(torch.cat([x, x]), t, torch.cat([cond, uncond])).chunk(2)
            (eps_c, v), eps_u = out_c.chunk(2, dim=-1), out_u.chunk(2, dim=-1)[0]
            return torch.cat([flow.cfg_combine(eps_c, eps_u, cfg_scale), v], dim=-1)

        if steps not in self._respaced:
            self._respaced[steps] = self.train_diffusion.respace(steps)
        return self._respaced[steps].sample(model, noise, temperature, clip, generator)

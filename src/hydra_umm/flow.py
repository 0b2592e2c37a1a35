"""Flow matching, the one convention shared by the pixel decoder, the vision head and every sampler.

t in [0, 1]; t = 0 is noise, t = 1 is data (DESIGN section 2):

    x_t = t * x1 + (1 - t) * x0,   x0 ~ N(0, I)
    v   = x1 - x0                                  (velocity target)
    x1_hat = x_t + (1 - t) * v_hat                 (clean estimate)

Training draws t from a logit-normal (or uniform) distribution; sampling integrates dx/dt = v
from t = 0 (or from a noised latent at a later time) to t = 1 with Euler or Heun steps on an
optionally shifted time grid; classifier-free guidance combines v = v_u + s (v_c - v_u).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from hydra_umm.config import SAMPLERS, T_SAMPLINGS

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t of shape (B,)) -> v_hat


def _expand(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """x_t = t x1 + (1 - t) x0 for t of shape (B,)."""
    t = _expand(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    return x1 - x0


def clean_estimate(x_t: Tensor, v_hat: Tensor, t: Tensor) -> Tensor:
    """x1_hat = x_t + (1 - t) v_hat."""
    return x_t + (1 - _expand(t, x_t)) * v_hat


def sample_t(
    n: int,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Training times in (0, 1): ``logit_normal`` is sigmoid(N(mean, std)), ``uniform`` is U(0, 1)."""
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"unknown t sampling {kind!r}; use one of {', '.join(T_SAMPLINGS)}")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Time shift in this convention: the noise level 1 - t is mapped as s(1-t) / (1 + (s-1)(1-t)),
    i.e. t' = t / (t + s (1 - t)). s = 1 is the identity; s > 1 keeps more steps near the noise."""
    return t / (t + shift * (1 - t))


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str | None = None, start: float = 0.0) -> Tensor:
    """steps + 1 increasing times from ``start`` to 1 (the shifted grid of [0, 1] mapped onto [start, 1])."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = shift_time(torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=torch.float64), shift)
    return (start + (1 - start) * grid).float()


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: v = v_u + s (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


def sample(
    velocity: VelocityFn,
    x0: Tensor,
    steps: int,
    method: str = "euler",
    shift: float = 1.0,
    progress: Optional[Callable[[int, int], None]] = None,
    start: float = 0.0,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = ``start`` (x0: noise at 0, a noised latent x_start
    later, as SDEdit starts) to t = 1 (data), in ``steps`` steps.

    ``euler``: one velocity call per step. ``heun``: Heun's second-order predictor-corrector
    (explicit trapezoid rule, two velocity calls per step). ``progress(i, steps)`` is called
    after every step.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; use one of {', '.join(SAMPLERS)}")
    if steps < 1 or not shift > 0:
        raise ValueError(f"the flow needs steps >= 1 and a time shift > 0, got steps {steps}, shift {shift}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"the flow starts at a time in [0, 1), got {start}")
    ts = time_grid(steps, shift, device=x0.device, start=start)
    x = x0
    batch = x0.shape[0]
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        dt = (t_next - t).to(x.dtype)
        v = velocity(x, t.expand(batch))
        if method == "euler":
            x = x + dt * v
        else:
            x_pred = x + dt * v
            v_next = velocity(x_pred, t_next.expand(batch))
            x = x + dt * 0.5 * (v + v_next)
        if progress is not None:
            progress(i + 1, steps)
    return x

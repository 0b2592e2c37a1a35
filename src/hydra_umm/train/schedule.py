"""Optimisation schedule: per-component AdamW param groups, linear warm-up then cosine decay."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from hydra_umm.train.config import LearningRates, TrainConfig


class WarmupCosine:
    """lr factor at optimiser step s (0-based): (s + 1) / warmup during warm-up, then a cosine
    from 1 down to ``min_ratio`` at step ``total``, and ``min_ratio`` after it. A callable object
    rather than a closure so that LambdaLR's state_dict records it."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        if not 0 <= warmup <= total or total < 1:
            raise ValueError(f"need 0 <= warmup <= total and total >= 1, got warmup={warmup}, total={total}")
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0) -> LambdaLR:
    """The schedule as a LambdaLR; every param group scales its own peak lr by the same factor."""
    return LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))


Component = Union[nn.Module, Iterable[nn.Parameter]]


def param_groups(
    components: Mapping[str, Component], lrs: LearningRates, weight_decay: float, model: nn.Module | None = None
) -> list[dict]:
    """One AdamW group per component (a module or its parameters; named after it, with its own lr)
    plus a ``<name>.no_decay`` group for its biases and norm weights (parameters with fewer than 2
    dims). Frozen parameters are left out. With ``model``, every trainable parameter of it must
    belong to a component."""
    owner: dict[int, str] = {}
    groups = []
    for name, component in components.items():
        decay, no_decay = [], []
        for p in component.parameters() if isinstance(component, nn.Module) else component:
            if not p.requires_grad:
                continue
            if id(p) in owner:
                raise ValueError(f"a parameter belongs to both components {owner[id(p)]!r} and {name!r}")
            owner[id(p)] = name
            (decay if p.ndim >= 2 else no_decay).append(p)
        lr = lrs.of(name)
        groups += [g for g in (
            {"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay},
            {"name": f"{name}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
        ) if g["params"]]
    if not groups:
        raise ValueError(f"no trainable parameters in components {list(components)}")
    if model is not None:
        orphans = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
        if orphans:
            raise ValueError(f"trainable parameters in no component (freeze them or name a component): {orphans[:5]}")
    return groups


def build_optimizer(
    components: Mapping[str, Component], cfg: TrainConfig, model: nn.Module | None = None
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW over :func:`param_groups` and its :func:`warmup_cosine` schedule for ``cfg.steps``."""
    optimizer = torch.optim.AdamW(
        param_groups(components, cfg.lr, cfg.weight_decay, model), betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    return optimizer, warmup_cosine(optimizer, cfg.warmup, cfg.steps, cfg.min_lr_ratio)

"""Training settings shared by every recipe (tokenizer stages 1-2, HYDRA stages I-III).

Plain dataclasses in the style of :mod:`hydra_umm.config`, so that they load from YAML and take
``train.lr.llm=1e-5`` overrides through the same code. :class:`ConfigError` and :func:`require` live
here, below :mod:`hydra_umm.config` (which re-exports them), so that ``TrainConfig.check`` raises it too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Union


class ConfigError(ValueError):
    """A configuration key or value that does not fit the schema."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("<key> must be <allowed>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


@dataclass
class LearningRates:
    """Peak learning rate of each trainable component (AdamW param group); ``None`` = ``default``.
    A recipe maps its modules to these names; a component whose parameters are frozen is absent."""

    default: float = 1e-4
    encoder: Union[float, None] = None  # HYDRA-TOK Gen-ViT + GSB + Sem-ViT (tokenizer stage 1)
    decoder: Union[float, None] = None  # pixel decoder
    discriminator: Union[float, None] = None  # stage-2 GAN
    sem_vit: Union[float, None] = None  # HYDRA: Sem-ViT
    projector: Union[float, None] = None
    vision_head: Union[float, None] = None
    llm: Union[float, None] = None

    def of(self, component: str) -> float:
        """The learning rate of ``component`` (a field name other than ``default``)."""
        names = [k for k in asdict(self) if k != "default"]
        if component not in names:
            raise ValueError(f"no learning rate for component {component!r}; components: {', '.join(names)}")
        value = getattr(self, component)
        return self.default if value is None else value

    def check(self) -> None:
        """Raise a ConfigError naming the first learning rate that is set but not finite and > 0."""
        for name, value in asdict(self).items():
            if value is not None:
                require(0 < value < math.inf, f"train.lr.{name}", value, "a finite number > 0")


@dataclass
class TrainConfig:
    """One training run: optimisation, schedule, data, logging, checkpoints and scale options."""

    out_dir: str = "runs/default"  # the run folder: config.yaml, train.log, tensorboard/, checkpoints/
    steps: int = 1000  # optimiser steps in the whole run
    batch_size: int = 8  # per rank
    lr: LearningRates = field(default_factory=LearningRates)
    warmup: int = 100  # linear warm-up steps, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05  # not applied to biases and norm weights (1-D parameters)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # instruction : caption : t2i; HYDRA-X: text : caption : t2i : video caption : video instruction :
    # instruction : edit [: video t2i]; None = the stage's own (hydra_umm.train.recipes.stage_ratios)
    ratios: Union[list[float], None] = None
    clip_frames: int = 17  # frames of a training clip (1 + 4k; longer clips are cut, shorter skipped)
    mixture_block: int = 1000  # samples (batches with task_per_batch) per block of exact ratios (data.mixture)
    task_per_batch: bool = False  # every batch of one task (Harmon's code), not a task drawn per sample
    log_every: int = 10
    val_every: int = 200  # 0 disables validation
    ckpt_every: int = 500  # 0: only the final checkpoint
    keep_last: int = 3
    resume: str = "auto"  # "auto" (latest checkpoint in out_dir, if any) | "never" | a checkpoint path
    max_bad_steps: int = 10  # stop after this many non-finite losses in a row
    bf16: bool = True  # bf16 autocast where CUDA is used; ignored on CPU
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False
    num_workers: int = 2  # DataLoader workers per rank
    latent_stats_images: int = 1024  # tokenizer stage 2: training images for the latent mean/std

    def check(self) -> None:
        """Raise a ConfigError naming the first setting that cannot work."""
        positive = ["steps", "batch_size", "log_every", "keep_last", "max_bad_steps", "mixture_block",
                    "latent_stats_images"]
        for name in positive:
            require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), ">= 1")
        for name in ["warmup", "val_every", "ckpt_every", "num_workers", "grad_clip", "weight_decay"]:
            require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), ">= 0")  # NaN is not
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas", self.betas,
                "two numbers in [0, 1)")
        require(self.ratios is None or (len(self.ratios) in (3, 7, 8) and min(self.ratios) >= 0
                                        and sum(self.ratios) > 0),
                "train.ratios", self.ratios, "3 numbers (HYDRA-X: 7 or 8) >= 0, not all 0")
        require(self.clip_frames >= 1 and (self.clip_frames - 1) % 4 == 0, "train.clip_frames", self.clip_frames,
                "1 + 4k")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        require(self.warmup <= self.steps, "train.warmup", self.warmup, f"<= train.steps = {self.steps}")
        require(bool(self.out_dir), "train.out_dir", self.out_dir, "a folder (not empty)")
        require(bool(self.resume), "train.resume", self.resume, '"auto", "never" or a checkpoint path')
        self.lr.check()

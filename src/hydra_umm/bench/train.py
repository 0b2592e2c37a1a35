"""Training-step throughput through the project's own :class:`~hydra_umm.train.engine.Trainer`
(forward, backward, gradient clipping, AdamW step), each beside the forward pass alone on the same
batch in the same run:

- a HYDRA-TOK stage-1 step (Gen-ViT, GSB, Sem-ViT, teacher, pixel decoder; images and patch tokens);
- a HYDRA stage-II step on a mixed text-to-image / understanding batch (samples and sequence tokens).

Each also gives the model FLOP rate it achieves (analytic FLOPs of :mod:`hydra_umm.bench.flops`
over the step time), whose ratio to a device peak is the MFU. The tokenizer step leaves LPIPS out
(lambda_lpips = 0): without local VGG16 weights it is a random network, and its FLOPs are not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from hydra_umm.bench import FLOP_RATE, Figure, flops, timeit
from hydra_umm.bench.umm import mixed_batch, random_model
from hydra_umm.config import TokenizerConfig, load_config
from hydra_umm.models.hydra import HydraBatch, HydraModel
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.llm import IGNORE
from hydra_umm.train.config import LearningRates, TrainConfig
from hydra_umm.train.distributed import DistEnv
from hydra_umm.train.engine import Trainer
from hydra_umm.train.recipes import TokenizerObjective
from hydra_umm.train.schedule import build_optimizer


@dataclass
class StepTiming:
    step: float  # seconds per training step
    forward: float  # seconds per forward pass alone, without gradient


def trainer(
    model: nn.Module, components: Mapping[str, Any], device: torch.device = torch.device("cpu"),
    bf16: bool = False, compile: bool = False,
) -> Trainer:
    """A Trainer for timing ``train_step`` alone (it reads no data stream and writes nothing)."""
    cfg = TrainConfig(steps=10**6, warmup=0, bf16=bf16, compile=compile, lr=LearningRates(default=1e-5))
    optimizer, scheduler = build_optimizer(components, cfg, model)
    return Trainer(model, optimizer, scheduler, data=None, cfg=cfg, env=DistEnv(device=device))


def time_step(
    run: Trainer, batch: Any, iters: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> StepTiming:
    """Median seconds of ``run.train_step(batch)`` and of the same forward without gradient
    (the Trainer's autocast and compiled model alike); ``sync`` waits for the device."""
    bf16 = run.env.device.type == "cuda" and run.cfg.bf16

    def step() -> None:
        run.train_step(batch)
        sync()

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            run.forward(batch)
        sync()

    run.model.train()
    return StepTiming(timeit(step, iters, warmup), timeit(forward, iters, warmup))


def step_figures(label: str, timing: StepTiming, samples: int, tokens: int, step_flops: int) -> list[Figure]:
    """samples/s and tokens/s of the step against the forward alone, and the achieved FLOP rate."""
    reference = "forward alone, same batch, no gradient"
    return [
        Figure(f"{label}: samples/s", samples / timing.step, "samples/s", reference, samples / timing.forward),
        Figure(f"{label}: tokens/s", tokens / timing.step, "tokens/s", reference, tokens / timing.forward),
        Figure(f"{label}: model FLOP rate", step_flops / timing.step / 1e9, FLOP_RATE),
    ]


# ---------------------------------------------------------------------------------- the models


def tokenizer_stage1(cfg: TokenizerConfig) -> tuple[TokenizerObjective, dict[str, nn.Module]]:
    """HYDRA-TOK's stage-1 objective and its trained components, as the tokenizer recipe sets them."""
    tok = HydraTok(cfg).requires_grad_(False)
    components = {"encoder": nn.ModuleList([tok.vit, tok.bottleneck]), "decoder": tok.decoder}
    for module in components.values():
        module.requires_grad_(True)
    return TokenizerObjective(tok, stage=1), components


def hydra_costs(model: HydraModel, batch: HydraBatch, stage: str = "II") -> dict[str, flops.Cost]:
    """The analytic per-component FLOPs of a HYDRA training step on ``batch``."""
    lay = batch.layout
    sequences, length = lay.input_ids.shape
    targets = int((lay.labels[:, 1:] != IGNORE).sum())
    images, generated = len(batch.noised), int(batch.noised.sum())
    vocab = model.llm.get_output_embeddings().out_features
    return flops.hydra_step(model.cfg, sequences, length, images, generated, targets, stage, vocab)


def tokenizer_figures(batch_size: int = 8, iters: int = 3) -> list[Figure]:
    cfg = load_config("tiny", ["tokenizer.lambda_lpips=0"]).tokenizer
    torch.manual_seed(0)
    objective, components = tokenizer_stage1(cfg)
    images = torch.rand(batch_size, 3, cfg.image_size, cfg.image_size) * 2 - 1
    timing = time_step(trainer(objective, components), {"image": images}, iters, warmup=1)
    tokens = batch_size * (cfg.image_size // cfg.patch_size) ** 2
    step_flops = flops.total(flops.tokenizer_step(cfg, batch_size))
    return step_figures(f"train tiny: HYDRA-TOK stage-1 step B={batch_size} (no LPIPS)", timing, batch_size, tokens,
                        step_flops)


def hydra_figures(batch_size: int = 4, iters: int = 3) -> list[Figure]:
    model = random_model(load_config("tiny"))
    model.set_stage("II")
    batch = mixed_batch(model, batch_size)
    components = {k: v for k, v in model.param_groups().items() if v}
    timing = time_step(trainer(model, components), batch, iters, warmup=1)
    B, L = batch.layout.input_ids.shape
    step_flops = flops.total(hydra_costs(model, batch))
    return step_figures(f"train tiny: HYDRA stage-II step B={B} L={L}", timing, B, B * L, step_flops)


def run(include_paper: bool = True) -> list[Figure]:
    # tiny only: paper-scale training steps are the GPU suite's (hydra_umm.bench.gpu)
    return tokenizer_figures() + hydra_figures()

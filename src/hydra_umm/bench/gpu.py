"""The paper preset on one CUDA GPU: random weights of the paper's shapes (InternViT-300M-sized
HYDRA-TOK, Qwen2.5-1.5B-sized LLM, 448 px), run with ``hydra-umm bench --gpu``:

- training: a HYDRA stage-II step in bf16 through the Trainer, the LLM's decoder layers and the
  model sharded with FSDP2 in a process group of this one GPU, SDPA attention, for activation
  checkpointing on/off x torch.compile on/off: tokens/s, the model FLOP rate (MFU against the
  device's peak) and peak memory;
- text-to-image: 50 ODE steps with CFG, batch 1 and 16, seconds per image (latents and pixel
  decoding) with the prompt's KV cache against recomputing the whole sequence at every step;
- understanding: prefill and decode tokens/s with the KV cache.

Without CUDA it refuses (:class:`CudaUnavailable`). ``--no-paper`` runs the same on the tiny preset.
Every measurement takes a Config, a device and bf16 on/off, so the tests run them on the CPU.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import time
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from timm.models.vision_transformer import Block

from hydra_umm.bench import Figure, flops, timeit
from hydra_umm.bench.train import hydra_costs, step_figures, time_step, trainer
from hydra_umm.bench.umm import LONG_PROMPT, QUESTION, mixed_batch, random_model
from hydra_umm.config import Config, load_config
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.llm import qwen2_config
from hydra_umm.train.distributed import checkpoint_activations, shard

PRESET = "paper-1.5b"
TRAIN_BATCH = 8  # samples per step: half text-to-image, half understanding
T2I_STEPS = 50
T2I_BATCHES = (1, 16)
ANSWER_BATCH, ANSWER_TOKENS = 8, 64


class CudaUnavailable(RuntimeError):
    """The GPU suite was asked for on a machine where torch sees no CUDA device."""


def require_cuda() -> torch.device:
    """The current CUDA device, or a CudaUnavailable naming what to run instead."""
    if not torch.cuda.is_available():
        raise CudaUnavailable(
            "the GPU benchmark (hydra-umm bench --gpu) needs a CUDA device, and torch sees none "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run `hydra-umm bench` for the CPU suite"
        )
    return torch.device("cuda", torch.cuda.current_device())


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (timings of asynchronous CUDA calls need it)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def single_process_group(device: torch.device) -> Iterator[None]:
    """A process group of this process alone (FSDP2 needs one); an existing group is used as is."""
    if dist.is_initialized():
        yield
        return
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if cuda else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_model(cfg: Config, device: torch.device) -> HydraModel:
    """A random HydraModel of ``cfg``'s shapes, the LM keeping its configured vocabulary, built on ``device``."""
    with device:
        return random_model(cfg, qwen2_config(cfg.llm))


def _switch(on: bool) -> str:
    return "on" if on else "off"


# ------------------------------------------------------------------------------------ training


def train_step_figures(
    cfg: Config, device: torch.device, batch_size: int, checkpointing: bool, compile: bool, bf16: bool,
    iters: int = 3, warmup: int = 2,
) -> list[Figure]:
    """A HYDRA stage-II training step sharded with FSDP2 (needs a process group, see
    :func:`single_process_group`): samples/s and tokens/s against the forward alone, the model
    FLOP rate, and on CUDA the peak memory."""
    model = build_model(cfg, device)
    model.set_stage("II")
    batch = mixed_batch(model, batch_size)
    step_flops = flops.total(hydra_costs(model, batch))
    if checkpointing:
        checkpoint_activations(model, (Block, type(model.llm.model.layers[0])))
    shard(model, list(model.llm.model.layers), bf16=bf16)
    components = {k: v for k, v in model.param_groups().items() if v}  # after sharding, which replaces them
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = trainer(model, components, device, bf16=bf16, compile=compile)
    timing = time_step(run, batch, iters, warmup, synchronizer(device))
    B, L = batch.layout.input_ids.shape
    switches = f"bf16 {_switch(bf16)} ckpt {_switch(checkpointing)} compile {_switch(compile)}"
    label = f"gpu {cfg.name}: HYDRA step B={B} L={L} {switches}"
    figures = step_figures(label, timing, B, B * L, step_flops)
    if device.type == "cuda":
        figures.append(Figure(f"{label}: peak memory", torch.cuda.max_memory_allocated(device) / 2**30, "GiB"))
    return figures


# ------------------------------------------------------------------------------------ inference


def t2i_figures(
    pipe: HydraPipeline, batch_size: int, steps: int, bf16: bool, iters: int = 2, warmup: int = 1
) -> list[Figure]:
    """Seconds per image of text-to-image (CFG, ``steps`` ODE steps, pixel decoding included) with
    the prompt's KV cache, against recomputing the whole sequence at every step."""
    device, sync = pipe.device, synchronizer(pipe.device)
    prompts = [LONG_PROMPT] * batch_size

    def generate(use_cache: bool) -> None:
        with _autocast(device, bf16):
            pipe.generate(prompts, steps=steps, seed=0, use_cache=use_cache)
        sync()

    cached = timeit(lambda: generate(True), iters, warmup)
    full = timeit(lambda: generate(False), iters, warmup)
    model, cfg = pipe.model, pipe.model.cfg
    prefix = model.layout([model.generation_prefix(LONG_PROMPT)]).input_ids.shape[1]
    name = (f"gpu {cfg.name}: T2I {cfg.tokenizer.image_size}px {steps} steps+CFG B={batch_size} "
            f"{prefix}-pos prefix, cached")
    return [Figure(name, cached / batch_size, "s/image", "full sequence recomputed every step", full / batch_size)]


def understanding_figures(pipe: HydraPipeline, batch_size: int, max_new_tokens: int, bf16: bool) -> list[Figure]:
    """Prefill (image encoding and the prompt, up to the first token) and KV-cached decode tokens/s
    of greedy answering, timed at each token the pipeline emits (after a warm-up answer)."""
    model, device, sync = pipe.model, pipe.device, synchronizer(pipe.device)
    side = model.cfg.tokenizer.image_size
    images = list(torch.rand(batch_size, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    questions = [QUESTION] * batch_size
    marks: list[float] = []

    def on_token(_: torch.Tensor) -> None:
        sync()
        marks.append(time.perf_counter())

    def answer() -> float:
        marks.clear()
        start = time.perf_counter()
        with _autocast(device, bf16):
            pipe.answer_ids(images, questions, max_new_tokens, temperature=0.0, on_token=on_token)
        return start

    answer()  # warm-up
    start = answer()
    prompt_len = model.layout([model.understanding_segments(QUESTION)]).input_ids.shape[1]
    label = f"gpu {model.cfg.name}: understanding B={batch_size}"
    figures = [Figure(f"{label}, {prompt_len}-pos prefill", batch_size * prompt_len / (marks[0] - start),
                      "tokens/s")]
    if len(marks) > 1:  # every row ended at once otherwise: nothing was decoded with the cache
        decoded = len(marks) - 1
        figures.append(Figure(f"{label}, decode (KV cache)", batch_size * decoded / (marks[-1] - marks[0]), "tokens/s"))
    return figures


# ---------------------------------------------------------------------------------------- suite


def _attempt(what: str, device: torch.device, measure: Callable[..., list[Figure]], *args: Any) -> list[Figure]:
    """``measure(*args)``, the figures of one configuration; a failure (out of memory, a compile
    error) is reported and leaves that configuration's figures out rather than ending the suite.
    The configuration's memory and compiled graphs are released afterwards."""
    try:
        return measure(*args)
    except Exception as e:  # noqa: BLE001 -- reported, and the figures stay absent
        print(f"bench --gpu: {what} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    finally:
        torch._dynamo.reset()
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def run(include_paper: bool = True) -> list[Figure]:
    device = require_cuda()
    cfg = load_config(PRESET if include_paper else "tiny")
    figures: list[Figure] = []
    with single_process_group(device):
        for checkpointing, compile in itertools.product((False, True), (False, True)):
            what = f"training step (ckpt {_switch(checkpointing)}, compile {_switch(compile)})"
            figures += _attempt(what, device, train_step_figures, cfg, device, TRAIN_BATCH, checkpointing, compile,
                                True)
    pipe = HydraPipeline(build_model(cfg, device))
    for batch_size in T2I_BATCHES:
        figures += _attempt(f"text-to-image B={batch_size}", device, t2i_figures, pipe, batch_size, T2I_STEPS, True)
    figures += _attempt("understanding", device, understanding_figures, pipe, ANSWER_BATCH, ANSWER_TOKENS, True)
    return figures

"""Many processes (DESIGN section 7): torchrun environment, DDP, FSDP2, activation checkpointing.

One process without torchrun is world size 1 and needs no process group. Under torchrun
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` set) the group uses NCCL
when CUDA is available and gloo otherwise. Models never see any of this: the recipes wrap them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, its rank on this node, the process count, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(use_cuda: bool | None = None) -> DistEnv:
    """Join the torchrun process group if there is one (idempotent) and pick this rank's device.
    ``use_cuda=None`` uses CUDA when available."""
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch sees no CUDA device")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistEnv(rank, local_rank, world_size, device)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """DDP for the tokenizer (every rank holds the whole model); the model itself at world size 1.
    ``find_unused_parameters``: some steps leave trainable parameters out of the graph (HYDRA-XTok's
    Decompressors on image batches)."""
    if env.world_size == 1:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def shard(model: nn.Module, submodules: Iterable[nn.Module], bf16: bool = False) -> nn.Module:
    """FSDP2 for the LLM side: ``fully_shard`` each of ``submodules`` (e.g. the decoder layers),
    then the root, so that parameters are gathered one block at a time. With ``bf16`` the blocks
    compute in bf16 and gradients are reduced in fp32. Needs an initialised process group."""
    if not dist.is_initialized():
        raise RuntimeError("shard() needs a process group: run under torchrun and call init_distributed() first")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for module in submodules:
        fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def checkpoint_activations(model: nn.Module, block_types: tuple[type[nn.Module], ...]) -> nn.Module:
    """Recompute the activations of every block of the given types in the backward pass instead
    of storing them (in place; state-dict keys are unchanged)."""
    if not any(isinstance(m, block_types) for m in model.modules()):
        raise ValueError(f"no module of types {[t.__name__ for t in block_types]} in {type(model).__name__}")
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, block_types))
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimiser state dicts on the CPU, keyed by parameter names, the same for
    a plain, DDP-wrapped or FSDP2-sharded model (a collective: every rank must call it; with a
    process group only rank 0 receives the tensors)."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state(model: nn.Module) -> dict:
    """The unsharded model state dict on the CPU (a collective under FSDP2: every rank calls it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load what :func:`full_state` returned into a plain, DDP or FSDP2 model (every rank calls it
    with the same full state)."""
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def all_mean(value: float, env: DistEnv) -> float:
    """The mean of a number over ranks (for logging)."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size

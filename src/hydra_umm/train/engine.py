"""The training loop every recipe shares: a model-agnostic :class:`Trainer`.

The model's ``forward(batch)`` returns a dict with a scalar ``"loss"`` (other scalar entries are
logged too). The Trainer owns the run folder::

    <out_dir>/config.yaml     the run's configuration
    <out_dir>/train.log       the log (rank 0)
    <out_dir>/tensorboard/    TensorBoard scalars: train/*, val/*, lr/<group>, grad_norm, bad_steps,
                              time/train_seconds (wall time in train steps, data included, across resumes)
    <out_dir>/checkpoints/    step_<step>.pt, the last ``keep_last`` (hydra_umm.train.checkpoint)
    <out_dir>/.lock           held while a run trains: a second run into the folder is refused

A step: forward (bf16 autocast on CUDA when asked), and if the loss is finite on every rank,
backward, gradient clipping, optimiser step. A non-finite loss (or gradient norm) skips the
update and is counted; ``max_bad_steps`` of them in a row stop the run with
:class:`NonFiniteLossError`. The scheduler and the data advance on every step, skipped or not.
Ctrl-C stops a single-process run after the step under way, with a checkpoint
(:class:`TrainingInterrupted`); a second Ctrl-C interrupts at once.
A checkpoint holds model, optimiser, scheduler, data position, step, bad-step counters, each
rank's RNG states and the run's settings, so a resumed run continues exactly where the stopped one
was; a resume asked for other settings (other than where and how the run goes: reuse.PLACE_KEYS
and HOW_KEYS) is refused with them named.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from hydra_umm.train.checkpoint import (checkpoint_dir, checkpoints, latest, load_checkpoint, rng_state,
                                        save_checkpoint, set_aside_later, set_rng_state)
from hydra_umm.train.config import TrainConfig
from hydra_umm.train.distributed import DistEnv, all_mean, full_state, load_full_state
from hydra_umm.train.errors import DataExhaustedError, NonFiniteLossError, TrainingError, TrainingInterrupted
from hydra_umm.train.reuse import HOW_KEYS, PLACE_KEYS, refuse_changes

log = logging.getLogger(__name__)


class DataStream(Protocol):
    """An endless batch iterator whose position can be saved and restored
    (:class:`hydra_umm.data.mixture.BatchStream`)."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


Validate = Callable[[nn.Module, int], Mapping[str, float]]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts, lists and tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Runs ``cfg.steps`` optimiser steps of ``model`` on ``data``; see the module docstring.

    ``model`` (already on ``env.device``) may be plain, DDP-wrapped or FSDP2-sharded
    (hydra_umm.train.distributed); every rank builds its own Trainer. Of ``cfg`` the Trainer reads
    steps, out_dir, grad_clip, bf16, compile, log/val/ckpt_every, keep_last, resume, max_bad_steps;
    the recipe uses the rest to build the model, optimiser (build_optimizer) and data. ``validate(model, step)`` runs every ``cfg.val_every`` steps on every
    rank, in eval mode without gradients, and returns scalars to log. ``run_config`` is written to
    config.yaml (default: the TrainConfig alone).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        data: DataStream,
        cfg: TrainConfig,
        env: DistEnv = DistEnv(),
        validate: Validate | None = None,
        run_config: Mapping | None = None,
    ):
        cfg.check()
        self.model, self.optimizer, self.scheduler, self.data = model, optimizer, scheduler, data
        self.cfg, self.env, self.validate = cfg, env, validate
        self.run_config = dict(run_config) if run_config is not None else {"train": asdict(cfg)}
        self.out_dir = Path(cfg.out_dir)
        self.forward = torch.compile(model) if cfg.compile else model
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.group_names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
        self.step = 0
        self.bad_steps = 0  # non-finite steps in the whole run
        self.bad_in_row = 0
        self.train_seconds = 0.0  # wall time spent in train steps (next batch included), checkpointed

    # ------------------------------------------------------------------------------ one step

    def train_step(self, batch: Any) -> dict[str, float]:
        """One step; returns its scalars (``loss``, the model's other scalars and ``grad_norm``), or
        nothing for a skipped step. Raises NonFiniteLossError after ``max_bad_steps`` bad steps in a row."""
        with self._autocast():
            out = self.forward(to_device(batch, self.env.device))
        if not isinstance(out, Mapping) or not isinstance(out.get("loss"), torch.Tensor) or out["loss"].dim() != 0:
            raise TypeError(f"the model's forward must return a dict with a scalar tensor 'loss', got {out!r:.200}")
        loss = out["loss"]
        grad_norm = math.nan
        if self._finite_everywhere(loss.detach()):
            loss.backward()
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        metrics = {}
        if math.isfinite(grad_norm):  # the loss on every rank and the (all-reduced) gradients are finite
            self.optimizer.step()
            self.bad_in_row = 0
            metrics = {k: float(v.detach()) for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
            metrics.update({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})
            metrics["grad_norm"] = grad_norm
        else:
            self.bad_steps += 1
            self.bad_in_row += 1
            what = f"loss={loss.item()}" if not torch.isfinite(loss) else "non-finite loss on another rank or gradients"
            log.warning("step %d skipped: %s (%d in a row, %d in the run)", self.step + 1, what, self.bad_in_row,
                        self.bad_steps)
            if self.bad_in_row >= self.cfg.max_bad_steps:
                raise NonFiniteLossError(
                    f"stopping at step {self.step + 1}: {self.bad_in_row} non-finite losses or gradients in a row "
                    f"(train.max_bad_steps={self.cfg.max_bad_steps}); lower the learning rate, check the data, "
                    f"or resume from an earlier checkpoint"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return metrics

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks must skip together under DDP/FSDP)."""
        finite = torch.isfinite(loss).all().to(torch.int32).reshape(1)
        if self.env.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    # ---------------------------------------------------------------------------- checkpoints

    def save(self) -> None:
        """Checkpoint the current step (a collective: every rank calls it; rank 0 writes)."""
        model_state, optim_state = full_state(self.model, self.optimizer)
        rngs = [None] * self.env.world_size
        if self.env.world_size > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if self.env.is_main:
            state = {
                "step": self.step,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "data": self.data.state_dict(),
                "rng": rngs,
                "bad_steps": self.bad_steps,
                "bad_in_row": self.bad_in_row,
                "train_seconds": self.train_seconds,
                "config": self.run_config,
            }
            path = save_checkpoint(state, self.out_dir, self.step, self.cfg.keep_last)
            log.info("saved checkpoint %s", path)
        if self.env.world_size > 1:
            dist.barrier()

    def resume(self) -> None:
        """Load the checkpoint that ``cfg.resume`` names ("auto": the latest of the run, if any)."""
        if self.cfg.resume == "never":
            if checkpoints(self.out_dir):
                raise FileExistsError(
                    f"{self.out_dir} already holds checkpoints and train.resume=never; "
                    "choose another train.out_dir or resume=auto"
                )
            return
        path = latest(self.out_dir) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            log.info("no checkpoint in %s: starting at step 0", self.out_dir)
            return
        state = load_checkpoint(path)
        saved = _schedule(state["scheduler"], state["optimizer"])
        ours = _schedule(self.scheduler.state_dict(), self.optimizer.state_dict())
        if saved != ours:  # loading would silently keep the checkpoint's schedule and optimiser settings
            raise ValueError(f"{path} was written under another learning-rate schedule or optimiser settings ({saved}) "
                             f"than this run asks for ({ours}): resume with the run's train.steps, warmup, lr, "
                             "weight_decay and betas, or start a new run from its saved model (init=...)")
        if "config" in state:  # the run's settings, saved in its checkpoints; where and how it runs may change
            refuse_changes(path, state["config"], self.run_config, "was written by a run with other settings",
                           "resume with the run's own settings, or start a new run from its saved model (init=...)",
                           ignore=PLACE_KEYS | HOW_KEYS)
        load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.step, self.bad_steps, self.bad_in_row = state["step"], state["bad_steps"], state["bad_in_row"]
        self.train_seconds = state.get("train_seconds", 0.0)
        if len(state["rng"]) == self.env.world_size:
            set_rng_state(state["rng"][self.env.rank])
        else:
            log.warning("checkpoint was written by %d processes, this run has %d: RNG states not restored",
                        len(state["rng"]), self.env.world_size)
        log.info("resumed from %s at step %d", path, self.step)
        if self.env.is_main and (moved := set_aside_later(self.out_dir, self.step)):
            log.warning("%d later checkpoints of this run moved to %s: the run continues from step %d",
                        len(moved), moved[0].parent, self.step)

    # ------------------------------------------------------------------------------- the run

    def fit(self, until: int | None = None) -> dict[str, float]:
        """Resume if asked, then train up to ``cfg.steps`` (or stop early at step ``until``, with a
        checkpoint, as a job that runs out of time would). Returns the last logged scalars."""
        main = self.env.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        with _only_run_in(self.out_dir if main else None), _log_to(self.out_dir / "train.log" if main else None), \
                _interrupt_after_step(self.env) as interrupted:
            self.resume()  # first: a refused resume leaves the run's config.yaml as it was
            if main:
                (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            stop = self.cfg.steps if until is None else min(until, self.cfg.steps)
            writer = SummaryWriter(self.out_dir / "tensorboard") if main else None
            bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not main, dynamic_ncols=True, desc="train")
            window: dict[str, list[float]] = defaultdict(list)
            last: dict[str, float] = {}
            saved_at = self.step
            try:
                self.model.train()
                while self.step < stop and not interrupted:
                    lrs = self.scheduler.get_last_lr()  # the rates this step uses
                    try:
                        batch = next(self.data)
                    except StopIteration:  # a finite stream (shards) ran out: keep what was trained
                        if saved_at != self.step:
                            self.save()
                        raise DataExhaustedError(f"the training data ran out after {self.step} of {self.cfg.steps} "
                                                 f"steps{self._saved_in()}: add data or lower train.steps, then "
                                                 "resume") from None
                    started = time.perf_counter()
                    metrics = self.train_step(batch)
                    self.train_seconds += time.perf_counter() - started
                    self.step += 1
                    bar.update(1)
                    for k, v in metrics.items():
                        window[k].append(v)
                    if self.step % self.cfg.log_every == 0 or self.step == stop:
                        last = {k: all_mean(sum(v) / len(v), self.env) for k, v in window.items() if v}
                        window.clear()
                        self._log(writer, bar, last, lrs)
                    if self.validate is not None and self.cfg.val_every and self.step % self.cfg.val_every == 0:
                        self._validate(writer)
                    if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                        self.save()
                        saved_at = self.step
                if saved_at != self.step:
                    self.save()
                if interrupted:
                    raise TrainingInterrupted(f"interrupted after step {self.step} of {self.cfg.steps}"
                                              f"{self._saved_in()}: run the same command to resume")
            finally:
                bar.close()
                if writer is not None:
                    writer.close()
        return {**last, "step": self.step, "bad_steps": self.bad_steps}

    def _saved_in(self) -> str:
        """Where the run's last step is saved, for a message (nothing when no step was trained)."""
        return f" (checkpoint saved in {checkpoint_dir(self.out_dir)})" if self.step else ""

    def _log(self, writer: SummaryWriter | None, bar: tqdm, metrics: dict[str, float], lrs: list[float]) -> None:
        if writer is None:
            return
        for k, v in metrics.items():
            writer.add_scalar(k if k == "grad_norm" else f"train/{k}", v, self.step)
        for name, lr in zip(self.group_names, lrs):
            writer.add_scalar(f"lr/{name}", lr, self.step)
        writer.add_scalar("bad_steps", self.bad_steps, self.step)
        writer.add_scalar("time/train_seconds", self.train_seconds, self.step)
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "grad_norm")}
        bar.set_postfix(shown)
        log.info("step %d/%d %s lr %s", self.step, self.cfg.steps,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), f"{max(lrs):.3g}")

    def _autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA when ``bf16`` (for the training step and validation alike: sharded
        bf16 weights meet fp32 inputs otherwise)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.env.device.type == "cuda" and self.cfg.bf16)

    def _validate(self, writer: SummaryWriter | None) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = dict(self.validate(self.model, self.step))
        self.model.train()
        log.info("validation at step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, self.step)


def _schedule(scheduler: Mapping[str, Any], optimizer: Mapping[str, Any]) -> str:
    """A run's schedule and optimiser settings in words: the lr factor's settings (WarmupCosine's) and
    each parameter group's peak rate, weight decay and betas."""
    factor = (scheduler.get("lr_lambdas") or [None])[0] or {}
    groups = [f"{g.get('name', i)}: peak lr {g.get('initial_lr', g['lr']):g}, weight decay {g.get('weight_decay', 0):g}"
              + (f", betas {tuple(g['betas'])}" if "betas" in g else "")
              for i, g in enumerate(optimizer["param_groups"])]
    return "; ".join([", ".join(f"{k} {v}" for k, v in factor.items()), *groups])


@contextlib.contextmanager
def _only_run_in(folder: Path | None) -> Iterator[None]:
    """Hold ``folder``'s lock (``.lock``, an flock the system drops with the process) for a run:
    a second run started into the same folder meanwhile is refused, not interleaved with it."""
    if folder is None:
        yield
        return
    with (folder / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"another process is training in {folder}: wait for it to end, or choose another "
                                "train.out_dir") from None
        yield


@contextlib.contextmanager
def _interrupt_after_step(env: DistEnv) -> Iterator[list[bool]]:
    """In a single-process run, the first Ctrl-C (SIGINT) is noted in the yielded list, so that the
    run stops after the step under way and saves it; a second one interrupts at once."""
    interrupted: list[bool] = []
    if env.world_size > 1 or threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def note(signum, frame) -> None:
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, note)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _log_to(path: Path | None) -> Iterator[None]:
    """Send the package's log records (INFO and up) to ``path`` for the duration of a run."""
    if path is None:
        yield
        return
    logger = logging.getLogger("hydra_umm")
    level = logger.level
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(level)

"""Checkpoints of a run: ``<run>/checkpoints/step_<step>.pt``, written atomically.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over its final name with ``os.replace`` (atomic on POSIX and Windows), so a process killed at any
moment leaves either the previous checkpoints or the new one complete, never a half-written
``step_*.pt``; ``latest`` only ever sees complete files. The state holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Union

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
_TEMP_SUFFIX = ".tmp"


def checkpoint_dir(run_dir: Union[str, Path]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(run_dir: Union[str, Path]) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def set_aside_later(run_dir: Union[str, Path], step: int) -> list[Path]:
    """Move the run's checkpoints of steps after ``step`` (a run resumed from an earlier one leaves them
    behind) into ``checkpoints/abandoned_after_<step>/``, where neither :func:`latest` nor the
    ``keep_last`` pruning of the continued run sees them. Returns their new paths."""
    later = [p for p in checkpoints(run_dir) if int(_NAME.match(p.name).group(1)) > step]
    if not later:
        return []
    aside = checkpoint_dir(run_dir) / f"abandoned_after_{step:08d}"
    aside.mkdir(exist_ok=True)
    moved = [aside / p.name for p in later]
    for old, new in zip(later, moved):
        os.replace(old, new)
    return moved


def save_checkpoint(state: dict, run_dir: Union[str, Path], step: int, keep_last: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then keep only the newest
    ``keep_last`` checkpoints and remove temporary files that killed writers left behind."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}.pt"
    temp = folder / f".{final.name}.{os.getpid()}{_TEMP_SUFFIX}"
    for stale in folder.glob(f".step_*{_TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    try:
        with open(temp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(folder)
    for old in checkpoints(run_dir)[:-keep_last]:
        old.unlink()
    return final


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, or not a checkpoint at all (torch.load fails in many ways)
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}): resume from another one "
                         "with train.resume=<path>, or move it aside") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict:
    """The Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    """``random.setstate`` wants nested tuples; a loaded state may hold lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

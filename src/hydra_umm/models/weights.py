"""Weight files read into models with errors that name the file: one that does not read (truncated,
not a weights file at all) and weights that do not fit the model (another size or kind) are each a
one-line ValueError instead of a deserialiser's traceback or pages of ``size mismatch for ...``."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn


def in_brief(error: Exception) -> str:
    """A loader's exception in one line: its type and the first line of its message."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no detail'}"


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a PyTorch checkpoint (``torch.load``, weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
    try:
        return load_file(str(path)) if kind == "safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each reader fails its own way (SafetensorError, UnpicklingError, zip errors, ...)
        raise ValueError(f"{path} is not a readable {kind} weights file ({in_brief(e)})") from None


def fit_weights(module: nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``, after checking that ``state`` (from ``source``) holds exactly
    the module's tensors in their shapes; a ValueError names the first that do not."""
    own = module.state_dict()
    problems = [f"{len(keys)} {what}, e.g. {', '.join(keys[:2])}" for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("of other shapes", [f"{k} {tuple(state[k].shape)} for {tuple(own[k].shape)}"
                             for k in own if k in state and state[k].shape != own[k].shape]),
    ) if keys]
    if problems:
        raise ValueError(f"the weights in {source} do not fit this {type(module).__name__} (another size or kind of "
                         f"model?): {'; '.join(problems)}")
    module.load_state_dict(state)

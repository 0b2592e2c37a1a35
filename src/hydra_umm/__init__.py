"""hydra-umm: the HYDRA family of unified multimodal models in PyTorch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so that `hydra-umm shapes ...` does not load transformers.
_EXPORTS = {
    "Config": "hydra_umm.config",
    "load_config": "hydra_umm.config",
    "HydraTok": "hydra_umm.models.hydra_tok",
    "HydraXTok": "hydra_umm.models.hydra_xtok",
    "HydraModel": "hydra_umm.models.hydra",
    "HydraPipeline": "hydra_umm.inference",
    "HarmonModel": "hydra_umm.models.harmon",
    "HarmonPipeline": "hydra_umm.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hydra_umm' has no attribute {name!r}")

"""Inference: the user-facing HYDRA pipeline (text-to-image, understanding, reconstruction)."""

from hydra_umm.inference.pipeline import HydraPipeline

__all__ = ["HydraPipeline"]

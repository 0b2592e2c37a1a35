"""Inference: the user-facing pipelines (text-to-image, understanding, reconstruction)."""

from hydra_umm.inference.pipeline import HydraPipeline, TokenizerPipeline, load_pipeline

__all__ = ["HydraPipeline", "TokenizerPipeline", "load_pipeline"]

"""Inference: the user-facing pipelines (text-to-image, understanding, reconstruction)."""

from hydra_umm.inference.pipeline import GenerationOptions, HydraPipeline, TokenizerPipeline, load_pipeline
from hydra_umm.inference.harmon_pipeline import HarmonPipeline  # after pipeline: it subclasses HydraPipeline

__all__ = ["GenerationOptions", "HarmonPipeline", "HydraPipeline", "TokenizerPipeline", "load_pipeline"]

"""Harmon (DESIGN section 5): KL autoencoder, MAR encoder/decoder, diffusion head and the unified model."""

from hydra_umm.models.harmon.diffusion_head import DiffusionHead, GaussianDiffusion
from hydra_umm.models.harmon.harmon import HarmonBatch, HarmonModel
from hydra_umm.models.harmon.mar import MARDecoder, MAREncoder, mask_schedule
from hydra_umm.models.harmon.vae import AutoencoderKL

__all__ = ["AutoencoderKL", "DiffusionHead", "GaussianDiffusion", "HarmonBatch", "HarmonModel", "MARDecoder",
           "MAREncoder", "mask_schedule"]

"""Training losses shared by the tokenizers: perceptual (LPIPS), adversarial (hinge), distillation (cosine)."""

from hydra_umm.losses.adversarial import hinge_d_loss, hinge_g_loss
from hydra_umm.losses.distillation import cosine_distance, distillation_loss

__all__ = ["cosine_distance", "distillation_loss", "hinge_d_loss", "hinge_g_loss"]

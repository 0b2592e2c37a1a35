"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with a VGG16 trunk and no download.

The calibrated linear heads ship inside the ``lpips`` package. The VGG16 trunk is built randomly
(``pnet_rand=True``, so torchvision fetches nothing) and then, when a path is given, loaded from a
local torchvision ``vgg16`` state dict (``features.<i>.weight`` / ``.bias``; .pth or .safetensors).
Without weights the trunk stays random: usable in tests, meaningless as a perceptual metric. Its
draw is seeded apart from the global RNG (which it leaves alone), so that the same network is built
whenever it is first used, e.g. in a resumed run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
from torch import Tensor, nn

from hydra_umm.models.weights import read_weights

RANDOM_TRUNK_SEED = 0


def load_vgg16_features(path: str | Path) -> dict[str, Tensor]:
    """The ``features.*`` tensors of a torchvision vgg16 state dict saved at ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"VGG16 weights for LPIPS not found: {path}")
    return {k: v for k, v in read_weights(path).items() if k.startswith("features.")}


class PerceptualLoss(nn.Module):
    """LPIPS-VGG distance between two [-1, 1] image batches, averaged over the batch. Frozen."""

    def __init__(self, vgg_weights: str | Path = ""):
        super().__init__()
        features = load_vgg16_features(vgg_weights) if vgg_weights else None
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=False`
            torch.manual_seed(RANDOM_TRUNK_SEED)
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if features is not None:
            self._load_trunk(features, str(vgg_weights))
        else:
            warnings.warn("LPIPS uses a randomly initialised VGG16: set tokenizer.lpips_weights", stacklevel=2)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _load_trunk(self, features: dict[str, Tensor], source: str) -> None:
        # lpips keeps torchvision's layer indices as module names inside its five slices
        for i in range(1, 6):
            for index, layer in getattr(self.lpips.net, f"slice{i}").named_children():
                if not isinstance(layer, nn.Conv2d):
                    continue
                for name in ("weight", "bias"):
                    key, param = f"features.{index}.{name}", getattr(layer, name)
                    if key not in features or features[key].shape != param.shape:
                        raise KeyError(f"{source} is not a torchvision vgg16 state dict: bad or missing {key}")
                    param.copy_(features[key])

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # a fixed metric: dropout in the linear heads stays off

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lpips(x, y).mean()

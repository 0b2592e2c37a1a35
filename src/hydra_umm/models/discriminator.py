"""PatchGAN discriminator (Isola et al. 2017, as in taming-transformers) for stage-2 decoder refinement.

A stack of stride-2 4x4 convolutions on a [-1, 1] image, then two stride-1 ones: each output logit
judges one overlapping patch of the input. GroupNorm replaces BatchNorm so the statistics do not
depend on the batch or on how many processes share it.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    def __init__(self, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, num_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), _norm(out), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> patch logits (B, 1, H', W'); for 64 px and 3 layers H' = 6."""
        return self.net(images)

"""AdaLN-Zero blocks start as the identity; the pixel flow decoder reads its time, its patches'
positions and the latent (its parameters drawn at random, since at initialisation it predicts 0)."""

import torch

from hydra_umm.models.adaln import AdaLNZeroBlock
from hydra_umm.models.pixel_decoder import PixelFlowDecoder, patchify


def test_an_adaln_zero_block_starts_as_the_identity():
    torch.manual_seed(0)
    block = AdaLNZeroBlock(32, 4, 16)
    x = torch.randn(2, 5, 32)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    torch.nn.init.normal_(block.modulation[1].weight, std=0.1)  # once conditioned, it is not
    assert not torch.allclose(block(x, torch.randn(2, 16)), x)


def randomised_decoder() -> PixelFlowDecoder:
    torch.manual_seed(0)
    decoder = PixelFlowDecoder((4, 4), 8, 8, 192, 1, 4)
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return decoder.eval()


def test_the_pixel_decoder_depends_on_its_time_its_positions_and_the_latent():
    decoder = randomised_decoder()
    x_t, z = torch.randn(1, 3, 32, 32), torch.randn(1, 16, 8)
    with torch.no_grad():
        v = decoder(x_t, torch.tensor([0.1]), z)
        assert not torch.allclose(v, decoder(x_t, torch.tensor([0.9]), z), atol=1e-4)
        assert not torch.allclose(v, decoder(x_t, torch.tensor([0.1]), torch.randn(1, 16, 8)), atol=1e-4)
        # with nothing to tell the patches apart, only their positions do
        patches = patchify(decoder(torch.zeros(1, 3, 32, 32), torch.tensor([0.5]), torch.zeros(1, 16, 8)), 8)[0]
    assert not torch.allclose(patches[0], patches[5], atol=1e-4)

"""MAR encoder/decoder and masking: masked values never reach the encoder, orders and the sampling
schedule are deterministic under a seed and reveal every token exactly once, the training mask ratio
follows MAR's truncated Gaussian."""

import math

import pytest
import torch
from scipy import stats

from hydra_umm.models.harmon.mar import (
    MARDecoder,
    MAREncoder,
    mask_by_order,
    mask_schedule,
    random_orders,
    training_mask_ratio,
)

N, S, C, W = 16, 4, 8, 32


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return MAREncoder(C, N, S, W, depth=2, heads=4).eval()


def test_the_encoder_never_sees_a_masked_tokens_value(encoder):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, N, C, generator=g, requires_grad=True)
    mask = mask_by_order(10, random_orders(3, N, g))
    out = encoder(x, mask)
    assert out.shape == (3, S + N - 10, W)
    changed = torch.where(mask[..., None], 1e3 * torch.randn(3, N, C, generator=g), x)
    assert torch.equal(encoder(changed, mask), out)
    out.square().sum().backward()
    assert x.grad[mask].abs().max() == 0 and x.grad[~mask].abs().max() > 0
    # a visible token's value does reach it
    moved = x.detach().clone()
    moved[~mask] += 1.0
    assert not torch.allclose(encoder(moved, mask), out)


def test_rows_must_mask_the_same_number_of_tokens(encoder):
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, :3] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        encoder(torch.randn(2, N, C), mask)
    with pytest.raises(ValueError, match=r"mask must be \(B, 16\)"):
        encoder(torch.randn(2, N, C), torch.zeros(2, N + 1, dtype=torch.bool))


def test_the_decoder_puts_features_in_the_visible_slots_and_mask_tokens_elsewhere(encoder):
    torch.manual_seed(1)
    decoder = MARDecoder(W, N, S, W, depth=1, heads=4).eval()
    x = torch.randn(2, N, C)
    mask = mask_by_order(N, random_orders(2, N))  # everything masked: only buffers go in
    features = encoder(x, mask)
    assert features.shape == (2, S, W)
    cond = decoder(features, mask)
    assert cond.shape == (2, N, W)
    # with every token masked the decoder's input is the same for any latent values
    assert torch.equal(decoder(encoder(torch.randn(2, N, C), mask), mask), cond)
    with pytest.raises(ValueError, match="expected 4 features"):
        decoder(encoder(x, mask_by_order(3, random_orders(2, N))), mask)


def test_orders_are_permutations_and_deterministic_under_a_seed():
    a = random_orders(4, N, torch.Generator().manual_seed(7))
    b = random_orders(4, N, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(a.sort(dim=1).values, torch.arange(N).expand(4, N))
    assert not torch.equal(a, random_orders(4, N, torch.Generator().manual_seed(8)))
    mask = mask_by_order(5, a)
    assert mask.sum(dim=1).tolist() == [5] * 4
    assert all(mask[r, a[r, :5]].all() for r in range(4))


@pytest.mark.parametrize("tokens,steps", [(16, 64), (16, 4), (64, 64), (256, 64), (5, 1), (1, 3)])
def test_the_schedule_reveals_every_token_exactly_once_in_k_steps(tokens, steps):
    schedule = mask_schedule(tokens, steps)
    assert schedule == mask_schedule(tokens, steps) and len(schedule) == steps and schedule[-1] == 0
    assert all(a >= b for a, b in zip([tokens] + schedule, schedule))  # never re-masks
    orders = random_orders(2, tokens, torch.Generator().manual_seed(0))
    mask, revealed = torch.ones(2, tokens, dtype=torch.bool), torch.zeros(2, tokens, dtype=torch.long)
    for masked in schedule:
        nxt = mask_by_order(masked, orders)
        assert not (nxt & ~mask).any()
        revealed += (mask & ~nxt).long()
        mask = nxt
    assert revealed.eq(1).all()


def test_the_schedule_is_cosine():
    # masked after step k: floor(N cos(pi/2 (k+1)/K)), kept within [1, previous - 1] before the last step
    schedule = mask_schedule(256, 64)
    assert schedule[31] == math.floor(256 * math.cos(math.pi / 4)) == 181
    assert schedule[47] == math.floor(256 * math.cos(3 * math.pi / 8)) == 97
    assert schedule[:3] == [255, 254, 253]  # the cosine barely moves at first: one token a step at least
    assert schedule[-2] == math.floor(256 * math.cos(math.pi / 2 * 63 / 64)) == 6
    assert min(a - b for a, b in zip([256] + schedule, schedule)) >= 1  # no empty step when K < N


def test_training_mask_ratio_is_mars_truncated_gaussian():
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([training_mask_ratio(0.7, 0.25, g) for _ in range(4000)])
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    reference = stats.truncnorm((0.7 - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
    assert abs(float(ratios.mean()) - reference.mean()) < 0.005
    assert abs(float(ratios.std()) - reference.std()) < 0.005
    with pytest.raises(ValueError, match="mask_ratio_min"):
        training_mask_ratio(1.5)

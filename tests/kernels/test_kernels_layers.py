"""PoNetLayer / AttentionBlock on the CPU reference path: shapes, padding invariance, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from kernels.layers import AttentionBlock, PoNetLayer


@pytest.mark.parametrize("make", [lambda: PoNetLayer(32, 4), lambda: AttentionBlock(32, 4, causal=True)])
def test_padded_tokens_do_not_change_valid_outputs(kdata, make):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(3, 11, 32, generator=kdata.gen)
    mask = kdata.mask(3, 11, kdata.gen)
    y = layer(x, mask=mask)
    x2 = torch.where(mask[..., None], x, torch.randn(3, 11, 32, generator=kdata.gen) * 100)
    y2 = layer(x2, mask=mask)
    assert y.shape == x.shape
    torch.testing.assert_close(y[mask], y2[mask])
    y[mask].square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_ponet_layer_segments_change_the_output(kdata):
    torch.manual_seed(0)
    layer = PoNetLayer(16, 2, ffn_mult=0)
    x = torch.randn(1, 8, 16, generator=kdata.gen)
    seg = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    assert not torch.allclose(layer(x), layer(x, segment_ids=seg))


def test_layer_errors():
    with pytest.raises(ValueError, match="dim must be a positive multiple of heads"):
        PoNetLayer(30, 4)
    with pytest.raises(ValueError, match=r"expected tokens of shape \(B, N, 32\)"):
        AttentionBlock(32, 4)(torch.zeros(2, 5, 16))

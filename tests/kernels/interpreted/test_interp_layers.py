"""The layers through the interpreted kernels equal the layers through the torch references."""

from __future__ import annotations

import torch


def test_layers_match_reference_forward_and_backward(ik, kdata, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 13, 32, generator=kdata.gen)
    mask = kdata.mask(2, 13, kdata.gen)
    seg = kdata.segments(2, 13, 3, kdata.gen)
    ponet = ik.layers.PoNetLayer(32, 2, ffn_mult=0)
    block = ik.layers.AttentionBlock(32, 2, ffn_mult=0)

    def run():
        for p in list(ponet.parameters()) + list(block.parameters()):
            p.grad = None
        y = block(ponet(x, mask=mask, segment_ids=seg), mask=mask, prefix_len=4)
        y[mask].sum().backward()
        return y.detach(), [p.grad.clone() for p in list(ponet.parameters()) + list(block.parameters())]

    y, grads = run()
    assert ik.dispatch.LAUNCHES["_mix"] >= 1 and ik.dispatch.LAUNCHES["_attn_fwd"] >= 1
    monkeypatch.setattr(ik.layers, "ponet_mixing", ik.ponet.ponet_mixing_ref)
    monkeypatch.setattr(ik.layers, "attention", ik.attention.attention_ref)
    y_ref, grads_ref = run()
    torch.testing.assert_close(y[mask], y_ref[mask], rtol=1e-4, atol=1e-5)
    for g, w in zip(grads, grads_ref):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)

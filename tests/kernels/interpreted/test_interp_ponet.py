"""PoNet Triton kernels (interpreter) vs the torch reference: forward, poolings, backward, ties, padding."""

from __future__ import annotations

import pytest
import torch

TOL = {  # outputs are rounded to the input dtype; compared in fp32
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def make_inputs(kdata, B, H, N, Dh, dtype, n_segments=4):
    return kdata.ponet_inputs(B, H, N, Dh, dtype, kdata.gen, n_segments)


SHAPES = [  # (B, H, N, Dh, window): odd N, N spanning two 64-token tiles, a fully padded row
    (3, 2, 37, 8, 1),
    (2, 1, 70, 16, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_forward_matches_reference(ik, kdata, dtype, shape):
    B, H, N, Dh, window = shape
    q, k, o, s, l, seg, mask = make_inputs(kdata, B, H, N, Dh, dtype)
    out = ik.ponet.ponet_mixing(q, k, o, s, l, segment_ids=seg, mask=mask, window=window)
    assert ik.dispatch.LAUNCHES["_mix"] == 1 and ik.dispatch.LAUNCHES["_segmax_scan"] == 1
    assert out.dtype == dtype and out.shape == (B, N, H * Dh)
    ref = ik.ponet.ponet_mixing_ref(q, k, o, s, l, seg, mask, window)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    assert torch.all(out[~mask] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_poolings_match_reference(ik, kdata, dtype):
    q, k, _, s, l, seg, mask = make_inputs(kdata, 3, 2, 37, 8, dtype)
    torch.testing.assert_close(ik.ponet.segment_max_pool(s, seg, mask),
                               ik.ponet.segment_max_pool_ref(s, seg, mask), rtol=0, atol=0)
    torch.testing.assert_close(ik.ponet.local_max_pool(l, mask, 2),
                               ik.ponet.local_max_pool_ref(l, mask, 2), rtol=0, atol=0)
    torch.testing.assert_close(ik.ponet.global_aggregate(q, k, mask).float(),
                               ik.ponet.global_aggregate_ref(q, k, mask).float(), **TOL[dtype])
    assert ik.dispatch.LAUNCHES["_global_fwd"] == 1 and ik.dispatch.LAUNCHES["_mix"] == 2


def _grads(fn, inputs, dy):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, dy)


@pytest.mark.parametrize("dtype,shape", [(torch.float32, SHAPES[0]), (torch.float32, SHAPES[1]),
                                         (torch.bfloat16, SHAPES[0])])
def test_triton_backward_matches_reference(ik, kdata, dtype, shape):
    B, H, N, Dh, window = shape
    q, k, o, s, l, seg, mask = make_inputs(kdata, B, H, N, Dh, dtype)
    dy = torch.randn(B, N, H * Dh, generator=kdata.gen).to(dtype)
    got = _grads(lambda *x: ik.ponet.ponet_mixing(*x, seg, mask, window), (q, k, o, s, l), dy)
    assert ik.dispatch.LAUNCHES["_mix_bwd"] == 1 and ik.dispatch.LAUNCHES["_global_bwd"] == 1
    want = _grads(lambda *x: ik.ponet.ponet_mixing_ref(*x, seg, mask, window), (q, k, o, s, l), dy)
    for name, g, w in zip("qkosl", got, want):
        scale = max(w.float().abs().max().item(), 1.0)
        tol = TOL[dtype]
        torch.testing.assert_close(g.float(), w.float(), rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


def test_max_pool_ties_send_gradient_to_lowest_index(ik):
    # One head, Dh = 1: s = [1, 3, 3, 2] in one segment, l = [5, 5, 0, 0] with window 1.
    s = torch.tensor([[[1.0], [3.0], [3.0], [2.0]]])
    l = torch.tensor([[[5.0], [5.0], [0.0], [0.0]]])
    q = k = torch.zeros(1, 1, 4, 1)
    o = torch.ones(1, 1, 4, 1)
    dy = torch.tensor([[[1.0], [10.0], [100.0], [1000.0]]])
    for fn in (ik.ponet.ponet_mixing, ik.ponet.ponet_mixing_ref):
        _, _, _, ds, dl = _grads(lambda *x, fn=fn: fn(*x, None, None, 1), (q, k, o, s, l), dy)
        torch.testing.assert_close(ds.flatten(), torch.tensor([0.0, 1111.0, 0.0, 0.0]))
        # windows: i=0 {0,1} -> 0, i=1 {0,1,2} -> 0, i=2 {1,2,3} -> 1 (5), i=3 {2,3} -> 2 (tie 0,0)
        torch.testing.assert_close(dl.flatten(), torch.tensor([11.0, 100.0, 1000.0, 0.0]))


def test_fully_padded_batch_gives_zeros_and_finite_grads(ik, kdata):
    q, k, o, s, l, seg, _ = make_inputs(kdata, 1, 2, 5, 4, torch.float32)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    dy = torch.ones(1, 5, 8)
    grads = _grads(lambda *x: ik.ponet.ponet_mixing(*x, seg, mask, 1), (q, k, o, s, l), dy)
    assert torch.all(ik.ponet.ponet_mixing(q, k, o, s, l, seg, mask) == 0)
    assert all(torch.all(g == 0) for g in grads)


def test_global_aggregation_rescales_across_key_blocks(ik, kdata):
    """Scores large enough, and growing along the sequence, that the running maximum of the online softmax moves
    from one 64-token block to the next: the accumulated numerator must be rescaled each time."""
    B, H, N, Dh = 2, 2, 150, 16
    q = torch.randn(B, H, N, Dh, generator=kdata.gen) + 2.0  # mean query far from 0: large scores
    k = torch.randn(B, H, N, Dh, generator=kdata.gen) * torch.linspace(0.5, 3.0, N)[None, None, :, None]
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, ::7] = False
    got = ik.ponet.global_aggregate(q, k, mask)
    assert ik.dispatch.LAUNCHES["_global_fwd"] == 1
    torch.testing.assert_close(got, ik.ponet.global_aggregate_ref(q, k, mask), **TOL[torch.float32])

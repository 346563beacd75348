"""PoNet reference vs a plain numpy loop, gradcheck, dispatch without the interpreter, input errors.

The Triton kernels are tested against this reference in ``interpreted/test_interp_ponet.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernels import ponet as plain_ponet


def ponet_numpy(q, k, o, s, l, seg, mask, window):
    """Token-by-token float64 loop straight from the issue's definition."""
    q, k, o, s, l = (t.double().numpy() for t in (q, k, o, s, l))
    seg, mask = seg.numpy(), mask.numpy()
    B, H, N, Dh = q.shape
    out = np.zeros((B, N, H * Dh))
    for b in range(B):
        valid = [j for j in range(N) if mask[b, j]]
        if not valid:
            continue
        gp = np.zeros((H, Dh))
        for h in range(H):
            g = q[b, h, valid].mean(0)
            sc = np.array([g @ k[b, h, j] for j in valid]) / math.sqrt(Dh)
            a = np.exp(sc - sc.max())
            a /= a.sum()
            gp[h] = sum(a_j * k[b, h, j] for a_j, j in zip(a, valid))
        for i in valid:
            same = [j for j in valid if seg[b, j] == seg[b, i]]
            near = [j for j in valid if abs(i - j) <= window]
            o_i = o[b, :, i].reshape(-1)  # heads merged: channel c = h * Dh + d
            out[b, i] = (gp.reshape(-1) + s[b, same].max(0)) * o_i + l[b, near].max(0)
    return torch.from_numpy(out)


def make_inputs(kdata, B, H, N, Dh, dtype, n_segments=4):
    return kdata.ponet_inputs(B, H, N, Dh, dtype, kdata.gen, n_segments)


@pytest.mark.parametrize("window", [0, 1, 3])
def test_reference_matches_numpy_loop(kdata, window):
    q, k, o, s, l, seg, mask = make_inputs(kdata, 3, 2, 13, 3, torch.float64)
    ref = plain_ponet.ponet_mixing_ref(q, k, o, s, l, seg, mask, window)
    torch.testing.assert_close(ref, ponet_numpy(q, k, o, s, l, seg, mask, window), rtol=1e-10, atol=1e-10)
    assert torch.all(ref[~mask] == 0)


def test_reference_poolings_match_numpy(kdata):
    q, k, _, s, l, seg, mask = make_inputs(kdata, 2, 2, 11, 4, torch.float64)
    zeros_o = torch.zeros_like(q)
    # With o = 0 the mixing reduces to the local max pool; with o = 1, k = 0 to segment max (+ l).
    local = ponet_numpy(q, k, zeros_o, s, l, seg, mask, 2)
    torch.testing.assert_close(plain_ponet.local_max_pool_ref(l, mask, 2), local)
    seg_plus_local = ponet_numpy(q, torch.zeros_like(k), torch.ones_like(q), s, l, seg, mask, 2)
    torch.testing.assert_close(plain_ponet.segment_max_pool_ref(s, seg, mask), seg_plus_local - local)
    gp = plain_ponet.global_aggregate_ref(q, k, mask)
    mean_q = (q * mask[:, None, :, None]).sum(2) / mask.sum(1)[:, None, None]
    a = torch.softmax((mean_q[:, :, None, :] * k).sum(-1).masked_fill(~mask[:, None], -math.inf) / 2.0, -1)
    torch.testing.assert_close(gp, (a[..., None] * k).sum(2))


def test_reference_gradcheck_float64(kdata):
    q, k, o, s, l, seg, mask = make_inputs(kdata, 2, 2, 7, 3, torch.float64, n_segments=3)
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, o, s, l))
    assert torch.autograd.gradcheck(
        lambda *x: plain_ponet.ponet_mixing_ref(*x, seg, mask, 1), inputs, eps=1e-6, atol=1e-5
    )


def test_float64_and_plain_cpu_take_the_reference(kdata):
    q, k, o, s, l, seg, mask = make_inputs(kdata, 2, 2, 9, 4, torch.float32)
    before = sum(plain_ponet._dispatch.LAUNCHES.values())
    out = plain_ponet.ponet_mixing(q, k, o, s, l, seg, mask)
    assert sum(plain_ponet._dispatch.LAUNCHES.values()) == before
    torch.testing.assert_close(out, plain_ponet.ponet_mixing_ref(q, k, o, s, l, seg, mask))


def _base(dtype=torch.float32):
    q = torch.zeros(2, 2, 5, 4, dtype=dtype)
    s = torch.zeros(2, 5, 8, dtype=dtype)
    return q, q.clone(), q.clone(), s, s.clone()


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(k=torch.zeros(2, 2, 6, 4)), "k must have the shape of q"),
    (lambda a: a.update(s=torch.zeros(2, 5, 9)), r"s must have shape \(2, 5, 8\)"),
    (lambda a: a.update(l=torch.zeros(2, 5, 8, dtype=torch.float16)), "share one dtype"),
    (lambda a: a.update(q=torch.zeros(2, 5, 4, dtype=torch.float32)), "q must have 4 dimensions"),
    (lambda a: a.update(q=torch.zeros(2, 2, 5, 4, dtype=torch.int32)), "q has dtype torch.int32"),
    (lambda a: a.update(o=torch.zeros(2, 2, 5, 4, device="meta")), "one device"),
    (lambda a: a.update(mask=torch.ones(2, 5)), "mask has dtype"),
    (lambda a: a.update(mask=torch.ones(2, 4, dtype=torch.bool)), r"mask must have shape \(2, 5\)"),
    (lambda a: a.update(segment_ids=torch.tensor([[0, 0, 1, 1, 2], [0, 1, 0, 1, 1]])),
     "row 1 has 1 then 0 at positions 1, 2"),
    (lambda a: a.update(segment_ids=torch.zeros(2, 5)), "segment_ids has dtype"),
    (lambda a: a.update(window=-1), "window must be a non-negative int"),
])
def test_bad_inputs_raise_value_error(change, match):
    q, k, o, s, l = _base()
    args = dict(q=q, k=k, o=o, s=s, l=l, segment_ids=None, mask=None, window=1)
    change(args)
    with pytest.raises(ValueError, match=match):
        plain_ponet.ponet_mixing(**args)


def test_pooling_input_errors():
    with pytest.raises(ValueError, match="s must have 3 dimensions"):
        plain_ponet.segment_max_pool(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="window must be"):
        plain_ponet.local_max_pool(torch.zeros(1, 5, 2), window=1.5)
    with pytest.raises(ValueError, match="k must match q"):
        plain_ponet.global_aggregate(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 4, 2))

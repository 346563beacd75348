"""Attention reference vs SDPA and a numpy loop, gradcheck, dispatch, input errors.

The Triton kernel is tested in ``interpreted/test_interp_attention.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import attention as attn


def attention_numpy(q, k, v, mask, prefix_len):
    """Prefix-LM attention, one query at a time: keys j < prefix_len or j <= i, valid keys only."""
    q, k, v = (t.double().numpy() for t in (q, k, v))
    B, H, N, Dh = q.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                keys = [j for j in range(N) if mask[b, j] and (j < prefix_len or j <= i)]
                if not keys:
                    continue
                sc = np.array([q[b, h, i] @ k[b, h, j] for j in keys]) / math.sqrt(Dh)
                a = np.exp(sc - sc.max())
                out[b, h, i] = (a / a.sum()) @ v[b, h, keys]
    return torch.from_numpy(out)


def test_reference_prefix_lm_matches_numpy(kdata):
    q, k, v = (torch.randn(3, 2, 9, 4, generator=kdata.gen, dtype=torch.float64) for _ in range(3))
    mask = kdata.mask(3, 9, kdata.gen)
    got = attn.attention_ref(q, k, v, mask=mask, prefix_len=3)
    torch.testing.assert_close(got, attention_numpy(q, k, v, mask, 3))


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa(kdata, causal):
    q, k, v = (torch.randn(2, 3, 11, 8, generator=kdata.gen) for _ in range(3))
    mask = kdata.mask(2, 11, kdata.gen)
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(11, 11, dtype=torch.bool).tril()
    torch.testing.assert_close(attn.attention_ref(q, k, v, mask=mask, causal=causal),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))


def test_reference_gradcheck_float64(kdata):
    inputs = tuple(torch.randn(1, 2, 6, 3, generator=kdata.gen, dtype=torch.float64).requires_grad_(True)
                   for _ in range(3))
    mask = torch.tensor([[True, True, False, True, True, False]])
    assert torch.autograd.gradcheck(lambda *x: attn.attention_ref(*x, mask=mask, prefix_len=2), inputs)


def test_cpu_without_interpreter_uses_reference(kdata):
    q, k, v = (torch.randn(1, 2, 5, 8, generator=kdata.gen) for _ in range(3))
    before = attn._dispatch.LAUNCHES["_attn_fwd"]
    torch.testing.assert_close(attn.attention(q, k, v, causal=True), attn.attention_ref(q, k, v, causal=True))
    assert attn._dispatch.LAUNCHES["_attn_fwd"] == before


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=torch.zeros(1, 2, 5, 4)), "k and v must be"),
    (dict(v=torch.zeros(1, 2, 5, 8, dtype=torch.float16)), "share one dtype"),
    (dict(mask=torch.ones(1, 4, dtype=torch.bool)), r"mask must have shape \(B, Nk\) = \(1, 5\)"),
    (dict(prefix_len=6), r"prefix_len must be an int in \[0, Nk=5\], got 6"),
    (dict(scale=-1.0), "scale must be a positive number"),
    (dict(q=torch.zeros(1, 2, 5, 8, device="meta")), "one device"),
])
def test_bad_inputs_raise_value_error(kwargs, match):
    args = dict(q=torch.zeros(1, 2, 5, 8), k=torch.zeros(1, 2, 5, 8), v=torch.zeros(1, 2, 5, 8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attn.attention(**args)

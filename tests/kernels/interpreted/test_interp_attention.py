"""Fused attention (interpreter) vs torch SDPA: dtypes, key padding, causal, prefix-LM, backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
MODES = [  # (causal, prefix_len, with mask)
    (False, None, False),
    (False, None, True),
    (True, None, True),
    (False, 5, True),
]


def sdpa(q, k, v, ik, mask, causal, prefix_len):
    allowed = ik.attention.allowed_mask(mask, causal, prefix_len, q.shape[2], k.shape[2], q.device)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)


@pytest.mark.parametrize("causal,prefix_len,with_mask", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_sdpa(ik, kdata, dtype, causal, prefix_len, with_mask):
    B, H, N, Dh = 3, 2, 37, 16
    q, k, v = (torch.randn(B, H, N, Dh, generator=kdata.gen).to(dtype) for _ in range(3))
    mask = kdata.mask(B, N, kdata.gen) if with_mask else None  # row 2 fully padded: output 0, like SDPA
    out = ik.attention.attention(q, k, v, mask=mask, causal=causal, prefix_len=prefix_len)
    assert ik.dispatch.LAUNCHES["_attn_fwd"] == 1 and out.dtype == dtype
    torch.testing.assert_close(out.float(), sdpa(q, k, v, ik, mask, causal, prefix_len), **TOL[dtype])


def test_cross_attention_fp16_and_custom_scale(ik, kdata):
    q = torch.randn(2, 2, 19, 24, generator=kdata.gen).half()  # Dh = 24: padded to a 32-wide block
    k, v = (torch.randn(2, 2, 70, 24, generator=kdata.gen).half() for _ in range(2))  # Nk spans 2 blocks
    mask = kdata.mask(2, 70, kdata.gen)
    out = ik.attention.attention(q, k, v, mask=mask, scale=0.3)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :],
                                          scale=0.3)
    torch.testing.assert_close(out.float(), want, **TOL[torch.float16])


def test_backward_matches_reference(ik, kdata):
    B, H, N, Dh = 2, 2, 21, 16
    q, k, v = (torch.randn(B, H, N, Dh, generator=kdata.gen) for _ in range(3))
    mask = kdata.mask(B, N, kdata.gen)
    dy = torch.randn(B, H, N, Dh, generator=kdata.gen)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        return torch.autograd.grad(fn(*leaves, mask=mask, prefix_len=4), leaves, dy)

    got = grads(ik.attention.attention)
    assert ik.dispatch.LAUNCHES["_attn_fwd"] == 1
    for g, w in zip(got, grads(ik.attention.attention_ref)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)

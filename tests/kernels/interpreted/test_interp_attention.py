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


# Several query blocks. N = 133 spans three query and three key blocks of INTERPRET_BLOCK (64): which key blocks
# a query block may skip under a causal or prefix-LM mask only matters from the second query block on, and a
# prefix of 100 keys reaches past the first block. fp16 runs the kernel's half-precision branch (the interpreter
# upcasts only bf16), where the online-softmax rescale of the running sums happens on half tiles.
MULTI = [  # (causal, prefix_len, with mask)
    (True, None, False),
    (True, None, True),
    (False, 100, True),
    (False, 5, False),
    (False, None, True),
]


def _check_forward(ik, kdata, q, k, v, mask, causal, prefix_len):
    out = ik.attention.attention(q, k, v, mask=mask, causal=causal, prefix_len=prefix_len)
    assert ik.dispatch.LAUNCHES["_attn_fwd"] == 1 and out.dtype == q.dtype
    want = kdata.attention_ref(q, k, v, mask, causal, prefix_len)
    torch.testing.assert_close(out.double(), want, **TOL[q.dtype])


@pytest.mark.parametrize("causal,prefix_len,with_mask", MULTI)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_several_query_blocks_match_reference(ik, kdata, dtype, causal, prefix_len, with_mask):
    B, H, N, Dh = 3, 2, 133, 40  # Dh = 40: padded to a 64-wide block
    assert N > 2 * ik.attention.INTERPRET_BLOCK
    assert ik.attention.upcasts(dtype) == (dtype == torch.float32)  # fp16: the half-precision branch runs
    q, k, v = (torch.randn(B, H, N, Dh, generator=kdata.gen).to(dtype) for _ in range(3))
    mask = kdata.mask(B, N, kdata.gen) if with_mask else None  # row 2 fully padded
    _check_forward(ik, kdata, q, k, v, mask, causal, prefix_len)


@pytest.mark.parametrize("causal,prefix_len", [(True, None), (False, 70)])
def test_several_blocks_cross_attention_fp16(ik, kdata, causal, prefix_len):
    """Nq < Nk (top-left aligned masks), odd lengths on both sides."""
    q = torch.randn(2, 2, 99, 24, generator=kdata.gen).half()
    k, v = (torch.randn(2, 2, 131, 24, generator=kdata.gen).half() for _ in range(2))
    _check_forward(ik, kdata, q, k, v, kdata.mask(2, 131, kdata.gen), causal, prefix_len)


def test_large_logits_fp16_need_the_rescale(ik, kdata):
    """Scores far from 0 whose maximum moves from key block to key block: without rescaling the running sums
    (or with it applied to the wrong tiles) the fp16 result is far off, and exp would overflow without the
    running maximum."""
    B, H, N, Dh = 1, 2, 192, 16
    q = (torch.randn(B, H, N, Dh, generator=kdata.gen) * 3).half()
    k = torch.randn(B, H, N, Dh, generator=kdata.gen)
    k = (k * torch.linspace(1, 4, N)[None, None, :, None]).half()  # later key blocks hold larger scores
    v = torch.randn(B, H, N, Dh, generator=kdata.gen).half()
    _check_forward(ik, kdata, q, k, v, None, False, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_several_blocks_with_empty_rows(ik, kdata, dtype):
    """Gradients through the kernel's autograd function vs float64 autograd of the reference; batch row 2 is all
    padding (its queries see no key: zero output, zero gradient)."""
    B, H, N, Dh = 3, 2, 133, 16
    q, k, v = (torch.randn(B, H, N, Dh, generator=kdata.gen).to(dtype) for _ in range(3))
    mask = kdata.mask(B, N, kdata.gen)
    dy = torch.randn(B, H, N, Dh, generator=kdata.gen).to(dtype)

    def grads(fn, cast):
        leaves = [cast(t).requires_grad_(True) for t in (q, k, v)]
        return torch.autograd.grad(fn(*leaves, mask=mask, prefix_len=100), leaves, cast(dy))

    got = grads(ik.attention.attention, lambda t: t.clone())
    assert ik.dispatch.LAUNCHES["_attn_fwd"] == 1
    want = grads(lambda *x, **kw: kdata.attention_ref(*x, kw["mask"], False, kw["prefix_len"]), lambda t: t.double())
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == dtype and kdata.rel_err(g, w) <= tol, (name, kdata.rel_err(g, w))
    assert not got[0][2].any() and not got[1][2].any() and not got[2][2].any()


@pytest.mark.parametrize("case", [(3, 2, 133, 133, 40, True, None, True), (2, 2, 70, 131, 24, False, 80, False)])
def test_gpu_case_helper_fp16(ik, kdata, case):
    """The helper behind tests/kernels/test_kernels_attention_gpu.py on small cases, with its tolerances."""
    out, grads, want, want_grads = kdata.attention_case(ik.attention.attention, torch.float16, case, "cpu")
    assert ik.dispatch.LAUNCHES["_attn_fwd"] == 1
    torch.testing.assert_close(out.double(), want, **TOL[torch.float16])
    for got, ref in zip(grads, want_grads):
        assert kdata.rel_err(got, ref) <= 4 * TOL[torch.float16]["atol"]

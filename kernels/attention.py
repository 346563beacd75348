"""Fused attention forward (FlashAttention-style online softmax) with key padding and prefix-LM masks.

Semantics match ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask built from:
- ``mask`` (B, Nk) bool, True = valid key (key padding);
- ``causal``: query i sees keys j <= i (top-left aligned, like SDPA's ``is_causal``);
- ``prefix_len`` (SpatialVLA's prefix-LM decoding): keys j < prefix_len are visible to every query and
  the rest is causal; giving ``prefix_len`` turns the causal pattern on.
A query row that sees no key returns 0 (SDPA does the same). The forward is one Triton kernel; the
backward recomputes through SDPA (memory-efficient backends on CUDA) inside a custom autograd function.

    from kernels.attention import attention
    y = attention(q, k, v, mask=valid, prefix_len=n_prefix)  # q, k, v (B, H, N, Dh) -> (B, H, N, Dh)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels._dispatch import FLOAT_DTYPES, INTERPRET, check_same_device, check_tensor, launch

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["attention", "attention_ref", "allowed_mask"]

INTERPRET_BLOCK = 64  # queries (and keys) per program under the interpreter; tests size N against it


def allowed_mask(mask, causal: bool, prefix_len, nq: int, nk: int, device) -> torch.Tensor | None:
    """Boolean (B or 1, 1, Nq, Nk) mask of visible keys, or None when every key is visible."""
    allowed = None
    if causal or prefix_len is not None:
        i = torch.arange(nq, device=device)[:, None]
        j = torch.arange(nk, device=device)[None, :]
        allowed = (j <= i) | (j < (prefix_len or 0))  # (Nq, Nk)
        allowed = allowed[None, None]
    if mask is not None:
        keys = mask[:, None, None, :]  # (B, 1, 1, Nk)
        allowed = keys if allowed is None else allowed & keys
    return allowed


def attention_ref(q, k, v, mask=None, causal: bool = False, scale=None, prefix_len=None) -> torch.Tensor:
    """Plain torch attention with the same conventions (rows without visible keys give 0)."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q.to(ct), k.to(ct)) * scale  # (B, H, Nq, Nk)
    allowed = allowed_mask(mask, causal, prefix_len, q.shape[2], k.shape[2], q.device)
    if allowed is not None:
        has = allowed.any(-1, keepdim=True)
        scores = scores.masked_fill(~(allowed | ~has), float("-inf"))
        p = torch.softmax(scores, dim=-1) * has.to(ct)
    else:
        p = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bhjd->bhid", p, v.to(ct)).to(q.dtype)


if _dispatch.HAS_TRITON:

    @triton.jit
    def _attn_fwd(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr,
                  sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
                  H, NQ, NK, DH, qk_scale, prefix_len,
                  HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < DH
        qt = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                     mask=(offs_m < NQ)[:, None] & dmask[None, :], other=0.0)
        if UPCAST:
            qt = qt.to(tl.float32)
        m_i = tl.zeros((BLOCK_M,), tl.float32) - float("inf")
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        hi = NK
        if CAUSAL:  # key blocks right of the diagonal (and past the prefix) are fully masked: skip them
            hi = tl.minimum(NK, tl.maximum((pid_m + 1) * BLOCK_M, prefix_len))
        for start in range(0, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kin = offs_n < NK
            kv_mask = kin[:, None] & dmask[None, :]
            kt = tl.load(k_ptr + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                         mask=kv_mask, other=0.0)
            vt = tl.load(v_ptr + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                         mask=kv_mask, other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
                s = tl.dot(qt, tl.trans(kt), input_precision=PRECISION)
            else:
                s = tl.dot(qt, tl.trans(kt))
            ok = kin
            if HAS_MASK:
                ok = ok & (tl.load(mask_ptr + b * NK + offs_n, mask=kin, other=0) != 0)
            allowed = tl.broadcast_to(ok[None, :], (BLOCK_M, BLOCK_N))
            if CAUSAL:
                allowed = allowed & ((offs_n[None, :] <= offs_m[:, None]) | (offs_n[None, :] < prefix_len))
            s = tl.where(allowed, s * qk_scale, float("-inf"))  # log2 domain: exp2 below
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: avoid inf - inf
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if UPCAST:
                acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision=PRECISION)
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        has = l_i > 0
        out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
        tl.store(out_ptr + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod,
                 out.to(out_ptr.dtype.element_ty), mask=(offs_m < NQ)[:, None] & dmask[None, :])

    # GPU only: several configs would fail under the interpreter (no driver to time them).
    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm, bn, w, st in ((128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 2))
    ]
    _attn_fwd_tuned = triton.autotune(configs=_GPU_CONFIGS, key=["NQ", "NK", "DH", "CAUSAL", "HAS_MASK"])(
        _attn_fwd
    )


def upcasts(dtype: torch.dtype) -> bool:
    """Whether the kernel computes in fp32 (``UPCAST``) rather than on half-precision tiles.

    fp32 always does; on the GPU fp16 and bf16 take the half-precision branch (half tensor-core dots). The
    interpreter computes fp16 tiles correctly (numpy float16) but not bf16 (stored as uint16), so there only
    bf16 is upcast: the interpreter tests cover the half-precision branch through fp16.
    """
    return dtype == torch.float32 or (INTERPRET and dtype == torch.bfloat16)


def attention_forward(q, k, v, mask, has_mask: bool, causal: bool, scale: float, prefix_len: int,
                      precision: str) -> torch.Tensor:
    """Launch the fused forward; ``mask`` is an int8 (B, Nk) tensor (ignored unless ``has_mask``)."""
    B, H, NQ, DH = q.shape
    NK = k.shape[2]
    out = _dispatch.empty(q.shape, q.dtype, q.device)
    block_d = max(triton.next_power_of_2(DH), 16)
    upcast = upcasts(q.dtype)
    args = (q, k, v, mask, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(), H, NQ, NK, DH,
            scale * 1.4426950408889634, prefix_len)
    meta = dict(HAS_MASK=has_mask, CAUSAL=causal, UPCAST=upcast, PRECISION=precision, BLOCK_D=block_d)
    if INTERPRET:  # one program covers up to 64 queries: the interpreter pays ~2 ms per program
        block_m = min(max(triton.next_power_of_2(NQ), 16), INTERPRET_BLOCK)
        block_n = min(max(triton.next_power_of_2(NK), 16), INTERPRET_BLOCK)
        launch(_attn_fwd, (triton.cdiv(NQ, block_m), B * H), *args, BLOCK_M=block_m, BLOCK_N=block_n, **meta)
    else:
        launch(_attn_fwd_tuned, lambda m: (triton.cdiv(NQ, m["BLOCK_M"]), B * H), *args, **meta)
    return out


def _sdpa_backward(dy, q, k, v, mask, has_mask, causal, scale, prefix_len):
    """Gradients through SDPA; rows without visible keys see all keys and get zero upstream gradient."""
    allowed = allowed_mask(mask.bool() if has_mask else None, causal, prefix_len if causal else None,
                           q.shape[2], k.shape[2], q.device)
    if allowed is not None:
        has = allowed.any(-1, keepdim=True)  # (B|1, 1, Nq, 1)
        allowed = allowed | ~has
        dy = dy * has.to(dy.dtype)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves, attn_mask=allowed, scale=scale)
        return torch.autograd.grad(out, leaves, dy)


class _Attention(torch.autograd.Function):
    """Triton forward, SDPA backward (used directly under the interpreter and when no op is registered)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, has_mask, causal, scale, prefix_len, precision):
        ctx.save_for_backward(q, k, v, mask)
        ctx.args = (has_mask, causal, scale, prefix_len)
        return attention_forward(q, k, v, mask, has_mask, causal, scale, prefix_len, precision)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, mask = ctx.saved_tensors
        dq, dk, dv = _sdpa_backward(dy, q, k, v, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


def _op_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, has_mask: bool,
                causal: bool, scale: float, prefix_len: int, precision: str) -> torch.Tensor:
    return attention_forward(q, k, v, mask, has_mask, causal, scale, prefix_len, precision)


def _op_ref(q, k, v, mask, has_mask, causal, scale, prefix_len, precision):
    return attention_ref(q, k, v, mask.bool() if has_mask else None, causal, scale,
                         prefix_len if causal else None)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, has_mask, causal, scale, prefix_len, _ = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.args = (has_mask, causal, scale, prefix_len)


def _op_backward(ctx, dy):
    q, k, v, mask = ctx.saved_tensors
    dq, dk, dv = _sdpa_backward(dy, q, k, v, mask, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_OP = (
    _dispatch.register_op("attention", _op_forward, _op_ref, (_op_backward, _setup_context))
    if _dispatch.HAS_TRITON
    else None
)


def _validate(q, k, v, mask, causal, scale, prefix_len) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, FLOAT_DTYPES + (torch.float64,))
    B, H, NQ, DH = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != DH or v.shape != k.shape:
        raise ValueError(
            f"k and v must be (B={B}, H={H}, Nk, Dh={DH}) with equal shapes; got k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if min(NQ, k.shape[2], DH) == 0:
        raise ValueError(f"empty attention input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if len({q.dtype, k.dtype, v.dtype}) > 1:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v, mask=mask)
    if mask is not None:
        check_tensor("mask", mask, 2, (torch.bool,))
        if tuple(mask.shape) != (B, k.shape[2]):
            raise ValueError(f"mask must have shape (B, Nk) = {(B, k.shape[2])}, got {tuple(mask.shape)}")
    if prefix_len is not None and (isinstance(prefix_len, bool) or not isinstance(prefix_len, int)
                                   or not 0 <= prefix_len <= k.shape[2]):
        raise ValueError(f"prefix_len must be an int in [0, Nk={k.shape[2]}], got {prefix_len!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")


def attention(q, k, v, mask=None, causal: bool = False, scale=None, prefix_len=None,
              allow_tf32: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale + masks) v for (B, H, N, Dh) tensors; see the module docstring for masks.

    ``allow_tf32`` lets fp32 inputs use TF32 tensor cores on the GPU (about 1e-3 relative error);
    the default keeps IEEE fp32 so results compare with fp32 references.
    """
    _validate(q, k, v, mask, causal, scale, prefix_len)
    backend = "torch" if q.dtype == torch.float64 else _dispatch.backend(q, k, v)
    if backend == "torch":
        return attention_ref(q, k, v, mask, causal, scale, prefix_len)
    scale = float(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    causal_mode = causal or prefix_len is not None
    has_mask = mask is not None
    mask8 = mask.to(torch.int8).contiguous() if has_mask else torch.ones(1, dtype=torch.int8, device=q.device)
    precision = "tf32" if (allow_tf32 and not INTERPRET) else "ieee"
    args = (q, k, v, mask8, has_mask, causal_mode, scale, int(prefix_len or 0), precision)
    if backend == "triton" and _OP is not None:
        return _OP(*args)
    return _Attention.apply(*args)

"""PoNet multi-granularity pooling token mixing (Tan et al., "PoNet", ICLR 2022), linear in N.

Per batch row and head, with q, k, o (B, H, N, Dh), s, l (B, N, D = H * Dh), valid tokens from ``mask``:
    g      = mean of q over valid tokens
    a_j    = softmax_j(g . k_j / sqrt(Dh)) over valid j           (global aggregation, k is the value)
    g'     = sum_j a_j k_j
    s_seg  = max of s_j over valid j in i's segment                (segment max-pooling)
    l_i    = max of l_j over valid j with |i - j| <= window        (local max-pooling)
    out_i  = (g'(head of channel) + s_seg(i)) * o_i + l_i,  0 at padded i
Public functions dispatch (``kernels._dispatch``): Triton on CUDA, the Triton launchers under
``TRITON_INTERPRET=1`` on CPU tensors, the torch reference otherwise.

    from kernels.ponet import ponet_mixing
    out = ponet_mixing(q, k, o, s, l, segment_ids=seg, mask=valid, window=1)  # (B, N, D)
"""

from __future__ import annotations

import torch

from kernels import _dispatch
from kernels._dispatch import FLOAT_DTYPES, check_same_device, check_tensor
from kernels._ponet_ref import (
    default_segments_and_mask,
    global_aggregate_ref,
    local_max_pool_ref,
    ponet_mixing_ref,
    segment_max_pool_ref,
)

if _dispatch.HAS_TRITON:
    from kernels import _ponet_triton as _tri
else:  # pragma: no cover - CPU install without triton
    _tri = None

__all__ = [
    "ponet_mixing",
    "global_aggregate",
    "segment_max_pool",
    "local_max_pool",
    "ponet_mixing_ref",
    "global_aggregate_ref",
    "segment_max_pool_ref",
    "local_max_pool_ref",
]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_tokens(name: str, t, B: int, N: int, D: int | None = None) -> None:
    if D is None:
        expected = (B, N)
    else:
        expected = (B, N, D)
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")


def _check_segments_and_mask(ref: torch.Tensor, segment_ids, mask, B: int, N: int) -> None:
    if segment_ids is not None:
        check_tensor("segment_ids", segment_ids, 2, _INT_DTYPES)
        _check_tokens("segment_ids", segment_ids, B, N)
        check_same_device(input=ref, segment_ids=segment_ids)
        # Data-dependent check (a host sync): skipped while torch.compile traces.
        if N > 1 and not torch.compiler.is_compiling():
            bad = (segment_ids[:, 1:] < segment_ids[:, :-1]).nonzero()
            if bad.numel():
                b, i = (int(v) for v in bad[0])
                raise ValueError(
                    f"segment_ids must be non-decreasing along each row; row {b} has "
                    f"{int(segment_ids[b, i])} then {int(segment_ids[b, i + 1])} at positions {i}, {i + 1}"
                )
    if mask is not None:
        check_tensor("mask", mask, 2, (torch.bool,))
        _check_tokens("mask", mask, B, N)
        check_same_device(input=ref, mask=mask)


def _check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int (half-width), got {window!r}")


def _validate_mixing(q, k, o, s, l, segment_ids, mask, window) -> None:
    for name, t in (("q", q), ("k", k), ("o", o)):
        check_tensor(name, t, 4, FLOAT_DTYPES + (torch.float64,))
    for name, t in (("s", s), ("l", l)):
        check_tensor(name, t, 3, FLOAT_DTYPES + (torch.float64,))
    B, H, N, Dh = q.shape
    if N == 0 or Dh == 0:
        raise ValueError(f"q must have N >= 1 tokens and Dh >= 1, got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("o", o)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    for name, t in (("s", s), ("l", l)):
        _check_tokens(name, t, B, N, H * Dh)
    dtypes = {n: t.dtype for n, t in (("q", q), ("k", k), ("o", o), ("s", s), ("l", l))}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"q, k, o, s, l must share one dtype, got {dtypes}")
    check_same_device(q=q, k=k, o=o, s=s, l=l)
    _check_segments_and_mask(q, segment_ids, mask, B, N)
    _check_window(window)


def _use_triton(*tensors) -> str:
    """Backend for these tensors; float64 always takes the reference (gradcheck precision)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return "torch"
    return _dispatch.backend(*tensors)


class _PoNetMixing(torch.autograd.Function):
    """Autograd around the Triton launchers (used directly under the interpreter)."""

    @staticmethod
    def forward(ctx, q, k, o, s, l, segment_ids, mask, window):
        ctx.save_for_backward(q, k, o, s, l, segment_ids, mask)
        ctx.window = window
        return _tri.ponet_forward(q, k, o, s, l, segment_ids, mask, window)

    @staticmethod
    def backward(ctx, dy):
        q, k, o, s, l, segment_ids, mask = ctx.saved_tensors
        grads = _tri.ponet_backward(dy, q, k, o, s, l, segment_ids, mask, ctx.window)
        return (*grads, None, None, None)


def _op_forward(q: torch.Tensor, k: torch.Tensor, o: torch.Tensor, s: torch.Tensor, l: torch.Tensor,
                segment_ids: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    return _tri.ponet_forward(q, k, o, s, l, segment_ids, mask, window)


def _op_backward_body(dy: torch.Tensor, q: torch.Tensor, k: torch.Tensor, o: torch.Tensor, s: torch.Tensor,
                      l: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor,
                      window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _tri.ponet_backward(dy, q, k, o, s, l, segment_ids, mask, window)


def _ref_backward(dy, q, k, o, s, l, segment_ids, mask, window):
    """CPU kernel of the backward op: the reference's vjp (torch.func: autograd is off inside op kernels)."""
    _, vjp = torch.func.vjp(lambda *x: ponet_mixing_ref(*x, segment_ids, mask, window), q, k, o, s, l)
    return tuple(vjp(dy))


def _setup_context(ctx, inputs, output):
    q, k, o, s, l, segment_ids, mask, window = inputs
    ctx.save_for_backward(q, k, o, s, l, segment_ids, mask)
    ctx.window = window


def _op_backward(ctx, dy):
    q, k, o, s, l, segment_ids, mask = ctx.saved_tensors
    grads = _BWD_OP(dy, q, k, o, s, l, segment_ids, mask, ctx.window)
    return (*grads, None, None, None)


_BWD_OP = _dispatch.register_op("ponet_mixing_bwd", _op_backward_body, _ref_backward) if _tri else None
_FWD_OP = (
    _dispatch.register_op("ponet_mixing", _op_forward, ponet_mixing_ref, (_op_backward, _setup_context))
    if _tri and _BWD_OP is not None
    else None
)


def ponet_mixing(q, k, o, s, l, segment_ids=None, mask=None, window: int = 1) -> torch.Tensor:
    """PoNet token mixing (see module docstring); returns (B, N, D) in the input dtype, differentiable."""
    _validate_mixing(q, k, o, s, l, segment_ids, mask, window)
    segment_ids, mask = default_segments_and_mask(s, segment_ids, mask)
    backend = _use_triton(q, k, o, s, l)
    if backend == "torch":
        return ponet_mixing_ref(q, k, o, s, l, segment_ids, mask, window)
    if backend == "triton" and _FWD_OP is not None:
        return _FWD_OP(q, k, o, s, l, segment_ids, mask, window)
    return _PoNetMixing.apply(q, k, o, s, l, segment_ids, mask, window)


def _forward_only(backend: str, *tensors) -> bool:
    """Standalone poolings run Triton forward-only; with autograd they take the reference."""
    return backend != "torch" and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def global_aggregate(q: torch.Tensor, k: torch.Tensor, mask=None) -> torch.Tensor:
    """Global aggregation g' per head: (B, H, N, Dh) -> (B, H, Dh) in the input dtype."""
    check_tensor("q", q, 4, FLOAT_DTYPES + (torch.float64,))
    check_tensor("k", k, 4, FLOAT_DTYPES + (torch.float64,))
    if k.shape != q.shape or k.dtype != q.dtype:
        raise ValueError(f"k must match q: q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}")
    check_same_device(q=q, k=k)
    _check_segments_and_mask(q, None, mask, q.shape[0], q.shape[2])
    if mask is None:
        mask = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
    if not _forward_only(_use_triton(q, k), q, k):
        return global_aggregate_ref(q, k, mask)
    gp, _, _ = _tri.global_forward(q, k, mask.to(torch.int8).contiguous())
    return gp.to(q.dtype)


def _check_pool_input(name: str, x) -> None:
    check_tensor(name, x, 3, FLOAT_DTYPES + (torch.float64,))
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have N >= 1 tokens, got shape {tuple(x.shape)}")


def segment_max_pool(s: torch.Tensor, segment_ids=None, mask=None) -> torch.Tensor:
    """Max of s over valid tokens of each token's segment: (B, N, D) -> (B, N, D), padded rows 0."""
    _check_pool_input("s", s)
    _check_segments_and_mask(s, segment_ids, mask, s.shape[0], s.shape[1])
    segment_ids, mask = default_segments_and_mask(s, segment_ids, mask)
    if not _forward_only(_use_triton(s), s):
        return segment_max_pool_ref(s, segment_ids, mask)
    mask8, seg, seg_last = _tri._aux(segment_ids, mask)
    s = s.contiguous()
    p, _ = _tri.segmax_scan(s, seg, mask8, store_idx=False)
    return _tri.mix_forward(s, s, p, seg_last, mask8, s, 0, terms=2)


def local_max_pool(l: torch.Tensor, mask=None, window: int = 1) -> torch.Tensor:
    """Max of l over valid j with |i - j| <= window: (B, N, D) -> (B, N, D), padded rows 0."""
    _check_pool_input("l", l)
    _check_segments_and_mask(l, None, mask, l.shape[0], l.shape[1])
    _check_window(window)
    _, mask = default_segments_and_mask(l, None, mask)
    if not _forward_only(_use_triton(l), l):
        return local_max_pool_ref(l, mask, window)
    mask8 = mask.to(torch.int8).contiguous()
    l = l.contiguous()
    dummy_last = torch.zeros(1, dtype=torch.int64, device=l.device)
    return _tri.mix_forward(l, l, l, dummy_last, mask8, l, window, terms=1)

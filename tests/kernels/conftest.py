"""Shared input helpers for the kernel tests (both the in-process ones and ``interpreted/``)."""

from __future__ import annotations

import types

import pytest
import torch


def make_segments(B: int, N: int, n_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Random non-decreasing (B, N) segment ids with up to ``n_segments`` runs, ids with gaps."""
    rows = []
    for _ in range(B):
        cuts = torch.randint(1, N, (n_segments - 1,), generator=generator) if N > 1 else torch.empty(0)
        starts = torch.zeros(N, dtype=torch.int64)
        starts[cuts.long()] = 1
        rows.append(starts.cumsum(0) * 3)  # gaps between ids: only order matters
    return torch.stack(rows)


def make_mask(B: int, N: int, generator: torch.Generator) -> torch.Tensor:
    """Valid-token mask: row 0 has scattered holes, row 1 a padded tail, row 2 (if any) all padding."""
    mask = torch.rand(B, N, generator=generator) > 0.2
    mask[0, 0] = True
    if B > 1:
        mask[1] = True
        mask[1, N - N // 3 :] = False
    if B > 2:
        mask[2] = False
    return mask


def make_ponet_inputs(B, H, N, Dh, dtype, generator, n_segments=4):
    """q, k, o (B, H, N, Dh), s, l (B, N, H*Dh), segment ids and mask."""
    q, k, o = (torch.randn(B, H, N, Dh, generator=generator).to(dtype) for _ in range(3))
    s, l = (torch.randn(B, N, H * Dh, generator=generator).to(dtype) for _ in range(2))
    return q, k, o, s, l, make_segments(B, N, n_segments, generator), make_mask(B, N, generator)


def visible_keys(mask, causal: bool, prefix_len, nq: int, nk: int) -> torch.Tensor:
    """(B or 1, 1, Nq, Nk) bool: key j visible to query i. Written here, apart from kernels.attention.allowed_mask,
    so a bug there cannot hide in the reference."""
    B = 1 if mask is None else mask.shape[0]
    seen = torch.ones(B, 1, nq, nk, dtype=torch.bool)
    if causal or prefix_len is not None:
        for i in range(nq):
            seen[:, :, i, max(i + 1, prefix_len or 0):] = False  # top-left aligned causal, prefix always visible
    if mask is not None:
        seen = seen & mask.cpu()[:, None, None, :]
    return seen


def attention_reference(q, k, v, mask=None, causal=False, prefix_len=None, scale=None) -> torch.Tensor:
    """float64 softmax attention on the same (already rounded) inputs; a query that sees no key gives 0."""
    seen = visible_keys(mask, causal, prefix_len, q.shape[2], k.shape[2]).to(q.device)
    has = seen.any(-1, keepdim=True)  # (B|1, 1, Nq, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale  # (B, H, Nq, Nk)
    p = torch.softmax(s.masked_fill(~(seen | ~has), float("-inf")), dim=-1) * has
    return torch.einsum("bhij,bhjd->bhid", p, v.double())


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs error over max(1, max |want|): one number per tensor for gradients of any scale."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1.0)).item()


def attention_case(attention, dtype, case, device):
    """Run ``attention`` and the float64 reference on one case, forward and backward.

    case = (B, H, Nq, Nk, Dh, causal, prefix_len, with mask); returns (out, grads, want, want_grads). Used by the
    CUDA test and, on small cases, under the interpreter (so the GPU test's own code is exercised in CI too).
    """
    B, H, NQ, NK, DH, causal, prefix_len, with_mask = case
    g = torch.Generator().manual_seed(NQ * 7 + DH)
    q = torch.randn(B, H, NQ, DH, generator=g).to(dtype).to(device)
    k, v = (torch.randn(B, H, NK, DH, generator=g).to(dtype).to(device) for _ in range(2))
    dy = torch.randn(B, H, NQ, DH, generator=g).to(dtype).to(device)
    mask = make_mask(B, NK, g).to(device) if with_mask else None  # row 2 (when B = 3) is all padding

    def run(fn, cast):
        leaves = [cast(t).requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves, mask=mask, causal=causal, prefix_len=prefix_len)
        return out.detach(), torch.autograd.grad(out, leaves, cast(dy))

    out, grads = run(attention, lambda t: t.clone())
    want, want_grads = run(attention_reference, lambda t: t.double())
    return out, grads, want, want_grads


@pytest.fixture
def kdata():
    """Input helpers, the independent attention reference and a seeded generator."""
    return types.SimpleNamespace(
        segments=make_segments, mask=make_mask, ponet_inputs=make_ponet_inputs,
        visible=visible_keys, attention_ref=attention_reference, rel_err=max_rel_err, attention_case=attention_case,
        gen=torch.Generator().manual_seed(1234),
    )

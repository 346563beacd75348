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


@pytest.fixture
def kdata():
    """Input helpers and a seeded generator."""
    return types.SimpleNamespace(
        segments=make_segments, mask=make_mask, ponet_inputs=make_ponet_inputs,
        gen=torch.Generator().manual_seed(1234),
    )

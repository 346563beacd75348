"""Plain torch references for PoNet pooling token mixing (CPU path, test oracle, benchmark baseline).

Conventions shared with the Triton kernels (see ``kernels/ponet.py`` for the maths):
- padding (``mask`` False) is excluded from every pooling and from the softmax; padded outputs are 0;
- a row without any valid token has a zero global aggregate;
- max-pooling gradients go to the arg-max, ties to the lowest index (the references gather at an
  explicit arg-max index so autograd follows the same rule as the Triton backward);
- computation in float32 (float64 stays float64, for gradcheck), result in the input dtype.
"""

from __future__ import annotations

import math

import torch


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def default_segments_and_mask(x: torch.Tensor, segment_ids, mask):
    """Fill ``segment_ids`` (one segment) and ``mask`` (all valid) for a (B, N, ...) input."""
    B, N = x.shape[0], x.shape[1]
    if segment_ids is None:
        segment_ids = torch.zeros(B, N, dtype=torch.int64, device=x.device)
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
    return segment_ids, mask


def global_aggregate_ref(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """g' = softmax(mean_valid(q) . k_j / sqrt(Dh)) weighted sum of k; (B, H, N, Dh) -> (B, H, Dh)."""
    B, H, N, Dh = q.shape
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=q.device)
    ct = _compute_dtype(q)
    qf, kf = q.to(ct), k.to(ct)
    m = mask[:, None, :, None].to(ct)  # (B, 1, N, 1)
    count = mask.sum(1).clamp(min=1).to(ct)  # (B,)
    g = (qf * m).sum(2) / count[:, None, None]  # (B, H, Dh)
    scores = torch.einsum("bhd,bhnd->bhn", g, kf) / math.sqrt(Dh)
    any_valid = mask.any(1)  # (B,)
    # Rows with no valid token softmax over everything, then get zeroed: no NaN in values or gradients.
    keep = mask | ~any_valid[:, None]
    a = torch.softmax(scores.masked_fill(~keep[:, None, :], float("-inf")), dim=-1)
    a = a * any_valid[:, None, None].to(ct)
    return torch.einsum("bhn,bhnd->bhd", a, kf).to(q.dtype)


def _segment_rank(segment_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each token's segment within its row: 0, 0, 1, 1, 1, 2 ... (B, N) int64."""
    starts = torch.ones_like(segment_ids, dtype=torch.int64)
    starts[:, 1:] = (segment_ids[:, 1:] != segment_ids[:, :-1]).to(torch.int64)
    return starts.cumsum(1) - 1


def segment_argmax(s: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index (B, N, D) of the lowest-index maximum of ``s`` over valid tokens of each token's segment.

    Tokens whose segment has no valid token get index 0 (their output is masked anyway).
    """
    B, N, D = s.shape
    with torch.no_grad():
        rank = _segment_rank(segment_ids)[:, :, None].expand(B, N, D)  # (B, N, D)
        vals = s.detach().masked_fill(~mask[:, :, None], float("-inf"))
        seg_max = torch.full_like(vals, float("-inf")).scatter_reduce(1, rank, vals, "amax")
        is_max = (vals == seg_max.gather(1, rank)) & mask[:, :, None]
        pos = torch.arange(N, device=s.device)[None, :, None].expand(B, N, D)
        pos = torch.where(is_max, pos, torch.full_like(pos, N))
        first = torch.full_like(pos, N).scatter_reduce(1, rank, pos, "amin")
        idx = first.gather(1, rank)
        return torch.where(idx < N, idx, torch.zeros_like(idx))


def segment_max_pool_ref(s: torch.Tensor, segment_ids=None, mask=None) -> torch.Tensor:
    """s_seg(i) = max of s_j over valid j in i's segment; (B, N, D) -> (B, N, D), padded rows 0."""
    segment_ids, mask = default_segments_and_mask(s, segment_ids, mask)
    pooled = s.gather(1, segment_argmax(s, segment_ids, mask))
    return torch.where(mask[:, :, None], pooled, torch.zeros_like(pooled))


def local_argmax(l: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Index (B, N, D) of the lowest-index maximum of ``l`` over valid j with |i - j| <= window."""
    B, N, D = l.shape
    with torch.no_grad():
        vals = l.detach().masked_fill(~mask[:, :, None], float("-inf"))
        padded = torch.nn.functional.pad(vals, (0, 0, window, window), value=float("-inf"))  # (B, N+2w, D)
        best = padded[:, 0:N]
        offset = torch.zeros(B, N, D, dtype=torch.int64, device=l.device)
        for e in range(1, 2 * window + 1):  # j = i - w + e increases: strict '>' keeps the lowest index
            cand = padded[:, e : e + N]
            better = cand > best
            best = torch.where(better, cand, best)
            offset.masked_fill_(better, e)
        idx = torch.arange(N, device=l.device)[None, :, None] + offset - window
        return idx.clamp(0, N - 1)


def local_max_pool_ref(l: torch.Tensor, mask=None, window: int = 1) -> torch.Tensor:
    """l_i = max of l_j over valid j with |i - j| <= window; (B, N, D) -> (B, N, D), padded rows 0."""
    _, mask = default_segments_and_mask(l, None, mask)
    pooled = l.gather(1, local_argmax(l, mask, window))
    return torch.where(mask[:, :, None], pooled, torch.zeros_like(pooled))


def ponet_mixing_ref(q, k, o, s, l, segment_ids=None, mask=None, window: int = 1) -> torch.Tensor:
    """out_i = (g'(head) + s_seg(i)) * o_i + l_i with heads merged; returns (B, N, D) in the input dtype."""
    B, H, N, Dh = q.shape
    segment_ids, mask = default_segments_and_mask(s, segment_ids, mask)
    ct = _compute_dtype(q)
    gp = global_aggregate_ref(q.to(ct), k.to(ct), mask)  # (B, H, Dh)
    g_merged = gp.reshape(B, 1, H * Dh)  # (B, 1, D)
    o_merged = o.to(ct).transpose(1, 2).reshape(B, N, H * Dh)  # (B, N, D)
    s_seg = segment_max_pool_ref(s.to(ct), segment_ids, mask)
    l_loc = local_max_pool_ref(l.to(ct), mask, window)
    out = (g_merged + s_seg) * o_merged + l_loc
    out = torch.where(mask[:, :, None], out, torch.zeros_like(out))
    return out.to(q.dtype)

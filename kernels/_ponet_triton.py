"""Triton kernels and launchers for PoNet pooling token mixing.

Forward = three launches, O(N D) memory traffic, no tl.dot (only elementwise products and reductions):
1. ``_global_fwd``   grid (B*H,): masked mean of q, then one online-softmax pass over k -> g' (B, H, Dh);
2. ``_segmax_scan``  grid (B, D/BD): segmented running max of s along N (``tl.associative_scan`` per tile
   plus a carry between tiles); the value at a segment's last token is that segment's max;
3. ``_mix``          grid (B, N/BN, D/BD): gathers the segment max at ``seg_last(i)``, the local window max,
   and writes out = (g' + s_seg) * o + l_loc (0 on padding).
Backward recomputes 1-2, then ``_mix_bwd`` (d o, d l through the window arg-max, per-token d s_seg) and
``_global_bwd`` (d q, d k); the segment-sum of d s_seg onto each segment's arg-max is torch glue.
Every load is masked; bf16/fp16 are upcast to fp32 right after ``tl.load`` (the interpreter gets bf16
arithmetic wrong otherwise).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels._dispatch import INTERPRET, empty, launch


@triton.jit
def _global_fwd(q_ptr, k_ptr, mask_ptr, gp_ptr, g_ptr, lse_ptr,
                sqb, sqh, sqn, sqd, skb, skh, skn, skd, H, N, DH, scale,
                BLOCK_N: tl.constexpr, BLOCK_DH: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_d = tl.arange(0, BLOCK_DH)
    dmask = offs_d < DH
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    acc = tl.zeros((BLOCK_DH,), tl.float32)
    cnt = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
        tile = valid[:, None] & dmask[None, :]
        x = tl.load(q_base + offs_n[:, None] * sqn + offs_d[None, :] * sqd, mask=tile, other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
        cnt += valid.to(tl.float32)
    g = acc / tl.maximum(tl.sum(cnt, axis=0), 1.0)
    m = tl.max(tl.zeros((BLOCK_N,), tl.float32) - float("inf"), axis=0)
    den = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    num = tl.zeros((BLOCK_DH,), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
        tile = valid[:, None] & dmask[None, :]
        kx = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=tile, other=0.0)
        kx = kx.to(tl.float32)
        sc = tl.where(valid, tl.sum(kx * g[None, :], axis=1) * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid token yet: avoid inf - inf
        p = tl.exp(sc - m_safe)
        alpha = tl.exp(m - m_safe)
        den = den * alpha + tl.sum(p, axis=0)
        num = num * alpha + tl.sum(p[:, None] * kx, axis=0)
        m = m_new
    has = den > 0
    gp = tl.where(has, num / tl.where(has, den, 1.0), 0.0)
    lse = tl.where(has, m + tl.log(tl.where(has, den, 1.0)), 0.0)
    tl.store(gp_ptr + pid * DH + offs_d, gp, mask=dmask)
    tl.store(g_ptr + pid * DH + offs_d, g, mask=dmask)
    tl.store(lse_ptr + pid, lse)


@triton.jit
def _segmax_combine(v1, i1, f1, v2, i2, f2):
    # Segmented max with arg-max: a segment start (f2) resets; strict '>' keeps the lower index on ties.
    take2 = (f2 != 0) | (v2 > v1)
    return tl.where(take2, v2, v1), tl.where(take2, i2, i1), f1 | f2


@triton.jit
def _segmax_scan(s_ptr, seg_ptr, mask_ptr, p_ptr, pi_ptr, N, D,
                 STORE_IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    rows = tl.arange(0, BLOCK_N)
    carry_v = tl.zeros((BLOCK_D,), tl.float32) - float("inf")
    carry_i = tl.zeros((BLOCK_D,), tl.int32) - 1
    for start in range(0, N, BLOCK_N):
        offs_n = start + rows
        nmask = offs_n < N
        valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
        seg = tl.load(seg_ptr + b * N + offs_n, mask=nmask, other=0)
        prev = tl.load(seg_ptr + b * N + offs_n - 1, mask=nmask & (offs_n > 0), other=0)
        flag = (((offs_n == 0) | (seg != prev)) & nmask).to(tl.int32)
        ptrs = b * N * D + offs_n[:, None] * D + offs_d[None, :]
        x = tl.load(s_ptr + ptrs, mask=valid[:, None] & dmask[None, :], other=float("-inf"))
        x = x.to(tl.float32)
        idx = tl.broadcast_to(tl.where(valid, offs_n, -1)[:, None], (BLOCK_N, BLOCK_D)).to(tl.int32)
        fb = tl.broadcast_to(flag[:, None], (BLOCK_N, BLOCK_D))
        v, i, f = tl.associative_scan((x, idx, fb), 0, _segmax_combine)
        # Rows before the tile's first segment start continue the previous tile's segment.
        take_carry = (f == 0) & (carry_v[None, :] >= v)
        v = tl.where(take_carry, carry_v[None, :], v)
        i = tl.where(take_carry, carry_i[None, :], i)
        smask = nmask[:, None] & dmask[None, :]
        tl.store(p_ptr + ptrs, v.to(p_ptr.dtype.element_ty), mask=smask)
        if STORE_IDX:
            tl.store(pi_ptr + ptrs, i, mask=smask)
        last = (rows == BLOCK_N - 1)[:, None]
        carry_v = tl.max(tl.where(last, v, float("-inf")), axis=0)
        carry_i = tl.max(tl.where(last, i, -2), axis=0)


@triton.jit
def _local_max(l_ptr, mask_ptr, b, offs_n, offs_d, dmask, N, D, W,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Max of l over valid j in [i - W, i + W] (-inf where none), and its lowest arg-max (N if none)."""
    best = tl.zeros((BLOCK_N, BLOCK_D), tl.float32) - float("inf")
    arg = tl.zeros((BLOCK_N, BLOCK_D), tl.int32) + N
    for e in range(-W, W + 1):
        j = offs_n + e
        jin = (j >= 0) & (j < N)
        jv = jin & (tl.load(mask_ptr + b * N + j, mask=jin, other=0) != 0)
        lv = tl.load(l_ptr + b * N * D + j[:, None] * D + offs_d[None, :],
                     mask=jv[:, None] & dmask[None, :], other=float("-inf")).to(tl.float32)
        better = lv > best  # j increases with e: strict '>' keeps the lowest index on ties
        best = tl.where(better, lv, best)
        arg = tl.where(better, j[:, None], arg)
    return best, arg


@triton.jit
def _mix(o_ptr, l_ptr, p_ptr, last_ptr, mask_ptr, g_ptr, out_ptr,
         sob, soh, son, sod, N, D, DH, W,
         TERMS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # TERMS: 0 = full mixing, 1 = local max only, 2 = segment max only.
    b = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    nmask = offs_n < N
    dmask = offs_d < D
    valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
    tile = valid[:, None] & dmask[None, :]
    res = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    if TERMS != 1:
        last = tl.load(last_ptr + b * N + offs_n, mask=nmask, other=0)
        sv = tl.load(p_ptr + b * N * D + last[:, None] * D + offs_d[None, :], mask=tile, other=0.0)
        sv = sv.to(tl.float32)
        if TERMS == 0:
            h = offs_d // DH
            d = offs_d % DH
            ov = tl.load(o_ptr + b * sob + h[None, :] * soh + offs_n[:, None] * son + d[None, :] * sod,
                         mask=tile, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + b * D + offs_d, mask=dmask, other=0.0)
            res = (gv[None, :] + sv) * ov
        else:
            res = sv
    if TERMS != 2:
        best, arg = _local_max(l_ptr, mask_ptr, b, offs_n, offs_d, dmask, N, D, W, BLOCK_N, BLOCK_D)
        res = res + best
    res = tl.where(tile, res, 0.0)
    tl.store(out_ptr + b * N * D + offs_n[:, None] * D + offs_d[None, :],
             res.to(out_ptr.dtype.element_ty), mask=nmask[:, None] & dmask[None, :])


@triton.jit
def _mix_bwd(dy_ptr, o_ptr, l_ptr, p_ptr, last_ptr, mask_ptr, g_ptr, do_ptr, dsp_ptr, dl_ptr,
             sob, soh, son, sod, sdb, sdh, sdn, sdd, N, D, DH, W,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    nmask = offs_n < N
    dmask = offs_d < D
    valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
    tile = valid[:, None] & dmask[None, :]
    store_mask = nmask[:, None] & dmask[None, :]
    rowp = b * N * D + offs_n[:, None] * D + offs_d[None, :]
    dy = tl.load(dy_ptr + rowp, mask=tile, other=0.0).to(tl.float32)
    last = tl.load(last_ptr + b * N + offs_n, mask=nmask, other=0)
    sv = tl.load(p_ptr + b * N * D + last[:, None] * D + offs_d[None, :], mask=tile, other=0.0)
    h = offs_d // DH
    d = offs_d % DH
    optr = b * sob + h[None, :] * soh + offs_n[:, None] * son + d[None, :] * sod
    ov = tl.load(o_ptr + optr, mask=tile, other=0.0).to(tl.float32)
    gv = tl.load(g_ptr + b * D + offs_d, mask=dmask, other=0.0)
    d_o = tl.where(tile, dy * (gv[None, :] + sv.to(tl.float32)), 0.0)
    doptr = b * sdb + h[None, :] * sdh + offs_n[:, None] * sdn + d[None, :] * sdd
    tl.store(do_ptr + doptr, d_o.to(do_ptr.dtype.element_ty), mask=store_mask)
    tl.store(dsp_ptr + rowp, tl.where(tile, dy * ov, 0.0), mask=store_mask)
    # d l_j = sum of dy_i over the i whose window arg-max is j (i = j - e for e in [-W, W]).
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for e in range(-W, W + 1):
        src = offs_n - e
        sin = (src >= 0) & (src < N)
        sv_ok = sin & (tl.load(mask_ptr + b * N + src, mask=sin, other=0) != 0)
        best, arg = _local_max(l_ptr, mask_ptr, b, src, offs_d, dmask, N, D, W, BLOCK_N, BLOCK_D)
        dyi = tl.load(dy_ptr + b * N * D + src[:, None] * D + offs_d[None, :],
                      mask=sv_ok[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += tl.where(arg == offs_n[:, None], dyi, 0.0)
    tl.store(dl_ptr + rowp, tl.where(tile, acc, 0.0).to(dl_ptr.dtype.element_ty), mask=store_mask)


@triton.jit
def _global_bwd(k_ptr, mask_ptr, g_ptr, gp_ptr, lse_ptr, dgp_ptr, dq_ptr, dk_ptr,
                skb, skh, skn, skd, sqb, sqh, sqn, sqd, H, N, DH, scale,
                BLOCK_N: tl.constexpr, BLOCK_DH: tl.constexpr):
    # g' = sum_j a_j k_j, a = softmax(scale * g.k_j), g = mean_valid q. dq/dk written in dq/dk strides.
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_d = tl.arange(0, BLOCK_DH)
    dmask = offs_d < DH
    g = tl.load(g_ptr + pid * DH + offs_d, mask=dmask, other=0.0)
    gp = tl.load(gp_ptr + pid * DH + offs_d, mask=dmask, other=0.0)
    dgp = tl.load(dgp_ptr + pid * DH + offs_d, mask=dmask, other=0.0)
    lse = tl.load(lse_ptr + pid)
    c = tl.sum(dgp * gp, axis=0)
    dg = tl.zeros((BLOCK_DH,), tl.float32)
    cnt = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
        tile = valid[:, None] & dmask[None, :]
        kp = b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd
        kx = tl.load(k_ptr + kp, mask=tile, other=0.0).to(tl.float32)
        sc = tl.sum(kx * g[None, :], axis=1) * scale
        a = tl.where(valid, tl.exp(sc - lse), 0.0)
        dsc = a * (tl.sum(kx * dgp[None, :], axis=1) - c)
        dk = a[:, None] * dgp[None, :] + (dsc * scale)[:, None] * g[None, :]
        dkp = b * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :] * sqd
        tl.store(dk_ptr + dkp, dk.to(dk_ptr.dtype.element_ty), mask=nmask[:, None] & dmask[None, :])
        dg += tl.sum(dsc[:, None] * kx, axis=0) * scale
        cnt += valid.to(tl.float32)
    dq_row = dg / tl.maximum(tl.sum(cnt, axis=0), 1.0)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        valid = nmask & (tl.load(mask_ptr + b * N + offs_n, mask=nmask, other=0) != 0)
        dq = tl.where(valid[:, None], dq_row[None, :] + tl.zeros((BLOCK_N, BLOCK_DH), tl.float32), 0.0)
        dqp = b * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :] * sqd
        tl.store(dq_ptr + dqp, dq.to(dq_ptr.dtype.element_ty), mask=nmask[:, None] & dmask[None, :])


# ----------------------------------------------------------------------------------------------- launchers


def _blocks(N: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps). The interpreter pays ~2 ms per program: few, large programs."""
    if INTERPRET:
        return min(triton.next_power_of_2(N), 64), min(triton.next_power_of_2(D), 128), 4
    return 32, min(triton.next_power_of_2(D), 64), 4


def _aux(segment_ids: torch.Tensor, mask: torch.Tensor):
    """int8 mask, contiguous int64 segment ids, and the last index of each token's segment (B, N)."""
    seg = segment_ids.to(torch.int64).contiguous()
    seg_last = (torch.searchsorted(seg, seg, right=True) - 1).contiguous()  # (B, N) int64
    return mask.to(torch.int8).contiguous(), seg, seg_last


def global_forward(q, k, mask8):
    """Launch ``_global_fwd``: returns g' (B, H, Dh) float32, g (B, H, Dh) float32, lse (B, H) float32."""
    B, H, N, Dh = q.shape
    gp = empty((B, H, Dh), torch.float32, q.device)
    g = empty((B, H, Dh), torch.float32, q.device)
    lse = empty((B, H), torch.float32, q.device)
    block_n = min(triton.next_power_of_2(N), 64)
    launch(_global_fwd, (B * H,), q, k, mask8, gp, g, lse, *q.stride(), *k.stride(), H, N, Dh,
           1.0 / math.sqrt(Dh), BLOCK_N=block_n, BLOCK_DH=max(triton.next_power_of_2(Dh), 16))
    return gp, g, lse


def segmax_scan(s, seg, mask8, store_idx: bool):
    """Launch ``_segmax_scan``: segmented running max P (s dtype) and its arg-max PI (int32) or None."""
    B, N, D = s.shape
    block_n, block_d, warps = _blocks(N, D)
    p = empty(s.shape, s.dtype, s.device)
    pi = empty((B, N, D), torch.int32, s.device) if store_idx else p
    launch(_segmax_scan, (B, triton.cdiv(D, block_d)), s, seg, mask8, p, pi, N, D,
           STORE_IDX=store_idx, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps)
    return p, (pi if store_idx else None)


def mix_forward(o, l, p, seg_last, mask8, gmerged, window: int, terms: int):
    """Launch ``_mix`` (terms: 0 full, 1 local max only, 2 segment max only); returns (B, N, D)."""
    B, N, D = l.shape
    block_n, block_d, warps = _blocks(N, D)
    out = empty(l.shape, l.dtype, l.device)
    # The standalone poolings (terms 1, 2) never read o: any tensor and zero strides stand in for it.
    o_strides, dh = (o.stride(), o.shape[-1]) if terms == 0 else ((0, 0, 0, 0), 1)
    launch(_mix, (B, triton.cdiv(N, block_n), triton.cdiv(D, block_d)), o, l, p, seg_last, mask8, gmerged,
           out, *o_strides, N, D, dh, window, TERMS=terms, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps)
    return out


def ponet_forward(q, k, o, s, l, segment_ids, mask, window: int) -> torch.Tensor:
    """Fused PoNet mixing forward; inputs already validated; returns (B, N, D) in the input dtype."""
    B, H, N, Dh = q.shape
    mask8, seg, seg_last = _aux(segment_ids, mask)
    s, l = s.contiguous(), l.contiguous()
    gp, _, _ = global_forward(q, k, mask8)
    p, _ = segmax_scan(s, seg, mask8, store_idx=False)
    return mix_forward(o, l, p, seg_last, mask8, gp.reshape(B, H * Dh), window, terms=0)


def ponet_backward(dy, q, k, o, s, l, segment_ids, mask, window: int):
    """Gradients (dq, dk, do, ds, dl) of ``ponet_forward``; recomputes the poolings instead of storing."""
    B, H, N, Dh = q.shape
    D = H * Dh
    mask8, seg, seg_last = _aux(segment_ids, mask)
    s, l, dy = s.contiguous(), l.contiguous(), dy.contiguous()
    gp, g, lse = global_forward(q, k, mask8)
    p, pi = segmax_scan(s, seg, mask8, store_idx=True)
    d_o = empty((B, H, N, Dh), o.dtype, o.device)
    dsp = empty((B, N, D), torch.float32, s.device)
    dl = empty(l.shape, l.dtype, l.device)
    block_n, block_d, warps = _blocks(N, D)
    launch(_mix_bwd, (B, triton.cdiv(N, block_n), triton.cdiv(D, block_d)), dy, o, l, p, seg_last, mask8,
           gp.reshape(B, D), d_o, dsp, dl, *o.stride(), *d_o.stride(), N, D, Dh, window,
           BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps)
    # Segment max backward: the segment's summed gradient lands on its arg-max token (torch glue).
    last3 = seg_last[:, :, None].expand(B, N, D)  # (B, N, D)
    seg_arg = pi.gather(1, last3).to(torch.int64)  # arg-max of each token's segment
    seg_total = torch.zeros_like(dsp).scatter_add_(1, last3, dsp).gather(1, last3)
    pos = torch.arange(N, device=s.device)[None, :, None]
    ds = torch.where(seg_arg == pos, seg_total, torch.zeros_like(seg_total)).to(s.dtype)
    dgp = dsp.sum(1).reshape(B, H, Dh).contiguous()  # dL/dg' = sum_i dy_i * o_i
    dq = empty((B, H, N, Dh), q.dtype, q.device)
    dk = empty((B, H, N, Dh), k.dtype, k.device)
    launch(_global_bwd, (B * H,), k, mask8, g, gp, lse, dgp, dq, dk, *k.stride(), *dq.stride(), H, N, Dh,
           1.0 / math.sqrt(Dh), BLOCK_N=min(triton.next_power_of_2(N), 64),
           BLOCK_DH=max(triton.next_power_of_2(Dh), 16))
    return dq, dk, d_o, ds, dl

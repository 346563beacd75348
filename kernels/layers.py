"""``torch.nn`` layers over the kernels, shaped for the policy head: (B, N, D) tokens plus a key-padding mask.

Both blocks are post-norm (residual, then LayerNorm, as in PoNet/BERT) with an optional feed-forward
sublayer. Padded rows go through the residual path unchanged by the mixing (their mixed value is 0);
callers should ignore them.

    layer = PoNetLayer(dim=256, heads=4)
    y = layer(x, mask=valid, segment_ids=seg)  # x (B, N, 256) -> (B, N, 256)
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.attention import attention
from kernels.ponet import ponet_mixing


def _check_dims(dim: int, heads: int) -> None:
    if dim <= 0 or heads <= 0 or dim % heads:
        raise ValueError(f"dim must be a positive multiple of heads, got dim={dim}, heads={heads}")


def _check_input(x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected tokens of shape (B, N, {dim}), got {shape}")


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with a post-norm residual."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class PoNetLayer(nn.Module):
    """PoNet token mixing: Q, K, O (per head), S, L projections -> ``ponet_mixing`` -> output projection.

    One fused (D -> 5D) projection produces Q, K, O, S, L; O(N D^2) projections + O(N D) mixing.
    """

    def __init__(self, dim: int, heads: int, window: int = 1, ffn_mult: int = 4):
        super().__init__()
        _check_dims(dim, heads)
        self.dim, self.heads, self.window = dim, heads, window
        self.proj = nn.Linear(dim, 5 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult) if ffn_mult else None

    def forward(self, x: torch.Tensor, mask=None, segment_ids=None) -> torch.Tensor:
        _check_input(x, self.dim)
        B, N, D = x.shape
        q, k, o, s, l = self.proj(x).chunk(5, dim=-1)  # 5 x (B, N, D)
        q, k, o = (t.reshape(B, N, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, o))  # (B, H, N, Dh)
        mixed = ponet_mixing(q, k, o, s, l, segment_ids=segment_ids, mask=mask, window=self.window)
        y = self.norm(x + self.out_proj(mixed))
        return self.ffn(y) if self.ffn is not None else y


class AttentionBlock(nn.Module):
    """Multi-head self-attention through ``kernels.attention.attention`` (key padding, causal, prefix-LM)."""

    def __init__(self, dim: int, heads: int, causal: bool = False, ffn_mult: int = 4):
        super().__init__()
        _check_dims(dim, heads)
        self.dim, self.heads, self.causal = dim, heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult) if ffn_mult else None

    def forward(self, x: torch.Tensor, mask=None, prefix_len=None) -> torch.Tensor:
        _check_input(x, self.dim)
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        y = attention(q, k, v, mask=mask, causal=self.causal, prefix_len=prefix_len)
        y = y.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        y = self.norm(x + self.out_proj(y))
        return self.ffn(y) if self.ffn is not None else y

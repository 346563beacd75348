"""Ego3D position encoding (SpatialVLA): camera-frame 3D points per ViT patch, added to the patch tokens.

Each patch gets r*r points back-projected from (area down-sampled) depth through the camera intrinsics, so the
policy sees where in space a patch lies without any robot-camera calibration. See DESIGN.md section 4.

Conventions:
- pixel coordinates are continuous with the origin at the image's top-left corner (pixel i spans [i, i+1)), so
  rescaling K to another image size is a plain scale of fx, cx (by width ratio) and fy, cy (by height ratio).
  For intrinsics whose pixel centres sit at integer coordinates (OpenCV calibration), add 0.5 to cx and cy.
- invalid depth (0, negative, NaN, inf) never enters an average: a down-sampled cell averages only its valid
  depth pixels; a cell with none is invalid (its point is zero and masked out of the encoding), and a patch
  with no valid cell uses the learned "no depth" embedding, as does every patch of a camera without depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["backproject", "sinusoidal_features", "Ego3DEncoding", "image_hw"]


def image_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; raises ValueError naming the bad value."""
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        hw = tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return hw  # type: ignore[return-value]


def _check_geometry(hw: tuple[int, int], patch_size: int, reso: int) -> tuple[int, int]:
    if patch_size <= 0 or reso <= 0:
        raise ValueError(f"patch_size and reso must be positive, got patch_size={patch_size}, reso={reso}")
    if hw[0] % patch_size or hw[1] % patch_size:
        raise ValueError(f"image_size {hw} is not a multiple of patch_size {patch_size}")
    return hw[0] // patch_size, hw[1] // patch_size


def _pixel_centres(Hd: int, Wd: int, step: float, device: torch.device) -> torch.Tensor:
    """Homogeneous sub-cell centres (3, Hd*Wd), row-major: u = (j + 0.5) * step, v = (i + 0.5) * step."""
    v = (torch.arange(Hd, dtype=torch.float64) + 0.5) * step
    u = (torch.arange(Wd, dtype=torch.float64) + 0.5) * step
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)]).reshape(3, Hd * Wd)
    return pix.to(device=device, dtype=torch.float32)


def backproject(
    depth: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size: int | tuple[int, int],
    patch_size: int,
    reso: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame points of every patch: P = K^-1 [u v 1]^T * D at r*r sub-cell centres per patch.

    depth: (B, V, 1, H, W) metres; intrinsics: (B, V, 3, 3) for the depth image's (H, W); image_size: the
    network input size the patches are cut from (int or (H, W)). Returns
      points (B, V, P, 3*r*r) float32, P = Hp*Wp patches row-major, per patch the r*r sub-cells row-major with
             (x, y, z) innermost; zero where the cell has no valid depth;
      valid  (B, V, P, r*r) bool, whether each sub-cell had at least one valid depth pixel.
    """
    if depth.dim() != 5 or depth.shape[2] != 1:
        raise ValueError(f"depth must be (B, V, 1, H, W), got {tuple(depth.shape)}")
    B, V, _, H, W = depth.shape
    if intrinsics.shape != (B, V, 3, 3):
        raise ValueError(f"intrinsics must be (B, V, 3, 3) = {(B, V, 3, 3)}, got {tuple(intrinsics.shape)}")
    S_h, S_w = image_hw(image_size)
    Hp, Wp = _check_geometry((S_h, S_w), patch_size, reso)
    Hd, Wd = Hp * reso, Wp * reso
    dev = depth.device

    # Masked area down-sampling: mean of valid pixels = pool(D * m) / pool(m) (same windows, same weights).
    # nan_to_num + clamp zero every invalid pixel in two passes (cheaper than isfinite + where on 224^2).
    d = torch.nan_to_num(depth.reshape(B * V, 1, H, W).float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    num = F.adaptive_avg_pool2d(d, (Hd, Wd))
    den = F.adaptive_avg_pool2d((d > 0).float(), (Hd, Wd))
    cell_ok = den > 0
    d_ds = num / den.clamp_min(1e-12)  # (BV, 1, Hd, Wd); 0 where no valid pixel since num is 0 there

    # Rescale K from the depth image to the network input, then rays through the sub-cell centres.
    scale = torch.tensor([[S_w / W], [S_h / H], [1.0]], dtype=torch.float64, device=intrinsics.device)
    K = intrinsics.reshape(B * V, 3, 3).to(torch.float64) * scale  # fx, cx by width ratio; fy, cy by height
    Kinv, info = torch.linalg.inv_ex(K)
    bad = (info != 0) | ~torch.isfinite(Kinv).flatten(1).all(1)  # (BV,)
    if bool(bad.any()):
        where = [divmod(int(i), V) for i in bad.nonzero().flatten()[:4]]
        raise ValueError(f"intrinsics are singular or not finite for (batch, view) {where}")
    pix = _pixel_centres(Hd, Wd, patch_size / reso, dev)  # (3, Hd*Wd)
    rays = Kinv.to(device=dev, dtype=torch.float32) @ pix  # (BV, 3, Hd*Wd) = K^-1 [u v 1]^T
    pts = rays * d_ds.reshape(B * V, 1, Hd * Wd)  # (BV, 3, Hd*Wd)

    # (BV, 3, Hp, r, Wp, r) -> (BV, Hp, Wp, r, r, 3) -> (B, V, P, r*r*3)
    pts = pts.reshape(B * V, 3, Hp, reso, Wp, reso).permute(0, 2, 4, 3, 5, 1)
    points = pts.reshape(B, V, Hp * Wp, reso * reso * 3)
    valid = cell_ok.reshape(B * V, Hp, reso, Wp, reso).permute(0, 1, 3, 2, 4)
    return points, valid.reshape(B, V, Hp * Wp, reso * reso)


def sinusoidal_features(x: torch.Tensor, n_freqs: int = 8) -> torch.Tensor:
    """gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(n-1) x), cos(2^(n-1) x)] on the last dim, no pi."""
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    xf = x[..., None, :] * freqs[:, None]  # (..., n_freqs, C)
    sc = torch.stack([xf.sin(), xf.cos()], dim=-2)  # (..., n_freqs, 2, C)
    return torch.cat([x, sc.flatten(-3)], dim=-1)  # (..., C * (1 + 2 n_freqs))


class Ego3DEncoding(nn.Module):
    """Adds an MLP encoding of each patch's back-projected 3D points to the patch tokens.

    width: token width W; image_size / patch_size: the vision tower's input size and patch size; reso: points
    per patch side (r); centre / scale: p~ = (p - centre) / scale before the sinusoids (SpatialVLA: (0, 0, 2)
    and 2).
    """

    def __init__(
        self,
        width: int,
        image_size: int | tuple[int, int],
        patch_size: int,
        reso: int = 2,
        n_freqs: int = 8,
        centre: tuple[float, float, float] = (0.0, 0.0, 2.0),
        scale: float = 2.0,
    ) -> None:
        super().__init__()
        if width <= 0 or n_freqs < 0:
            raise ValueError(f"width must be > 0 and n_freqs >= 0, got width={width}, n_freqs={n_freqs}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        if len(centre) != 3:
            raise ValueError(f"centre must have 3 coordinates, got {centre!r}")
        self.image_size = image_hw(image_size)
        self.patch_size = int(patch_size)
        self.reso = int(reso)
        self.n_freqs = int(n_freqs)
        Hp, Wp = _check_geometry(self.image_size, self.patch_size, self.reso)
        self.n_patches = Hp * Wp
        self.scale = float(scale)
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32), persistent=False)
        self.in_features = 3 * self.reso**2 * (1 + 2 * self.n_freqs)  # 204 for r=2, 8 freqs
        self.mlp = nn.Sequential(
            nn.Linear(self.in_features, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width)
        )
        self.no_depth = nn.Parameter(torch.zeros(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small gain: the encoding starts as a tiny perturbation of the pretrained patch tokens.
        for lin in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(lin.weight, gain=0.01)
            nn.init.zeros_(lin.bias)
        self.mlp[1].reset_parameters()
        nn.init.normal_(self.no_depth, std=0.01)

    def encode(
        self,
        depth: torch.Tensor | None,
        intrinsics: torch.Tensor | None,
        has_depth: torch.Tensor | None = None,
        batch_views: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The encoding alone, (B, V, P, W) float32; depth=None: no camera has depth (needs batch_views)."""
        W = self.no_depth.shape[0]
        if depth is None:
            if batch_views is None:
                raise ValueError("batch_views=(B, V) is required when depth is None")
            B, V = batch_views
            return self.no_depth.float().expand(B, V, self.n_patches, W)
        if intrinsics is None:
            raise ValueError("intrinsics (B, V, 3, 3) are required with depth")
        B, V = depth.shape[:2]
        if has_depth is not None:
            if has_depth.shape != (B, V):
                raise ValueError(f"has_depth must be (B, V) = {(B, V)}, got {tuple(has_depth.shape)}")
            has_depth = has_depth.to(device=depth.device, dtype=torch.bool)
            # Cameras without depth may carry placeholder (zero, NaN) depth and intrinsics: neutralise them.
            zero = torch.zeros((), device=depth.device, dtype=depth.dtype)
            depth = torch.where(has_depth[:, :, None, None, None], depth, zero)
            eye = torch.eye(3, device=intrinsics.device, dtype=intrinsics.dtype)
            intrinsics = torch.where(has_depth.to(intrinsics.device)[:, :, None, None], intrinsics, eye)
        points, valid = backproject(depth, intrinsics, self.image_size, self.patch_size, self.reso)
        P = points.shape[2]
        pn = (points.reshape(B, V, P, -1, 3) - self.centre) / self.scale  # (B, V, P, r*r, 3)
        feats = sinusoidal_features(pn.reshape(B, V, P, -1), self.n_freqs)  # (B, V, P, 204)
        # Zero every feature of an invalid cell: (B, V, P, 17, r*r, 3) * (B, V, P, 1, r*r, 1)
        feats = feats.reshape(B, V, P, 1 + 2 * self.n_freqs, self.reso**2, 3) * valid[:, :, :, None, :, None]
        feats = feats.reshape(B, V, P, self.in_features)
        w = self.mlp[0].weight
        enc = self.mlp(feats.to(w.dtype)).float()  # (B, V, P, W)
        patch_ok = valid.any(-1)  # (B, V, P); cameras without depth have no valid cell after neutralising
        return torch.where(patch_ok[..., None], enc, self.no_depth.float())

    def forward(
        self,
        patch_tokens: torch.Tensor,
        depth: torch.Tensor | None,
        intrinsics: torch.Tensor | None,
        has_depth: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """patch_tokens (B, V, P, W) or (B*V, P, W) (patch tokens only, no CLS) -> tokens + encoding.

        depth (B, V, 1, H, W) metres or None (no camera has depth); intrinsics (B, V, 3, 3) for the depth
        image; has_depth (B, V) bool: cameras flagged False get the "no depth" embedding whatever their depth
        holds. The output has the shape and dtype of patch_tokens.
        """
        if depth is not None:
            B, V = depth.shape[:2]
        elif patch_tokens.dim() == 4:
            B, V = patch_tokens.shape[:2]
        else:
            B, V = patch_tokens.shape[0], 1
        expected = (B, V, self.n_patches, self.no_depth.shape[0])
        if patch_tokens.shape != expected and patch_tokens.shape != (B * V, *expected[2:]):
            raise ValueError(
                f"patch_tokens must be (B, V, P, W) = {expected} or (B*V, P, W), "
                f"got {tuple(patch_tokens.shape)}"
            )
        enc = self.encode(depth, intrinsics, has_depth, batch_views=(B, V))
        return patch_tokens + enc.reshape(patch_tokens.shape).to(patch_tokens.dtype)

"""Spatial-softmax keypoints: a small convolutional path that finds small things (goal markers, pucks, handles).

The CLIP tower sees 16 px patches at 112 px, where Meta-World's goal markers are 1-2 px: it cannot say where
they are (scripts/probe_privileged.py). A policy given the object and goal positions solves 0.94 of held-out
MT10 episodes from the same 20 demonstrations per task (docs/policy_experiments.md), so the missing piece is
localisation. This path follows the deep spatial autoencoder / visuomotor-policy recipe (Levine et al. 2016,
Finn et al. 2016): a few convolutions at half the camera's resolution, one heatmap per keypoint, a softmax over
its pixels and the expected image coordinates. Each keypoint also takes the expected depth under its softmax and
is lifted to a 3-D point in the camera frame with the intrinsics, as Ego3D does for patches.

    enc = KeypointEncoder(keypoints=32)
    feats = enc(rgb, depth, intrinsics, has_depth)   # (B, V*K, 5): u, v in [-1, 1], camera-frame x, y, z / 2 m
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 5  # u, v, x, y, z
DEPTH_SCALE_M = 2.0  # camera-frame coordinates are divided by this so that they are O(1) at table distance


class KeypointEncoder(nn.Module):
    """uint8 RGB (+ metric depth) -> K spatial-softmax keypoints per camera, (B, V*K, 5).

    Without depth (has_depth False, or depth None) the 3-D part is zero and only u, v carry information.
    The heatmaps are at half the input resolution; the soft argmax is sub-pixel.
    """

    def __init__(self, keypoints: int = 32, channels: int = 32):
        super().__init__()
        if keypoints < 1 or channels < 1:
            raise ValueError(f"keypoints={keypoints} and channels={channels} must be >= 1")
        self.keypoints = keypoints
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(4, c // 2, 5, stride=2, padding=2), nn.GroupNorm(1, c // 2), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, padding=1), nn.GroupNorm(1, c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(1, c), nn.ReLU(inplace=True),
            nn.Conv2d(c, keypoints, 1),
        )
        # Per-keypoint softmax temperature (log scale), learned: sharp peaks for small targets.
        self.log_temp = nn.Parameter(torch.zeros(keypoints))

    def heatmaps(self, rgb: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """(N, H, W, 3) uint8, (N, H, W) metres or None -> softmax heatmaps (N, K, H/2, W/2)."""
        x = rgb.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        d = torch.zeros_like(x[:, :1]) if depth is None else (depth[:, None].float().clamp(0, 4) - 1.5)
        if d.shape[-2:] != x.shape[-2:]:
            d = F.interpolate(d, size=x.shape[-2:], mode="nearest")
        logits = self.net(torch.cat([x, d], dim=1))  # (N, K, h, w)
        N, K, h, w = logits.shape
        logits = logits * self.log_temp.exp()[None, :, None, None]
        return logits.reshape(N, K, h * w).softmax(-1).reshape(N, K, h, w)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor | None = None,
                intrinsics: torch.Tensor | None = None, has_depth: torch.Tensor | None = None,
                return_heatmaps: bool = False):
        """rgb (B, V, H, W, 3) uint8, depth (B, V, H, W) m, intrinsics (B, V, 3, 3) for the depth size,
        has_depth (B,) bool -> (B, V*K, 5), and with return_heatmaps the softmax maps (B, V, K, H/2, W/2)."""
        B, V, H, W, _ = rgb.shape
        use_depth = depth is not None and intrinsics is not None
        dep = depth.reshape(B * V, *depth.shape[2:]) if use_depth else None
        hm = self.heatmaps(rgb.reshape(B * V, H, W, 3), dep)  # (BV, K, h, w)
        h, w = hm.shape[-2:]
        # Pixel centres of the heatmap grid in [-1, 1] (align_corners=False convention).
        ys = (torch.arange(h, device=hm.device, dtype=hm.dtype) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=hm.device, dtype=hm.dtype) + 0.5) / w * 2 - 1
        u = (hm.sum(2) * xs).sum(-1)  # (BV, K)
        v = (hm.sum(3) * ys).sum(-1)
        if not use_depth:
            xyz = torch.zeros(*u.shape, 3, device=u.device, dtype=u.dtype)
        else:
            Hd, Wd = dep.shape[-2:]
            z_map = F.adaptive_avg_pool2d(dep[:, None].float(), (h, w))[:, 0]  # (BV, h, w) metres
            z = (hm * z_map[:, None]).sum((-1, -2))  # (BV, K) expected depth
            K_ = intrinsics.reshape(B * V, 3, 3).float()
            px = (u + 1) / 2 * Wd  # depth-image pixel coordinates
            py = (v + 1) / 2 * Hd
            fx, fy, cx, cy = K_[:, 0, 0, None], K_[:, 1, 1, None], K_[:, 0, 2, None], K_[:, 1, 2, None]
            xyz = torch.stack([(px - cx) / fx * z, (py - cy) / fy * z, z], dim=-1) / DEPTH_SCALE_M
            if has_depth is not None:
                keep = has_depth.to(xyz.dtype).repeat_interleave(V)[:, None, None]
                xyz = xyz * keep
        out = torch.cat([u[..., None], v[..., None], xyz], dim=-1)  # (BV, K, 5)
        out = out.reshape(B, V * self.keypoints, FEATURES)
        return (out, hm.reshape(B, V, *hm.shape[1:])) if return_heatmaps else out


class KeypointReadout(nn.Module):
    """Training-time readout of `n` 3-D positions from the first `n` keypoints of the first camera: position j is
    an affine map of keypoint j's camera-frame point (the camera's pose, learned), nothing else.

    Tying each supervised position to one keypoint gives its heatmap a direct signal (find *this* object),
    alongside the heatmap cross-entropy (`keypoint_loss`; docs/policy_experiments.md rows L1-L5). Only the 3-D part
    is read: it does not move when the image is shifted with its intrinsics (training augmentation)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(torch.eye(3).repeat(n, 1, 1) * DEPTH_SCALE_M)  # (n, 3 out, 3 in)
        self.bias = nn.Parameter(torch.zeros(n, 3))

    @torch.no_grad()
    def init_from_pose(self, world_from_camera) -> None:
        """Start each map at the camera's pose (4x4, OpenCV axes): keypoint j's camera-frame point, in world
        coordinates, so the readout is right as soon as the keypoint is. (From an identity start it fitted the
        rotation within minutes, row L2; the maps, not the readout, were the slow part.)"""
        T = torch.as_tensor(world_from_camera, dtype=self.weight.dtype)
        self.weight.copy_((T[:3, :3] * DEPTH_SCALE_M).expand(self.n, 3, 3))
        self.bias.copy_(T[:3, 3].expand(self.n, 3))

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(B, V*K, 5) -> (B, 3n) positions, in the units of the targets (metres in simulation)."""
        xyz = keypoints[:, : self.n, 2:5]  # (B, n, 3)
        return (torch.einsum("bni,noi->bno", xyz, self.weight) + self.bias).flatten(1)


def project_to_cells(points: torch.Tensor, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                     image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (B, n, 3) -> flat heatmap cell index (B, n) and in-view mask (B, n).

    world_from_camera (4, 4) in OpenCV axes; intrinsics (B, 3, 3) for an image of image_hw pixels (after any
    shift augmentation, so the cells follow the shifted image); grid_hw the heatmap's size."""
    T = world_from_camera.to(points)
    cam = (points - T[:3, 3]) @ T[:3, :3]  # R^T (p - t), row vectors
    z = cam[..., 2]
    K = intrinsics.to(points)
    safe_z = z.clamp_min(1e-6)
    px = K[:, None, 0, 0] * cam[..., 0] / safe_z + K[:, None, 0, 2]
    py = K[:, None, 1, 1] * cam[..., 1] / safe_z + K[:, None, 1, 2]
    (H, W), (h, w) = image_hw, grid_hw
    gx = torch.floor(px / W * w).long()
    gy = torch.floor(py / H * h).long()
    ok = (z > 0) & (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
    return gy.clamp(0, h - 1) * w + gx.clamp(0, w - 1), ok


# Loss weights (docs/policy_experiments.md): the heatmaps' cross-entropy (nats: 8.3 for a uniform 64x64 map) must
# lead; at 0.1 beside the readout's regression the maps had not found their targets after 500 steps.
HEATMAP_WEIGHT = 1.0
READOUT_SCALE_M = 0.05  # readout errors are measured in units of 5 cm


def keypoint_loss(positions: torch.Tensor, maps: torch.Tensor, points: torch.Tensor,
                  world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                  image_hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the supervised keypoints, over the targets in view of the camera only (a point the
    camera cannot see -- Meta-World's unused second object at the origin -- cannot be found in its image):
    cross-entropy of keypoint j's softmax map (B, n, h, w) at the cell where world point j (B, n, 3) projects,
    plus the smooth-L1 error of the readout's positions (B, 3n) in units of 5 cm.
    -> (HEATMAP_WEIGHT x CE + readout error, {"heatmap_ce", "readout_cm"}) (0 when no point is in view)."""
    B, n, h, w = maps.shape
    cell, ok = project_to_cells(points, world_from_camera, intrinsics, image_hw, (h, w))
    count = ok.sum().clamp_min(1)
    logp = maps.flatten(2).float().clamp_min(1e-12).log().gather(2, cell[..., None])[..., 0]  # (B, n)
    ce = -(logp * ok).sum() / count
    err = positions.float().reshape(B, n, 3) - points
    readout = (F.smooth_l1_loss(err / READOUT_SCALE_M, torch.zeros_like(err), reduction="none").mean(-1) * ok).sum()
    readout = readout / count
    cm = float((err.detach().norm(dim=-1) * ok).sum() / count * 100)
    return HEATMAP_WEIGHT * ce + readout, {"heatmap_ce": float(ce.detach()), "readout_cm": cm}

"""Optional monocular depth for cameras without a depth sensor (SpatialVLA estimates depth with ZoeDepth).

Any ``transformers`` depth-estimation model saved in a LOCAL directory (``config.json`` + weights, and ideally
the ``preprocessor_config.json`` of its image processor) can fill in depth. Ego3D needs metres, so only metric
models are accepted by default: ZoeDepth, GLPN, and Depth Anything with ``depth_estimation_type="metric"``. A
model that predicts relative (inverse) depth, e.g. DPT or relative Depth Anything, is refused unless
``metric=True`` says its output is metres.

Pre-processing is done in torch on the model's device (resize as the DPT image processor sizes it, then
normalise with the processor's mean/std), not with the slower PIL image processor; ZoeDepth's border padding
and flip averaging are skipped. The estimate is resized back (bilinear) to the requested size.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vla.errors import UserError

__all__ = ["MonocularDepth", "fill_missing_depth", "is_metric_config"]

_METRIC_TYPES = {"zoedepth", "glpn"}


def is_metric_config(config) -> bool:
    """Whether a transformers depth config predicts metres (rather than relative inverse depth)."""
    if config.model_type in _METRIC_TYPES:
        return True
    return getattr(config, "depth_estimation_type", None) == "metric"


def _multiple(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


class MonocularDepth:
    """Callable: images (N, 3, H, W) (float in [0, 1] or uint8) -> depth (N, 1, H, W) float32 metres."""

    def __init__(self, model: torch.nn.Module, *, mean, std, size: tuple[int, int],
                 keep_aspect_ratio: bool = False, multiple_of: int = 1) -> None:
        self.model = model.eval()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.size = (int(size[0]), int(size[1]))
        self.keep_aspect_ratio = bool(keep_aspect_ratio)
        self.multiple_of = max(1, int(multiple_of))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, metric: bool | None = None) -> MonocularDepth:
        """Load a depth-estimation model from a local directory (never the hub)."""
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"depth model directory {path!r} has no config.json (only local models are loaded)")
        from transformers import AutoConfig, AutoModelForDepthEstimation

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if metric is None:
            metric = is_metric_config(config)
        if not metric:
            raise UserError(
                f"depth model {path!r} (model_type={config.model_type!r}, depth_estimation_type="
                f"{getattr(config, 'depth_estimation_type', None)!r}) predicts relative depth; Ego3D needs metres: "
                "use a metric model (ZoeDepth, metric Depth Anything) or pass metric=True if its output is metres"
            )
        model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
        model = model.to(device=device, dtype=dtype)
        # Without a saved image processor: DPT's defaults, at the config's image size when it has one.
        side = getattr(config, "image_size", None)
        mean, std, keep, mult = (0.5,) * 3, (0.5,) * 3, False, 1
        size = (side, side) if isinstance(side, int) else (384, 384)
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
            s = proc.size
            size = (s["height"], s["width"]) if s.get("height") else (s["shortest_edge"], s["shortest_edge"])
            keep = bool(getattr(proc, "keep_aspect_ratio", False))
            mult = int(getattr(proc, "ensure_multiple_of", 1) or 1)
        return cls(model, mean=mean, std=std, size=size, keep_aspect_ratio=keep, multiple_of=mult)

    def input_size(self, H: int, W: int) -> tuple[int, int]:
        """Network input size for an (H, W) image, as transformers' DPT image processor computes it."""
        sh, sw = self.size[0] / H, self.size[1] / W
        if self.keep_aspect_ratio:  # scale as little as possible, same factor on both axes
            if abs(1 - sw) < abs(1 - sh):
                sh = sw
            else:
                sw = sh
        return _multiple(sh * H, self.multiple_of), _multiple(sw * W, self.multiple_of)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=self.input_size(*x.shape[-2:]), mode="bicubic", align_corners=False)
        return ((x.clamp(0, 1) - self.mean) / self.std).to(self.dtype)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Depth (N, 1, *out_size) in metres; out_size defaults to the images' (H, W)."""
        out_size = tuple(images.shape[-2:]) if out_size is None else out_size
        pred = self.model(pixel_values=self.preprocess(images)).predicted_depth  # (N, h, w)
        if pred.dim() == 3:
            pred = pred[:, None]
        depth = F.interpolate(pred.float(), size=out_size, mode="bilinear", align_corners=False)
        return depth.to(images.device)


def fill_missing_depth(
    images: torch.Tensor,
    depth: torch.Tensor | None,
    has_depth: torch.Tensor | None,
    estimator: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate depth for every camera flagged without it; returns (depth (B, V, 1, H, W), has_depth all True).

    images (B, V, 3, H, W); depth (B, V, 1, Hd, Wd) or None (then no camera has depth and the estimate is made
    at the images' size). The estimate is produced at the depth tensor's size, so the intrinsics passed on to
    Ego3D must be those of that size for every camera.
    """
    B, V = images.shape[:2]
    if has_depth is None:
        has_depth = torch.full((B, V), depth is not None, dtype=torch.bool, device=images.device)
    if has_depth.shape != (B, V):
        raise ValueError(f"has_depth must be (B, V) = {(B, V)}, got {tuple(has_depth.shape)}")
    out_size = tuple(images.shape[-2:]) if depth is None else tuple(depth.shape[-2:])
    if depth is None:
        depth = torch.zeros(B, V, 1, *out_size, device=images.device)
    missing = (~has_depth.to(torch.bool)).nonzero()  # (M, 2) (batch, view) pairs
    if len(missing):
        est = estimator(images[missing[:, 0], missing[:, 1]], out_size)  # (M, 1, Hd, Wd)
        depth = depth.clone()
        depth[missing[:, 0], missing[:, 1]] = est.to(depth.dtype)
    return depth, torch.ones_like(has_depth, dtype=torch.bool)

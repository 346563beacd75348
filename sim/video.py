"""Episode videos: RGB beside colour-mapped depth, written as GIF (Pillow; no ffmpeg needed)."""

from __future__ import annotations

import numpy as np

from vla.files import atomic_path


def colorize_depth(depth: np.ndarray, near: float = 0.3, far: float = 3.0) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with the viridis map; near is yellow, far is dark."""
    from matplotlib import colormaps

    t = 1.0 - np.clip((depth - near) / (far - near), 0.0, 1.0)
    return (colormaps["viridis"](t)[..., :3] * 255).astype(np.uint8)


def side_by_side(rgb: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) [+ (H, W)] -> (H, W or 2W, 3) uint8."""
    return rgb.copy() if depth is None else np.concatenate([rgb, colorize_depth(depth)], axis=1)


def write_video(path: str, frames: list[np.ndarray], fps: int = 20) -> str:
    """Write frames as an animated GIF, atomically (temp file in the same folder, then rename)."""
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, frames, format="GIF", duration=1000 / fps, loop=0)
    return path

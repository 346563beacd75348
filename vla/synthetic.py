"""Small generated image folders (solid colours with noise) for demos and tests: no downloads needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30),
    "purple": (150, 30, 180), "cyan": (30, 220, 220), "orange": (240, 140, 20), "grey": (128, 128, 128),
}


def make_colour_folder(root: str | Path, classes: list[str] | None = None, per_class: int = 6, size: int = 40,
                       noise: float = 25.0, seed: int = 0) -> Path:
    """Write `root/<colour>/<i>.png` images; returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in classes or list(COLOURS):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(COLOURS[name])[None, None] + rng.normal(0, noise, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root

"""The on-disk episode format (layout documented in sim.schema): write one episode, read it back lazily.

Frames are stored one per npz member so that a training sample decompresses one frame (~0.3 ms at 128 px),
not the whole episode; depth is uint16 millimetres (lossless to 1 mm, ~3x smaller than float32 compressed).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sim import schema
from vla.files import atomic_path
from vla.files import write_json_atomic as write_json


def episode_stem(task: str, seed: int) -> str:
    return f"{task}/{task}_s{seed:06d}"


def write_episode(root: str | os.PathLike, meta: dict[str, Any], frames_rgb: list[np.ndarray],
                  frames_depth: list[np.ndarray] | None, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write ROOT/<stem>.npz then its .json (the commit marker), both atomically; -> the metadata written."""
    stem = Path(root) / episode_stem(meta["task"], meta["seed"])
    members = {k: np.asarray(v) for k, v in arrays.items()}
    for t, rgb in enumerate(frames_rgb):
        members[f"rgb_{t:04d}"] = rgb
    for t, depth in enumerate(frames_depth or []):
        members[f"depth_{t:04d}"] = np.round(np.clip(depth, 0, 65.535) * schema.DEPTH_SCALE).astype(np.uint16)
    with atomic_path(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **members)
    meta = dict(meta, file=f"{episode_stem(meta['task'], meta['seed'])}.npz", length=len(frames_rgb),
                has_depth=frames_depth is not None)
    write_json(stem.with_suffix(".json"), meta)
    return meta


def write_failure(root: str | os.PathLike, task: str, seed: int, steps: int) -> None:
    """Remember a seed the expert failed on, so a resumed run neither retries nor forgets it."""
    write_json(Path(root) / f"{episode_stem(task, seed)}.failed.json", {"task": task, "seed": seed, "steps": steps})


def scan(root: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """-> (metadata of complete episodes, failure records), sorted by (task, seed)."""
    ok, failed = [], []
    for p in sorted(Path(root).glob("*/*.json")):
        rec = json.loads(p.read_text())
        (failed if p.name.endswith(".failed.json") else ok).append(rec)
    key = lambda r: (r["task"], r["seed"])  # noqa: E731
    return sorted(ok, key=key), sorted(failed, key=key)


class EpisodeReader:
    """Lazy access to one episode file: small arrays on open, frames on demand.

    Holds no file handle between calls, so it is safe to share across DataLoader worker processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with np.load(self.path, allow_pickle=False) as z:
            self.actions = z["actions"]
            self.state = z["state"]
            self.intrinsics = z["intrinsics"]
            self.raw_obs = z["raw_obs"] if "raw_obs" in z.files else None  # older folders lack it
            self.has_depth = "depth_0000" in z.files
        self.length = len(self.actions)

    def frame(self, t: int, views: list[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """-> rgb (V, H, W, 3) uint8, depth (V, H, W) float32 metres (None if not recorded)."""
        if not 0 <= t < self.length:
            raise IndexError(f"frame {t} outside episode {self.path} of length {self.length}")
        try:
            with np.load(self.path, allow_pickle=False) as z:
                rgb = z[f"rgb_{t:04d}"]
                depth = z[f"depth_{t:04d}"].astype(np.float32) / schema.DEPTH_SCALE if self.has_depth else None
        except (zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"episode file {self.path} is damaged at frame {t}: {e}") from e
        if views is not None:
            rgb = rgb[views]
            depth = depth[views] if depth is not None else None
        return rgb, depth

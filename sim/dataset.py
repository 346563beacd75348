"""A torch Dataset over episode data: one sample per (episode, step), with the chunk of future actions.

    ds = EpisodeDataset("data/mt10", split="train", chunk_len=8)
    sample = ds[0]   # keys below; torch.utils.data.DataLoader's default collate batches them

Sample: rgb (V, H, W, 3) uint8, depth (V, H, W) float32 m, intrinsics (V, 3, 3) float32, state (4,) float32,
instruction str, action (4,) float32, actions (T, 4) float32 = actions t..t+T-1 padded by repeating the
episode's last action, action_mask (T,) bool (False on padding), episode_index / task_id / frame_index int,
task str; privileged (P,) float32 where the folder recorded Meta-World's state (training-time targets, see
sim.schema.PRIVILEGED_TARGETS). Episodes are split into train/val by seed (sim.schema.is_val_seed).

Several folders (expert demonstrations, noise-injected ones, DAgger rounds) train as one dataset:
`EpisodeDataset(["data/expert", "data/dagger1"])`, or `vla train --data data/expert,data/dagger1`.
A LeRobot dataset folder (it holds meta/info.json) opens as `sim.lerobot.LeRobotSource`.
Other data (another simulator, teleoperation logs) plugs in by implementing `EpisodeSource`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sim import schema
from sim.episodes import EpisodeReader
from vla.errors import UserError


class EpisodeSource(Protocol):
    """Where episodes come from: a list of metadata, and per-episode arrays and frames."""

    cameras: tuple[str, ...]

    def episodes(self) -> list[dict[str, Any]]:
        """Metadata per episode; needs 'task', 'task_id', 'seed', 'length', 'instruction'."""

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """'actions' (L, 4), 'state' (L, 4), 'intrinsics' (V, 3, 3) (where known) of episode `index`; optional
        'privileged' (L, P): training-only targets (sim.schema.PRIVILEGED_TARGETS), never policy inputs."""

    def frame(self, index: int, t: int, views: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """rgb (V', H, W, 3) uint8 and depth (V', H, W) float32 metres (or None) of step t, cameras `views`."""


class NpzEpisodeSource:
    """The `vla collect` layout (sim.schema): manifest.json + one npz per episode."""

    def __init__(self, root: str | os.PathLike, cache_episodes: int = 256):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.exists():
            raise UserError(f"{self.root} has no manifest.json: is it a `vla collect` output folder?")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != "vla-sim-episodes":
            raise UserError(f"{manifest_path} is not a vla-sim episode manifest (format={manifest.get('format')!r})")
        self.manifest = manifest
        self.cameras = tuple(manifest["cameras"])
        self._episodes = manifest["episodes"]
        self._readers: dict[int, EpisodeReader] = {}  # small arrays only; frames are read per sample
        self._cache_size = cache_episodes

    def episodes(self) -> list[dict[str, Any]]:
        return self._episodes

    def _reader(self, index: int) -> EpisodeReader:
        r = self._readers.get(index)
        if r is None:
            if len(self._readers) >= self._cache_size:
                self._readers.pop(next(iter(self._readers)))
            r = self._readers[index] = EpisodeReader(self.root / self._episodes[index]["file"])
        return r

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        r = self._reader(index)
        out = {"actions": r.actions, "state": r.state, "intrinsics": r.intrinsics}
        if r.raw_obs is not None:
            out["privileged"] = r.raw_obs[:, schema.PRIVILEGED_INDEX]
        return out

    def frame(self, index: int, t: int, views: list[int]):
        return self._reader(index).frame(t, views)


class ConcatSource:
    """Several episode sources as one (DAgger trains on the union of its rounds); they must share cameras."""

    def __init__(self, sources: list[EpisodeSource]):
        if not sources:
            raise UserError("no episode folders given")
        cams = [tuple(s.cameras) for s in sources]
        if len(set(cams)) != 1:
            raise UserError(f"episode folders recorded different cameras {cams}: train on folders of one layout")
        layouts = {(m.get("image_size"), m.get("depth")) for m in (getattr(s, "manifest", None) for s in sources) if m}
        if len(layouts) > 1:
            raise UserError(f"episode folders differ in (image_size, depth): {sorted(layouts, key=str)}")
        self.sources, self.cameras = sources, cams[0]
        self._where = [(k, i) for k, s in enumerate(sources) for i in range(len(s.episodes()))]
        self._episodes = [e for s in sources for e in s.episodes()]

    def episodes(self) -> list[dict[str, Any]]:
        return self._episodes

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        k, i = self._where[index]
        return self.sources[k].arrays(i)

    def frame(self, index: int, t: int, views: list[int]):
        k, i = self._where[index]
        return self.sources[k].frame(i, t, views)


def open_source(root: str | os.PathLike | EpisodeSource | list) -> EpisodeSource:
    """A folder, a comma-separated list of folders, a list of folders or sources, or a source -> one source."""
    if hasattr(root, "frame"):
        return root
    if isinstance(root, (str, os.PathLike)) and "," in os.fspath(root):
        root = [r for r in os.fspath(root).split(",") if r]
    if isinstance(root, (list, tuple)):
        parts = [open_source(r) for r in root]
        return parts[0] if len(parts) == 1 else ConcatSource(parts)
    from sim.lerobot import LeRobotSource, is_lerobot_dataset

    return LeRobotSource(root) if is_lerobot_dataset(root) else NpzEpisodeSource(root)


class EpisodeDataset(torch.utils.data.Dataset):
    """Samples (episode, step) with future-action chunks; see the module docstring for the keys."""

    def __init__(self, root: str | os.PathLike | EpisodeSource | list, split: str = "train", chunk_len: int = 8,
                 cameras: tuple[str, ...] | list[str] | None = None, val_every: int = 10):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split={split!r} is not 'train', 'val' or 'all'")
        if chunk_len < 1:
            raise ValueError(f"chunk_len={chunk_len} must be >= 1")
        if val_every < 2:
            raise ValueError(f"val_every={val_every} must be >= 2")
        self.source = open_source(root)
        recorded = tuple(self.source.cameras)
        cameras = tuple(cameras) if cameras else recorded
        missing = [c for c in cameras if c not in recorded]
        if missing:
            raise ValueError(f"cameras {missing} were not recorded; this dataset has {list(recorded)}")
        self.cameras, self.views = cameras, [recorded.index(c) for c in cameras]
        self.split, self.chunk_len = split, chunk_len
        eps = self.source.episodes()
        self.episode_indices = [i for i, e in enumerate(eps)
                                if split == "all" or schema.is_val_seed(e["seed"], val_every) == (split == "val")]
        lengths = np.array([eps[i]["length"] for i in self.episode_indices], dtype=np.int64)
        # flat sample index -> (episode, step) through the cumulative lengths
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._meta = eps

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """Flat sample index -> (episode index in the source, step)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} outside dataset of {len(self)}")
        k = int(np.searchsorted(self._starts, idx, side="right") - 1)
        return self.episode_indices[k], int(idx - self._starts[k])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        ep, t = self.locate(int(idx))
        meta, arrays = self._meta[ep], self.source.arrays(ep)
        actions = arrays["actions"]
        length = len(actions)
        steps = np.arange(t, t + self.chunk_len)
        mask = steps < length
        chunk = actions[np.minimum(steps, length - 1)]  # (T, 4): pad by repeating the last action
        rgb, depth = self.source.frame(ep, t, self.views)
        sample = {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb)),
            "state": torch.from_numpy(np.ascontiguousarray(arrays["state"][t])),
            "instruction": meta["instruction"],
            "action": torch.from_numpy(actions[t].copy()),
            "actions": torch.from_numpy(np.ascontiguousarray(chunk)),
            "action_mask": torch.from_numpy(mask),
            "episode_index": ep,
            "task_id": int(meta["task_id"]),
            "task": meta["task"],
            "frame_index": t,
        }
        if arrays.get("intrinsics") is not None:  # absent where no camera model was recorded (most LeRobot data)
            sample["intrinsics"] = torch.from_numpy(np.ascontiguousarray(arrays["intrinsics"][self.views]))
        if depth is not None:
            sample["depth"] = torch.from_numpy(np.ascontiguousarray(depth))
        if arrays.get("privileged") is not None:
            sample["privileged"] = torch.from_numpy(np.ascontiguousarray(arrays["privileged"][t]))
        return sample

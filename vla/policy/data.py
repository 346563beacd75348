"""What training reads: a small `PolicyDataset` protocol, batching, augmentation, and a synthetic dataset.

Any map-style dataset whose samples have these keys plugs in (`sim.dataset.EpisodeDataset` does):
    rgb (V, H, W, 3) uint8, state (S,) float32, instruction str, actions (T, A) float32 (the chunk from this
    step), action_mask (T,) bool (False on padding past the episode end); optional depth (V, H, W) float32
    metres and intrinsics (V, 3, 3) float32 for the depth image; optional privileged (P,) float32, training-time
    regression targets (object and goal positions in simulation) for a policy with `privileged_dim` P.
`PositionCache` stands in for a dataset when perception is frozen: its samples carry the position estimates
instead of the images. `dataset_actions` / `dataset_states` read the arrays for grid fitting and statistics
without decoding images when the dataset can give them directly (`all_actions()` / `all_states()`, or an
EpisodeDataset's source).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vla.errors import UserError

REQUIRED_KEYS = ("rgb", "state", "instruction", "actions", "action_mask")


@runtime_checkable
class PolicyDataset(Protocol):
    cameras: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def dataset_actions(ds: PolicyDataset) -> np.ndarray:
    """Every action of the dataset, (N, A) float64, for fitting the action grid."""
    return _columns(ds, "all_actions", "actions")


def dataset_states(ds: PolicyDataset) -> np.ndarray:
    return _columns(ds, "all_states", "state")


def dataset_privileged(ds: PolicyDataset) -> np.ndarray:
    """Every step's privileged targets, (N, P) float64, for their normalisation statistics."""
    return _columns(ds, "all_privileged", "privileged")


def dataset_task_ids(ds: PolicyDataset) -> np.ndarray:
    """Every step's task id, (N,) int64, in the order of `dataset_privileged` (0 where samples carry none)."""
    source = getattr(ds, "source", None)
    if source is not None and hasattr(source, "arrays") and hasattr(ds, "episode_indices"):
        eps = source.episodes()  # metadata only: no episode file is opened again
        return np.concatenate([np.full(int(eps[i]["length"]), int(eps[i]["task_id"]), np.int64)
                               for i in ds.episode_indices])
    return np.array([int(ds[i].get("task_id", 0)) for i in range(len(ds))], np.int64)


def dataset_instructions(ds: PolicyDataset) -> dict[str, str]:
    """The distinct instructions of the dataset -> the task each belongs to (episode metadata's "task"; an
    instruction is its own task where the dataset does not say)."""
    source = getattr(ds, "source", None)
    if source is not None and hasattr(source, "episodes") and hasattr(ds, "episode_indices"):
        eps = source.episodes()
        return {eps[i]["instruction"]: str(eps[i].get("task", eps[i]["instruction"])) for i in ds.episode_indices}
    if isinstance(getattr(ds, "instructions", None), (list, tuple)):
        return {t: t for t in ds.instructions}
    out = {}
    for i in range(len(ds)):  # generic fallback: decodes every sample
        s = ds[i]
        out[s["instruction"]] = str(s.get("task", s["instruction"]))
    return out


def dataset_camera_poses(ds: PolicyDataset) -> np.ndarray | None:
    """(V, 4, 4) world-from-camera poses recorded with the episodes (`vla collect` writes them; the cameras are
    fixed), or None when the dataset does not say (older folders, other sources)."""
    source = getattr(ds, "source", None)
    eps = source.episodes() if source is not None and hasattr(source, "episodes") else []
    poses = [e.get("camera_poses") for e in eps]
    if not eps or any(p is None for p in poses):
        return None
    first = np.asarray(poses[0], dtype=np.float64)
    for e, p in zip(eps, poses):
        if not np.allclose(np.asarray(p), first, atol=1e-4):
            raise UserError(f"episode {e.get('file', e.get('seed'))} has camera poses that differ from the first "
                            "episode's: keypoint readouts assume fixed cameras")
    return first


def _columns(ds, method: str, key: str) -> np.ndarray:
    if hasattr(ds, method):
        return np.asarray(getattr(ds, method)(), dtype=np.float64)
    source = getattr(ds, "source", None)
    if source is not None and hasattr(source, "arrays") and hasattr(ds, "episode_indices"):
        return np.concatenate([np.asarray(source.arrays(i)[key], dtype=np.float64) for i in ds.episode_indices])
    rows = []
    for i in range(len(ds)):  # generic fallback: decodes every sample once
        s = ds[i]
        v = np.asarray(s[key], dtype=np.float64)
        rows.append(v[np.asarray(s["action_mask"], dtype=bool)][:1] if key == "actions" else v[None])
    if not rows:
        raise UserError("the dataset is empty")
    return np.concatenate(rows)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch; depth/intrinsics only when every sample has them, privileged targets (and
    the task ids they are standardised by) likewise."""
    cached = "positions" in samples[0]  # a PositionCache: position estimates instead of images
    missing = [k for k in REQUIRED_KEYS if k not in samples[0] and not (cached and k == "rgb")]
    if missing:
        raise UserError(f"dataset samples lack keys {missing} (see vla.policy.data.PolicyDataset)")
    t = lambda x: x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))  # noqa: E731
    keys = ("positions" if cached else "rgb", "state", "actions", "action_mask")
    out = {k: torch.stack([t(s[k]) for s in samples]) for k in keys}
    out["instruction"] = [s["instruction"] for s in samples]
    if all("depth" in s and "intrinsics" in s for s in samples):
        out["depth"] = torch.stack([t(s["depth"]) for s in samples]).float()
        out["intrinsics"] = torch.stack([t(s["intrinsics"]) for s in samples]).float()
    if all("privileged" in s for s in samples):
        out["privileged"] = torch.stack([t(s["privileged"]) for s in samples]).float()
        out["task_id"] = torch.tensor([int(s.get("task_id", 0)) for s in samples])
    return out


def augment(batch: dict[str, Any], generator: torch.Generator, shift: float = 0.06,
            jitter: float = 0.2, first: int = 0, total: int | None = None) -> dict[str, Any]:
    """Random shift (replicate-pad then crop, the same offset for rgb and depth, intrinsics moved to match) and
    colour jitter (brightness, contrast, saturation) on uint8 images; returns a new batch.

    The random draws are made for `total` rows (default: this batch) and rows first..first+B are used, so a
    DDP rank holding a slice of the global batch augments it exactly as one process would."""
    rgb = batch["rgb"]
    B, V, H, W, _ = rgb.shape
    total = B if total is None else total
    rows = slice(first, first + B)
    out = dict(batch)
    x = rgb.permute(0, 1, 4, 2, 3).float().reshape(B * V, 3, H, W)  # (BV, 3, H, W)
    depth = batch.get("depth")
    pad = int(round(shift * max(H, W)))
    if pad > 0:
        t = torch.randint(-pad, pad + 1, (total, 2), generator=generator)[rows]  # per sample (ty, tx)
        x = _translate(x, t.repeat_interleave(V, 0))
        if depth is not None:
            h, w = depth.shape[-2:]
            td = torch.stack([torch.round(t[:, 0] * h / H), torch.round(t[:, 1] * w / W)], dim=1).long()
            d = _translate(depth.reshape(B * V, 1, h, w).float(), td.repeat_interleave(V, 0))
            out["depth"] = d.reshape(depth.shape)
            K = batch["intrinsics"].clone().float()  # (B, V, 3, 3) for the depth size
            K[..., 0, 2] -= td[:, None, 1].float()  # content moves by -t: so does the principal point
            K[..., 1, 2] -= td[:, None, 0].float()
            out["intrinsics"] = K
    if jitter > 0:
        u = lambda: 1 + (torch.rand(total, V, generator=generator)[rows].reshape(B * V, 1, 1, 1) * 2 - 1) * jitter  # noqa: E731,E501
        b, c, s = u(), u(), u()
        x = x * b
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
        gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
        x = (x - gray) * s + gray
    out["rgb"] = x.round().clamp(0, 255).to(torch.uint8).reshape(B, V, 3, H, W).permute(0, 1, 3, 4, 2)
    return out


def _translate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, clamp(i + ty), clamp(j + tx)] for x (N, C, h, w), t (N, 2) = (ty, tx): a shift
    with replicated borders (= replicate-pad then crop)."""
    N, C, h, w = x.shape
    rows = (t[:, 0, None] + torch.arange(h)[None]).clamp(0, h - 1)  # (N, h)
    cols = (t[:, 1, None] + torch.arange(w)[None]).clamp(0, w - 1)  # (N, w)
    n = torch.arange(N)[:, None, None]
    return x.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, C, h, w)


class SyntheticDataset:
    """In-memory random samples (images, depth, states, instructions, action chunks): for tests and smoke runs.

    Each sample's chunk is random, so fitting it means memorising the observation -> tokens map; the last
    step(s) of every fourth chunk are padding (action_mask False), as at an episode's end.
    """

    def __init__(self, n: int = 32, cameras: tuple[str, ...] = ("corner",), image_size: tuple[int, int] = (32, 32),
                 chunk_len: int = 4, action_dim: int = 4, state_dim: int = 4, depth: bool = True, seed: int = 0):
        rng = np.random.default_rng(seed)
        V, (H, W) = len(cameras), image_size
        self.cameras = tuple(cameras)
        self.rgb = rng.integers(0, 256, (n, V, H, W, 3), dtype=np.uint8)
        self.depth = rng.uniform(0.5, 3.0, (n, V, H, W)).astype(np.float32) if depth else None
        f = 0.8 * max(H, W)
        self.intrinsics = np.tile(np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float32), (n, V, 1, 1))
        self.state = rng.normal(0, 1, (n, state_dim)).astype(np.float32)
        words = ["push the puck", "open the drawer", "press the button", "reach the goal"]
        self.instructions = [words[i % len(words)] for i in range(n)]
        a = np.clip(rng.normal(0, 0.4, (n, chunk_len, action_dim)), -1, 1)
        a[..., -1] = np.where(rng.random((n, chunk_len)) < 0.5, -1.0, 1.0)  # gripper-like last dim
        self.actions = a.astype(np.float32)
        self.mask = np.ones((n, chunk_len), dtype=bool)
        self.mask[::4, chunk_len // 2 + 1:] = False

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = {"rgb": torch.from_numpy(self.rgb[i]), "state": torch.from_numpy(self.state[i]),
             "instruction": self.instructions[i], "actions": torch.from_numpy(self.actions[i]),
             "action_mask": torch.from_numpy(self.mask[i]), "intrinsics": torch.from_numpy(self.intrinsics[i])}
        if self.depth is not None:
            s["depth"] = torch.from_numpy(self.depth[i])
        return s

    def all_actions(self) -> np.ndarray:
        return self.actions[self.mask].astype(np.float64)  # (N valid steps, A)

    def all_states(self) -> np.ndarray:
        return self.state.astype(np.float64)


class PositionCache:
    """A dataset with its images replaced by a frozen keypoint policy's position estimates (MLP-head training).

    One batched inference pass over the frames (un-augmented) when built; the MLP head then trains on
    (state, positions, instruction, actions) held in memory, at thousands of samples a second instead of the
    tens an image pipeline gives. With `path` the arrays are stored there (safetensors, atomically) and reused
    while the perception weights and the dataset's length are unchanged, so a resumed run skips the pass.
    Samples keep the base dataset's order and keys, less rgb/depth/intrinsics, plus positions (P,) float32.
    """

    KEYS = ("state", "actions", "action_mask", "privileged", "task_id", "positions")

    def __init__(self, base: PolicyDataset, policy, path=None, batch_size: int = 64, progress: bool = True):
        self.cameras = tuple(base.cameras)
        key = self.fingerprint(policy, len(base))
        loaded = self._load(path, key)
        if loaded is None:
            loaded = self._estimate(base, policy, batch_size, progress)
            if path is not None:
                self._save(path, key, *loaded)
        self.arrays, self.instructions = loaded

    @staticmethod
    def fingerprint(policy, n: int) -> str:
        """Changes with the perception weights and the number of samples."""
        import hashlib

        h = hashlib.sha256(str(n).encode())
        weights = {**policy.keypoint_encoder.state_dict(prefix="encoder."),
                   **policy.privileged_head.state_dict(prefix="readout.")}
        for name, t in sorted(weights.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()

    @staticmethod
    def _load(path, key: str):
        import json
        from pathlib import Path

        from safetensors import safe_open

        if path is None or not Path(path).is_file():
            return None
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != key:
                return None
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        names = json.loads(meta["instructions"])
        return arrays, [names[i] for i in arrays.pop("instruction_id").tolist()]

    @staticmethod
    def _save(path, key: str, arrays: dict[str, torch.Tensor], instructions: list[str]) -> None:
        import json

        from safetensors.torch import save_file

        from vla.files import atomic_path

        names = list(dict.fromkeys(instructions))
        index = {t: i for i, t in enumerate(names)}
        ids = torch.tensor([index[t] for t in instructions], dtype=torch.int64)
        with atomic_path(path) as tmp:
            save_file({**{k: v.contiguous() for k, v in arrays.items()}, "instruction_id": ids}, str(tmp),
                      metadata={"fingerprint": key, "instructions": json.dumps(names)})

    @staticmethod
    @torch.inference_mode()
    def _estimate(base, policy, batch_size: int, progress: bool):
        from tqdm import tqdm

        cols: dict[str, list[torch.Tensor]] = {}
        instructions: list[str] = []
        n, dev = len(base), policy.device
        for start in tqdm(range(0, n, batch_size), desc="position estimates", unit="batch", disable=not progress):
            b = collate([base[i] for i in range(start, min(start + batch_size, n))])
            d, K = b.get("depth"), b.get("intrinsics")
            b["positions"] = policy.estimate_positions(b["rgb"].to(dev), None if d is None else d.to(dev),
                                                       None if K is None else K.to(dev)).float().cpu()
            instructions += b["instruction"]
            for k in PositionCache.KEYS:
                if k in b:
                    cols.setdefault(k, []).append(b[k])
        if not cols:
            raise UserError("the dataset is empty: no positions to cache")
        return {k: torch.cat(v) for k, v in cols.items()}, instructions

    def __len__(self) -> int:
        return len(self.instructions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = {k: v[i] for k, v in self.arrays.items()}
        s["instruction"] = self.instructions[i]
        return s

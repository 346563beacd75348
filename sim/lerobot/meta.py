"""LeRobot dataset metadata (v3.0 and v2.1), read apart from the frames, and the feature mapping onto our samples.

v3.0: meta/info.json, meta/tasks.parquet, meta/episodes/chunk-*/file-*.parquet (per episode: length, tasks, data
file + global row range, per video key its file and from/to timestamps); many episodes share one data parquet
and one MP4 per camera. v2.1 (and v2.0, the same layout): one parquet and one MP4 per camera per episode,
meta/episodes.jsonl, meta/tasks.jsonl. `LeRobotMeta.episodes` gives both the same shape (`Episode`).

Feature mapping (`FeatureMap`): cameras <- `observation.images.*` (video or image dtype), state <-
`observation.state`, action <- `action`, instruction <- the task string; depth <- `observation.depth.<camera>`
and intrinsics <- `observation.intrinsics.<camera>` where present (what `vla dataset export` writes).
`parse_features("cameras=observation.images.top,observation.images.wrist,state=observation.state")` overrides
any of them; a value without `key=` continues the previous key's list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.errors import UserError

INFO = "meta/info.json"
SUPPORTED = ("v2.0", "v2.1", "v3.0")
IMAGE_PREFIX = "observation.images."
DEPTH_PREFIX = "observation.depth."
INTRINSICS_PREFIX = "observation.intrinsics."
MAP_KEYS = ("cameras", "state", "action", "instruction", "depth", "intrinsics")


def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """A folder holding meta/info.json is a LeRobot dataset."""
    return (Path(path) / INFO).is_file()


def parse_features(spec: str | None) -> dict[str, list[str]]:
    """'cameras=a,b,state=s' -> {'cameras': ['a', 'b'], 'state': ['s']}; UserError naming a bad key."""
    out: dict[str, list[str]] = {}
    key = None
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in MAP_KEYS:
                raise UserError(f"--features {spec!r}: unknown key {key!r}; use {', '.join(MAP_KEYS)}")
            out[key] = [value] if value else []
        elif key is None:
            raise UserError(f"--features {spec!r}: {part!r} needs a key, e.g. cameras={part}")
        else:
            out[key].append(part)
    return out


def camera_name(feature: str) -> str:
    """'observation.images.top' -> 'top' (the name our policy config and the server use)."""
    if feature.startswith(IMAGE_PREFIX):
        return feature[len(IMAGE_PREFIX):]
    return feature.rsplit(".", 1)[-1]


@dataclass
class Episode:
    index: int  # episode_index
    length: int
    tasks: list[str]
    data_file: str  # relative to the root
    rows: tuple[int, int] | None  # v3.0: global `index` range [from, to); v2.1: the whole file
    videos: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (file, from_timestamp)
    extra: dict[str, Any] = field(default_factory=dict)  # our own columns (vla/seed, vla/task, ...)


@dataclass
class FeatureMap:
    cameras: list[str]
    state: str
    action: str
    instruction: str  # "task" or a string feature
    depth: list[str] | None
    intrinsics: list[str] | None

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(camera_name(c) for c in self.cameras)


class LeRobotMeta:
    """info.json, tasks and the episode index of a local LeRobot dataset."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.info_path = self.root / INFO
        if not self.info_path.is_file():
            raise UserError(f"{self.root} has no {INFO}: not a LeRobot dataset")
        try:
            self.info = json.loads(self.info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.info_path}: not readable JSON: {e}") from None
        self.version = str(self.info.get("codebase_version"))
        if self.version not in SUPPORTED:
            raise UserError(f"{self.info_path}: codebase_version {self.version!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED)})")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise UserError(f"{self.info_path}: missing {key!r}")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes_v3() if self.version == "v3.0" else self._load_episodes_v2()

    # --- helpers ---------------------------------------------------------------------------------------
    def _path(self, rel: str) -> Path:
        return self.root / rel

    def _read_parquet(self, path: Path, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        if not path.is_file():
            raise UserError(f"{path}: missing (named by {self.info_path.name})")
        try:
            return pq.read_table(path, columns=columns)
        except Exception as e:  # ArrowInvalid, OSError: a damaged or truncated file
            raise UserError(f"{path}: not a readable parquet file: {str(e).splitlines()[0]}") from None

    def _jsonl(self, rel: str) -> list[dict]:
        path = self._path(rel)
        if not path.is_file():
            raise UserError(f"{path}: missing ({self.version} keeps its {Path(rel).stem} there)")
        try:
            return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON lines: {e}") from None

    def _load_tasks(self) -> dict[int, str]:
        if self.version != "v3.0":
            return {int(r["task_index"]): str(r["task"]) for r in self._jsonl("meta/tasks.jsonl")}
        table = self._read_parquet(self._path("meta/tasks.parquet"))
        cols = table.column_names
        if "task_index" not in cols:
            raise UserError(f"{self.root / 'meta/tasks.parquet'}: no task_index column (columns: {cols})")
        text = [c for c in cols if c != "task_index" and str(table.schema.field(c).type) in ("string", "large_string")]
        if not text:
            raise UserError(f"{self.root / 'meta/tasks.parquet'}: no task string column (columns: {cols})")
        name = "task" if "task" in text else text[0]  # pandas writes its index as `task` or __index_level_0__
        return dict(zip(table.column("task_index").to_pylist(), table.column(name).to_pylist()))

    def _load_episodes_v2(self) -> list[Episode]:
        chunks = int(self.info.get("chunks_size", 1000))
        video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        out = []
        for r in sorted(self._jsonl("meta/episodes.jsonl"), key=lambda r: r["episode_index"]):
            ep = int(r["episode_index"])
            fmt = dict(episode_chunk=ep // chunks, episode_index=ep)
            videos = {k: (self.info["video_path"].format(video_key=k, **fmt), 0.0) for k in video_keys}
            out.append(Episode(ep, int(r["length"]), list(r.get("tasks", [])), self.info["data_path"].format(**fmt),
                               None, videos))
        return out

    def _load_episodes_v3(self) -> list[Episode]:
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise UserError(f"{self.root / 'meta/episodes'}: no chunk-*/file-*.parquet episode index")
        video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        out = []
        for path in files:
            table = self._read_parquet(path)
            cols = set(table.column_names)
            need = {"episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index"} | {f"videos/{k}/{c}" for k in video_keys
                                           for c in ("chunk_index", "file_index", "from_timestamp")}
            missing = sorted(need - cols)
            if missing:
                raise UserError(f"{path}: episode index lacks columns {missing}")
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            for r in table.select(keep).to_pylist():
                data = self.info["data_path"].format(chunk_index=r["data/chunk_index"],
                                                     file_index=r["data/file_index"])
                videos = {k: (self.info["video_path"].format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                                             file_index=r[f"videos/{k}/file_index"]),
                              float(r[f"videos/{k}/from_timestamp"])) for k in video_keys}
                tasks = r.get("tasks") or []
                out.append(Episode(int(r["episode_index"]), int(r["length"]), list(tasks), data,
                                   (int(r["dataset_from_index"]), int(r["dataset_to_index"])), videos,
                                   {k[4:]: v for k, v in r.items() if k.startswith("vla/")}))
        return sorted(out, key=lambda e: e.index)

    # --- the mapping -----------------------------------------------------------------------------------
    def feature(self, name: str, role: str) -> dict:
        f = self.features.get(name)
        if f is None:
            raise UserError(f"{self.info_path}: feature {name!r} ({role}) is not in the dataset; it has "
                            f"{sorted(self.features)}; choose another with --features {role}=NAME")
        return f

    def vector_dim(self, name: str, role: str) -> int:
        f = self.feature(name, role)
        shape = tuple(f.get("shape") or ())
        if f.get("dtype") in ("video", "image", "string") or len(shape) != 1 or shape[0] < 1:
            raise UserError(f"{self.info_path}: feature {name!r} ({role}) must be a 1-D numeric vector, got dtype "
                            f"{f.get('dtype')!r} shape {list(shape)}")
        return int(shape[0])

    def image_hw(self, name: str) -> tuple[int, int]:
        f = self.feature(name, "cameras")
        if f.get("dtype") not in ("video", "image"):
            raise UserError(f"{self.info_path}: camera feature {name!r} has dtype {f.get('dtype')!r}, not video "
                            "or image")
        shape, names = list(f.get("shape") or []), list(f.get("names") or [])
        if len(shape) != 3:
            raise UserError(f"{self.info_path}: camera feature {name!r} has shape {shape}, not (H, W, 3) or "
                            "(3, H, W)")
        if names[:1] == ["channels"] or (len(names) != 3 and shape[0] == 3 and shape[2] != 3):
            c, h, w = shape
        else:
            h, w, c = shape
        if c != 3:
            raise UserError(f"{self.info_path}: camera feature {name!r} has {c} channels (shape {shape}); only RGB "
                            "(3) is supported")
        return int(h), int(w)

    def resolve(self, overrides: dict[str, list[str]] | None = None) -> FeatureMap:
        """The feature mapping: defaults from the features present, `overrides` from `parse_features`."""
        o = overrides or {}
        cams = o.get("cameras") or [k for k, f in self.features.items()
                                    if f.get("dtype") in ("video", "image") and k.startswith(IMAGE_PREFIX)]
        if not cams:
            cams = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        if not cams:
            raise UserError(f"{self.info_path}: no camera feature (dtype video or image); the policy needs at "
                            "least one (name it with --features cameras=NAME)")
        recorded = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        for c in cams:
            if c not in self.features:
                raise UserError(f"{self.info_path}: camera feature {c!r} named in --features is not in the dataset; "
                                f"its cameras are {recorded}")
        sizes = {c: self.image_hw(c) for c in cams}
        if len(set(sizes.values())) > 1:
            raise UserError(f"{self.info_path}: cameras {cams} differ in size {sorted(set(sizes.values()))}; map "
                            "cameras of one size with --features cameras=...")
        names = [camera_name(c) for c in cams]
        if len(set(names)) != len(names):
            raise UserError(f"{self.info_path}: cameras {cams} share a name once their prefix is cut: {names}")
        state = (o.get("state") or ["observation.state"])[0]
        action = (o.get("action") or ["action"])[0]
        self.vector_dim(state, "state")
        self.vector_dim(action, "action")
        instruction = (o.get("instruction") or ["task"])[0]
        if instruction != "task" and self.feature(instruction, "instruction").get("dtype") != "string":
            raise UserError(f"{self.info_path}: feature {instruction!r} (instruction) is not a string feature")
        depth = self._per_camera(o, "depth", DEPTH_PREFIX, names)
        if depth is not None:
            for d, c in zip(depth, cams):
                f = self.feature(d, "depth")
                if list(f.get("shape") or [])[:2] != list(sizes[c]) or f.get("dtype") in ("video", "image", "string"):
                    raise UserError(f"{self.info_path}: depth feature {d!r} must be numeric (H, W) = "
                                    f"{list(sizes[c])} like camera {c!r}, got dtype {f.get('dtype')!r} shape "
                                    f"{f.get('shape')}")
        intrinsics = self._per_camera(o, "intrinsics", INTRINSICS_PREFIX, names)
        if intrinsics is not None:
            for k in intrinsics:
                if list(self.feature(k, "intrinsics").get("shape") or []) != [3, 3]:
                    raise UserError(f"{self.info_path}: intrinsics feature {k!r} must have shape (3, 3), got "
                                    f"{self.features[k].get('shape')}")
        return FeatureMap(cams, state, action, instruction, depth, intrinsics)

    def _per_camera(self, o: dict, role: str, prefix: str, names: list[str]) -> list[str] | None:
        if role in o:
            keys = o[role]
            if keys and len(keys) != len(names):
                raise UserError(f"--features {role}=...: give one feature per camera ({len(names)}: {names}), got "
                                f"{keys}")
            for k in keys:
                self.feature(k, role)
            return keys or None
        keys = [prefix + n for n in names]
        return keys if all(k in self.features for k in keys) else None

    def depth_scale(self, name: str) -> float:
        """Stored depth units per metre: `info.depth_scale` (ours), `info.unit` mm -> 1000, else metres (1)."""
        info = self.features[name].get("info") or {}
        if "depth_scale" in info:
            return float(info["depth_scale"])
        if str(info.get("unit", "")).lower() in ("mm", "millimetre", "millimeter"):
            return 1000.0
        return 1000.0 if np.dtype(self.features[name]["dtype"]).kind in "ui" else 1.0

"""Write our episodes (`vla collect` layout, or any `EpisodeSource`) as a LeRobot v3.0 dataset.

    export_lerobot("data/mt10", "data/mt10_lerobot", codec="av1")   # `vla dataset export --format lerobot`

What is written, following LeRobot's own v3.0 layout so that its loader, viewer and training scripts open it:
    meta/info.json         codebase_version v3.0, fps, features (dtype, shape, names; video info)
    meta/stats.json        per feature min / max / mean / std / count (+ q01 / q99 for vectors); images per
                           channel in [0, 1], shape (3, 1, 1), as LeRobot computes them
    meta/tasks.parquet     task_index + the task string (the pandas index, as LeRobot reads it)
    meta/episodes/chunk-000/file-000.parquet   per episode: tasks, length, data file and row range, per camera
                           the video file and from/to timestamps; plus our vla/task, vla/task_id, vla/seed,
                           vla/success so a round trip keeps the Meta-World task and the train/val split
    data/chunk-000/file-NNN.parquet   one row per frame: observation.state, action, observation.depth.<camera>
                           (uint16, its units per metre in the feature's info.depth_scale: lossless),
                           observation.intrinsics.<camera> (3, 3), timestamp, frame_index, episode_index,
                           index, task_index; row groups of 2 rows (a sample decodes its depth map's group); a new
                           file past ~100 MB
    videos/observation.images.<camera>/chunk-000/file-NNN.mp4   all episodes back to back (a new file past
                           ~200 MB); codec av1 (LeRobot's default: libsvtav1 crf 30, key frame every 2 frames),
                           h264, or lossless (H.264 RGB, qp 0: the exact pixels)

The dataset is built in a temporary folder beside DST and renamed into place at the end: a crash leaves no
half dataset under DST, and nothing is ever written into the source folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sim import schema
from sim.lerobot.meta import DEPTH_PREFIX, IMAGE_PREFIX, INTRINSICS_PREFIX
from sim.lerobot.video import CODECS, VideoWriter, video_info
from vla.errors import UserError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200
# Rows per parquet row group. A sample's depth map is read by decoding its whole row group: at 128 px (zstd, no
# dictionary for depth) that costs 0.5 / 0.7 / 1.1 ms of CPU per random sample with 1 / 2 / 4 rows per group, and the
# file is 3.5x / 2.3x / 1.7x the size of one group per episode (measured 2026-12-01; docs/benchmarks.md).
ROW_GROUP = 2
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
STATE_NAMES = ["x", "y", "z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


def _chunk_file(n: int) -> dict[str, int]:
    return {"chunk_index": n // CHUNKS_SIZE, "file_index": n % CHUNKS_SIZE}


class _Moments:
    """Running min / max / sum / sum of squares over axis 0 (per-channel for images), float64."""

    def __init__(self):
        self.n, self.s, self.ss, self.lo, self.hi = 0, 0.0, 0.0, None, None

    def add(self, x: np.ndarray) -> None:  # x (N, ...) samples along axis 0
        x = np.asarray(x, dtype=np.float64)
        self.n += len(x)
        self.s = self.s + x.sum(0)
        self.ss = self.ss + (x * x).sum(0)
        lo, hi = x.min(0), x.max(0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def stats(self) -> dict[str, Any]:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))
        return {"min": self.lo, "max": self.hi, "mean": mean, "std": std, "count": [self.n]}


def _tolist(d: dict) -> dict:
    return {k: (np.asarray(v).tolist() if not isinstance(v, list) else v) for k, v in d.items()}


def _open_source(src):
    from sim.dataset import NpzEpisodeSource

    return src if hasattr(src, "frame") else NpzEpisodeSource(src)


def export_lerobot(src, dst: str | os.PathLike, codec: str = "av1", fps: int = 80, robot_type: str = "sawyer",
                   progress: bool = True) -> dict[str, Any]:
    """Write `src` (a `vla collect` folder or an EpisodeSource) to `dst` as LeRobot v3.0; -> info.json's dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if codec not in CODECS:
        raise UserError(f"--codec {codec!r}: choose one of {sorted(CODECS)}")
    source = _open_source(src)
    dst = Path(dst)
    src_root = Path(getattr(source, "root", "") or "")
    if dst.exists():
        raise UserError(f"{dst} already exists: choose a new folder (a dataset is never written over)")
    if src_root and (dst.resolve() == src_root.resolve() or src_root.resolve() in dst.resolve().parents):
        raise UserError(f"{dst} is inside the source folder {src_root}: write the dataset elsewhere")
    episodes = source.episodes()
    if not episodes:
        raise UserError(f"{src_root or src}: no episodes to export")
    cams = list(source.cameras)
    views = list(range(len(cams)))
    rgb0, depth0 = source.frame(0, 0, views)
    V, H, W, _ = rgb0.shape
    has_depth = depth0 is not None
    state_dim = source.arrays(0)["state"].shape[1]
    action_dim = source.arrays(0)["actions"].shape[1]

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    writers: dict[str, VideoWriter] = {}
    try:
        features = _features(cams, H, W, state_dim, action_dim, has_depth)
        schema_ = _data_schema(features)
        tasks: dict[str, int] = {}
        vkeys = [IMAGE_PREFIX + c for c in cams]
        vfile = dict.fromkeys(vkeys, 0)
        dfile, dwriter, dbytes = 0, None, 0
        moments = {k: _Moments() for k in features}
        vectors: dict[str, list[np.ndarray]] = {"observation.state": [], "action": []}
        ep_rows, total = [], 0
        bar = tqdm(total=sum(int(e["length"]) for e in episodes), desc="export", unit="frame", disable=not progress)
        for i, meta in enumerate(episodes):
            arrays = source.arrays(i)
            L = int(meta["length"])
            state, actions = np.asarray(arrays["state"], np.float32), np.asarray(arrays["actions"], np.float32)
            if state.shape != (L, state_dim) or actions.shape != (L, action_dim):
                raise UserError(f"{src_root}: episode {i} ({meta.get('file', meta['task'])}) has state "
                                f"{state.shape} / actions {actions.shape}, expected ({L}, {state_dim}) / "
                                f"({L}, {action_dim})")
            text = str(meta["instruction"])
            task_index = tasks.setdefault(text, len(tasks))
            row: dict[str, Any] = {"episode_index": i, "tasks": [text], "length": L}
            # --- frames: video per camera, depth into the parquet columns -------------------------------------
            depth_cols = {c: [] for c in cams} if has_depth else {}
            for k in vkeys:
                if k not in writers:
                    writers[k] = VideoWriter(tmp / VIDEO_PATH.format(video_key=k, **_chunk_file(vfile[k])), fps,
                                             H, W, codec)
                row[f"videos/{k}/chunk_index"] = _chunk_file(vfile[k])["chunk_index"]
                row[f"videos/{k}/file_index"] = _chunk_file(vfile[k])["file_index"]
                row[f"videos/{k}/from_timestamp"] = writers[k].count / fps
            for t in range(L):
                rgb, depth = source.frame(i, t, views)
                for v, k in enumerate(vkeys):
                    writers[k].write(rgb[v])
                    moments[k].add(rgb[v].reshape(-1, 3) / 255.0)
                if has_depth:
                    for v, c in enumerate(cams):
                        mm = np.round(np.clip(depth[v], 0, 65.535) * schema.DEPTH_SCALE).astype(np.uint16)
                        depth_cols[c].append(mm)
                bar.update(1)
            for k in vkeys:
                row[f"videos/{k}/to_timestamp"] = writers[k].count / fps
            # --- the episode's rows ----------------------------------------------------------------------------
            cols: dict[str, Any] = {"observation.state": state, "action": actions}
            if has_depth:
                for c in cams:
                    cols[DEPTH_PREFIX + c] = np.stack(depth_cols[c])  # (L, H, W) uint16 mm
            K = arrays.get("intrinsics")
            if K is not None:
                for v, c in enumerate(cams):
                    cols[INTRINSICS_PREFIX + c] = np.repeat(np.asarray(K[v], np.float32)[None], L, 0)
            cols["timestamp"] = (np.arange(L) / fps).astype(np.float32)
            cols["frame_index"] = np.arange(L, dtype=np.int64)
            cols["episode_index"] = np.full(L, i, np.int64)
            cols["index"] = np.arange(total, total + L, dtype=np.int64)
            cols["task_index"] = np.full(L, task_index, np.int64)
            for k, x in cols.items():  # depth: one scalar over all pixels (stored units); others per dimension
                moments[k].add(x.reshape(-1, 1) if k.startswith(DEPTH_PREFIX) else x.reshape(L, *features[k]["shape"]))
            vectors["observation.state"].append(state)
            vectors["action"].append(actions)
            table = pa.table({k: _arrow(cols[k], features[k]) for k in schema_.names}, schema=schema_)
            if dwriter is not None and dbytes + table.nbytes > DATA_FILE_MB * 2**20:
                dwriter.close()
                dwriter, dbytes, dfile = None, 0, dfile + 1
            if dwriter is None:
                path = tmp / DATA_PATH.format(**_chunk_file(dfile))
                path.parent.mkdir(parents=True, exist_ok=True)
                dwriter = pq.ParquetWriter(path, schema_, compression="zstd", use_dictionary=[
                    n for n in schema_.names if not n.startswith(DEPTH_PREFIX)])  # depth: plain (no repeats to share)
            dwriter.write_table(table, row_group_size=ROW_GROUP)
            dbytes += table.nbytes
            row.update({"data/chunk_index": _chunk_file(dfile)["chunk_index"],
                        "data/file_index": _chunk_file(dfile)["file_index"],
                        "dataset_from_index": total, "dataset_to_index": total + L,
                        "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "vla/task": str(meta["task"]), "vla/task_id": int(meta.get("task_id", 0)),
                        "vla/seed": int(meta["seed"]), "vla/success": bool(meta.get("success", True))})
            ep_rows.append(row)
            total += L
            for k in vkeys:  # roll over to a new MP4 at an episode boundary once this one is big enough
                if writers[k].bytes > VIDEO_FILE_MB * 2**20:
                    writers.pop(k).close()
                    vfile[k] += 1
        bar.close()
        if dwriter is not None:
            dwriter.close()
        while writers:
            writers.popitem()[1].close()
        for k in vkeys:
            features[k]["info"] = video_info(tmp / VIDEO_PATH.format(video_key=k, **_chunk_file(0)))
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
                "total_frames": total, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
                "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": int(fps),
                "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
                "features": features}
        stats = {}
        for k, m in moments.items():
            st = m.stats()
            if features[k]["dtype"] == "video":  # per channel in [0, 1], shaped (3, 1, 1) as LeRobot's
                st = {n: np.asarray(v).reshape(3, 1, 1) for n, v in st.items() if n != "count"} | {"count": [total]}
            stats[k] = _tolist(st)
        for k, parts in vectors.items():
            x = np.concatenate(parts).astype(np.float64)
            stats[k].update({"q01": np.quantile(x, 0.01, 0).tolist(), "q99": np.quantile(x, 0.99, 0).tolist()})
        (tmp / "meta").mkdir(exist_ok=True)
        (tmp / "meta/info.json").write_text(json.dumps(info, indent=4) + "\n")
        (tmp / "meta/stats.json").write_text(json.dumps(stats, indent=4) + "\n")
        _write_tasks(tmp / "meta/tasks.parquet", tasks)
        _write_episodes(tmp / EPISODES_PATH, ep_rows)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)  # mkdtemp makes 0700
        os.rename(tmp, dst)
    except BaseException:
        for w in writers.values():  # end the encoders' streams before their files go
            try:
                w.close()
            except Exception:  # noqa: BLE001 - already failing; the original error is what matters
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _features(cams: list[str], H: int, W: int, state_dim: int, action_dim: int, depth: bool) -> dict[str, dict]:
    f: dict[str, dict] = {}
    for c in cams:
        f[IMAGE_PREFIX + c] = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    if depth:
        for c in cams:
            f[DEPTH_PREFIX + c] = {"dtype": "uint16", "shape": [H, W], "names": ["height", "width"],
                                   "info": {"unit": "mm", "depth_scale": schema.DEPTH_SCALE,
                                            "description": "metric depth along the optical axis, stored value / "
                                                           "depth_scale = metres"}}
    for c in cams:
        f[INTRINSICS_PREFIX + c] = {"dtype": "float32", "shape": [3, 3], "names": None}
    f["observation.state"] = {"dtype": "float32", "shape": [state_dim],
                              "names": STATE_NAMES if state_dim == 4 else None}
    f["action"] = {"dtype": "float32", "shape": [action_dim], "names": ACTION_NAMES if action_dim == 4 else None}
    for k in ("timestamp",):
        f[k] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        f[k] = {"dtype": "int64", "shape": [1], "names": None}
    return f


def _arrow_type(ft: dict):
    import pyarrow as pa

    t = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    shape = list(ft["shape"])
    if shape == [1]:
        return t
    if len(shape) == 1:
        return pa.list_(t, shape[0])  # datasets' Sequence(length=N): a fixed-size list
    for _ in shape:
        t = pa.list_(t)  # datasets' ArrayND storage: nested variable-size lists
    return t


def _data_schema(features: dict[str, dict]):
    import pyarrow as pa

    return pa.schema([(k, _arrow_type(f)) for k, f in features.items() if f["dtype"] != "video"])


def _arrow(x: np.ndarray, ft: dict):
    import pyarrow as pa

    t = _arrow_type(ft)
    shape = list(ft["shape"])
    x = np.ascontiguousarray(x)
    if shape == [1]:
        return pa.array(x.reshape(-1), type=t)
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), shape[0])
    arr = pa.array(x.reshape(-1))
    n = len(x)
    for d in reversed(shape):  # innermost first: offsets every d values
        count = len(arr) // d
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, count * d + 1, d, dtype=np.int32)), arr)
    assert len(arr) == n
    return arr


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """task_index + the task string as pandas' index (LeRobot reads `tasks.iloc[i].name`), without pandas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {"index_columns": ["task"], "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    order = sorted(tasks, key=tasks.get)
    table = pa.table({"task_index": pa.array([tasks[t] for t in order], pa.int64()),
                      "task": pa.array(order, pa.string())})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_episodes(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: [r[k] for r in rows] for k in rows[0]}
    types = {"tasks": pa.list_(pa.string())}
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in cols.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)

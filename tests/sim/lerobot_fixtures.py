"""Hand-built LeRobot datasets (v3.0 and v2.1) following the published layout, written with pyarrow and PyAV
directly (not through sim.lerobot), so the reader is checked against the format rather than against our writer.

Content is a function of (episode, frame) so a test can tell which frame it got: every pixel of camera c at
(episode e, frame t) has grey level `grey(e, t, c)` (steps of 7 levels: lossy codecs keep flat frames within
~2 levels), state = 100 e + t + [0, 0.1, 0.2, ...], action = -state[:A].
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FPS = 10
SIZE = 32
STATE_DIM, ACTION_DIM = 6, 3
TASKS = ["pick up the cube", "open the drawer"]


def grey(e: int, t: int, cam: int = 0) -> int:
    return int(20 + (e * 53 + t * 7 + cam * 101) % 210)


def state_of(e: int, t: int) -> np.ndarray:
    return (100 * e + t + 0.1 * np.arange(STATE_DIM)).astype(np.float32)


def action_of(e: int, t: int) -> np.ndarray:
    return -state_of(e, t)[:ACTION_DIM]


def frame_of(e: int, t: int, cam: int = 0) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), grey(e, t, cam), np.uint8)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _mp4(path: Path, frames: list[np.ndarray], codec: str = "libx264") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS, options={"g": "2", "crf": "20"} if codec == "libx264" else {"g": "2"})
        s.width, s.height, s.pix_fmt = SIZE, SIZE, "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _features(cameras: dict[str, str]) -> dict:
    f = {}
    for name, dtype in cameras.items():
        f[f"observation.images.{name}"] = {"dtype": dtype, "shape": [SIZE, SIZE, 3],
                                           "names": ["height", "width", "channels"]}
    f["observation.state"] = {"dtype": "float32", "shape": [STATE_DIM], "names": [f"s{i}" for i in range(STATE_DIM)]}
    f["action"] = {"dtype": "float32", "shape": [ACTION_DIM], "names": [f"a{i}" for i in range(ACTION_DIM)]}
    f["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        f[k] = {"dtype": "int64", "shape": [1], "names": None}
    return f


def _rows(episodes: list[tuple[int, int]], cameras: dict[str, str], start: int, task_of) -> pa.Table:
    """Data rows of (episode, length) pairs, global index from `start`; image cameras as PNG structs."""
    cols = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
                            "task_index")}
    images = {n: [] for n, d in cameras.items() if d == "image"}
    i = start
    for e, length in episodes:
        for t in range(length):
            cols["observation.state"].append(state_of(e, t))
            cols["action"].append(action_of(e, t))
            cols["timestamp"].append(np.float32(t / FPS))
            cols["frame_index"].append(t)
            cols["episode_index"].append(e)
            cols["index"].append(i)
            cols["task_index"].append(task_of(e))
            for c, name in enumerate(cameras):
                if name in images:
                    images[name].append({"bytes": _png(frame_of(e, t, c)), "path": None})
            i += 1
    arrays = {"observation.state": pa.FixedSizeListArray.from_arrays(
                  pa.array(np.concatenate(cols["observation.state"])), STATE_DIM),
              "action": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(cols["action"])), ACTION_DIM),
              "timestamp": pa.array(cols["timestamp"], pa.float32())}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        arrays[k] = pa.array(cols[k], pa.int64())
    for name, values in images.items():
        arrays[f"observation.images.{name}"] = pa.array(
            values, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(arrays)


def _info(version: str, cameras: dict[str, str], lengths: list[int], data_path: str, video_path: str | None) -> dict:
    return {"codebase_version": version, "robot_type": "test_arm", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"}, "data_path": data_path, "video_path": video_path,
            "features": _features(cameras)}


def task_of(e: int) -> int:
    return e % len(TASKS)


def make_v30(root: Path, lengths=(5, 7, 4, 6), cameras=None, per_file: int = 2, codec: str = "libx264") -> Path:
    """v3.0: `per_file` episodes share each data parquet and each camera's MP4; two episode-index files."""
    cameras = cameras or {"top": "video", "wrist": "image"}
    root = Path(root)
    info = _info("v3.0", cameras, list(lengths),
                 "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                 "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    episodes, start = [], 0
    groups = [list(range(i, min(i + per_file, len(lengths)))) for i in range(0, len(lengths), per_file)]
    for file_index, group in enumerate(groups):
        table = _rows([(e, lengths[e]) for e in group], cameras, start, task_of)
        path = root / info["data_path"].format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        t0 = 0.0
        for c, (name, dtype) in enumerate(cameras.items()):
            if dtype == "video":
                frames = [frame_of(e, t, c) for e in group for t in range(lengths[e])]
                _mp4(root / info["video_path"].format(video_key=f"observation.images.{name}", chunk_index=0,
                                                      file_index=file_index), frames, codec)
        for e in group:
            row = {"episode_index": e, "tasks": [TASKS[task_of(e)]], "length": lengths[e],
                   "data/chunk_index": 0, "data/file_index": file_index,
                   "dataset_from_index": start, "dataset_to_index": start + lengths[e],
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": e % 2}
            for name, dtype in cameras.items():
                if dtype == "video":
                    k = f"observation.images.{name}"
                    row |= {f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": file_index,
                            f"videos/{k}/from_timestamp": t0, f"videos/{k}/to_timestamp": t0 + lengths[e] / FPS}
            row["stats/action/mean"] = [0.0] * ACTION_DIM  # per-episode stats columns exist; readers skip them
            episodes.append(row)
            start += lengths[e]
            t0 += lengths[e] / FPS
    for part in (0, 1):  # episodes split over two index files, as a large dataset's are
        rows = [r for r in episodes if r["meta/episodes/file_index"] == part]
        path = root / f"meta/episodes/chunk-000/file-{part:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    # tasks.parquet as pandas writes LeRobot's DataFrame(index=tasks): the index as __index_level_0__
    tasks = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()),
                      "__index_level_0__": pa.array(TASKS, pa.string())})
    pq.write_table(tasks, root / "meta/tasks.parquet")
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text(json.dumps({"action": {"mean": [0.0] * ACTION_DIM}}))
    return root


def make_v21(root: Path, lengths=(5, 3, 6), cameras=None, version: str = "v2.1") -> Path:
    """v2.1: one parquet and one MP4 per camera per episode; episodes/tasks as JSON lines."""
    cameras = cameras or {"top": "video", "wrist": "image"}
    root = Path(root)
    info = _info(version, cameras, list(lengths),
                 "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                 "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    info["total_chunks"], info["total_videos"] = 1, len(lengths) * sum(d == "video" for d in cameras.values())
    start = 0
    for e, length in enumerate(lengths):
        path = root / info["data_path"].format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_rows([(e, length)], cameras, start, task_of), path)
        for c, (name, dtype) in enumerate(cameras.items()):
            if dtype == "video":
                _mp4(root / info["video_path"].format(episode_chunk=0, video_key=f"observation.images.{name}",
                                                      episode_index=e), [frame_of(e, t, c) for t in range(length)])
        start += length
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [TASKS[task_of(e)]], "length": n}) + "\n"
        for e, n in enumerate(lengths)))
    (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                              for i, t in enumerate(TASKS)))
    (meta / "episodes_stats.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "stats": {}}) + "\n" for e in range(len(lengths))))
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under root: to prove a reader wrote nothing there."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def smooth_frame(e: int, t: int, v: int = 0, size: int = SIZE) -> np.ndarray:
    """A gradient with a square moving across it: content lossy codecs keep close (unlike noise)."""
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(x * 255 // size), (y * 255 // size), np.full_like(x, (60 * e + 90 * v) % 256)], -1)
    c = (2 * t + 5 * e) % (size - 8)
    img[c:c + 8, c:c + 8] = [250, 250, 40]
    return img.astype(np.uint8)


def make_npz(root: Path, episodes=(("reach-v3", 0, 5), ("push-v3", 1, 7), ("reach-v3", 9, 4)), cameras=("corner",),
             depth: bool = True) -> Path:
    """Our own layout (sim.schema) written through sim.episodes.write_episode, with a hand-made manifest."""
    from sim.episodes import write_episode

    root = Path(root)
    root.mkdir(parents=True)
    V = len(cameras)
    K = np.stack([np.array([[30 + v, 0, 16], [0, 30 + v, 16], [0, 0, 1]], np.float32) for v in range(V)])
    rows = []
    for e, (task, seed, L) in enumerate(episodes):
        rng = np.random.default_rng(seed)
        instruction = f"{task.split('-')[0]} the goal"
        arrays = {"actions": rng.uniform(-1, 1, (L, 4)).astype(np.float32),
                  "state": rng.normal(size=(L, 4)).astype(np.float32), "rewards": np.zeros(L, np.float32),
                  "success": np.zeros(L, bool), "intrinsics": K}
        meta = {"task": task, "task_id": 0 if task == "reach-v3" else 1, "seed": seed, "instruction": instruction,
                "cameras": list(cameras), "success": True}
        rgb = [np.stack([smooth_frame(e, t, v) for v in range(V)]) for t in range(L)]
        dep = [rng.uniform(0.3, 5.0, (V, SIZE, SIZE)).astype(np.float32) for _ in range(L)] if depth else None
        m = write_episode(root, meta, rgb, dep, arrays)
        rows.append({k: m[k] for k in ("file", "task", "task_id", "seed", "length", "instruction", "success")})
    manifest = {"format": "vla-sim-episodes", "version": 1, "cameras": list(cameras), "image_size": SIZE,
                "depth": depth, "episodes": rows}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "config.json").write_text(json.dumps({"cameras": list(cameras), "image_size": SIZE}))
    return root

"""`LeRobotSource`: a local LeRobot dataset (v3.0 or v2.1) as an `EpisodeSource` for `EpisodeDataset` / `vla train`.

    source = LeRobotSource("data/aloha_sim", features="cameras=observation.images.top")
    ds = EpisodeDataset(source, split="train", chunk_len=8)

Small per-frame columns (state, action, timestamps, intrinsics) are read once per data file; frames are read per
sample: a video frame by its timestamp (`from_timestamp` + the row's `timestamp`) through a per-worker decoder
cache, an `image`-dtype frame (PNG bytes) or a depth map from the one parquet row group that holds it.
The episode's seed (train/val split) is our exporter's `vla/seed` column, else its episode_index.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from sim.lerobot.meta import Episode, FeatureMap, LeRobotMeta, parse_features
from sim.lerobot.video import INHERITED, DecoderCache
from vla.errors import UserError

ARRAYS_CACHE = 1024  # episodes whose state/action/timestamp arrays stay in memory (~30 KB each at 300 frames)


class _ParquetFiles:
    """Open ParquetFiles and a few decoded row groups per process (LRU), for per-sample image/depth reads."""

    def __init__(self, files: int = 8, groups: int = 4):
        self._n_files, self._n_groups = files, groups
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._groups: OrderedDict[tuple, np.ndarray | list] = OrderedDict()
        self._pid = os.getpid()

    def _file(self, path: str):
        import pyarrow.parquet as pq

        if os.getpid() != self._pid:  # a forked child: its own handles; the parent's copies are left alone
            INHERITED.extend(self._files.values())
            self.__init__(self._n_files, self._n_groups)
        f = self._files.pop(path, None)
        if f is None:
            try:
                f = pq.ParquetFile(path)
            except Exception as e:
                raise UserError(f"{path}: not a readable parquet file: {str(e).splitlines()[0]}") from None
            f.starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)])
            while len(self._files) >= self._n_files:
                self._files.popitem(last=False)
        self._files[path] = f
        return f

    def cell(self, path: str, column: str, row: int):
        """The value of `column` at file row `row`: a numpy array (numeric) or a python object (struct)."""
        f = self._file(path)
        g = int(np.searchsorted(f.starts, row, side="right") - 1)
        key = (path, column, g)
        values = self._groups.pop(key, None)
        if values is None:
            try:
                values = _column_values(f.read_row_group(g, columns=[column]).column(0), column, path)
            except KeyError:
                raise UserError(f"{path}: no column {column!r}") from None
            while len(self._groups) >= self._n_groups:
                self._groups.popitem(last=False)
        self._groups[key] = values
        return values[row - f.starts[g]]

    def __getstate__(self):
        return {"files": self._n_files, "groups": self._n_groups}

    def __setstate__(self, state):
        self.__init__(state["files"], state["groups"])


def _column_values(col, name: str, path: str):
    """A pyarrow column -> numpy (N, ...) for (nested) numeric lists and scalars, else a list of python values."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t, dims = col.type, []
    n = len(col)
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        if col.null_count:
            raise UserError(f"{path}: column {name!r} has empty (null) rows")
        lengths = col.value_lengths().to_numpy() if not pa.types.is_fixed_size_list(t) else None
        size = t.list_size if lengths is None else (int(lengths[0]) if len(lengths) else 0)
        if lengths is not None and len(lengths) and (lengths != size).any():
            raise UserError(f"{path}: column {name!r} holds arrays of different lengths "
                            f"{sorted(set(lengths.tolist()))[:5]}")
        dims.append(size)
        col = col.flatten()
        t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return col.to_numpy(zero_copy_only=False).reshape(n, *dims)
    if dims:
        raise UserError(f"{path}: column {name!r} holds lists of {t}, not numbers")
    return col.to_pylist()


class LeRobotSource:
    """A LeRobot dataset folder as episodes; see the module docstring."""

    def __init__(self, root: str | os.PathLike, features: str | dict | FeatureMap | None = None,
                 decoders: int = 4):
        self.meta = LeRobotMeta(root)
        self.root = self.meta.root
        if isinstance(features, FeatureMap):
            self.fmap = features
        else:
            self.fmap = self.meta.resolve(parse_features(features) if isinstance(features, str) or features is None
                                          else features)
        self.cameras = self.fmap.camera_names
        self.fps = self.meta.fps
        self.state_dim = self.meta.vector_dim(self.fmap.state, "state")
        self.action_dim = self.meta.vector_dim(self.fmap.action, "action")
        self.image_size = self.meta.image_hw(self.fmap.cameras[0])
        self.has_depth = self.fmap.depth is not None
        self._eps: list[Episode] = self.meta.episodes
        self._decoders = DecoderCache(decoders)
        self._parquet = _ParquetFiles()
        self._columns: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()  # data file -> small columns
        self._arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()  # episode -> its rows' small arrays
        task_ids = {t: k for k, t in self.meta.tasks.items()}
        self._episodes = [self._describe(i, e, task_ids) for i, e in enumerate(self._eps)]

    # --- EpisodeSource ---------------------------------------------------------------------------------
    def episodes(self) -> list[dict[str, Any]]:
        return self._episodes

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        a = self._arrays.pop(index, None)
        if a is None:
            a = self._read_arrays(index)
            while len(self._arrays) >= ARRAYS_CACHE:
                self._arrays.popitem(last=False)
        self._arrays[index] = a
        return {k: v for k, v in a.items() if k in ("actions", "state", "intrinsics")}

    def frame(self, index: int, t: int, views: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        ep, a = self._eps[index], self._full(index)
        if not 0 <= t < len(a["rows"]):
            raise IndexError(f"frame {t} outside episode {ep.index} of length {len(a['rows'])}")
        data = os.fspath(self.root / ep.data_file)
        row = int(a["rows"][t])
        rgb = []
        for v in views:
            key = self.fmap.cameras[v]
            if key in ep.videos:
                file, start = ep.videos[key]
                rgb.append(self._decoders.frames(self.root / file, [start + float(a["timestamp"][t])], key)[0])
            else:
                rgb.append(self._image(data, key, row))
        depth = None
        if self.fmap.depth is not None:
            depth = np.stack([self._parquet.cell(data, self.fmap.depth[v], row).astype(np.float32)
                              / self.meta.depth_scale(self.fmap.depth[v]) for v in views])
        return np.stack(rgb), depth

    # --- reading ---------------------------------------------------------------------------------------
    def _describe(self, i: int, e: Episode, task_ids: dict[str, int]) -> dict[str, Any]:
        text = e.tasks[0] if len(e.tasks) == 1 else None
        if text is None or self.fmap.instruction != "task":
            text = self._first_instruction(i)
        return {"task": str(e.extra.get("task", text)), "task_id": int(e.extra.get("task_id", task_ids.get(text, 0))),
                "seed": int(e.extra.get("seed", e.index)), "length": int(e.length), "instruction": text,
                "episode_index": e.index, "success": e.extra.get("success")}

    def _first_instruction(self, i: int) -> str:
        a = self._full(i)
        if self.fmap.instruction == "task":
            k = int(a["task_index"][0])
            if k not in self.meta.tasks:
                raise UserError(f"{self.root / self._eps[i].data_file}: task_index {k} is not in the task table")
            return self.meta.tasks[k]
        return str(self._parquet.cell(os.fspath(self.root / self._eps[i].data_file), self.fmap.instruction,
                                      int(a["rows"][0])))

    def _small_columns(self, rel: str) -> dict[str, np.ndarray]:
        cols = self._columns.pop(rel, None)
        if cols is None:
            path = self.root / rel
            names = ["episode_index", "frame_index", "timestamp", self.fmap.state, self.fmap.action]
            names += ["task_index"] if self.fmap.instruction == "task" else []
            names += list(self.fmap.intrinsics or [])
            names = list(dict.fromkeys(names))
            import pyarrow.parquet as pq

            if not path.is_file():
                raise UserError(f"{path}: data file missing (named by {self.meta.info_path})")
            try:
                schema = pq.read_schema(path)
            except Exception as e:
                raise UserError(f"{path}: not a readable parquet file: {str(e).splitlines()[0]}") from None
            absent = [n for n in names if n not in schema.names]
            if absent:
                raise UserError(f"{path}: feature(s) {absent} missing from the data (columns: {schema.names})")
            table = self.meta._read_parquet(path, names)
            cols = {n: _column_values(table.column(n), n, os.fspath(path)) for n in names}
            for n in (self.fmap.state, self.fmap.action, *(self.fmap.intrinsics or [])):
                want = tuple(self.meta.features[n]["shape"])
                if cols[n].shape[1:] != want:
                    raise UserError(f"{path}: feature {n!r} has shape {list(cols[n].shape[1:])} per frame but "
                                    f"{self.meta.info_path.name} says {list(want)}")
            while len(self._columns) >= 8:
                self._columns.popitem(last=False)
        self._columns[rel] = cols
        return cols

    def _full(self, index: int) -> dict[str, np.ndarray]:
        self.arrays(index)
        return self._arrays[index]

    def _read_arrays(self, index: int) -> dict[str, np.ndarray]:
        ep = self._eps[index]
        cols = self._small_columns(ep.data_file)
        rows = np.flatnonzero(cols["episode_index"].reshape(-1) == ep.index)
        rows = rows[np.argsort(cols["frame_index"].reshape(-1)[rows], kind="stable")]
        if len(rows) != ep.length:
            raise UserError(f"{self.root / ep.data_file}: episode {ep.index} has {len(rows)} rows but the episode "
                            f"index says length {ep.length}")
        out = {"rows": rows, "timestamp": cols["timestamp"].reshape(-1)[rows].astype(np.float64),
               "actions": cols[self.fmap.action][rows].astype(np.float32),
               "state": cols[self.fmap.state][rows].astype(np.float32)}
        if "task_index" in cols:
            out["task_index"] = cols["task_index"].reshape(-1)[rows]
        if self.fmap.intrinsics is not None:
            out["intrinsics"] = np.stack([cols[k][rows[0]] for k in self.fmap.intrinsics]).astype(np.float32)
        return out

    def _image(self, data: str, key: str, row: int) -> np.ndarray:
        from PIL import Image

        cell = self._parquet.cell(data, key, row)
        if isinstance(cell, np.ndarray):  # stored as a uint8 array
            return np.asarray(cell, dtype=np.uint8)
        raw = cell.get("bytes") if isinstance(cell, dict) else None
        try:
            if raw is None:
                path = cell.get("path") if isinstance(cell, dict) else None
                if not path:
                    raise UserError(f"{data}: image feature {key!r} row {row} has neither bytes nor a path")
                with Image.open(self.root / path) as im:
                    return np.asarray(im.convert("RGB"))
            with Image.open(io.BytesIO(raw)) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"{data}: image feature {key!r} row {row} does not decode: {e}") from None

    # --- what training needs beside the frames ---------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_columns"], state["_arrays"] = OrderedDict(), OrderedDict()
        return state


def open_lerobot(data: Any, features: str | None = None, config: Any = None) -> Any:
    """`vla train --data`: a LeRobot folder -> its `LeRobotSource`, checked against the policy config (state and
    action sizes; `control_hz` <- the dataset's fps when the config leaves it unset); anything else unchanged."""
    from sim.lerobot.meta import is_lerobot_dataset

    single = isinstance(data, (str, os.PathLike)) and "," not in os.fspath(data)
    if not (single and is_lerobot_dataset(data)):
        if features:
            raise UserError(f"--features applies to one LeRobot dataset folder (holding meta/info.json); {data} is "
                            "not one")
        return data
    src = LeRobotSource(data, features)
    if config is not None:
        for role, key, have, name in (("state", src.fmap.state, src.state_dim, "state_dim"),
                                      ("action", src.fmap.action, src.action_dim, "action_dim")):
            want = getattr(config, name)
            if have != want:
                raise UserError(f"{src.meta.info_path}: feature {key!r} ({role}) has {have} values but the policy "
                                f"config has {name}={want}; set {name} (and for actions action_layout) in a --config "
                                "JSON")
        if config.control_hz is None:
            config.control_hz = float(src.fps)
    return src

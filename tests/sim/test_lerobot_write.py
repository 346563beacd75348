"""Our episodes -> LeRobot v3.0 (`vla dataset export`) -> read back; the files checked with pyarrow and PyAV
directly against the published layout; atomic output, the source left untouched."""

import json

import av
import lerobot_fixtures as fx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sim.dataset import EpisodeDataset, NpzEpisodeSource
from sim.lerobot import LeRobotSource
from sim.lerobot.writer import export_lerobot
from vla.cli import main
from vla.errors import UserError

FPS = 80


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return fx.make_npz(tmp_path_factory.mktemp("npz") / "episodes", cameras=("corner", "top"))


@pytest.fixture(scope="module")
def exported(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    before = fx.tree(npz)
    paths = {codec: out / codec for codec in ("lossless", "av1")}
    for codec, path in paths.items():
        export_lerobot(npz, path, codec=codec, fps=FPS, progress=False)
    assert fx.tree(npz) == before  # the source is only read
    return paths


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


@pytest.mark.parametrize("codec", ["lossless", "av1"])
def test_round_trip(npz, exported, codec):
    a, b = NpzEpisodeSource(npz), LeRobotSource(exported[codec])
    assert b.cameras == ("corner", "top") and b.fps == FPS and b.has_depth
    for i, (ea, eb) in enumerate(zip(a.episodes(), b.episodes())):
        for k in ("task", "task_id", "seed", "length", "instruction", "success"):
            assert ea[k] == eb[k], (i, k)
        xa, xb = a.arrays(i), b.arrays(i)
        for k in ("actions", "state", "intrinsics"):
            np.testing.assert_array_equal(xa[k], xb[k])
        for t in range(ea["length"]):
            (ra, da), (rb, db) = a.frame(i, t, [0, 1]), b.frame(i, t, [0, 1])
            np.testing.assert_array_equal(da, db)  # depth: uint16 millimetres, lossless
            if codec == "lossless":
                np.testing.assert_array_equal(ra, rb)
            else:  # AV1 crf 30, yuv420p (LeRobot's defaults)
                assert _psnr(ra, rb) >= 22 and np.abs(ra.astype(int) - rb).mean() <= 8, (i, t)
    # the same train/val split by seed: seed 9 is a validation episode
    for split in ("train", "val"):
        assert len(EpisodeDataset(npz, split=split)) == len(EpisodeDataset(exported[codec], split=split)) > 0


def test_files_follow_the_v30_layout(npz, exported):
    root = exported["lossless"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["total_episodes"] == 3 and info["total_frames"] == 16 and info["total_tasks"] == 2
    lengths = [e["length"] for e in NpzEpisodeSource(npz).episodes()]
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    feats = info["features"]
    for k, f in feats.items():  # every non-video feature is a column of the declared per-frame shape
        if f["dtype"] == "video":
            assert k not in data.column_names
            continue
        col = np.array(data.column(k).to_pylist())
        assert col.shape[1:] == (tuple(f["shape"]) if f["shape"] != [1] else ()), k
        leaf = data.schema.field(k).type
        while hasattr(leaf, "value_type"):
            leaf = leaf.value_type
        assert leaf == pa.from_numpy_dtype(np.dtype(f["dtype"])), k
    assert data.column("index").to_pylist() == list(range(16))
    assert data.column("frame_index").to_pylist() == [t for n in lengths for t in range(n)]
    np.testing.assert_allclose(data.column("timestamp").to_numpy(), [t / FPS for n in lengths for t in range(n)],
                               rtol=1e-6)
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == lengths
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 5), (5, 12), (12, 16)]
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pylist()
    assert {t["task"]: t["task_index"] for t in tasks} == {"reach the goal": 0, "push the goal": 1}
    assert [e["tasks"] for e in eps] == [["reach the goal"], ["push the goal"], ["reach the goal"]]
    for cam in ("corner", "top"):  # one MP4 per camera holds all episodes back to back at 1 / fps
        key = f"observation.images.{cam}"
        assert [e[f"videos/{key}/from_timestamp"] for e in eps] == [0.0, 5 / FPS, 12 / FPS]
        with av.open(str(root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0))) as c:
            times = [round(float(f.pts * f.time_base) * FPS) for f in c.decode(video=0)]
        assert times == list(range(16))
        assert feats[key]["info"]["video.fps"] == FPS and feats[key]["shape"] == [fx.SIZE, fx.SIZE, 3]
    depth = np.array(data.column("observation.depth.corner").to_pylist(), dtype=np.uint16)
    assert feats["observation.depth.corner"]["info"]["depth_scale"] == 1000.0 and depth.shape == (16, 32, 32)
    stats = json.loads((root / "meta/stats.json").read_text())
    acts = np.concatenate([NpzEpisodeSource(npz).arrays(i)["actions"] for i in range(3)])
    np.testing.assert_allclose(stats["action"]["mean"], acts.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(acts, 0.01, 0), rtol=1e-5)
    assert np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)


def test_refusals_and_atomic_output(npz, exported, tmp_path):
    with pytest.raises(UserError, match="already exists"):
        export_lerobot(npz, exported["av1"], progress=False)
    with pytest.raises(UserError, match="inside the source"):
        export_lerobot(npz, npz / "lerobot", progress=False)

    class Failing(NpzEpisodeSource):
        def frame(self, index, t, views):
            if index == 2:
                raise RuntimeError("disk gone")
            return super().frame(index, t, views)

    with pytest.raises(RuntimeError, match="disk gone"):
        export_lerobot(Failing(npz), tmp_path / "half", progress=False)
    assert list(tmp_path.iterdir()) == []  # no half dataset, no temp folder


def test_cli_export(npz, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["dataset", "export", "--format", "lerobot", str(npz), str(out), "--codec", "h264",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 16
    assert main(["dataset", "export", str(out), str(tmp_path / "again")]) == 2  # a LeRobot folder is no npz source
    assert "manifest.json" in capsys.readouterr().err

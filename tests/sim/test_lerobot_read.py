"""LeRobot datasets in: hand-built v3.0 / v2.1 fixtures (published layout) read through LeRobotSource and
EpisodeDataset; the feature mapping; one-line errors naming file and feature; nothing written in the source."""

import json
import shutil

import lerobot_fixtures as fx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sim.dataset import EpisodeDataset
from sim.lerobot import LeRobotSource, is_lerobot_dataset, parse_features
from sim.lerobot import video as lvideo
from vla.errors import UserError

LOSSY = 3  # grey levels: H.264 at crf 20 keeps a flat 32 px frame within this


@pytest.fixture(scope="module")
def v30(tmp_path_factory):
    return fx.make_v30(tmp_path_factory.mktemp("v30") / "ds")


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
    return fx.make_v21(tmp_path_factory.mktemp("v21") / "ds")


def _check_source(src, lengths):
    assert src.cameras == ("top", "wrist") and src.fps == fx.FPS
    assert (src.state_dim, src.action_dim, src.has_depth) == (fx.STATE_DIM, fx.ACTION_DIM, False)
    eps = src.episodes()
    assert [e["length"] for e in eps] == list(lengths)
    assert [e["instruction"] for e in eps] == [fx.TASKS[fx.task_of(e)] for e in range(len(lengths))]
    assert [e["seed"] for e in eps] == list(range(len(lengths)))  # the episode index: split by it
    for e, n in enumerate(lengths):
        a = src.arrays(e)
        np.testing.assert_array_equal(a["state"], np.stack([fx.state_of(e, t) for t in range(n)]))
        np.testing.assert_array_equal(a["actions"], np.stack([fx.action_of(e, t) for t in range(n)]))
        assert "intrinsics" not in a  # a foreign dataset has none
    rng = np.random.default_rng(0)
    pairs = [(e, t) for e, n in enumerate(lengths) for t in range(n)]
    for k in rng.permutation(len(pairs)):  # random access across episodes and files
        e, t = pairs[k]
        rgb, depth = src.frame(e, t, [0, 1])
        assert rgb.shape == (2, fx.SIZE, fx.SIZE, 3) and rgb.dtype == np.uint8 and depth is None
        assert abs(rgb[0].astype(int) - fx.grey(e, t, 0)).max() <= LOSSY, (e, t)  # video: within the codec's
        np.testing.assert_array_equal(rgb[1], fx.frame_of(e, t, 1))  # image dtype (PNG): exact


def test_v30_several_episodes_per_file(v30):
    assert is_lerobot_dataset(v30)
    _check_source(LeRobotSource(v30), (5, 7, 4, 6))


def test_v21_one_file_per_episode(v21):
    _check_source(LeRobotSource(v21), (5, 3, 6))


def test_v20_reads_like_v21(tmp_path):
    _check_source(LeRobotSource(fx.make_v21(tmp_path / "ds", lengths=(4, 2), version="v2.0")), (4, 2))


def test_av1_video_reads(tmp_path):
    root = fx.make_v30(tmp_path / "ds", lengths=(4, 5), cameras={"top": "video"}, codec="libsvtav1")
    src = LeRobotSource(root)
    for e, t in [(1, 4), (0, 0), (1, 0), (0, 3)]:
        assert abs(src.frame(e, t, [0])[0][0].astype(int) - fx.grey(e, t)).max() <= 4


def test_episode_dataset_over_a_lerobot_source(v30):
    ds = EpisodeDataset(LeRobotSource(v30), split="all", chunk_len=4, cameras=["wrist"])
    assert len(ds) == 22 and ds.cameras == ("wrist",)
    s = ds[5 + 5]  # episode 1, step 5 of 7: the chunk runs past the end and repeats the last action
    assert ds.locate(10) == (1, 5)
    assert s["instruction"] == fx.TASKS[1] and s["frame_index"] == 5 and s["rgb"].shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(s["actions"].numpy(), np.stack([fx.action_of(1, t) for t in (5, 6, 6, 6)]))
    assert s["action_mask"].tolist() == [True, True, False, False] and "intrinsics" not in s
    np.testing.assert_array_equal(s["rgb"][0].numpy(), fx.frame_of(1, 5, 1))


def test_folders_joined_by_commas(v30, v21):
    ds = EpisodeDataset(f"{v30},{v21}", split="all", chunk_len=2)
    assert len(ds) == 22 + 14 and ds.locate(22) == (4, 0)
    np.testing.assert_array_equal(ds[22]["rgb"][1].numpy(), fx.frame_of(0, 0, 1))  # v2.1 episode 0


def test_feature_mapping_override(v30):
    assert parse_features("cameras=observation.images.wrist,observation.images.top,state=observation.state") == {
        "cameras": ["observation.images.wrist", "observation.images.top"], "state": ["observation.state"]}
    src = LeRobotSource(v30, features="cameras=observation.images.wrist,action=observation.state")
    assert src.cameras == ("wrist",) and src.action_dim == fx.STATE_DIM
    np.testing.assert_array_equal(src.frame(2, 1, [0])[0][0], fx.frame_of(2, 1, 1))
    np.testing.assert_array_equal(src.arrays(0)["actions"], src.arrays(0)["state"])


def test_random_access_decodes_a_few_frames_not_the_file(v30, monkeypatch):
    decoded = []
    real = lvideo.VideoFile._next

    def counting(self):
        got = real(self)
        decoded.append(got is not None)
        return got

    monkeypatch.setattr(lvideo.VideoFile, "_next", counting)
    src = LeRobotSource(v30)
    rng = np.random.default_rng(1)
    picks = [(int(e), int(rng.integers(src.episodes()[e]["length"]))) for e in rng.integers(0, 4, 30)]
    for e, t in picks:
        src.frame(e, t, [0])
    assert len(decoded) <= 3 * len(picks)  # a key frame every 2 frames: at most 2 (+1 lookahead) per sample


def test_decoder_cache_reopens_after_fork(v30):
    cache = lvideo.DecoderCache(size=2)
    path = next(v30.glob("videos/*/chunk-000/file-000.mp4"))
    f = cache.get(path)
    assert cache.get(path) is f
    cache._pid = -1  # as seen from a forked DataLoader worker
    assert cache.get(path) is not f


def test_nothing_is_written_in_the_source(v30):
    before = fx.tree(v30)
    src = LeRobotSource(v30)
    ds = EpisodeDataset(src, split="all", chunk_len=2)
    for i in range(0, len(ds), 3):
        ds[i]
    assert fx.tree(v30) == before


# --- clear one-line errors --------------------------------------------------------------------------------
@pytest.fixture
def broken(v30, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(v30, root)
    return root


def _edit_info(root, fn):
    p = root / "meta/info.json"
    info = json.loads(p.read_text())
    fn(info)
    p.write_text(json.dumps(info))


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_unsupported_version(broken):
    _edit_info(broken, lambda i: i.update(codebase_version="v1.6"))
    with pytest.raises(UserError) as e:
        LeRobotSource(broken)
    _one_line(e, "info.json", "v1.6")


def test_missing_feature(broken):
    with pytest.raises(UserError) as e:
        LeRobotSource(broken, features="state=observation.joints")
    _one_line(e, "info.json", "observation.joints", "state")


def test_misshaped_feature(broken):
    _edit_info(broken, lambda i: i["features"]["observation.state"].update(shape=[2, 3]))
    with pytest.raises(UserError) as e:
        LeRobotSource(broken)
    _one_line(e, "info.json", "observation.state", "[2, 3]")


def test_data_disagrees_with_info(broken):
    _edit_info(broken, lambda i: i["features"]["observation.state"].update(shape=[5]))
    src = LeRobotSource(broken)
    with pytest.raises(UserError) as e:
        src.arrays(0)
    _one_line(e, "file-000.parquet", "observation.state", "[6]", "[5]")


def test_camera_named_but_absent(broken):
    with pytest.raises(UserError) as e:
        LeRobotSource(broken, features="cameras=observation.images.side")
    _one_line(e, "info.json", "observation.images.side")


def test_video_that_does_not_decode(broken):
    video = next(broken.glob("videos/observation.images.top/chunk-000/file-001.mp4"))
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    src = LeRobotSource(broken)
    src.frame(0, 0, [0])  # episodes 0-1 live in file-000: fine
    with pytest.raises(UserError) as e:
        src.frame(2, 0, [0])
    _one_line(e, "file-001.mp4", "observation.images.top")


def test_video_cut_short(broken):
    video = next(broken.glob("videos/observation.images.top/chunk-000/file-000.mp4"))
    rows = pq.read_table(broken / "meta/episodes/chunk-000/file-001.parquet").to_pylist()
    for r in rows:  # episode 1 claims to start 3 s in: past the end of its video
        r["videos/observation.images.top/from_timestamp"] += 3.0
    pq.write_table(pa.Table.from_pylist(rows), broken / "meta/episodes/chunk-000/file-001.parquet")
    with pytest.raises(UserError) as e:
        LeRobotSource(broken).frame(1, 0, [0])
    _one_line(e, video.name, "observation.images.top", "no frame")


def test_dataloader_workers_match_in_process_reads(v30):
    import torch

    from vla.policy.data import collate

    ds = EpisodeDataset(LeRobotSource(v30), split="all", chunk_len=2)
    ds[0]  # the parent opens files first, as training does (it reads a sample to fit the policy)
    want = collate([ds[i] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=2, collate_fn=collate)
    got = next(iter(loader))  # two forked workers, each with its own decoders
    for k in ("rgb", "state", "actions"):
        assert torch.equal(got[k], want[k]), k


def test_cli_info(v30, capsys):
    from vla.cli import main

    assert main(["dataset", "info", str(v30), "--features", "cameras=observation.images.top"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["codebase_version"] == "v3.0" and out["episodes"] == 4 and out["cameras"] == ["top"]
    assert out["mapping"]["state"] == "observation.state" and out["fps"] == fx.FPS

"""Collection -> files -> EpisodeDataset round trip, checked by replaying the stored actions; kill and resume."""

import json

import numpy as np
import pytest
import torch
from collect_helpers import kill_after_first_episode

from sim.collect import CollectConfig, collect
from sim.dataset import EpisodeDataset
from vla.errors import UserError

SIZE = 32


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    collect(CollectConfig(tasks=("reach-v3", "push-v3"), episodes=2, out=str(root), image_size=SIZE), progress=False)
    return root


def test_manifest_counts_and_stats(dataset_root):
    m = json.loads((dataset_root / "manifest.json").read_text())
    assert set(m["tasks"]) == {"reach-v3", "push-v3"}
    assert all(t["episodes"] == 2 for t in m["tasks"].values())
    acts = np.concatenate([np.load(dataset_root / e["file"])["actions"] for e in m["episodes"]])
    assert m["num_steps"] == len(acts) == sum(e["length"] for e in m["episodes"])
    np.testing.assert_allclose(m["action_stats"]["mean"], acts.mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(acts) <= 1.0)
    assert not list(dataset_root.glob("**/*.tmp"))


def test_dataset_samples_replay_in_the_simulator(dataset_root):
    from sim.env import MetaWorldRGBD

    ds = EpisodeDataset(dataset_root, split="all", chunk_len=4)
    ep_idx = 0
    meta = ds.source.episodes()[ep_idx]
    length = meta["length"]
    env = MetaWorldRGBD(task=meta["task"], image_size=SIZE)
    try:
        obs, info = env.reset(seed=meta["seed"])
        assert obs["instruction"] == meta["instruction"]
        for t in range(length):
            s = ds[t]  # episode 0 occupies the first samples
            assert ds.locate(t) == (ep_idx, t)
            np.testing.assert_array_equal(s["rgb"].numpy(), obs["rgb"])
            # training-time targets: object and goal positions of the state this frame shows
            raw = info["raw_obs"].astype(np.float32)
            np.testing.assert_array_equal(s["privileged"].numpy(),
                                          np.concatenate([raw[4:7], raw[11:14], raw[36:39]]))
            np.testing.assert_allclose(s["depth"].numpy(), obs["depth"], atol=5e-4)  # stored in millimetres
            np.testing.assert_array_equal(s["state"].numpy(), obs["state"])
            np.testing.assert_allclose(s["intrinsics"].numpy(), obs["intrinsics"])
            obs, _, terminated, truncated, info = env.step(s["action"].numpy())
        assert terminated and info["success"]  # the stored actions solve the task again
        # the camera poses recorded with the episodes are the environment's (the keypoint loss projects with them)
        from vla.policy.data import dataset_camera_poses

        np.testing.assert_allclose(dataset_camera_poses(ds), env.camera_poses(), atol=1e-6)
        np.testing.assert_allclose(meta["camera_poses"], env.camera_poses(), atol=1e-6)
    finally:
        env.close()
    last = ds[length - 1]
    assert last["action_mask"].tolist() == [True, False, False, False]
    for k in range(4):  # padding repeats the last action
        np.testing.assert_array_equal(last["actions"][k].numpy(), last["action"].numpy())
    mid = ds[length - 3]
    assert mid["action_mask"].tolist() == [True, True, True, False]
    np.testing.assert_array_equal(mid["actions"][1].numpy(), ds[length - 2]["action"].numpy())


def test_split_by_seed_and_loader(dataset_root):
    train = EpisodeDataset(dataset_root, split="train", chunk_len=3, val_every=2)
    val = EpisodeDataset(dataset_root, split="val", chunk_len=3, val_every=2)
    seeds = lambda d: {d.source.episodes()[i]["seed"] for i in d.episode_indices}  # noqa: E731
    assert seeds(train) == {0} and seeds(val) == {1}
    assert len(train) + len(val) == len(EpisodeDataset(dataset_root, split="all"))
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=5, shuffle=True)))
    assert batch["rgb"].shape == (5, 1, SIZE, SIZE, 3) and batch["actions"].shape == (5, 3, 4)
    assert len(batch["instruction"]) == 5 and batch["action_mask"].dtype == torch.bool
    with pytest.raises(ValueError, match="topview"):
        EpisodeDataset(dataset_root, cameras=("topview",))
    with pytest.raises(UserError, match="manifest"):
        EpisodeDataset(dataset_root / "reach-v3")


def test_killed_collection_resumes(tmp_path):
    out = tmp_path / "run"
    code = ("import sys; from sim.collect import CollectConfig, collect; "
            f"collect(CollectConfig(tasks=('reach-v3',), episodes=3, out={str(out)!r}, image_size={SIZE}), "
            "progress=False)")
    first = kill_after_first_episode(code, out, timeout=120)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    manifest = collect(CollectConfig(tasks=("reach-v3",), episodes=3, out=str(out), image_size=SIZE),
                       progress=False)
    assert manifest["tasks"]["reach-v3"]["episodes"] == 3
    assert [e["seed"] for e in manifest["episodes"]] == [0, 1, 2]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first)  # kept, not collected again
    assert not list(out.glob("**/*.tmp"))
    assert len(EpisodeDataset(out, split="all")) == manifest["num_steps"]
    with pytest.raises(UserError, match="image_size"):
        collect(CollectConfig(tasks=("reach-v3",), episodes=3, out=str(out), image_size=SIZE * 2), progress=False)

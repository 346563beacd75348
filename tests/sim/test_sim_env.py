"""The RGB-D gymnasium wrapper against independent geometry: MuJoCo ray casts, camera fovy, object positions."""

import math

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import sim  # noqa: F401  (registers the ids)
from sim.env import MetaWorldRGBD

SIZE = 48


@pytest.fixture(scope="module")
def env():
    e = MetaWorldRGBD(task="push-v3", cameras=("corner", "topview"), image_size=SIZE)
    yield e
    e.close()


def test_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    e = gym.make("vla-sim/MetaWorld-reach-v3", image_size=32)
    try:
        check_env(e.unwrapped, skip_render_check=True)
    finally:
        e.close()


def test_observation_shapes_and_dtypes(env):
    obs, info = env.reset(seed=1)
    assert obs["rgb"].shape == (2, SIZE, SIZE, 3) and obs["rgb"].dtype == np.uint8
    assert obs["depth"].shape == (2, SIZE, SIZE) and obs["depth"].dtype == np.float32
    assert obs["intrinsics"].shape == (2, 3, 3) and obs["intrinsics"].dtype == np.float32
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    assert isinstance(obs["instruction"], str) and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs["state"][:3], info["raw_obs"][:3], atol=1e-6)  # hand xyz
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0, 0.0, -1.0], np.float32))
    assert env.observation_space.contains(obs) and isinstance(reward, float)
    assert info["raw_obs"].shape == (39,)


def test_intrinsics_from_fovy(env):
    obs, _ = env.reset(seed=0)
    # corner: fovy 45 deg; topview: 45 deg (Meta-World's XML). fy = 48 / (2 tan 22.5 deg) = 57.941...
    fy = 24.0 / math.tan(math.radians(22.5))
    assert abs(fy - 57.9411) < 1e-3
    expected = np.array([[fy, 0, 24.0], [0, fy, 24.0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(obs["intrinsics"], np.stack([expected, expected]), rtol=1e-5)


def _ray_depths(model, data, pose, k, pixels, centre=0.5):
    """z-depth of each pixel's ray by MuJoCo's ray caster (visible geom groups 0-2)."""
    out = []
    geomid = np.zeros(1, np.int32)
    for u, v in pixels:
        d_cam = np.array([(u + centre - k[0, 2]) / k[0, 0], (v + centre - k[1, 2]) / k[1, 1], 1.0])  # z = 1
        vec = pose[:3, :3] @ d_cam
        dist = mujoco.mj_ray(model, data, pose[:3, 3], vec, np.array([1, 1, 1, 0, 0, 0], np.uint8), 1, -1, geomid)
        out.append(dist)  # in units of vec, whose camera-z is 1: the z-depth itself
    return np.array(out)


def test_depth_matches_ray_casting(env):
    obs, _ = env.reset(seed=2)
    model, data = env.mujoco
    poses = env.camera_poses()
    grid = [(u, v) for u in range(2, SIZE, 5) for v in range(2, SIZE, 5)]
    for view in range(2):
        ref = _ray_depths(model, data, poses[view], obs["intrinsics"][view], grid)
        got = np.array([obs["depth"][view, v, u] for u, v in grid])
        hit = (ref > 0) & (ref < 5)
        assert hit.sum() > len(grid) // 2
        err = np.abs(got[hit] - ref[hit])
        # the same geometry: all but silhouette pixels agree to float32 precision
        assert np.median(err) < 1e-4 and np.mean(err < 1e-3) > 0.95, (view, np.sort(err)[-5:])
    # the half-pixel centre matters on the oblique corner view: integer pixel centres miss by centimetres
    ref = _ray_depths(model, data, poses[0], obs["intrinsics"][0], grid, centre=0.0)
    got = np.array([obs["depth"][0, v, u] for u, v in grid])
    hit = (ref > 0) & (ref < 5)
    assert np.median(np.abs(got[hit] - ref[hit])) > 5e-3


def test_table_plane_back_projects_flat(env):
    """Back-project topview pixels with K: table points share one height (checks the pixel-centre convention)."""
    obs, _ = env.reset(seed=2)
    k, pose, z = obs["intrinsics"][1], env.camera_poses()[1], obs["depth"][1]
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    x_cam = np.stack([(u + 0.5 - k[0, 2]) * z / k[0, 0], (v + 0.5 - k[1, 2]) * z / k[1, 1], z], -1)
    world = x_cam @ pose[:3, :3].T + pose[:3, 3]  # (H, W, 3)
    heights = world[..., 2]
    table = np.abs(heights - np.median(heights)) < 0.01
    assert table.mean() > 0.3  # the table fills much of the top view
    assert np.std(heights[table]) < 2e-3


def test_orientation_object_where_projected(env):
    """The puck appears at the pixel its world position projects to, and world-up points up in the image."""
    obs, info = env.reset(seed=4)
    puck = info["raw_obs"][4:7]
    k, pose = obs["intrinsics"][0], env.camera_poses()[0]  # corner (flipped); the arm hides it from the top
    p_cam = pose[:3, :3].T @ (puck - pose[:3, 3])
    u, v = (k @ (p_cam / p_cam[2]))[:2]
    assert 0 <= u < SIZE and 0 <= v < SIZE
    d = obs["depth"][0, int(v), int(u)]
    assert abs(d - p_cam[2]) < 0.03, (d, p_cam[2])  # the puck (2 cm radius), not the table behind it
    above = pose[:3, :3].T @ (puck + [0, 0, 0.3] - pose[:3, 3])
    below = pose[:3, :3].T @ (puck - pose[:3, 3])
    assert (k @ (above / above[2]))[1] < (k @ (below / below[2]))[1]  # higher in the world = smaller v
    # upright corner view: the near table fills the bottom rows, the far background the top rows
    assert obs["depth"][0, -4:].mean() < obs["depth"][0, :4].mean()


def test_seeded_resets_are_reproducible(env):
    a, ia = env.reset(seed=7)
    env.step(np.ones(4, np.float32))
    b, ib = env.reset(seed=7)
    for key in ("rgb", "depth", "state"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["instruction"] == b["instruction"]
    c, ic = env.reset(seed=8)
    assert not np.allclose(ia["raw_obs"], ic["raw_obs"])  # another seed, another layout


def test_task_switch_and_bad_config():
    e = MetaWorldRGBD(task="reach-v3", image_size=16, depth=False)
    try:
        obs, info = e.reset(seed=0, options={"task": "drawer-open-v3"})
        assert info["task"] == "drawer-open-v3" and "depth" not in obs
    finally:
        e.close()
    with pytest.raises(ValueError, match="nocam"):
        MetaWorldRGBD(task="reach-v3", cameras=("nocam",), image_size=16)
    with pytest.raises(ValueError, match="image_size=4"):
        MetaWorldRGBD(task="reach-v3", image_size=4)

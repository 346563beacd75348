"""The keypoint vision path: soft-argmax coordinates and their 3-D lift against numpy, the projection of
world points into heatmap cells against a pinhole model, the loss against a hand computation, that the maps
learn to find a dot, and the policy's use of the path (config checks, no image tower without patch tokens)."""

import numpy as np
import pytest
import torch

from vla.errors import UserError
from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.keypoints import (
    DEPTH_SCALE_M,
    HEATMAP_WEIGHT,
    READOUT_SCALE_M,
    KeypointEncoder,
    KeypointReadout,
    keypoint_loss,
    project_to_cells,
)


def _pose(yaw=0.3, t=(0.2, -0.1, 1.5)):
    """A world-from-camera pose (4x4) looking down -z of the world, rotated about the optical axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.0, -1.0, -1.0])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _numpy_pixels(points, T, K):
    cam = (points - T[:3, 3]) @ T[:3, :3]
    return K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2], K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2], cam


def test_soft_argmax_and_lift_match_numpy(monkeypatch):
    """A map peaked on one cell gives that cell's centre; the lift is the pinhole back-projection at the
    depth there, in camera coordinates / DEPTH_SCALE_M."""
    enc = KeypointEncoder(keypoints=2, channels=8)
    H = W = 16  # maps are 8 x 8
    cells = [(2, 5), (6, 1)]  # (row, col) per keypoint

    class Peaked(torch.nn.Module):
        def forward(self, x):
            out = torch.full((x.shape[0], 2, H // 2, W // 2), -1e4)
            for k, (r, c) in enumerate(cells):
                out[:, k, r, c] = 0.0
            return out

    monkeypatch.setattr(enc, "net", Peaked())
    depth = torch.rand(1, 1, H, W) + 1.0
    K = torch.tensor([[[[20.0, 0, 7.5], [0, 22.0, 8.0], [0, 0, 1]]]])
    with torch.no_grad():
        feats = enc(torch.zeros(1, 1, H, W, 3, dtype=torch.uint8), depth, K).numpy()[0]
        no_depth = enc(torch.zeros(1, 1, H, W, 3, dtype=torch.uint8)).numpy()[0]
    d = depth[0, 0].numpy().reshape(H // 2, 2, W // 2, 2).mean((1, 3))  # depth averaged over each cell
    for k, (r, c) in enumerate(cells):
        u, v = (c + 0.5) / (W // 2) * 2 - 1, (r + 0.5) / (H // 2) * 2 - 1
        px, py, z = (u + 1) / 2 * W, (v + 1) / 2 * H, d[r, c]
        want = [u, v, (px - 7.5) / 20 * z / DEPTH_SCALE_M, (py - 8.0) / 22 * z / DEPTH_SCALE_M, z / DEPTH_SCALE_M]
        np.testing.assert_allclose(feats[k], want, rtol=1e-5, atol=1e-6)
    # without depth only the image coordinates remain
    np.testing.assert_allclose(no_depth[:, :2], feats[:, :2], atol=1e-6)
    assert not no_depth[:, 2:].any()


def test_projection_to_cells_matches_a_pinhole_model():
    T = _pose()
    K = np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-0.4, 0.4, (1, 20, 2)), np.zeros((1, 20, 1))], -1) + [0.2, -0.1, 0]
    pts[0, 0] = [0.2, -0.1, 2.0]  # behind the camera: not in view
    pts[0, 1] = [5.0, 5.0, 0.0]  # far outside the image
    cell, ok = project_to_cells(torch.tensor(pts, dtype=torch.float32), torch.tensor(T), torch.tensor(K[None]),
                                (32, 32), (8, 8))
    px, py, cam = _numpy_pixels(pts[0], T, K)
    inside = (cam[:, 2] > 0) & (px >= 0) & (px < 32) & (py >= 0) & (py < 32)
    assert not inside[0] and not inside[1] and inside[2:].sum() > 10
    np.testing.assert_array_equal(ok.numpy()[0], inside)
    want = (np.floor(py / 4) * 8 + np.floor(px / 4))[inside]
    np.testing.assert_array_equal(cell.numpy()[0][inside], want)


def test_keypoint_loss_matches_hand_computation():
    T, K = _pose(), np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-0.3, 0.3, (4, 2, 2)), np.zeros((4, 2, 1))], -1) + [0.2, -0.1, 0]
    pts[1, 1] = [5.0, 5.0, 0.0]  # out of view: excluded from both terms
    maps = torch.softmax(torch.randn(4, 2, 64), -1).reshape(4, 2, 8, 8)
    pos = torch.tensor(pts.reshape(4, 6) + rng.normal(0, 0.03, (4, 6)), dtype=torch.float32)
    loss, rec = keypoint_loss(pos, maps, torch.tensor(pts, dtype=torch.float32), torch.tensor(T),
                              torch.tensor(np.tile(K, (4, 1, 1))), (32, 32))
    px, py, _ = _numpy_pixels(pts, T, K)
    ok = np.ones((4, 2), bool)
    ok[1, 1] = False
    m = maps.numpy().reshape(4, 2, 64)
    ce = [-np.log(m[b, j, int(py[b, j] // 4) * 8 + int(px[b, j] // 4)]) for b in range(4) for j in range(2) if ok[b, j]]
    err = pos.numpy().reshape(4, 2, 3) - pts
    x = np.abs(err / READOUT_SCALE_M)
    sl1 = np.where(x < 1, 0.5 * x**2, x - 0.5).mean(-1)[ok]
    assert rec["heatmap_ce"] == pytest.approx(np.mean(ce), rel=1e-5)
    assert rec["readout_cm"] == pytest.approx(np.linalg.norm(err, axis=-1)[ok].mean() * 100, rel=1e-5)
    assert float(loss) == pytest.approx(HEATMAP_WEIGHT * np.mean(ce) + sl1.mean(), rel=1e-5)


def test_readout_from_pose_puts_a_camera_point_in_the_world():
    T = _pose()
    r = KeypointReadout(2)
    r.init_from_pose(T)
    cam = np.array([[0.1, -0.2, 1.4], [0.0, 0.05, 1.2]])
    feats = torch.zeros(1, 4, 5)
    feats[0, :2, 2:] = torch.tensor(cam / DEPTH_SCALE_M, dtype=torch.float32)
    want = cam @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(r(feats).detach().numpy()[0], want.reshape(-1), atol=1e-5)


def test_maps_learn_to_find_a_dot():
    """A red dot on a grey image at a random place; its world point projects onto it. 150 steps of the loss alone
    take the map from about uniform (ln 256 = 5.5 nats) to the right cell or its neighbour."""
    torch.manual_seed(0)
    T, K = _pose(yaw=0.0, t=(0.0, 0.0, 1.0)), np.array([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    rng = np.random.default_rng(0)

    def batch(n):
        px, py = rng.uniform(3, 29, n), rng.uniform(3, 29, n)
        img = np.full((n, 1, 32, 32, 3), 128, np.uint8)
        for i in range(n):
            img[i, 0, int(py[i]) - 1 : int(py[i]) + 2, int(px[i]) - 1 : int(px[i]) + 2] = (250, 30, 30)
        cam = np.stack([(px - 16) / 32, (py - 16) / 32, np.ones(n)], -1)  # depth 1 m
        world = cam @ T[:3, :3].T + T[:3, 3]
        return torch.tensor(img), torch.tensor(world[:, None], dtype=torch.float32), px, py

    enc = KeypointEncoder(keypoints=1, channels=16)
    opt = torch.optim.Adam(enc.parameters(), 3e-3)
    Kb = torch.tensor(np.tile(K, (16, 1, 1)), dtype=torch.float32)
    depth = torch.ones(16, 1, 32, 32)
    first = None
    for _ in range(150):
        img, world, _, _ = batch(16)
        feats, maps = enc(img, depth, Kb[:, None], return_heatmaps=True)
        loss, rec = keypoint_loss(feats[:, 0, 2:] * 0, maps[:, 0], world, torch.tensor(T), Kb, (32, 32))
        first = rec["heatmap_ce"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    img, world, px, py = batch(64)
    with torch.no_grad():
        feats = enc(img, torch.ones(64, 1, 32, 32), torch.tensor(np.tile(K, (64, 1, 1, 1)), dtype=torch.float32))
    u, v = (feats[:, 0, 0].numpy() + 1) * 16, (feats[:, 0, 1].numpy() + 1) * 16
    err = np.hypot(u - px, v - py)
    assert first > 0.9 * np.log(256) > 2 * rec["heatmap_ce"], (first, rec)
    assert np.median(err) < 3.0, np.median(err)  # pixels; a map that ignores the image is ~10 px off


def _obs(B=2, size=32):
    return {"rgb": np.random.default_rng(0).integers(0, 255, (B, 1, size, size, 3), dtype=np.uint8),
            "state": np.zeros((B, 4), np.float32), "instruction": ["push the puck"] * B,
            "depth": np.ones((B, 1, size, size), np.float32),
            "intrinsics": np.tile(np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]], np.float32), (B, 1, 1, 1))}


def test_policy_without_patch_tokens_never_runs_the_image_tower(monkeypatch):
    policy = VLAPolicy.from_config(PolicyConfig.tiny(keypoints=4, vision_tokens=False, ego3d=False))

    def boom(*a, **k):
        raise AssertionError("the image tower ran")

    monkeypatch.setattr(policy.clip, "encode_image", boom)
    actions = policy.predict(_obs())
    assert actions.shape == (2, policy.config.chunk_len, 4)
    assert policy.metadata()["uses_depth"]


def test_keypoints_change_the_actions_and_depth_reaches_them():
    policy = VLAPolicy.from_config(PolicyConfig.tiny(keypoints=4, ego3d=False))  # depth reaches only keypoints
    obs = _obs()
    with torch.no_grad():
        base = policy(**policy.prepare(obs))[0]
        deeper = dict(obs, depth=obs["depth"] * 2)
        assert not torch.allclose(policy(**policy.prepare(deeper))[0], base)
        policy.keypoint_proj.weight.zero_()
        policy.keypoint_proj.bias.zero_()
        policy.keypoint_embed.zero_()
        assert torch.allclose(policy(**policy.prepare(deeper))[0], policy(**policy.prepare(obs))[0])


@pytest.mark.parametrize("overrides, match", [
    (dict(vision_tokens=False), "vision_tokens=False is invalid"),
    (dict(keypoints=4, vision_tokens=False), "ego3d=True is invalid"),
    (dict(keypoints=2, privileged_dim=9), "privileged_dim=9 is invalid"),
    (dict(keypoints=4, privileged_dim=4), "privileged_dim=4 is invalid"),
    (dict(keypoints=4, keypoint_channels=7), "keypoint_channels=7 is invalid"),
    (dict(keypoints=4, keypoint_positions=True), "keypoint_positions=True is invalid"),
])
def test_config_refuses_inconsistent_keypoint_settings(overrides, match):
    with pytest.raises(UserError, match=match):
        PolicyConfig.tiny(**overrides)


def test_dataset_camera_poses_need_every_episode_and_one_fixed_camera():
    from types import SimpleNamespace

    from vla.policy.data import dataset_camera_poses

    def ds(*poses):
        eps = [{"file": f"e{i}.npz", **({} if p is None else {"camera_poses": p})} for i, p in enumerate(poses)]
        return SimpleNamespace(source=SimpleNamespace(episodes=lambda: eps))

    T = _pose()[None].tolist()
    np.testing.assert_allclose(dataset_camera_poses(ds(T, T)), np.array(T))
    assert dataset_camera_poses(ds(T, None)) is None  # an older folder in the union: no poses
    moved = _pose(yaw=0.5)[None].tolist()
    with pytest.raises(UserError, match="e1.npz has camera poses that differ"):
        dataset_camera_poses(ds(T, moved))


@pytest.mark.parametrize("feed", [True, False])
def test_readout_positions_reach_the_actions_only_when_fed(feed):
    """keypoint_positions: the readout's estimates (from pixels) join the state token; otherwise the readout is
    training-only and its weights cannot change an action."""
    cfg = PolicyConfig.tiny(keypoints=4, privileged_dim=9, keypoint_positions=feed, vision_tokens=False, ego3d=False)
    policy = VLAPolicy.from_config(cfg)
    obs = _obs()
    with torch.no_grad():
        _, pos = policy(**policy.prepare(obs), privileged=True)
        before = policy(**policy.prepare(obs))[0]
        policy.privileged_head.bias.add_(0.3)
        _, moved = policy(**policy.prepare(obs), privileged=True)
        after = policy(**policy.prepare(obs))[0]
    np.testing.assert_allclose((moved - pos).numpy(), 0.3, atol=1e-5)  # the readout's bias moves every estimate
    assert torch.allclose(after, before) != feed

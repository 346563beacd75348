"""Ego3D: back-projection against an independent numpy loop, a hand-computed pinhole case, invalid-depth
masking and the encoding module against a manual composition of its documented steps."""

import math

import numpy as np
import pytest
import torch

from vla.policy.ego3d import Ego3DEncoding, backproject


def _close(actual, expected, rtol=1.3e-6, atol=1e-5):
    """float32 comparison (numpy's, as torch.testing's first call costs ~2.7 s of imports)."""
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol)


def _ref_backproject(depth, K, image_hw, patch, r):
    """Loop reference: masked area average per cell (adaptive-pool windows), K rescaled, P = K^-1 [u v 1] * D."""
    B, V, _, H, W = depth.shape
    Sh, Sw = image_hw
    Hp, Wp = Sh // patch, Sw // patch
    Hd, Wd = Hp * r, Wp * r
    pts = np.zeros((B, V, Hp * Wp, r * r * 3))
    valid = np.zeros((B, V, Hp * Wp, r * r), dtype=bool)
    for b in range(B):
        for v in range(V):
            Ks = np.array(K[b, v], dtype=np.float64)
            Ks[0] *= Sw / W
            Ks[1] *= Sh / H
            Kinv = np.linalg.inv(Ks)
            for i in range(Hd):
                r0, r1 = (i * H) // Hd, -((-(i + 1) * H) // Hd)
                for j in range(Wd):
                    c0, c1 = (j * W) // Wd, -((-(j + 1) * W) // Wd)
                    win = np.asarray(depth[b, v, 0, r0:r1, c0:c1], dtype=np.float64)
                    ok = np.isfinite(win) & (win > 0)
                    p, s = (i // r) * Wp + j // r, (i % r) * r + j % r
                    if not ok.any():
                        continue
                    d = win[ok].mean()
                    uv1 = np.array([(j + 0.5) * patch / r, (i + 0.5) * patch / r, 1.0])
                    pts[b, v, p, 3 * s:3 * s + 3] = Kinv @ uv1 * d
                    valid[b, v, p, s] = True
    return pts, valid


def _random_K(rng, B, V, H, W):
    K = np.zeros((B, V, 3, 3))
    K[..., 0, 0] = rng.uniform(0.5, 2.0, (B, V)) * W
    K[..., 1, 1] = rng.uniform(0.5, 2.0, (B, V)) * H
    K[..., 0, 1] = rng.uniform(-0.05, 0.05, (B, V)) * W  # skew: exercises the full K^-1
    K[..., 0, 2] = rng.uniform(0.3, 0.7, (B, V)) * W
    K[..., 1, 2] = rng.uniform(0.3, 0.7, (B, V)) * H
    K[..., 2, 2] = 1.0
    return K


@pytest.mark.parametrize(
    "B,V,depth_hw,image_hw,patch,r",
    [
        (2, 3, (48, 64), (48, 64), 16, 2),  # non-square, V > 1, same size
        (1, 2, (60, 90), (32, 48), 8, 2),  # depth larger than the input, non-integer pooling windows
        (2, 1, (37, 53), (28, 42), 14, 2),  # odd sizes, patch 14 (sub-cell step 7)
        (1, 1, (24, 24), (32, 32), 16, 4),  # depth smaller than the grid (up-sampling windows), r = 4
    ],
)
def test_backproject_matches_numpy_loop(B, V, depth_hw, image_hw, patch, r):
    rng = np.random.default_rng(B * 100 + V * 10 + r)
    depth = rng.uniform(0.2, 5.0, (B, V, 1, *depth_hw))
    K = _random_K(rng, B, V, *depth_hw)
    pts, valid = backproject(torch.tensor(depth, dtype=torch.float32), torch.tensor(K), image_hw, patch, r)
    ref_pts, ref_valid = _ref_backproject(depth, K, image_hw, patch, r)
    assert pts.shape == ref_pts.shape == (B, V, (image_hw[0] // patch) * (image_hw[1] // patch), 3 * r * r)
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    np.testing.assert_allclose(pts.numpy(), ref_pts, rtol=1e-5, atol=1e-5)


def test_pinhole_hand_computed():
    # f = 16, c = 16 on a 32 x 32 input, D = 2 m: sub-cell centres u, v in {4, 12, 20, 28} -> (u - 16) / 16 * 2.
    K = torch.tensor([[16.0, 0, 16], [0, 16, 16], [0, 0, 1]]).expand(1, 1, 3, 3)
    depth = torch.full((1, 1, 1, 32, 32), 2.0)
    pts, valid = backproject(depth, K, 32, 16, 2)
    assert valid.all()
    top_left = [[-1.5, -1.5, 2], [-0.5, -1.5, 2], [-1.5, -0.5, 2], [-0.5, -0.5, 2]]  # (v, u) row-major
    bottom_right = [[0.5, 0.5, 2], [1.5, 0.5, 2], [0.5, 1.5, 2], [1.5, 1.5, 2]]
    _close(pts[0, 0, 0], torch.tensor(top_left).flatten())
    _close(pts[0, 0, 3], torch.tensor(bottom_right).flatten())
    # Same scene as a 64 x 64 depth image with its own intrinsics: K is rescaled to the 32 x 32 input.
    K64 = torch.tensor([[32.0, 0, 32], [0, 32, 32], [0, 0, 1]]).expand(1, 1, 3, 3)
    pts64, _ = backproject(torch.full((1, 1, 1, 64, 64), 2.0), K64, 32, 16, 2)
    _close(pts64, pts)


def test_invalid_depth_is_masked_not_averaged():
    K = torch.tensor([[16.0, 0, 16], [0, 16, 16], [0, 0, 1]]).expand(1, 1, 3, 3)
    depth = torch.full((1, 1, 1, 32, 32), 2.0)
    # Cell (0, 0) covers pixels [0:8, 0:8]: half of it invalid, the valid half at 3 m -> mean of valid = 3 m.
    depth[..., 0:8, 0:4] = torch.tensor([0.0, float("nan"), float("inf"), -1.0]).repeat(8, 1)
    depth[..., 0:8, 4:8] = 3.0
    # Patch 3 (bottom-right, pixels [16:32, 16:32]): no valid depth at all.
    depth[..., 16:32, 16:32] = float("nan")
    pts, valid = backproject(depth, K, 32, 16, 2)
    assert torch.isfinite(pts).all()
    _close(pts[0, 0, 0, 0:3], torch.tensor([-1.5 * 3 / 2, -1.5 * 3 / 2, 3.0]))
    assert not valid[0, 0, 3].any() and valid[0, 0, :3].all()
    assert (pts[0, 0, 3] == 0).all()

    torch.manual_seed(0)
    enc = Ego3DEncoding(8, 32, 16)
    out = enc.encode(depth, K)
    assert torch.isfinite(out).all()
    _close(out[0, 0, 3], enc.no_depth.detach())
    assert not torch.allclose(out[0, 0, 2], enc.no_depth.detach())


def _manual_encoding(enc, points, valid):
    """The documented steps written out: normalise, gamma (invalid cells zeroed), Linear-LN-ReLU-Linear."""
    B, V, P, _ = points.shape
    p = (points.double().reshape(B, V, P, -1, 3) - torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)) / 2.0
    p = p.reshape(B, V, P, -1)  # (B, V, P, 12)
    feats = [p] + [f(p * 2.0**k) for k in range(8) for f in (torch.sin, torch.cos)]
    m = valid.double().repeat_interleave(3, dim=-1)  # (B, V, P, 12)
    g = torch.cat([f * m for f in feats], dim=-1).float()  # (B, V, P, 204)
    lin1, ln, lin2 = enc.mlp[0], enc.mlp[1], enc.mlp[3]
    h = torch.relu(torch.nn.functional.layer_norm(g @ lin1.weight.T + lin1.bias, ln.normalized_shape,
                                                  ln.weight, ln.bias, ln.eps))
    e = h @ lin2.weight.T + lin2.bias
    return torch.where(valid.any(-1, keepdim=True), e, enc.no_depth)


def test_encoding_matches_manual_composition_and_shapes():
    torch.manual_seed(1)
    B, V, W = 2, 2, 24
    enc = Ego3DEncoding(W, (32, 48), 16)
    assert enc.in_features == 204 and enc.n_patches == 6
    for lin in (enc.mlp[0], enc.mlp[3]):  # xavier_uniform with gain 0.01
        bound = 0.01 * math.sqrt(6 / (lin.in_features + lin.out_features))
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > bound / 2
        torch.nn.init.normal_(lin.weight)  # larger weights so the comparison is not dominated by the bias
    rng = np.random.default_rng(3)
    depth = torch.tensor(rng.uniform(0.3, 4.0, (B, V, 1, 40, 60)), dtype=torch.float32)
    depth[0, 1, :, :20, :20] = 0.0  # patch 0 of camera 1 without depth
    depth[1, 0, :, 20:30, 30:40] = float("nan")  # one invalid cell inside a valid patch
    depth[1, 0, :, 0:5, 0:5] = float("inf")  # a partly invalid cell
    K = torch.tensor(_random_K(rng, B, V, 40, 60))
    tokens = torch.randn(B, V, enc.n_patches, W)
    out = enc(tokens, depth, K)
    points, valid = backproject(depth, K, (32, 48), 16)
    expected = tokens + _manual_encoding(enc, points, valid)
    _close(out, expected, rtol=1e-4, atol=1e-4)
    out_flat = enc(tokens.reshape(B * V, enc.n_patches, W), depth, K)  # (B*V, P, W) form
    _close(out_flat, out.reshape(B * V, enc.n_patches, W))
    assert not valid[0, 1, 0].any() and not valid[1, 0].all() and valid[1, 0].any(-1).all()
    out.sum().backward()
    assert enc.mlp[0].weight.grad is not None and enc.no_depth.grad.abs().sum() > 0


def test_camera_without_depth_gets_exactly_the_no_depth_embedding():
    torch.manual_seed(2)
    enc = Ego3DEncoding(16, 32, 16)
    rng = np.random.default_rng(4)
    depth = torch.tensor(rng.uniform(0.3, 4.0, (1, 2, 1, 32, 32)), dtype=torch.float32)
    K = torch.tensor(_random_K(rng, 1, 2, 32, 32))
    depth[0, 1] = float("nan")  # placeholder depth and intrinsics for the camera flagged as missing
    K[0, 1] = 0.0
    has_depth = torch.tensor([[True, False]])
    tokens = torch.randn(1, 2, 4, 16)
    out = enc(tokens, depth, K, has_depth)
    assert torch.equal(out[0, 1], tokens[0, 1] + enc.no_depth.detach())
    alone = enc(tokens[:, :1], depth[:, :1], K[:, :1])  # the camera with depth is unaffected by the other one
    _close(out[:, :1], alone)
    none = enc(tokens, None, None)  # no depth at all
    assert torch.equal(none, tokens + enc.no_depth.detach())


def test_flagged_camera_ignores_valid_depth_it_carries():
    """has_depth=False wins over depth and intrinsics that look valid (a stale frame, a sensor marked faulty)."""
    torch.manual_seed(3)
    enc = Ego3DEncoding(16, 32, 16)
    rng = np.random.default_rng(6)
    depth = torch.tensor(rng.uniform(0.3, 4.0, (2, 2, 1, 32, 32)), dtype=torch.float32)
    K = torch.tensor(_random_K(rng, 2, 2, 32, 32))
    has_depth = torch.tensor([[True, False], [False, True]])
    tokens = torch.randn(2, 2, 4, 16)
    out = enc(tokens, depth, K, has_depth)
    for b, v in ((0, 1), (1, 0)):
        assert torch.equal(out[b, v], tokens[b, v] + enc.no_depth.detach())
    for b, v in ((0, 0), (1, 1)):  # the cameras with depth: as if encoded alone
        alone = enc(tokens[b : b + 1, v : v + 1], depth[b : b + 1, v : v + 1], K[b : b + 1, v : v + 1])
        _close(out[b : b + 1, v : v + 1], alone)
        assert not torch.allclose(out[b, v], tokens[b, v] + enc.no_depth.detach())


def test_bad_inputs_raise_with_the_value():
    enc = Ego3DEncoding(8, 32, 16)
    K = torch.eye(3).expand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        backproject(torch.ones(1, 1, 1, 30, 30), K, 30, 16)
    with pytest.raises(ValueError, match="singular"):
        backproject(torch.ones(1, 1, 1, 32, 32), torch.zeros(1, 1, 3, 3), 32, 16)
    with pytest.raises(ValueError, match="patch_tokens"):
        enc(torch.zeros(1, 1, 5, 8), torch.ones(1, 1, 1, 32, 32), K)


# ---- optional monocular depth (a tiny random Depth Anything saved to a temp dir stands in for real weights)
@pytest.fixture(scope="module")
def tiny_depth_dir(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = tf.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                               image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                               reshape_hidden_states=False)
    cfg = tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="metric",
                                 max_depth=20)
    model = tf.DepthAnythingForDepthEstimation(cfg).eval()
    with torch.no_grad():  # random init predicts a constant; perturb so the output varies over the image
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("tiny_depth")
    model.save_pretrained(d)
    tf.DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(d)
    return d, model


def test_monocular_depth_from_local_dir(tiny_depth_dir):
    from transformers import AutoImageProcessor

    from vla.policy.depth_estimator import MonocularDepth, fill_missing_depth

    path, model = tiny_depth_dir
    est = MonocularDepth.load(path)
    # Sizing and normalisation agree with transformers' own image processor (constant image: no resampling
    # differences): a 40 x 90 image keeps its aspect ratio at multiples of 14.
    img = np.full((40, 90, 3), 153, dtype=np.uint8)
    ref = AutoImageProcessor.from_pretrained(path, local_files_only=True)(images=img, return_tensors="pt")
    ours = est.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert ours.shape == ref["pixel_values"].shape
    _close(ours, ref["pixel_values"].float(), rtol=1e-5, atol=1e-5)

    images = torch.rand(3, 3, 40, 50)
    depth = est(images)
    assert depth.shape == (3, 1, 40, 50) and torch.isfinite(depth).all()
    assert depth.min() > 0 and depth.max() < 20 and depth.std() > 1e-3
    with torch.no_grad():  # the loaded weights are the saved ones
        pred = model(pixel_values=est.preprocess(images)).predicted_depth[:, None]
    _close(depth, torch.nn.functional.interpolate(pred, size=(40, 50), mode="bilinear"))

    rgb = torch.rand(2, 2, 3, 40, 50)
    sensor = torch.rand(2, 2, 1, 32, 32) + 0.5
    has = torch.tensor([[True, False], [False, True]])
    filled, has_all = fill_missing_depth(rgb, sensor, has, est)
    assert has_all.all() and filled.shape == sensor.shape
    assert torch.equal(filled[has], sensor[has])
    _close(filled[~has], est(rgb[~has], (32, 32)))


def test_relative_depth_model_is_refused(tmp_path):
    tf = pytest.importorskip("transformers")

    from vla.errors import UserError
    from vla.policy.depth_estimator import MonocularDepth

    tf.DepthAnythingConfig(depth_estimation_type="relative").save_pretrained(tmp_path)
    with pytest.raises(UserError, match="relative depth"):
        MonocularDepth.load(tmp_path)
    with pytest.raises(UserError, match="no config.json"):
        MonocularDepth.load(tmp_path / "nowhere")

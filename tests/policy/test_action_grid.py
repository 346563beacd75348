"""Adaptive action grids: equal-probability bins, bounded round-trip error, serialisation, gripper thresholds and
re-discretisation on an asymmetric grid, each against an independent numpy computation."""

import json
import math

import numpy as np
import pytest
import torch

from vla.errors import UserError
from vla.policy.action_grid import ActionGrid, gaussian_edges, parse_layout


def _gaussian_actions(n, rng, dim=7, gripper_dim=6):
    mu = np.array([0.02, -0.03, 0.05, 0.0, 0.01, -0.02, 0.0])[:dim]
    sd = np.array([0.1, 0.2, 0.15, 0.05, 0.08, 0.03, 1.0])[:dim]
    a = rng.normal(mu, sd, size=(n, dim))
    if gripper_dim is not None:
        a[:, gripper_dim] = (rng.random(n) > 0.4).astype(float)
    return a


def _np_normalise(grid, a):
    lo, hi = grid.q_low[: a.shape[-1]], grid.q_high[: a.shape[-1]]
    return np.clip(2 * (a - lo) / (hi - lo) - 1, -1, 1)


def _np_spherical(y):
    x, yy, z = y[..., 0], y[..., 1], y[..., 2]
    return np.stack([np.arctan2(np.sqrt(x**2 + yy**2), z), np.arctan2(yy, x), np.linalg.norm(y, axis=-1)], -1)


def _bin_of(edges, c):
    return np.clip(np.searchsorted(edges, c, side="right") - 1, 0, len(edges) - 2)


def test_bins_have_equal_probability_on_a_known_gaussian():
    rng = np.random.default_rng(0)
    n = 100_000
    # dim 0 joint (64 bins), dims 1-3 rotation (16^3): all Gaussian with different means and spreads.
    a = rng.normal([0.3, -0.1, 0.0, 0.2], [0.8, 0.05, 0.3, 0.1], size=(n, 4))
    layout = [{"kind": "joint", "dims": [0]}, {"kind": "rotation", "dims": [1, 2, 3]}]
    # quantiles (0, 1): min/max bounds, so normalised data is the Gaussian itself (nothing clipped).
    grid = ActionGrid.fit(a, layout, bins={"joint": 64}, min_sigma=1e-3, quantiles=(0.0, 1.0))
    tok = grid.encode(a)
    assert tok.dtype == np.int64 and tok.shape == (n, 2)
    freq = np.bincount(tok[:, 0], minlength=64) / n
    np.testing.assert_allclose(freq, 1 / 64, rtol=0.10)
    rot = np.stack(np.unravel_index(tok[:, 1], (16, 16, 16)), -1)  # 'ij' ravel: roll, pitch, yaw
    for axis in range(3):
        np.testing.assert_allclose(np.bincount(rot[:, axis], minlength=16) / n, 1 / 16, rtol=0.10)
        # The axis-th index follows the axis-th rotation dim: the mean value rises with the bin index.
        means = [a[rot[:, axis] == i, 1 + axis].mean() for i in range(16)]
        assert np.all(np.diff(means) > 0)


def test_default_quantiles_put_the_clipped_tails_in_the_end_bins():
    rng = np.random.default_rng(1)
    n, m = 100_000, 32
    a = rng.normal(0.5, 2.0, size=(n, 1))
    grid = ActionGrid.fit(a, {"joint": [0]}, bins={"joint": m}, min_sigma=1e-3)
    freq = np.bincount(grid.encode(a)[:, 0], minlength=m) / n
    # 98% of the mass lies between q01 and q99 and is spread evenly; 1% is clipped onto each end.
    np.testing.assert_allclose(freq[1:-1], 0.98 / m, rtol=0.10)
    np.testing.assert_allclose(freq[[0, -1]], 0.98 / m + 0.01, rtol=0.10)


@pytest.mark.parametrize("layout", ["ee7", {"translation": [0, 1, 2], "joint": [3, 4, 5], "gripper": [6]}])
def test_decode_error_is_within_half_a_bin(layout):
    rng = np.random.default_rng(2)
    a = _gaussian_actions(20_000, rng)
    grid = ActionGrid.fit(a, layout)
    inside = np.all((a[:, :6] >= grid.q_low[:6]) & (a[:, :6] <= grid.q_high[:6]), axis=1)
    a = a[inside][:5000]
    dec = grid.decode(grid.encode(a)).astype(np.float64)
    assert dec.shape == a.shape
    y, y_dec = _np_normalise(grid, a[:, :6]), _np_normalise(grid, dec[:, :6])

    tr = grid.group("translation")
    c, c_dec = _np_spherical(y[:, :3]), _np_spherical(y_dec[:, :3])
    mids, halfw = [], []
    for k, e in enumerate(tr.edges):
        i = _bin_of(e, c[:, k])
        mids.append((e[i] + e[i + 1]) / 2)
        halfw.append((e[i + 1] - e[i]) / 2)
    mids, halfw = np.stack(mids, -1), np.stack(halfw, -1)
    unclipped = np.all(np.abs(y_dec[:, :3]) < 1 - 1e-6, axis=1)
    assert unclipped.mean() > 0.9
    assert np.all(np.abs(c_dec - c)[unclipped] <= halfw[unclipped] + 1e-6)
    # Where the midpoint left the box, the clip can only move it closer to the (in-box) true point.
    th, ph, r = mids.T
    cart = np.stack([r * np.sin(th) * np.cos(ph), r * np.sin(th) * np.sin(ph), r * np.cos(th)], -1)
    assert np.all(np.linalg.norm(y_dec[:, :3] - y[:, :3], axis=1) <= np.linalg.norm(cart - y[:, :3], axis=1) + 1e-6)

    for gname, dims in [(g.name, g.dims) for g in grid.groups if g.kind in ("rotation", "joint")]:
        edges = grid.group(gname).edges
        for k, d in enumerate(dims):
            i = _bin_of(edges[k], y[:, d])
            assert np.all(np.abs(y_dec[:, d] - y[:, d]) <= (edges[k][i + 1] - edges[k][i]) / 2 + 1e-6)
    np.testing.assert_array_equal(dec[:, 6], a[:, 6])  # {0, 1} gripper decodes exactly


def test_torch_in_torch_out_and_chunk_shapes():
    rng = np.random.default_rng(3)
    grid = ActionGrid.fit(_gaussian_actions(2000, rng), "ee7")
    x = torch.tensor(_gaussian_actions(24, rng)).reshape(2, 3, 4, 7)
    tok = grid.encode(x)
    assert isinstance(tok, torch.Tensor) and tok.dtype == torch.int64 and tok.shape == (2, 3, 4, 3)
    assert grid.vocab_sizes == [4096, 4096, 2] and grid.n_groups == 3
    dec = grid.decode(tok)
    assert dec.dtype == torch.float32 and dec.shape == (2, 3, 4, 7)
    np.testing.assert_array_equal(tok.numpy(), grid.encode(x.numpy()))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    a = _gaussian_actions(5000, rng)
    grid = ActionGrid.fit(a, [{"kind": "translation", "dims": [0, 1, 2]}, {"kind": "rotation", "dims": [3, 4, 5]},
                              {"kind": "gripper", "dims": [6]}], bins={"translation": (8, 12, 4)})
    path = tmp_path / "action_grid.json"
    grid.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["action_grid.json"]  # no temp file left behind
    loaded = ActionGrid.load(path)
    assert loaded.to_dict() == grid.to_dict() == json.loads(path.read_text())
    np.testing.assert_array_equal(loaded.encode(a), grid.encode(a))
    np.testing.assert_array_equal(loaded.decode(grid.encode(a)), grid.decode(grid.encode(a)))
    assert ActionGrid.from_dict(grid.to_dict()).vocab_sizes == [384, 4096, 2]

    bad = grid.to_dict()
    bad["groups"][0]["edges"][1] = bad["groups"][0]["edges"][1][:-1]
    with pytest.raises(UserError, match=r"groups\[0\]\.edges"):
        ActionGrid.from_dict(bad)
    bad = grid.to_dict()
    del bad["q_low"]
    with pytest.raises(UserError, match="q_low"):
        ActionGrid.from_dict(bad)
    with pytest.raises(UserError, match="not found"):
        ActionGrid.load(tmp_path / "missing.json")


def test_gripper_thresholds_and_values():
    rng = np.random.default_rng(5)
    a = _gaussian_actions(1000, rng, dim=4, gripper_dim=None)
    a[:, 3] = rng.choice([-1.0, 1.0], size=1000)  # Meta-World: effort in [-1, 1]
    grid = ActionGrid.fit(a, "metaworld")
    g = grid.group("gripper")
    assert (g.threshold, g.values) == (0.0, (-1.0, 1.0))
    probe = np.zeros((4, 4))
    probe[:, 3] = [-0.7, 0.0, 0.2, 0.99]
    np.testing.assert_array_equal(grid.encode(probe)[:, 1], [0, 0, 1, 1])  # strictly above the threshold
    np.testing.assert_array_equal(grid.decode(grid.encode(probe))[:, 3], [-1, -1, 1, 1])

    a01 = _gaussian_actions(1000, rng)  # {0, 1} gripper (SpatialVLA convention)
    g01 = ActionGrid.fit(a01, "ee7").group("gripper")
    assert (g01.threshold, g01.values) == (0.5, (0.0, 1.0))

    layout = {"translation": [0, 1, 2], "gripper": {"dims": [3], "threshold": 0.8, "values": [0.0, 0.6]}}
    custom = ActionGrid.fit(a, layout)
    np.testing.assert_array_equal(custom.encode(probe)[:, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(custom.decode(custom.encode(probe))[:, 3], [0, 0, 0, 0.6])


def _identity_embedding(group):
    """Row t of the embedding holds the bin-centre coordinates of token t = ravel(i, j, k) ('ij' order)."""
    cs = group.centres()
    ii = np.stack(np.meshgrid(*[np.arange(len(c)) for c in cs], indexing="ij"), -1).reshape(-1, len(cs))
    return np.stack([cs[a][ii[:, a]] for a in range(len(cs))], -1)


@pytest.mark.parametrize("new_bins", [(16, 32, 8), (8, 20, 5)])
def test_rediscretize_asymmetric_grid(new_bins):
    rng = np.random.default_rng(6)
    old = ActionGrid.fit(_gaussian_actions(5000, rng), "ee7", min_sigma=0.05)
    b = _gaussian_actions(5000, rng)
    b[:, :3] = rng.normal([0.1, 0.05, -0.1], [0.05, 0.3, 0.1], size=(5000, 3))  # a different robot
    new = ActionGrid.fit(b, "ee7", bins={"translation": new_bins}, min_sigma=0.05)
    g_old, g_new = old.group("translation"), new.group("translation")
    assert g_old.bins == (16, 32, 8)
    emb = torch.tensor(_identity_embedding(g_old))  # (4096, 3)
    out = old.rediscretize(new, emb, "translation")
    assert out.shape == (math.prod(new_bins), 3)
    # Linear interpolation of a linear function is exact; new centres beyond the old ones take the end value.
    cn = [np.clip(c, co[0], co[-1]) for c, co in zip(g_new.centres(), g_old.centres())]
    ii = np.stack(np.unravel_index(np.arange(math.prod(new_bins)), new_bins), -1)
    expected = np.stack([cn[a][ii[:, a]] for a in range(3)], -1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-9)

    both = old.rediscretize(new, {"rotation": torch.randn(4096, 5), "gripper": torch.randn(2, 5)})
    assert both["rotation"].shape == (4096, 5) and both["gripper"].shape == (2, 5)
    rot_id = old.rediscretize(old, torch.tensor(_identity_embedding(old.group("rotation"))), "rotation")
    np.testing.assert_allclose(rot_id.numpy(), _identity_embedding(old.group("rotation")), atol=1e-12)


def test_degenerate_constant_dim_and_bad_inputs():
    rng = np.random.default_rng(7)
    a = _gaussian_actions(500, rng, dim=4, gripper_dim=None)
    a[:, 1] = 0.7  # q01 == q99
    a[:, 3] = 1.0  # constant gripper too
    with np.errstate(all="raise"):
        grid = ActionGrid.fit(a, "metaworld")
        dec = grid.decode(grid.encode(a))
    assert np.all(np.isfinite(dec))
    np.testing.assert_allclose(dec[:, 1], 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dec[:, 3], 1.0)
    np.testing.assert_array_equal(grid.normalize(a)[:, 1], 0.0)

    with pytest.raises(ValueError, match="exactly once"):
        parse_layout({"translation": [0, 1, 2]}, 4)
    with pytest.raises(ValueError, match="needs 3 dims"):
        parse_layout({"rotation": [0, 1], "joint": [2, 3]}, 4)
    with pytest.raises(ValueError, match="translaton"):
        ActionGrid.fit(a, "metaworld", bins={"translaton": (4, 4, 4)})  # a typo is not silently ignored
    assert ActionGrid.fit(a, "metaworld", bins={"rotation": (4, 4, 4)}).vocab_sizes == [4096, 2]  # kind unused
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"columns \[2\]"):
        ActionGrid.fit(bad, "metaworld")
    with pytest.raises(ValueError, match="NaN"):
        grid.encode(bad)
    with pytest.raises(ValueError, match="translation"):
        grid.decode(np.array([[4096, 0]]))


def test_gaussian_edges_far_tail_stays_finite_and_increasing():
    for mu in (-30.0, 5.0, 40.0):
        e = gaussian_edges(mu, 0.5, -1.0, 1.0, 16)
        assert e[0] == -1.0 and e[-1] == 1.0 and np.all(np.diff(e) > 0)
    # A centred unit Gaussian on a wide interval: the middle edge is the mean, quartiles at +-0.6745.
    e = gaussian_edges(0.0, 1.0, -50.0, 50.0, 4)
    np.testing.assert_allclose(e[1:4], [-0.6744897501960817, 0.0, 0.6744897501960817], atol=1e-12)


def test_expected_decoding_is_argmax_decoding_on_one_hots_and_the_mean_between_two_tokens():
    rng = np.random.default_rng(3)
    acts = np.clip(rng.normal(0, 0.4, (500, 4)), -1, 1)
    acts[:, 3] = np.where(rng.random(500) < 0.5, -1.0, 1.0)
    grid = ActionGrid.fit(acts, "metaworld")
    tokens = torch.as_tensor(grid.encode(acts[:6]))  # (6, G)
    onehot = [torch.nn.functional.one_hot(tokens[:, g], v).double() for g, v in enumerate(grid.vocab_sizes)]
    torch.testing.assert_close(grid.decode_expected(onehot), grid.decode(tokens))
    # half on the first action's tokens, half on the second's: the translation is the mean of the two decoded
    # translations (the un-normalisation is affine); the gripper keeps the more likely (first, on a tie) token
    mix = [0.5 * p[0] + 0.5 * p[1] for p in onehot]
    mix = [m + 1e-6 * p[0] for m, p in zip(mix, onehot)]  # break the tie toward the first
    got = grid.decode_expected([m[None] for m in mix])[0]
    both = grid.decode(tokens[:2])
    torch.testing.assert_close(got[:3], (both[0, :3] + both[1, :3]) / 2, rtol=1e-5, atol=1e-5)
    assert float(got[3]) == float(both[0, 3])
    with pytest.raises(ValueError, match="probabilities over 7 tokens"):
        grid.decode_expected([torch.ones(1, 7)] + [torch.ones(1, v) for v in grid.vocab_sizes[1:]])

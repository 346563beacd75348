"""The MLP action head on keypoint position estimates: what it reads (state, positions, instruction -- nothing
else), that cached positions give the logits the images give, the position cache against per-sample estimates,
and the second training stage (perception copied from a trained policy, frozen, only the head learns)."""

import json

import numpy as np
import pytest
import torch

from vla.errors import UserError
from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.data import PositionCache, SyntheticDataset
from vla.train import TrainConfig, compute_loss, copy_perception, train

MLP = dict(keypoints=4, privileged_dim=6, vision_tokens=False, ego3d=False, action_head="mlp", mlp_width=32)


def _obs(B=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"rgb": rng.integers(0, 255, (B, 1, size, size, 3), dtype=np.uint8),
            "state": rng.normal(0, 1, (B, 4)).astype(np.float32), "instruction": ["push the puck"] * B,
            "depth": rng.uniform(0.5, 2.0, (B, 1, size, size)).astype(np.float32),
            "intrinsics": np.tile(np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]], np.float32), (B, 1, 1, 1))}


class PrivilegedSynthetic(SyntheticDataset):
    """Synthetic samples with privileged targets and task ids (what simulation episodes carry)."""

    def __init__(self, n=24, dim=6, **kw):
        super().__init__(n, **kw)
        self.privileged = np.random.default_rng(1).normal(0, 0.3, (n, dim)).astype(np.float32)

    def __getitem__(self, i):
        return {**super().__getitem__(i), "privileged": torch.from_numpy(self.privileged[i]), "task_id": i % 3}


@pytest.mark.parametrize("overrides, match", [
    (dict(action_head="tree"), "action_head='tree' is invalid"),
    (dict(action_head="mlp"), "action_head='mlp' is invalid"),  # no keypoints
    ({**MLP, "privileged_dim": 0}, "action_head='mlp' is invalid"),  # nothing to read positions from
    ({**MLP, "vision_tokens": True, "ego3d": True}, "action_head='mlp' is invalid"),
    (dict(perception_trainable=False), "perception_trainable=False is invalid"),
    ({**MLP, "mlp_width": 0}, "mlp_width=0 is invalid"),
    ({**MLP, "keypoint_positions": True}, "keypoint_positions=True is invalid"),
    (dict(action_output="continuous"), "action_output='continuous' is invalid"),  # transformer: tokens only
    ({**MLP, "action_output": "floats"}, "action_output='floats' is invalid"),
])
def test_config_refuses_an_mlp_head_without_keypoint_positions(overrides, match):
    with pytest.raises(UserError, match=match):
        PolicyConfig.tiny(**overrides)


def test_mlp_head_reads_state_positions_and_instruction_only():
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP))
    assert len(policy.layers) == 0  # no transformer stack is built
    obs = _obs()
    inputs = policy.prepare(obs)
    with torch.no_grad():
        logits, pos = policy(**inputs, privileged=True)
        assert [tuple(lg.shape) for lg in logits] == [(3, 4, v) for v in policy.action_grid.vocab_sizes]
        # the same positions given directly (a cache): the same logits, and the images are not needed
        cached = policy(None, inputs["state"], inputs["instructions"], positions=pos)
        for a, b in zip(logits, cached):
            torch.testing.assert_close(a, b)
        # each input moves the logits
        other_state = policy(None, inputs["state"] + 1, inputs["instructions"], positions=pos)[0]
        other_pos = policy(None, inputs["state"], inputs["instructions"], positions=pos + 0.1)[0]
        other_text = policy(None, inputs["state"], ["open the drawer"] * 3, positions=pos)[0]
        for moved in (other_state, other_pos, other_text):
            assert not torch.allclose(moved, logits[0])
        # the CLIP image tower never runs: its weights cannot change an action
        for p in policy.clip.model.visual.parameters():
            p.add_(1.0)
        torch.testing.assert_close(policy(**inputs)[0], logits[0])
    with pytest.raises(UserError, match="positions= is for MLP-head policies"):
        transformer = VLAPolicy.from_config(PolicyConfig.tiny(keypoints=4, privileged_dim=6))
        transformer(None, inputs["state"], inputs["instructions"], positions=pos)


def test_mlp_policy_round_trips_with_its_position_statistics(tmp_path):
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP))
    stats = dict(policy.stats, privileged={"task_mean": {"0": [0.0] * 6}, "std": [1.0] * 6,
                                           "mean": [0.1] * 6, "global_std": [0.5] * 6})
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP), stats=stats)
    torch.testing.assert_close(policy.position_std, torch.full((6,), 0.5))
    policy.save(tmp_path / "p")
    loaded = VLAPolicy.load(tmp_path / "p")
    torch.testing.assert_close(loaded.position_mean, torch.full((6,), 0.1))
    np.testing.assert_array_equal(loaded.predict(_obs()), policy.predict(_obs()))


def test_position_cache_matches_per_sample_estimates(tmp_path, monkeypatch):
    ds = PrivilegedSynthetic(n=10)
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP))
    cache = PositionCache(ds, policy, tmp_path / "pos.safetensors", batch_size=4, progress=False)
    assert len(cache) == len(ds)
    with torch.no_grad():
        for i in (0, 5, 9):
            s = ds[i]
            want = policy.estimate_positions(s["rgb"][None], s["depth"][None], s["intrinsics"][None])[0]
            got = cache[i]
            torch.testing.assert_close(got["positions"], want, rtol=1e-5, atol=1e-6)
            assert "rgb" not in got and got["instruction"] == s["instruction"]
            torch.testing.assert_close(got["privileged"], s["privileged"])
            torch.testing.assert_close(got["actions"], s["actions"])
            assert int(got["task_id"]) == s["task_id"]

    def boom(*a, **k):
        raise AssertionError("estimated again")

    monkeypatch.setattr(PositionCache, "_estimate", staticmethod(boom))
    again = PositionCache(ds, policy, tmp_path / "pos.safetensors", progress=False)  # same weights: reused
    torch.testing.assert_close(again.arrays["positions"], cache.arrays["positions"])
    assert again.instructions == cache.instructions
    with torch.no_grad():
        policy.privileged_head.bias.add_(1.0)
    with pytest.raises(AssertionError, match="estimated again"):  # other weights: the file is stale
        PositionCache(ds, policy, tmp_path / "pos.safetensors", progress=False)


def test_second_stage_trains_the_head_on_frozen_copied_perception(tmp_path):
    ds = PrivilegedSynthetic(n=24)
    src = VLAPolicy.from_config(PolicyConfig.tiny(keypoints=4, privileged_dim=6, vision_tokens=False, ego3d=False),
                                seed=3)
    with torch.no_grad():
        src.keypoint_encoder.log_temp.add_(0.5)  # "trained": differs from any fresh initialisation
    src.save(tmp_path / "stage1")
    cfg = PolicyConfig.tiny(**MLP, perception_trainable=False)
    tc = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5, save_every=30,
                     progress=False, perception_from=str(tmp_path / "stage1"))
    train(cfg, ds, tmp_path / "run", tc)
    out = VLAPolicy.load(tmp_path / "run" / "policy")
    for name, t in src.keypoint_encoder.state_dict().items():  # copied, then left alone
        torch.testing.assert_close(out.keypoint_encoder.state_dict()[name], t)
    for name, t in src.privileged_head.state_dict().items():
        torch.testing.assert_close(out.privileged_head.state_dict()[name], t)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < 0.7 * recs[0]["loss"], (recs[0], recs[-1])  # the head learns from the cache
    assert "privileged_loss" not in recs[-1]  # the frozen readout has nothing to learn
    assert (tmp_path / "run" / "positions.safetensors").is_file()
    # the head's position inputs are standardised by the cached estimates' own statistics (what it reads)
    est = np.clip(PositionCache(ds, out, tmp_path / "run" / "positions.safetensors",
                                progress=False).arrays["positions"].numpy(), -2, 2)
    np.testing.assert_allclose(out.stats["privileged"]["estimate_mean"], est.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.position_std.numpy(), est.std(0, ddof=1), rtol=1e-4)


def test_a_new_mlp_head_never_divides_by_the_std_of_an_absent_target():
    from vla.train import POSITION_STD_FLOOR, build_policy

    ds = PrivilegedSynthetic(n=24)
    ds.privileged[:, 3:6] = 0.0  # no second object: its true position is constant (MT10)
    policy = build_policy(PolicyConfig.tiny(**MLP), ds, TrainConfig(progress=False), torch.device("cpu"))
    std = policy.position_std.numpy()
    np.testing.assert_allclose(std[3:6], POSITION_STD_FLOOR)  # not privileged_stats' 1e-3
    np.testing.assert_allclose(std[:3], np.maximum(ds.privileged[:, :3].std(0), POSITION_STD_FLOOR), rtol=1e-5)


def test_copy_perception_refuses_another_keypoint_layout(tmp_path):
    src = VLAPolicy.from_config(PolicyConfig.tiny(keypoints=8, privileged_dim=6, vision_tokens=False, ego3d=False))
    src.save(tmp_path / "src")
    dst = VLAPolicy.from_config(PolicyConfig.tiny(**MLP))
    with pytest.raises(UserError, match="keypoints 8 there, 4 here"):
        copy_perception(dst, tmp_path / "src")
    plain = VLAPolicy.from_config(PolicyConfig.tiny())
    with pytest.raises(UserError, match="no keypoint readout to load into"):
        copy_perception(plain, tmp_path / "src")


def test_expectation_decoding_lies_between_bins_and_meets_argmax_on_peaked_logits():
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP, token_decoding="expectation"))
    argmax = VLAPolicy.from_config(PolicyConfig.tiny(**MLP))  # same seed: the same weights
    obs = _obs()
    soft = policy.predict(obs)
    assert not np.allclose(soft, argmax.predict(obs))  # untrained: flat distributions, means between centres
    with torch.no_grad():  # every head certain of one token (its bias): the expectation is that token's value
        for g, (a, b) in enumerate(zip(policy.heads, argmax.heads)):
            for head in (a, b):
                head.weight.zero_()
                head.bias.fill_(-1e4)
                head.bias[(7 * g + 3) % head.bias.numel()] = 0.0
    np.testing.assert_allclose(policy.predict(obs), argmax.predict(obs), atol=1e-6)
    with pytest.raises(UserError, match="token_decoding='mode' is invalid"):
        PolicyConfig.tiny(token_decoding="mode")


def _unnormalise_np(y, grid):
    """numpy reference of the grid's [-1, 1] -> action mapping (q01/q99 per dimension; grippers clipped to theirs)."""
    lo, hi = grid.q_low, grid.q_high
    grip = np.zeros(grid.action_dim, bool)
    for g in grid.groups:
        if g.kind == "gripper":
            grip[list(g.dims)] = True
    return np.where(grip, np.clip(y, lo, hi), (np.clip(y, -1, 1) + 1) / 2 * (hi - lo) + lo)


def test_continuous_output_regresses_the_chunk_and_encodes_tokens_on_the_grid():
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP, action_output="continuous"))
    assert len(policy.heads) == 0  # no per-group token heads are built
    obs = _obs()
    with torch.no_grad():
        policy.action_mlp[-1].bias[3::4].fill_(5.0)  # the gripper command overshoots its range: predict clips it
        out = policy(**policy.prepare(obs))
    assert tuple(out.shape) == (3, policy.config.chunk_len, policy.config.action_dim)
    assert (out[..., 3] > 1).any()
    actions = policy.predict(obs)
    assert actions.dtype == np.float32
    assert (actions[..., 3] <= policy.action_grid.q_high[3]).all()
    np.testing.assert_allclose(actions, _unnormalise_np(out.double().numpy(), policy.action_grid), atol=1e-5)
    np.testing.assert_array_equal(policy.predict_tokens(obs).numpy(), policy.action_grid.encode(actions))


def test_continuous_loss_is_the_mean_squared_error_of_valid_steps_in_normalised_space():
    policy = VLAPolicy.from_config(PolicyConfig.tiny(**MLP, action_output="continuous", perception_trainable=False))
    grid, T = policy.action_grid, policy.config.chunk_len
    rng = np.random.default_rng(4)
    actions = rng.uniform(-1, 1, (3, T, 4)).astype(np.float32)
    mask = np.ones((3, T), bool)
    mask[0, 2:] = False  # the episode ended: its last steps do not count
    obs = _obs()
    batch = {k: v if k == "instruction" else torch.from_numpy(v) for k, v in obs.items()}
    batch.update(actions=torch.from_numpy(actions), action_mask=torch.from_numpy(mask),
                 tokens=torch.as_tensor(grid.encode(actions)))
    loss, rec = compute_loss(policy, policy, batch, world=1)
    with torch.no_grad():
        pred = policy(**policy.prepare(obs)).double().numpy()
    lo, hi = grid.q_low, grid.q_high
    target = np.clip(2 * (actions - lo) / (hi - lo) - 1, -1, 1)
    target[..., 3] = actions[..., 3]  # the gripper is not normalised
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert rec["loss"] == pytest.approx(expected, rel=1e-4)
    loss.backward()  # the regression trains the head
    assert policy.action_mlp[0].weight.grad is not None

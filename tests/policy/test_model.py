"""VLAPolicy: shapes, gradients, preprocessing against a numpy reference, batch independence, config checks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vla.errors import UserError
from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.data import SyntheticDataset


@pytest.fixture(scope="module")
def policy():
    return VLAPolicy.from_config(PolicyConfig.tiny())


def _obs(n=3, size=(40, 48), seed=0, depth=True):
    ds = SyntheticDataset(n, image_size=size, seed=seed, depth=depth)
    obs = {"rgb": ds.rgb, "state": ds.state, "instruction": ["push the puck", "open the drawer now please",
                                                              "reach"][:n] * (n // 3 + 1)}
    obs["instruction"] = obs["instruction"][:n]
    if depth:
        obs["depth"], obs["intrinsics"] = ds.depth, ds.intrinsics
    return obs


def test_forward_backward_shapes_and_trainable_parts(policy):
    obs = _obs()
    policy.train()
    try:
        logits = policy(**policy.prepare(obs))
        assert [tuple(lg.shape) for lg in logits] == [(3, 4, v) for v in policy.action_grid.vocab_sizes]
        loss = sum(torch.nn.functional.cross_entropy(lg.flatten(0, 1), torch.zeros(12, dtype=torch.long))
                   for lg in logits)
        policy.zero_grad()
        loss.backward()
        grads = {n: p.grad for n, p in policy.named_parameters()}
        for name in ("queries", "heads.0.weight", "prompt.ctx", "ego3d.mlp.0.weight", "state_proj.weight",
                     "clip.model.visual.conv1.weight", "layers.0.proj.weight", "layers.1.qkv.weight"):
            assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0
        # frozen text tower (CoOp mode): no gradient, but the learned context gets one through it
        assert grads["clip.model.token_embedding.weight"] is None
        assert grads["clip.model.transformer.resblocks.0.mlp.c_fc.weight"] is None
    finally:
        policy.zero_grad()
        policy.eval()


def test_predict_is_batch_independent_and_deterministic(policy):
    obs = _obs(3)
    tokens = policy.predict_tokens(obs)
    acts = policy.predict(obs)
    assert acts.shape == (3, 4, 4) and acts.dtype == np.float32
    np.testing.assert_array_equal(acts, policy.predict(obs))
    assert torch.equal(policy.action_grid.decode(tokens), torch.from_numpy(acts))
    batched = policy(**policy.prepare(obs))
    for i in range(3):
        one = {k: (v[i : i + 1] if not isinstance(v, list) else v[i : i + 1]) for k, v in obs.items()}
        assert torch.equal(policy.predict_tokens(one), tokens[i : i + 1])
        single = policy(**policy.prepare(one))
        for a, b in zip(single, batched):
            torch.testing.assert_close(a[0], b[i], atol=1e-5, rtol=1e-5)


def test_image_preprocessing_matches_numpy(policy):
    """At the CLIP size: (x / 255 - mean) / std per channel, CHW; other sizes are resized first."""
    rgb = np.random.default_rng(1).integers(0, 256, (2, 1, 32, 32, 3), dtype=np.uint8)
    mean, std = np.array(policy.clip.model.visual.image_mean), np.array(policy.clip.model.visual.image_std)
    ref = ((rgb[:, 0] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(policy._images(torch.from_numpy(rgb)).numpy(), ref, atol=1e-5)
    # Other sizes: antialiased bilinear resize, as PIL's BILINEAR (within 1.5 grey levels)
    big = np.random.default_rng(2).integers(0, 256, (1, 1, 72, 96, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(big[0, 0]).resize((32, 32), Image.BILINEAR), dtype=np.float64)
    ref = ((pil / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(policy._images(torch.from_numpy(big)).numpy(), ref, atol=1.5 / 255 / std.min())


def test_depth_changes_the_output_and_missing_depth_works(policy):
    obs = _obs(2)
    base = policy(**policy.prepare(obs))[0]
    moved = dict(obs, depth=obs["depth"] * 1.7)
    assert not torch.allclose(policy(**policy.prepare(moved))[0], base)
    no_depth = {k: v for k, v in obs.items() if k not in ("depth", "intrinsics")}
    assert policy.predict(no_depth).shape == (2, 4, 4)


def test_bad_observations_name_the_key(policy):
    obs = _obs(2)
    with pytest.raises(UserError, match="'state'"):
        policy.predict(dict(obs, state=obs["state"][:, :3]))
    with pytest.raises(UserError, match="'rgb'"):
        policy.predict(dict(obs, rgb=obs["rgb"].astype(np.float32)))
    with pytest.raises(UserError, match="'instruction'"):
        policy.predict(dict(obs, instruction=["only one"]))
    with pytest.raises(UserError, match="'intrinsics'"):
        policy.predict({k: v for k, v in obs.items() if k != "intrinsics"})


def test_metadata_follows_the_contract(policy):
    md = json.loads(json.dumps(policy.metadata()))
    for key in ("action_layout", "action_dim", "chunk_len", "cameras", "image_size", "state_dim", "stats",
                "control_hz", "model_version", "checkpoint", "param_count"):
        assert key in md
    assert md["image_size"] == [32, 32] and md["chunk_len"] == 4 and md["cameras"] == ["corner"]
    assert md["param_count"] == sum(p.numel() for p in policy.parameters())
    assert len(md["stats"]["action"]["q01"]) == 4
    assert md["uses_depth"] is True and md["uses_intrinsics"] is True  # tiny has Ego3D on


def test_check_instruction_names_long_and_empty_text(policy):
    policy.check_instruction("open the drawer")
    with pytest.raises(UserError, match="too long"):
        policy.check_instruction("push the red puck " * 10)
    with pytest.raises(UserError, match="empty"):
        policy.check_instruction("  ")


def test_same_seed_same_weights():
    a, b = (VLAPolicy.from_config(PolicyConfig.tiny(), seed=3) for _ in range(2))
    c = VLAPolicy.from_config(PolicyConfig.tiny(), seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.queries, c.queries)


@pytest.mark.parametrize("field, value", [("chunk_len", 0), ("heads", 3), ("layers", ["ponet", "mlp"]),
                                          ("cameras", []), ("ego3d", "yes"), ("action_layout", "nope"),
                                          ("grid_bins", {"translation": [16, -1, 8]}), ("image_size", [32])])
def test_config_refuses_invalid_values_naming_the_field(field, value):
    with pytest.raises(UserError, match=field):
        PolicyConfig.tiny(**{field: value})


def test_config_round_trip_and_unknown_fields():
    cfg = PolicyConfig.default(chunk_len=8, grid_bins={"translation": [8, 16, 4]})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PolicyConfig.from_dict(d) == cfg
    with pytest.raises(UserError, match="chunk_lenn"):
        PolicyConfig.from_dict({**d, "chunk_lenn": 3})
    assert PolicyConfig.from_dict({"preset": "tiny", "chunk_len": 2}).chunk_len == 2
    with pytest.raises(UserError, match="version"):
        PolicyConfig.from_dict({**d, "version": 99})

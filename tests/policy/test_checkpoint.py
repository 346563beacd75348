"""Checkpoint directory: bit-identical reload, atomic replace, refusal of configs/weights that do not fit."""

import json
import re

import numpy as np
import pytest
import torch

from vla.errors import UserError
from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.action_grid import ActionGrid
from vla.policy.checkpoint import FILES
from vla.policy.data import SyntheticDataset


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ds = SyntheticDataset(64, seed=3)
    grid = ActionGrid.fit(ds.all_actions(), "metaworld", bins={"translation": [8, 8, 4]})
    policy = VLAPolicy.from_config(PolicyConfig.tiny(grid_bins={"translation": [8, 8, 4]}, control_hz=10.0),
                                   grid, seed=5)
    with torch.no_grad():  # move every weight off its init so a skipped tensor would show
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    policy.stats["state"] = {"mean": [0.1, 0.2, 0.3, 0.4], "std": [1.0, 2.0, 3.0, 4.0]}
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    policy.save(path)
    obs = {"rgb": ds.rgb[:4], "depth": ds.depth[:4], "intrinsics": ds.intrinsics[:4], "state": ds.state[:4],
           "instruction": ds.instructions[:4]}
    return policy, path, obs


def test_save_load_is_bit_identical(saved):
    policy, path, obs = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(FILES)
    loaded = VLAPolicy.load(path)
    for a, b in zip(policy(**policy.prepare(obs)), loaded(**loaded.prepare(obs))):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(policy.predict(obs), loaded.predict(obs))
    assert loaded.metadata()["checkpoint"] == str(path) and loaded.metadata()["control_hz"] == 10.0
    assert loaded.stats == policy.stats and loaded.action_grid.to_dict() == policy.action_grid.to_dict()
    own = set(policy.state_dict())
    assert set(loaded.state_dict()) == own


def test_resave_replaces_atomically(saved, tmp_path):
    policy, _, _ = saved
    path = tmp_path / "p"
    policy.save(path)
    policy.save(path)  # replacing an existing checkpoint leaves no temp or backup directories behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def _copy(path, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_load_refuses_unknown_config_field(saved, tmp_path):
    _, path, _ = saved
    dst = _copy(path, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "temperature": 0.5}))
    with pytest.raises(UserError, match="temperature"):
        VLAPolicy.load(dst)


def test_load_refuses_config_that_does_not_fit_the_weights(saved, tmp_path):
    _, path, _ = saved
    dst = _copy(path, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "chunk_len": 8}))
    with pytest.raises(UserError, match="queries"):
        VLAPolicy.load(dst)
    (dst / "config.json").write_text(json.dumps({**cfg, "image_size": [64, 64]}))
    with pytest.raises(UserError, match="image_size"):
        VLAPolicy.load(dst)


def test_load_refuses_weights_with_extra_or_missing_tensors(saved, tmp_path):
    """Every tensor of the file must belong to the model and every model tensor must be in the file (a
    checkpoint of another architecture, or a truncated export, is refused naming the keys)."""
    from safetensors.torch import load_file, save_file

    _, path, _ = saved
    dst = _copy(path, tmp_path)
    state = load_file(str(dst / "model.safetensors"))
    save_file({**state, "head.extra.weight": torch.zeros(2)}, str(dst / "model.safetensors"))
    with pytest.raises(UserError, match=r"unexpected \['head\.extra\.weight'\]"):
        VLAPolicy.load(dst)
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(dst / "model.safetensors"))
    with pytest.raises(UserError, match=re.escape(f"missing ['{dropped}']")):
        VLAPolicy.load(dst)


def test_load_refuses_grid_of_another_layout(saved, tmp_path):
    _, path, _ = saved
    dst = _copy(path, tmp_path)
    grid = ActionGrid.fit(np.random.default_rng(0).normal(size=(100, 4)), {"joint": [0, 1, 2, 3]})
    grid.save(dst / "action_grid.json")
    with pytest.raises(UserError, match="action_layout"):
        VLAPolicy.load(dst)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="model.safetensors"):
        VLAPolicy.load(tmp_path / "x")

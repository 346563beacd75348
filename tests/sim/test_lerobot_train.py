"""`vla train --data <LeRobot folder>` end to end: a few steps on a hand-built v3.0 dataset (6-D state, 3-D
action, video + image cameras), then the checkpoint is served over gRPC and answers."""

import json

import lerobot_fixtures as fx
import numpy as np
import pytest

from vla.cli import main
from vla.policy.config import PolicyConfig


@pytest.fixture(scope="module")
def lerobot_root(tmp_path_factory):
    return fx.make_v30(tmp_path_factory.mktemp("lr") / "ds", lengths=(6, 5, 7))


def _config(path, **kw):
    cfg = PolicyConfig.tiny(cameras=("top",), state_dim=fx.STATE_DIM, action_dim=fx.ACTION_DIM,
                            action_layout={"joint": [0, 1, 2]}, image_size=(32, 32), **kw)
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def test_train_then_serve(lerobot_root, tmp_path, capsys):
    from vla.client import RemotePolicy
    from vla.policy.model import VLAPolicy
    from vla.serving.server import ServeConfig, ServerThread

    out = tmp_path / "run"
    rc = main(["train", "--data", str(lerobot_root), "--features", "cameras=observation.images.top", "--out",
               str(out), "--config", str(_config(tmp_path / "cfg.json")), "--steps", "3", "--batch-size", "4",
               "--save-every", "3", "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    policy = VLAPolicy.load(out / "policy")
    assert policy.config.control_hz == fx.FPS  # from info.json's fps
    train_actions = np.concatenate([np.stack([fx.action_of(e, t) for t in range(n)])  # episodes 0-2: all train
                                    for e, n in enumerate((6, 5, 7))])
    np.testing.assert_allclose(policy.action_grid.q_low, np.quantile(train_actions, 0.01, axis=0), rtol=1e-6)
    srv = ServerThread(policy, ServeConfig(port=0)).start()
    try:
        remote = RemotePolicy(f"127.0.0.1:{srv.port}")
        obs = {"rgb": fx.frame_of(0, 0)[None], "state": fx.state_of(0, 0), "instruction": fx.TASKS[0]}
        actions = remote.predict(obs)
        assert actions.shape == (policy.config.chunk_len, fx.ACTION_DIM) and np.isfinite(actions).all()
        remote.close()
    finally:
        srv.stop(0)


def test_mismatched_config_is_one_clear_line(lerobot_root, tmp_path, capsys):
    rc = main(["train", "--data", str(lerobot_root), "--out", str(tmp_path / "run"), "--config", "tiny",
               "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "observation.state" in err and "state_dim=4" in err, err


def test_features_on_a_non_lerobot_folder(tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    rc = main(["train", "--data", str(folder), "--features", "state=x", "--out", str(tmp_path / "o"), "--config",
               "tiny", "--no-progress"])
    assert rc == 2 and "--features applies to one LeRobot dataset folder" in capsys.readouterr().err

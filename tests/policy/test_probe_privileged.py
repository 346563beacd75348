"""scripts/probe_privileged.py: a readout that outputs zeros (the per-task mean) scores exactly the no-image
baseline, and a policy without the readout is refused by name."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from probe_privileged import markdown, probe  # noqa: E402

from vla.errors import UserError  # noqa: E402
from vla.policy import PolicyConfig, VLAPolicy  # noqa: E402


def test_zero_readout_scores_the_per_task_mean_baseline(tmp_path):
    from sim import schema

    policy = VLAPolicy.from_config(PolicyConfig.tiny(privileged_dim=schema.PRIVILEGED_DIM))
    reach = str(schema.all_tasks().index("reach-v3"))
    policy.stats["privileged"] = {"task_mean": {reach: [0.0, 0.6, 0.02, 0, 0, 0, 0.0, 0.85, 0.15]},
                                  "std": [0.05] * schema.PRIVILEGED_DIM}
    with torch.no_grad():
        policy.privileged_head.weight.zero_()
        policy.privileged_head.bias.zero_()
    policy.save(tmp_path / "p")
    rows = probe(str(tmp_path / "p"), ("reach-v3",), episodes=2, image_size=32)
    # independent reference: the goal positions of the two held-out layouts, read from the environment here
    from sim.env import MetaWorldRGBD

    env = MetaWorldRGBD(task="reach-v3", image_size=16)
    try:
        goals = np.array([env.reset(seed=schema.EVAL_SEED_BASE + k)[1]["raw_obs"][36:39] for k in range(2)])
    finally:
        env.close()
    want = np.sqrt(((goals - np.array([0.0, 0.85, 0.15])) ** 2).sum(1).mean()) * 100
    assert rows[0]["heldout"]["goal_cm"] == pytest.approx(want, rel=1e-4)
    for split in ("train", "heldout"):
        r = rows[0][split]
        assert r["goal_cm"] == pytest.approx(r["goal_mean_cm"]) and r["object_cm"] == pytest.approx(r["object_mean_cm"])
        assert 0 < r["goal_cm"] < 50  # reach goals lie within ~20 cm of that mean
    assert "| reach-v3 |" in markdown(rows)

    plain = VLAPolicy.from_config(PolicyConfig.tiny())
    plain.save(tmp_path / "plain")
    with pytest.raises(UserError, match="without privileged targets"):
        probe(str(tmp_path / "plain"), ("reach-v3",), episodes=1, image_size=32)

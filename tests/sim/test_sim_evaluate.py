"""The evaluation runner: expert succeeds, random fails, JSON schema, confidence intervals, policy hook."""

import argparse
import json

import numpy as np
import pytest

from sim.evaluate import EvalConfig, evaluate, load_policy, wilson_interval
from vla.errors import UserError


def test_wilson_interval_reference_values():
    # Published Wilson 95% intervals (e.g. Newcombe 1998, Table I; z = 1.96)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(8, 10), (0.4902, 0.9433), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(15, 148), (0.0624, 0.1605), atol=1e-4)


def test_expert_succeeds_through_cli_and_json_schema(tmp_path):
    from vla.commands import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    out = tmp_path / "results.json"
    args = parser.parse_args(["eval", "--tasks", "reach,push", "--episodes", "3", "--policy", "expert",
                              "--workers", "2", "--image-size", "32", "--output", str(out),
                              "--video-dir", str(tmp_path / "videos")])
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    assert set(results["tasks"]) == {"reach-v3", "push-v3"}
    for task, r in results["tasks"].items():
        assert r["episodes"] == 3 and r["success_rate"] == 1.0, (task, r)
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["success_rate"] <= hi <= 1.0
        assert isinstance(r["mean_steps"], float) and 1 <= r["mean_steps"] < 500
        assert r["seeds"] == [1_000_000, 1_000_001, 1_000_002]  # held-out seeds
    assert results["steps_per_second"] > 0
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["push-v3_seed1000000.gif",
                                                                        "reach-v3_seed1000000.gif"]


def test_training_seeds_are_the_collection_seeds_of_the_training_split():
    # collection seeds 0, 1, 2, ...; seed % 10 == 9 is validation (sim.schema.is_val_seed), so not a training layout
    assert EvalConfig(tasks=("reach-v3",), episodes=10, seeds="train").episode_seeds() == [0, 1, 2, 3, 4, 5, 6, 7,
                                                                                            8, 10]
    assert EvalConfig(tasks=("reach-v3",), episodes=2).episode_seeds() == [1_000_000, 1_000_001]
    with pytest.raises(ValueError, match="seeds='val'"):
        EvalConfig(tasks=("reach-v3",), episodes=2, seeds="val")
    r = evaluate(load_policy("expert"), EvalConfig(tasks=("reach-v3",), episodes=2, workers=1, image_size=16,
                                                   seeds="train", instructions="train"))
    assert r["tasks"]["reach-v3"]["seeds"] == [0, 1] and r["tasks"]["reach-v3"]["success_rate"] == 1.0


def test_random_policy_fails_with_chunks_and_ensembling():
    cfg = EvalConfig(tasks=("push-v3",), episodes=2, workers=1, image_size=16, max_steps=40, ensemble=True)
    r = evaluate(load_policy("random"), cfg)
    assert r["tasks"]["push-v3"]["success_rate"] == 0.0
    assert r["tasks"]["push-v3"]["mean_steps"] == 40.0


def test_policy_hook_and_bad_chunks():
    with pytest.raises(UserError, match="model.pt"):
        load_policy("model.pt")
    with pytest.raises(UserError, match="127.0.0.1:1: UNAVAILABLE"):  # nothing listens on port 1
        load_policy("server:127.0.0.1:1")

    class Bad:
        def reset(self, env_ids=None):
            pass

        def predict(self, obs_batch):
            return np.zeros((len(obs_batch["state"]), 4))  # missing the chunk axis

    cfg = EvalConfig(tasks=("reach-v3",), episodes=1, workers=1, image_size=16, max_steps=5)
    with pytest.raises(ValueError, match=r"\(1, T, 4\)"):
        evaluate(Bad(), cfg)


def test_eval_runs_a_model_with_the_execution_settings_it_carries(tmp_path, monkeypatch):
    """A checkpoint whose config says horizon 3 is asked for a chunk every 3 steps by `vla eval` unless
    --horizon says otherwise; the settings are in its metadata (what GetModelInfo serves)."""
    from sim.evaluate import model_execution
    from vla.commands import eval as eval_cmd
    from vla.policy import PolicyConfig, VLAPolicy

    ckpt = tmp_path / "policy"
    VLAPolicy.from_config(PolicyConfig.tiny(exec_horizon=3)).save(ckpt)
    assert VLAPolicy.load(ckpt).metadata()["execution"] == {"horizon": 3, "ensemble": False}
    calls = []
    real_predict = VLAPolicy.predict
    monkeypatch.setattr(VLAPolicy, "predict", lambda self, obs: calls.append(1) or real_predict(self, obs))
    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    for extra, horizon in (([], 3), (["--horizon", "1"], 1)):
        calls.clear()
        out = tmp_path / f"h{horizon}.json"
        args = parser.parse_args(["eval", "--tasks", "reach", "--episodes", "1", "--policy", str(ckpt),
                                  "--workers", "1", "--image-size", "32", "--max-steps", "9", "--output", str(out),
                                  *extra])
        assert args.func(args) == 0
        assert json.loads(out.read_text())["config"]["horizon"] == horizon
        assert len(calls) == 9 // horizon  # one chunk per `horizon` steps over the 9-step episode

    class Served:  # what RemoteSimPolicy exposes: the server's model info
        info = {"metadata": {"execution": {"horizon": 2, "ensemble": True}}}

    assert model_execution(Served()) == {"horizon": 2, "ensemble": True}
    assert model_execution(object()) == {"horizon": 1, "ensemble": False}
    assert model_execution(VLAPolicy.from_config(PolicyConfig.tiny())) == {"horizon": 1, "ensemble": False}

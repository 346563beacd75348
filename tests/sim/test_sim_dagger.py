"""Noise-injected and DAgger collection: stored labels are the expert's response to the states actually visited.

Each check replays an episode in a fresh environment from its seed with the actions that were executed (MuJoCo is
deterministic), asks the scripted expert for its action in every replayed state, and compares with what was stored.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from collect_helpers import kill_after_first_episode

from sim.collect import CollectConfig, collect
from sim.dataset import EpisodeDataset
from vla.errors import UserError

SIZE = 32
TASK = "reach-v3"


def _replay(meta: dict, executed: np.ndarray):
    """-> (states (L, 4), expert labels (L, 4)) along the executed actions from the episode's seed."""
    from sim.env import MetaWorldRGBD
    from sim.policies import ExpertLabeller

    env, expert = MetaWorldRGBD(task=meta["task"], image_size=SIZE, depth=False), ExpertLabeller()
    try:
        obs, info = env.reset(seed=meta["seed"])
        states, labels = [], []
        for a in executed:
            states.append(obs["state"])
            labels.append(expert.label(obs, info))
            obs, _, _, _, info = env.step(a)
        return np.stack(states), np.stack(labels)
    finally:
        env.close()


def _expert_states(task: str, seed: int, steps: int) -> np.ndarray:
    from sim.env import MetaWorldRGBD
    from sim.policies import ExpertLabeller

    env, expert = MetaWorldRGBD(task=task, image_size=SIZE, depth=False, terminate_on_success=False), ExpertLabeller()
    try:
        obs, info = env.reset(seed=seed)
        out = []
        for _ in range(steps):
            out.append(obs["state"])
            obs, _, _, _, info = env.step(expert.label(obs, info))
        return np.stack(out)
    finally:
        env.close()


def _episodes(root: Path) -> list[tuple[dict, dict]]:
    out = []
    for meta in json.loads((root / "manifest.json").read_text())["episodes"]:
        with np.load(root / meta["file"]) as z:
            out.append((meta, {k: z[k] for k in ("actions", "state", "executed_actions") if k in z.files}))
    return out


@pytest.fixture(scope="module")
def wrong_driver(tmp_path_factory):
    """An untrained tiny policy: it drives the arm somewhere the expert would never go."""
    from vla.policy import PolicyConfig, VLAPolicy

    path = tmp_path_factory.mktemp("driver") / "policy"
    VLAPolicy.from_config(PolicyConfig.tiny(exec_horizon=2), seed=3).save(path)
    return path


def test_noise_stores_clean_labels_while_executing_noisy_actions(tmp_path):
    m = collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), image_size=SIZE, noise=0.3,
                              max_steps=40), progress=False)
    assert m["sources"] == {"noise": 1} and m["episodes"][0]["source"] == "noise"
    (meta, arr), = _episodes(tmp_path)
    executed, stored = arr["executed_actions"], arr["actions"]
    assert np.mean(np.any(np.abs(executed - stored) > 1e-3, axis=1)) > 0.9  # the noise was really executed
    states, labels = _replay(meta, executed)
    np.testing.assert_allclose(states, arr["state"], atol=1e-6)  # the stored frames are the visited states
    np.testing.assert_allclose(stored, labels, atol=1e-6)  # and every label is the expert's for that state


def test_dagger_labels_are_the_experts_response_to_the_students_states(tmp_path, wrong_driver):
    m = collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), image_size=SIZE, driver=str(wrong_driver),
                              beta=0.0, round=1, seed_start=7, max_steps=40), progress=False)
    assert m["sources"] == {"dagger": 1}
    (meta, arr), = _episodes(tmp_path)
    assert (meta["seed"], meta["round"], meta["success"]) == (7, 1, False)
    executed, stored = arr["executed_actions"], arr["actions"]
    assert np.abs(executed - stored).max() > 0.2  # the student, not the expert, drove
    expert_own = _expert_states(TASK, 7, len(executed))
    assert np.linalg.norm(arr["state"][-1, :3] - expert_own[-1, :3]) > 0.02  # off the expert's own trajectory
    states, labels = _replay(meta, executed)
    np.testing.assert_allclose(states, arr["state"], atol=1e-6)
    np.testing.assert_allclose(stored, labels, atol=1e-6)


def test_beta_one_executes_the_expert(tmp_path, wrong_driver):
    collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), image_size=SIZE, driver=str(wrong_driver),
                          beta=1.0, max_steps=30), progress=False)
    (_, arr), = _episodes(tmp_path)
    np.testing.assert_array_equal(arr["executed_actions"], arr["actions"])


def test_settings_are_checked_and_a_resumed_round_must_match(tmp_path, wrong_driver):
    with pytest.raises(ValueError, match="beta=1.5"):
        CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), driver=str(wrong_driver), beta=1.5)
    with pytest.raises(ValueError, match="noise=-0.1"):
        CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), noise=-0.1)
    with pytest.raises(ValueError, match="not a policy checkpoint"):
        CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), driver=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="held-out evaluation seeds"):
        CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), seed_start=999_990)
    collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), image_size=SIZE, noise=0.1, max_steps=5),
            progress=False)
    with pytest.raises(UserError, match="noise"):
        collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(tmp_path), image_size=SIZE, noise=0.2,
                              max_steps=5), progress=False)


def test_killed_dagger_round_resumes_without_duplicates_or_losses(tmp_path, wrong_driver):
    out = tmp_path / "round1"
    kwargs = dict(tasks=(TASK,), episodes=3, out=str(out), image_size=SIZE, driver=str(wrong_driver), beta=0.5,
                  round=1, seed_start=20, max_steps=25)
    code = f"from sim.collect import CollectConfig, collect; collect(CollectConfig(**{kwargs!r}), progress=False)"
    first = kill_after_first_episode(code, out)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    m = collect(CollectConfig(**kwargs), progress=False)
    assert [e["seed"] for e in m["episodes"]] == [20, 21, 22]  # none lost, none twice
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first)  # kept, not collected again
    assert not list(out.glob("**/*.tmp"))
    # a second run has nothing left to do
    assert collect(CollectConfig(**kwargs), progress=False)["num_steps"] == m["num_steps"]


def test_rounds_train_as_one_dataset(tmp_path, wrong_driver):
    a, b = tmp_path / "expert", tmp_path / "dagger"
    collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(a), image_size=SIZE), progress=False)
    collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(b), image_size=SIZE, driver=str(wrong_driver),
                          max_steps=10), progress=False)
    both = EpisodeDataset(f"{a},{b}", split="all", chunk_len=2)
    assert len(both) == len(EpisodeDataset(a, split="all")) + len(EpisodeDataset(b, split="all"))
    last = both[len(both) - 1]
    with np.load(b / json.loads((b / "manifest.json").read_text())["episodes"][0]["file"]) as z:
        np.testing.assert_array_equal(last["action"].numpy(), z["actions"][-1])
    assert [e["source"] for e in both.source.episodes()] == ["expert", "dagger"]
    c = tmp_path / "other"
    collect(CollectConfig(tasks=(TASK,), episodes=1, out=str(c), image_size=SIZE * 2, max_steps=5, noise=0.1),
            progress=False)
    with pytest.raises(UserError, match="image_size"):
        EpisodeDataset([a, c], split="all")

"""A small deterministic policy that follows the policy contract, and helpers to run servers on ephemeral ports."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest


class FakePolicy:
    """Every input moves every output, rows are independent: a mixed-up or mis-decoded field changes the answer."""

    def __init__(self, cameras=("corner",), chunk_len=4, action_dim=4, state_dim=4, image_size=32, delay_s=0.0,
                 execution: dict | None = None):
        self.execution = execution  # {"horizon", "ensemble"} the model states it was evaluated with, or None
        self.cameras, self.chunk_len, self.action_dim = tuple(cameras), chunk_len, action_dim
        self.state_dim, self.image_size, self.delay_s = state_dim, image_size, delay_s
        rng = np.random.default_rng(0)
        self.W = rng.normal(size=(state_dim, chunk_len * action_dim))
        self.calls: list[int] = []  # batch size of every forward pass

    def reset(self, env_ids=None) -> None:
        pass

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        import time

        if self.delay_s:
            time.sleep(self.delay_s)
        B = len(obs["instruction"])
        self.calls.append(B)
        rgb = obs["rgb"].astype(np.float64)  # (B, V, H, W, 3)
        feat = rgb.mean(axis=(2, 3)) @ np.array([1.0, 2.0, 3.0]) / 255.0  # (B, V)
        out = np.tanh(obs["state"].astype(np.float64) @ self.W).reshape(B, self.chunk_len, self.action_dim)
        out += 0.1 * feat.sum(1)[:, None, None] + 0.01 * rgb[:, :, 0, 0, 0].sum(1)[:, None, None] / 255.0
        if "depth" in obs:
            out += 0.05 * obs["depth"].astype(np.float64).mean(axis=(1, 2, 3))[:, None, None]
        if "intrinsics" in obs:
            out += 0.001 * obs["intrinsics"][:, :, 0, 0].sum(1)[:, None, None]
        words = np.array([int(hashlib.sha256(s.encode()).hexdigest()[:6], 16) / 2**24 for s in obs["instruction"]])
        out += 0.2 * words[:, None, None] * np.arange(1, self.chunk_len + 1)[None, :, None] / self.chunk_len
        return out.astype(np.float32)  # (B, T, A)

    def metadata(self) -> dict[str, Any]:
        return {"action_layout": ["dx", "dy", "dz", "gripper"][: self.action_dim], "action_dim": self.action_dim,
                "chunk_len": self.chunk_len, "cameras": list(self.cameras), "image_size": [self.image_size] * 2,
                "state_dim": self.state_dim, "control_hz": 10.0, "model_version": "fake-1", "checkpoint": None,
                "param_count": int(self.W.size),
                "stats": {"action": {"q01": [-1.0, -1.0, -1.0, 0.0], "q99": [1.0, 1.0, 1.0, 1.0]},
                          "gripper_threshold": 0.5},
                **({"execution": self.execution} if self.execution else {})}


def make_obs(seed: int, size: int = 32, cameras: int = 1, depth: bool = True, intrinsics: bool = True,
             state_dim: int = 4) -> dict[str, Any]:
    """One observation in the sim.schema layout."""
    rng = np.random.default_rng(seed)
    obs = {"rgb": rng.integers(0, 256, (cameras, size, size, 3), dtype=np.uint8),
           "state": rng.normal(size=state_dim).astype(np.float32),
           "instruction": f"push the block {seed % 7} cm left"}
    if depth:
        obs["depth"] = rng.uniform(0.2, 3.0, (cameras, size, size)).astype(np.float32)
    if intrinsics:
        K = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32)
        obs["intrinsics"] = np.stack([K] * cameras)
    return obs


def batch_of(obs_list: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack observations into the policy's batch layout (what the in-process reference gets)."""
    out = {k: np.stack([o[k] for o in obs_list]) for k in ("rgb", "depth", "intrinsics", "state") if k in obs_list[0]}
    out["instruction"] = [o["instruction"] for o in obs_list]
    return out


def make_policy():
    """The policy under test: VLAPolicy.tiny once the policy package provides it, else the fake above."""
    try:
        from vla.policy import PolicyConfig, VLAPolicy
    except ImportError:
        return FakePolicy()
    return VLAPolicy.from_config(PolicyConfig.tiny())


@pytest.fixture
def fake_policy():
    return FakePolicy()


@pytest.fixture
def server_factory():
    """start(policy, **ServeConfig fields) -> running ServerThread on 127.0.0.1:<ephemeral>; all stopped after."""
    from vla.serving.server import ServeConfig, ServerThread

    started = []

    def start(policy=None, vision=None, **cfg):
        srv = ServerThread(policy, ServeConfig(**{"port": 0, **cfg}), vision).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(0)

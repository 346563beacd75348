"""A policy that answers a zero chunk of the right shape: measures the serving layer without a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass
class NoopPolicy:
    cameras: tuple[str, ...] = ("corner",)
    image_size: int = 128
    chunk_len: int = 4
    action_dim: int = 4
    state_dim: int = 4
    # predict is a np.zeros: the batcher may run it on the event loop (no model-thread hop), so a noop server
    # measures decode + RPC + encode alone. Real policies never set this.
    serve_inline: ClassVar[bool] = True

    def __post_init__(self):
        self._zeros: dict[int, np.ndarray] = {}
        for name in ("image_size", "chunk_len", "action_dim", "state_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"NoopPolicy.{name}={getattr(self, name)} must be >= 1")
        if not self.cameras:
            raise ValueError("NoopPolicy.cameras is empty")

    def reset(self, env_ids=None) -> None:
        pass

    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        B = len(obs_batch["instruction"])
        out = self._zeros.get(B)
        if out is None:  # one read-only array per batch size: the answer never changes
            out = np.zeros((B, self.chunk_len, self.action_dim), np.float32)
            out.flags.writeable = False
            if len(self._zeros) < 64:
                self._zeros[B] = out
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "action_layout": [f"a{i}" for i in range(self.action_dim)], "action_dim": self.action_dim,
            "chunk_len": self.chunk_len, "cameras": list(self.cameras), "image_size": [self.image_size] * 2,
            "state_dim": self.state_dim, "stats": {}, "control_hz": None, "model_version": "noop",
            "checkpoint": None, "param_count": 0,
        }

"""Turning predicted action chunks into one action per control step, for a batch of environments.

Two ways, shared by the evaluation runner and the robot-controller client:
- `ChunkQueue`: execute the first `horizon` actions of a chunk, then ask for a new chunk (open loop between).
- `ChunkEnsembler`: ask every step and average every still-valid prediction for the current step
  (ACT-style temporal ensembling). A prediction made `a` steps ago gets weight exp(-coef * a), i.e.
  w ~ exp(coef * k) with k increasing for newer chunks: newer predictions weigh more (coef = 0.8 default).
"""

from __future__ import annotations

import numpy as np


def _ids(env_ids, n: int) -> np.ndarray:
    return np.arange(n) if env_ids is None else np.asarray(env_ids, dtype=np.int64).reshape(-1)


def _check_chunks(chunks: np.ndarray, rows: int, action_dim: int) -> np.ndarray:
    chunks = np.asarray(chunks, dtype=np.float32)
    if chunks.ndim != 3 or chunks.shape[0] != rows or chunks.shape[2] != action_dim or chunks.shape[1] < 1:
        raise ValueError(f"action chunk shape {chunks.shape} != ({rows}, T>=1, {action_dim})")
    return chunks


class ChunkQueue:
    """Per-environment FIFO of actions: the first `horizon` actions of each chunk are executed."""

    def __init__(self, num_envs: int, horizon: int, action_dim: int = 4):
        if horizon < 1:
            raise ValueError(f"execution horizon {horizon} must be >= 1")
        self.num_envs, self.horizon, self.action_dim = num_envs, horizon, action_dim
        self._queues: list[list[np.ndarray]] = [[] for _ in range(num_envs)]

    def reset(self, env_ids=None) -> None:
        for i in _ids(env_ids, self.num_envs):
            self._queues[i] = []

    def needs_chunk(self) -> np.ndarray:
        """(B,) bool: environments with no queued action."""
        return np.array([not q for q in self._queues])

    def add(self, chunks: np.ndarray, env_ids=None) -> None:
        """chunks (len(env_ids), T, A): replace the queues of these environments."""
        ids = _ids(env_ids, self.num_envs)
        chunks = _check_chunks(chunks, len(ids), self.action_dim)
        for row, i in enumerate(ids):
            self._queues[i] = list(chunks[row, : self.horizon])

    def pop(self, env_ids=None) -> np.ndarray:
        """(len(env_ids), A): the next queued action of each environment."""
        ids = _ids(env_ids, self.num_envs)
        if any(not self._queues[i] for i in ids):
            raise RuntimeError("pop() on an empty action queue: call add() first")
        return np.stack([self._queues[i].pop(0) for i in ids])


class ChunkEnsembler:
    """Temporal ensembling of overlapping chunks, one buffer per environment."""

    def __init__(self, num_envs: int, action_dim: int = 4, coef: float = 0.8):
        if coef < 0:
            raise ValueError(f"ensembling coefficient {coef} must be >= 0 (newer predictions weigh more)")
        self.num_envs, self.action_dim, self.coef = num_envs, action_dim, coef
        # per env: list of [chunk (T, A), age]; age = steps since the chunk was predicted
        self._chunks: list[list[list]] = [[] for _ in range(num_envs)]

    def reset(self, env_ids=None) -> None:
        for i in _ids(env_ids, self.num_envs):
            self._chunks[i] = []

    def needs_chunk(self) -> np.ndarray:
        """(B,) bool: ensembling asks for a new chunk at every step."""
        return np.ones(self.num_envs, dtype=bool)

    def add(self, chunks: np.ndarray, env_ids=None) -> None:
        """chunks (len(env_ids), T, A): predictions made at the current step."""
        ids = _ids(env_ids, self.num_envs)
        chunks = _check_chunks(chunks, len(ids), self.action_dim)
        for row, i in enumerate(ids):
            self._chunks[i].append([chunks[row], 0])

    def pop(self, env_ids=None) -> np.ndarray:
        """(len(env_ids), A): weighted mean of every prediction for the current step; then time advances."""
        ids = _ids(env_ids, self.num_envs)
        out = np.empty((len(ids), self.action_dim), np.float32)
        for row, i in enumerate(ids):
            live = [(c, a) for c, a in self._chunks[i] if a < len(c)]
            if not live:
                raise RuntimeError(f"no prediction covers the current step of environment {i}: call add() first")
            preds = np.stack([c[a] for c, a in live])  # (K, A)
            w = np.exp(-self.coef * np.array([a for _, a in live], dtype=np.float64))  # (K,)
            out[row] = (w[:, None] * preds).sum(0) / w.sum()
            self._chunks[i] = [[c, a + 1] for c, a in live if a + 1 < len(c)]
        return out

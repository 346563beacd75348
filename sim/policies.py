"""Reference policies for the evaluation runner (Meta-World's scripted experts, uniform random actions) and the
labellers that annotate visited states for DAgger and noise-injected collection."""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sim import schema


class ExpertPolicy:
    """Meta-World's scripted expert for each row's task; closed loop, so chunks of length 1.

    Privileged: it reads `raw_obs` and `task`, which the runner adds to the batch only for policies that
    declare `privileged = True`.
    """

    privileged = True

    def __init__(self):
        self._experts: dict[str, Any] = {}

    def reset(self, env_ids=None) -> None:
        """The scripted experts are stateless."""

    def _expert(self, task: str):
        if task not in self._experts:
            from metaworld.policies import ENV_POLICY_MAP

            if task not in ENV_POLICY_MAP:
                raise ValueError(f"no scripted expert for task {task!r}")
            self._experts[task] = ENV_POLICY_MAP[task]()
        return self._experts[task]

    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        raw, tasks = obs_batch.get("raw_obs"), obs_batch.get("task")
        if raw is None or tasks is None:
            raise ValueError("ExpertPolicy needs the privileged keys 'raw_obs' and 'task' in the batch")
        raw = np.asarray(raw, dtype=np.float64)
        out = np.empty((len(tasks), 1, schema.ACTION_DIM), np.float32)
        with warnings.catch_warnings():  # experts warn that their gains exceed [-1, 1]; the env clips anyway
            warnings.simplefilter("ignore")
            for i, task in enumerate(tasks):
                out[i, 0] = self._expert(task).get_action(raw[i])
        return np.clip(out, -1.0, 1.0)


class RandomPolicy:
    """Uniform random actions in [-1, 1]: the floor any learned policy must beat."""

    privileged = False

    def __init__(self, chunk_len: int = 1, seed: int = 0):
        if chunk_len < 1:
            raise ValueError(f"chunk_len={chunk_len} must be >= 1")
        self.chunk_len = chunk_len
        self._rng = np.random.default_rng(seed)

    def reset(self, env_ids=None) -> None:
        """Stateless."""

    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        b = len(obs_batch["state"])
        return self._rng.uniform(-1.0, 1.0, (b, self.chunk_len, schema.ACTION_DIM)).astype(np.float32)


@runtime_checkable
class Labeller(Protocol):
    """Who says what the robot should have done in a visited state: the DAgger teacher.

    `label(obs, info)` gets one environment observation (sim.schema keys, unbatched) and the `info` dict that
    came with it (`info["raw_obs"]`, `info["task"]` in simulation) and returns the (4,) action to learn. A
    scripted expert (below) can label any state; a person correcting a real robot (intervention data) is another
    labeller with the same one method.
    """

    def label(self, obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray: ...


class ExpertLabeller:
    """Meta-World's scripted expert as a labeller: it reads only the 39-D state vector and keeps no memory.

    Label the observation `step()` returned (its `info["raw_obs"]`); calling the environment's `_get_obs()`
    again would advance Meta-World's built-in frame stack and give the expert a different state.
    """

    def __init__(self):
        self._expert = ExpertPolicy()

    def label(self, obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        raw = np.asarray(info["raw_obs"], dtype=np.float64)
        if raw.shape != (schema.RAW_OBS_DIM,):
            raise ValueError(f"ExpertLabeller needs info['raw_obs'] of shape ({schema.RAW_OBS_DIM},), got {raw.shape}")
        return self._expert.predict({"raw_obs": raw[None], "task": [info["task"]]})[0, 0]

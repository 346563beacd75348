"""Meta-World v3 tasks as gymnasium environments with RGB-D images, intrinsics, proprio state and language.

    import gymnasium as gym, sim
    env = gym.make("vla-sim/MetaWorld-push-v3", cameras=("corner",), image_size=128)
    obs, info = env.reset(seed=0)          # obs: see sim.schema; info["raw_obs"] is for scripted experts only

One environment can switch task between episodes (`reset(options={"task": "reach-v3"})`, or set the
`next_task` attribute, which is how the evaluation runner drives mixed-task vector environments).
The episode seed fixes both the object/goal layout and the paraphrase of the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim import gl

gl.configure()  # must precede the first `import mujoco` (metaworld imports it)

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from sim import language, schema  # noqa: E402
from sim.render import QUALITIES, CameraRenderer  # noqa: E402


@dataclass(frozen=True)
class SimConfig:
    """Environment settings; validated here so a bad value fails at construction, naming itself."""

    task: str = "reach-v3"
    cameras: tuple[str, ...] = schema.DEFAULT_CAMERAS
    image_size: int = schema.DEFAULT_IMAGE_SIZE
    depth: bool = True
    quality: str = "fast"
    max_steps: int = schema.MAX_EPISODE_STEPS
    terminate_on_success: bool = True
    instructions: str = "train"  # which paraphrase set: 'train' or 'heldout'
    max_depth: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.task not in language.INSTRUCTIONS:
            raise ValueError(f"unknown task {self.task!r}: expected a Meta-World v3 task such as 'push-v3'")
        if not self.cameras:
            raise ValueError("cameras is empty: give at least one camera name, e.g. ('corner',)")
        if not 8 <= int(self.image_size) <= 1024:
            raise ValueError(f"image_size={self.image_size} is outside [8, 1024] pixels")
        if self.quality not in QUALITIES:
            raise ValueError(f"quality={self.quality!r} is not one of {QUALITIES}")
        if not 1 <= self.max_steps <= schema.MAX_EPISODE_STEPS:
            raise ValueError(f"max_steps={self.max_steps} is outside [1, {schema.MAX_EPISODE_STEPS}]")
        if self.instructions not in language.SPLITS:
            raise ValueError(f"instructions={self.instructions!r} is not one of {language.SPLITS}")
        if not self.max_depth > 0:
            raise ValueError(f"max_depth={self.max_depth} must be positive")


def _make_metaworld(task: str, max_steps: int):
    """A goal-observable Meta-World env whose layout is drawn from its own seeded RNG at each reset."""
    from metaworld.env_dict import ENV_CLS_MAP

    mw = ENV_CLS_MAP[task]()
    mw._partially_observable = False  # the goal is in raw_obs: the scripted experts need it
    mw.__dict__.pop("sawyer_observation_space", None)  # cached_property computed for the old setting
    mw._set_task_called = True
    mw._freeze_rand_vec = False
    mw.seeded_rand_vec = True
    mw.max_path_length = max_steps
    return mw


class MetaWorldRGBD(gym.Env):
    """One Meta-World task (switchable between episodes) with the observation of sim.schema."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, render_mode: str | None = None, **config: Any):
        self.config = SimConfig(**config)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only None or 'rgb_array' are supported")
        self.render_mode = render_mode
        c = self.config
        v, s = len(c.cameras), int(c.image_size)
        obs = {
            "rgb": spaces.Box(0, 255, (v, s, s, 3), np.uint8),
            "intrinsics": spaces.Box(0.0, np.inf, (v, 3, 3), np.float32),
            "state": spaces.Box(-np.inf, np.inf, (schema.STATE_DIM,), np.float32),
            "instruction": spaces.Text(language.MAX_LENGTH, min_length=1, charset=language.CHARSET),
        }
        if c.depth:
            obs["depth"] = spaces.Box(0.0, c.max_depth, (v, s, s), np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (schema.ACTION_DIM,), np.float32)
        self.task = c.task
        self.next_task: str | None = None
        self._mw = None
        self._renderer: CameraRenderer | None = None
        self._load(c.task)
        self._steps, self._seed, self._instruction, self._last_obs = 0, None, "", None

    # -- task loading ------------------------------------------------------------------------------------
    def _load(self, task: str) -> None:
        if task not in language.INSTRUCTIONS:
            raise ValueError(f"unknown task {task!r}: expected a Meta-World v3 task such as 'push-v3'")
        self._close_task()
        c = self.config
        self._mw = _make_metaworld(task, c.max_steps)
        self._renderer = CameraRenderer(self._mw.model, c.cameras, int(c.image_size), c.quality, c.depth,
                                        c.max_depth)
        self.task = task

    def _close_task(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        if self._mw is not None:
            self._mw.close()
        self._renderer = self._mw = None

    # -- gymnasium API -----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        task = (options or {}).get("task") or self.next_task
        self.next_task = None
        if task and task != self.task:
            self._load(task)
        # The episode seed: given, or drawn from our RNG so unseeded resets continue a reproducible stream.
        ep_seed = int(seed) if seed is not None else int(self.np_random.integers(schema.EVAL_SEED_BASE))
        self._mw.seed(ep_seed)
        raw, _ = self._mw.reset()
        # Meta-World moves goal sites after its last mj_forward in reset: refresh positions before rendering.
        mujoco.mj_forward(self._mw.model, self._mw.data)
        self._steps, self._seed = 0, ep_seed
        self._instruction = language.choose_instruction(self.task, ep_seed, self.config.instructions)
        obs = self._observe(raw)
        return obs, {"raw_obs": raw.copy(), "task": self.task, "seed": ep_seed, "success": False}

    def step(self, action):
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (schema.ACTION_DIM,):
            raise ValueError(f"action shape {a.shape} != ({schema.ACTION_DIM},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite")
        raw, reward, _, mw_truncated, mw_info = self._mw.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        success = bool(mw_info["success"])
        terminated = success and self.config.terminate_on_success
        truncated = not terminated and (mw_truncated or self._steps >= self.config.max_steps)
        info = {"raw_obs": raw.copy(), "task": self.task, "seed": self._seed, "success": success}
        return self._observe(raw), float(reward), terminated, truncated, info

    def _observe(self, raw: np.ndarray) -> dict[str, Any]:
        rgb, depth = self._renderer.render(self._mw.data)
        obs = {
            "rgb": rgb,
            "intrinsics": self._renderer.intrinsics,
            "state": raw[: schema.STATE_DIM].astype(np.float32),
            "instruction": self._instruction,
        }
        if depth is not None:
            obs["depth"] = depth
        self._last_obs = obs
        return obs

    def render(self):
        """rgb_array: the cameras side by side (H, V*W, 3) from the last observation."""
        if self.render_mode != "rgb_array" or self._last_obs is None:
            return None
        return np.concatenate(list(self._last_obs["rgb"]), axis=1)

    def close(self) -> None:
        self._close_task()

    # -- helpers for tests and tools -----------------------------------------------------------------------
    def camera_poses(self) -> np.ndarray:
        """(V, 4, 4) world-from-camera (OpenCV axes) matching the returned images."""
        return self._renderer.camera_poses(self._mw.data)

    @property
    def mujoco(self):
        """(model, data) of the current task, for geometry checks."""
        return self._mw.model, self._mw.data


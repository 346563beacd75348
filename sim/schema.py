"""The simulation contracts other parts of the project build on. Change them only together with their users.

Observation (one environment step, `sim.env.MetaWorldRGBD`; V cameras, H x W pixels):
    rgb          (V, H, W, 3) uint8    upright images (the corner cameras are rotated 180 degrees for you)
    depth        (V, H, W)    float32  metric depth in metres along the optical axis (z, not ray length),
                                       clipped to `max_depth` (10 m; the sky reads 10.0). Absent when the
                                       environment is built with depth=False (RGB-only benchmarks).
    intrinsics   (V, 3, 3)    float32  pinhole K for the returned (flipped) image: fy = H / (2 tan(fovy / 2)),
                                       fx = fy (square pixels), cx = W / 2, cy = H / 2, with pixel (u, v)
                                       covering [u, u+1) x [v, v+1), i.e. its centre is at (u + 0.5, v + 0.5).
                                       Back-projection: X = (u + 0.5 - cx) * z / fx, Y = (v + 0.5 - cy) * z / fy,
                                       Z = z (OpenCV camera axes: x right, y down, z forward).
    state        (S,) = (4,)  float32  end-effector xyz in metres (world frame) + gripper opening in [0, 1]
    instruction  str                   what to do, in words (see sim.language)
Batched (vector environments, policy input): the same keys with a leading batch dimension B, and
`instruction` a tuple/list of B strings.

Privileged keys (never given to a learned policy): the evaluation runner adds `raw_obs` (B, 39) float64
(Meta-World's own state vector, goal included) and `task` (B names) to the batch only for a policy whose
`privileged` attribute is True, i.e. the scripted experts. A single environment reports them in
`info["raw_obs"]` and `info["task"]`.

Action: (4,) float32 in [-1, 1]: (dx, dy, dz, gripper), Meta-World's own (position deltas of 1 cm per unit
scaled by the controller; gripper -1 open, +1 closed). Out-of-range values are clipped by the environment.

Policy (`Policy` below): `predict(obs_batch) -> (B, T, 4)` float32 action chunk; `reset(env_ids)` clears
per-environment memory when those environments start new episodes (None: all of them). The runner executes
chunks with an execution horizon and optional temporal ensembling (`sim.chunking`).

Episode dataset on disk (`vla collect`, read by `sim.dataset.EpisodeDataset`):
    ROOT/manifest.json              per-task counts, action/state statistics, the episode list
    ROOT/config.json                the collection settings (a resumed run must match them)
    ROOT/<task>/<task>_s<seed:06d>.npz   one episode, L steps: `actions` (L, 4) float32, `state` (L, 4)
        float32, `rewards` (L,) float32, `success` (L,) bool, `intrinsics` (V, 3, 3) float32, `raw_obs` (L, 39)
        float32 (Meta-World's state vector of each step, for training-time targets only), and per step t
        `rgb_<t:04d>` (V, H, W, 3) uint8 and `depth_<t:04d>` (V, H, W) uint16 millimetres (frames stored
        one per member so a sample decompresses one frame, not the episode). Frame t is the observation the
        action at t was taken from.
    ROOT/<task>/<task>_s<seed:06d>.json  its metadata (task, instruction, seed, cameras, intrinsics, length,
        success); written last, so it marks a complete episode. `.failed.json`: a seed the expert failed.

Seeds: collection uses seeds below EVAL_SEED_BASE; evaluation uses EVAL_SEED_BASE + i, so held-out evaluation
layouts never appear in a training set. Train/val split: seed % val_every == val_every - 1 is validation.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

STATE_DIM = 4
ACTION_DIM = 4
RAW_OBS_DIM = 39
OBS_KEYS = ("rgb", "depth", "intrinsics", "state", "instruction")
PRIVILEGED_KEYS = ("raw_obs", "task")
# Training-time regression targets read from raw_obs (never policy inputs): where the objects and the goal are,
# so that the vision path is taught to locate them (`PolicyConfig.privileged_dim`, an auxiliary loss).
PRIVILEGED_TARGETS = {"object_pos": (4, 7), "object2_pos": (11, 14), "goal_pos": (36, 39)}
PRIVILEGED_INDEX = np.concatenate([np.arange(a, b) for a, b in PRIVILEGED_TARGETS.values()])
PRIVILEGED_DIM = len(PRIVILEGED_INDEX)

EVAL_SEED_BASE = 1_000_000
DEFAULT_CAMERAS = ("corner",)
DEFAULT_IMAGE_SIZE = 128
MAX_EPISODE_STEPS = 500  # Meta-World's max_path_length
DEPTH_SCALE = 1000.0  # stored depth units per metre (uint16 millimetres)

MT10 = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)


def all_tasks() -> tuple[str, ...]:
    """The 50 Meta-World v3 task names (MT50), in sim.language order."""
    from sim.language import INSTRUCTIONS

    return tuple(INSTRUCTIONS)


def parse_tasks(spec: str) -> tuple[str, ...]:
    """'mt10' | 'mt50' | 'push-v3,reach-v3' (the '-v3' may be left out) -> task names."""
    key = spec.strip().lower()
    if key == "mt10":
        return MT10
    if key == "mt50":
        return all_tasks()
    known = all_tasks()
    tasks = []
    for name in (t.strip() for t in spec.split(",") if t.strip()):
        full = name if name.endswith("-v3") else f"{name}-v3"
        if full not in known:
            raise ValueError(f"unknown task {name!r} in --tasks {spec!r}: use mt10, mt50 or names like push-v3")
        tasks.append(full)
    if not tasks:
        raise ValueError(f"--tasks {spec!r} names no task")
    return tuple(dict.fromkeys(tasks))


def is_val_seed(seed: int, val_every: int = 10) -> bool:
    """The train/val split by seed: every val_every-th seed is held out for validation."""
    return seed % val_every == val_every - 1


@runtime_checkable
class Policy(Protocol):
    """What the evaluation runner drives: batched observations in, action chunks out."""

    def reset(self, env_ids: np.ndarray | list[int] | None = None) -> None:
        """Forget per-environment state for these batch rows (None: all)."""

    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        """(B, T, 4) float32 action chunk in [-1, 1] for the observation batch."""

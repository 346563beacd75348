"""Demonstrations from Meta-World's scripted experts, plain, noise-injected or on the states a student reached.

    from sim.collect import CollectConfig, collect
    collect(CollectConfig(tasks=("push-v3",), episodes=50, out="data/mt10", workers=2))                # expert
    collect(CollectConfig(tasks=("push-v3",), episodes=50, out="data/noise", noise=0.2))               # noise
    collect(CollectConfig(tasks=("push-v3",), episodes=20, out="data/dagger1", driver="out/policy",
                          beta=0.3, round=1, seed_start=1000))                                         # DAgger

Three sources, recorded in every episode's metadata (`source`: expert | noise | dagger, and `round`):
- expert: the expert drives and its actions are stored; seeds 0, 1, 2, ... are tried per task until `episodes`
  successes (failures are recorded and counted, never written as episodes).
- noise: the expert's action plus Gaussian noise (std `noise`, per dimension) is executed, the clean expert
  action is stored (`executed_actions` keeps what ran); every episode is kept, since its labels stay valid.
- dagger: a policy checkpoint (`driver`) drives, re-planning every `horizon` steps; at each step the expert's
  action is executed instead with probability `beta`; the labeller's action for the state the step started from
  is stored. Every episode is kept. The labeller is a small protocol (`sim.policies.Labeller`), so a person
  correcting a real robot can take the expert's place.
Every file is written atomically and an episode's .json is written last, so a killed run leaves only complete
episodes; rerunning the same command skips them and continues.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

import numpy as np

from sim import schema
from sim.episodes import scan, write_episode, write_failure
from vla.errors import UserError
from vla.files import TMP_SUFFIX
from vla.files import write_json_atomic as write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectConfig:
    tasks: tuple[str, ...]
    episodes: int
    out: str
    workers: int = 1
    cameras: tuple[str, ...] = schema.DEFAULT_CAMERAS
    image_size: int = schema.DEFAULT_IMAGE_SIZE
    depth: bool = True
    quality: str = "fast"
    max_steps: int = schema.MAX_EPISODE_STEPS
    max_attempts: int = 0  # per task; 0 -> 2 * episodes + 10
    noise: float = 0.0  # std of the Gaussian added to the executed expert action (labels stay clean)
    driver: str | None = None  # policy checkpoint that drives (DAgger); the expert labels
    beta: float = 0.0  # DAgger: probability per step of executing the expert's action instead of the driver's
    horizon: int = 2  # DAgger: actions executed from each driver chunk before it plans again
    round: int = 0  # DAgger round, recorded in the metadata
    seed_start: int = 0  # first seed tried per task (DAgger rounds use their own seed ranges)

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.episodes < 1 or self.workers < 1:
            raise ValueError(f"episodes={self.episodes} and workers={self.workers} must be >= 1")
        if self.max_attempts == 0:
            object.__setattr__(self, "max_attempts", 2 * self.episodes + 10)
        if not (self.noise >= 0 and np.isfinite(self.noise)):
            raise ValueError(f"noise={self.noise} must be a finite std >= 0")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta} is a probability: expected a value in [0, 1]")
        if self.horizon < 1 or self.round < 0 or self.seed_start < 0:
            raise ValueError(f"horizon={self.horizon} must be >= 1, round={self.round} and "
                             f"seed_start={self.seed_start} >= 0")
        if self.driver is not None:
            object.__setattr__(self, "driver", os.fspath(self.driver))
            if not (Path(self.driver) / "config.json").is_file():
                raise ValueError(f"driver={self.driver!r} is not a policy checkpoint folder (no config.json)")
        if self.seed_start + self.max_attempts > schema.EVAL_SEED_BASE:
            raise ValueError(f"seeds up to seed_start + max_attempts = {self.seed_start + self.max_attempts} would "
                             f"reach the held-out evaluation seeds (>= {schema.EVAL_SEED_BASE})")

    @property
    def source(self) -> str:
        """expert | noise | dagger: what produced the episodes (stored per episode)."""
        return "dagger" if self.driver else "noise" if self.noise > 0 else "expert"

    @property
    def keep_failures(self) -> bool:
        """Noise and DAgger episodes are kept whatever their outcome: their labels are the expert's."""
        return self.source != "expert"

    def env_kwargs(self) -> dict[str, Any]:
        return dict(task=self.tasks[0], cameras=self.cameras, image_size=self.image_size, depth=self.depth,
                    quality=self.quality, max_steps=self.max_steps, terminate_on_success=True,
                    instructions="train")

    def layout(self) -> dict[str, Any]:
        """The settings every episode in one dataset must share."""
        return dict(cameras=list(self.cameras), image_size=self.image_size, depth=self.depth,
                    quality=self.quality, max_steps=self.max_steps, source=self.source, noise=self.noise,
                    driver=self.driver, beta=self.beta, horizon=self.horizon, round=self.round)

    def episode_settings(self) -> dict[str, Any]:
        """What a worker needs to run one episode besides the environment."""
        return dict(noise=self.noise, driver=self.driver, beta=self.beta, horizon=self.horizon, round=self.round,
                    source=self.source, keep_failures=self.keep_failures)


# -- one episode (runs in a worker process) -------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_env(kwargs: dict[str, Any]):
    if _WORKER.get("kwargs") != kwargs:
        from sim.env import MetaWorldRGBD
        from sim.policies import ExpertLabeller

        if "env" in _WORKER:
            _WORKER["env"].close()
        elif mp.parent_process() is not None:
            # Close the renderer before interpreter teardown: EGL's own __del__ then fails noisily.
            mp_util.Finalize(None, _close_worker, exitpriority=10)
        _WORKER.update(kwargs=kwargs, env=MetaWorldRGBD(**kwargs), labeller=ExpertLabeller())
    return _WORKER["env"], _WORKER["labeller"]


def _worker_driver(path: str):
    """The student policy of this worker process, loaded once per checkpoint path."""
    if _WORKER.get("driver_path") != path:
        import torch

        from vla.policy import VLAPolicy

        if mp.parent_process() is not None:
            torch.set_num_threads(1)  # one environment and one policy per worker process
        _WORKER.update(driver_path=path, driver=VLAPolicy.load(path))
    return _WORKER["driver"]


def episode_rng(task: str, seed: int, round_: int) -> np.random.Generator:
    """Noise and beta draws are a function of (task, seed, round): a resumed run redraws the same ones."""
    return np.random.default_rng([schema.all_tasks().index(task), seed, round_])


def _close_worker() -> None:
    if "env" in _WORKER:
        _WORKER.pop("env").close()
    _WORKER.clear()


def _batch_of_one(obs: dict[str, Any]) -> dict[str, Any]:
    return {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}


def run_episode(job: tuple[str, int, dict[str, Any], str, dict[str, Any]]) -> dict[str, Any]:
    """Roll out one (task, seed) with the expert, the noisy expert or the driver; write the episode (or, for the
    plain expert, a failure record); -> summary."""
    from sim.chunking import ChunkQueue

    task, seed, kwargs, root, how = job
    env, labeller = _worker_env(kwargs)
    driver = _worker_driver(how["driver"]) if how["driver"] else None
    rng = episode_rng(task, seed, how["round"])
    queue = ChunkQueue(1, how["horizon"], schema.ACTION_DIM)
    obs, info = env.reset(seed=seed, options={"task": task})
    rgbs, depths, states, raws, labels, executed, rewards, successes = [], [], [], [], [], [], [], []
    while True:
        label = np.asarray(labeller.label(obs, info), np.float32)
        action = label
        if how["noise"] > 0:
            action = np.clip(label + rng.normal(0.0, how["noise"], label.shape), -1.0, 1.0).astype(np.float32)
        if driver is not None:
            if queue.needs_chunk()[0]:
                queue.add(driver.predict(_batch_of_one(obs)))
            student = queue.pop()[0]
            if rng.random() >= how["beta"]:
                action = np.clip(student, -1.0, 1.0).astype(np.float32)
        rgbs.append(obs["rgb"])
        depths.append(obs.get("depth"))
        states.append(obs["state"])
        raws.append(info["raw_obs"])
        labels.append(label)
        executed.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        successes.append(info["success"])
        if terminated or truncated:
            break
    success = bool(any(successes))
    if not success and not how["keep_failures"]:
        write_failure(root, task, seed, len(labels))
        return {"task": task, "seed": seed, "success": False, "steps": len(labels), "kept": False}
    intrinsics = obs["intrinsics"]
    meta = {"task": task, "task_id": schema.all_tasks().index(task), "seed": seed,
            "instruction": obs["instruction"], "success": success, "cameras": list(kwargs["cameras"]),
            "image_size": kwargs["image_size"], "intrinsics": intrinsics.tolist(),
            # world-from-camera (OpenCV axes) at the last step: Meta-World's cameras are fixed
            "camera_poses": env.camera_poses().round(6).tolist(), "source": how["source"], "round": how["round"]}
    arrays = {"actions": np.stack(labels).astype(np.float32), "state": np.stack(states),
              "raw_obs": np.stack(raws).astype(np.float32),
              "rewards": np.asarray(rewards, np.float32), "success": np.asarray(successes, bool),
              "intrinsics": intrinsics}
    if how["source"] != "expert":
        arrays["executed_actions"] = np.stack(executed).astype(np.float32)
    write_episode(root, meta, rgbs, depths if kwargs["depth"] else None, arrays)
    return {"task": task, "seed": seed, "success": success, "steps": len(labels), "kept": True}


# -- the driver ----------------------------------------------------------------------------------------------
def _prepare(cfg: CollectConfig) -> None:
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"**/*{TMP_SUFFIX}"):  # torn writes of a killed run
        stale.unlink()
    config_path = root / "config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != cfg.layout():
            raise UserError(f"{root} was collected with {old}; this run asks for {cfg.layout()}: use another --out")
    else:
        write_json(config_path, cfg.layout())


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect until every task has cfg.episodes successful episodes (or max_attempts); -> the manifest."""
    from tqdm import tqdm

    _prepare(cfg)
    done, failed = scan(cfg.out)
    tried = {t: {r["seed"] for r in done + failed if r["task"] == t} for t in cfg.tasks}
    ok = {t: sum(r["task"] == t for r in done) for t in cfg.tasks}
    inflight = dict.fromkeys(cfg.tasks, 0)
    kwargs, how = cfg.env_kwargs(), cfg.episode_settings()
    seeds = range(cfg.seed_start, cfg.seed_start + cfg.max_attempts)

    def next_job():
        for t in cfg.tasks:
            if ok[t] + inflight[t] < cfg.episodes and len(tried[t] & set(seeds)) < cfg.max_attempts:
                seed = next(s for s in seeds if s not in tried[t])
                tried[t].add(seed)
                inflight[t] += 1
                return (t, seed, kwargs, cfg.out, how)
        return None

    bar = tqdm(total=len(cfg.tasks) * cfg.episodes, initial=sum(min(v, cfg.episodes) for v in ok.values()),
               desc=f"{cfg.source} episodes", unit="ep", disable=not progress)
    n_failed = n_success = 0

    def record(res):
        nonlocal n_failed, n_success
        inflight[res["task"]] -= 1
        n_success += res["success"]
        n_failed += not res["success"]
        if res["kept"]:
            ok[res["task"]] += 1
            bar.update(1)
        bar.set_postfix(failed=n_failed) if cfg.source == "expert" else \
            bar.set_postfix(success=f"{n_success / max(n_success + n_failed, 1):.2f}")

    try:
        if cfg.workers == 1:
            while (job := next_job()) is not None:
                record(run_episode(job))
        else:
            with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
                pending = set()
                while True:
                    while len(pending) < 2 * cfg.workers and (job := next_job()) is not None:
                        pending.add(pool.submit(run_episode, job))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        record(fut.result())
    finally:
        bar.close()
        _close_worker()  # the in-process (workers=1) environment; pool workers exit with their process
    short = {t: cfg.episodes - ok[t] for t in cfg.tasks if ok[t] < cfg.episodes}
    if short:
        log.warning("gave up after %d seeds per task; episodes missing: %s", cfg.max_attempts, short)
    return write_manifest(cfg.out)


def _stats(x: np.ndarray) -> dict[str, list[float]]:
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
            "max": x.max(0).tolist(), "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist()}


def write_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Rebuild ROOT/manifest.json from the episode sidecars (so it is always consistent with the files)."""
    done, failed = scan(root)
    tasks: dict[str, dict[str, int]] = {}
    new = lambda: {"episodes": 0, "failures": 0, "steps": 0, "successes": 0}  # noqa: E731
    for r in done:
        t = tasks.setdefault(r["task"], new())
        t["episodes"] += 1
        t["steps"] += r["length"]
        t["successes"] += bool(r.get("success", True))
    for r in failed:
        tasks.setdefault(r["task"], new())["failures"] += 1
    actions, states = [], []
    for r in done:
        with np.load(Path(root) / r["file"], allow_pickle=False) as z:
            actions.append(z["actions"])
            states.append(z["state"])
    config = json.loads((Path(root) / "config.json").read_text())
    manifest = {
        "format": "vla-sim-episodes", "version": 1, **config,
        "depth_scale": schema.DEPTH_SCALE, "tasks": dict(sorted(tasks.items())),
        "num_episodes": len(done), "num_steps": int(sum(r["length"] for r in done)),
        "action_stats": _stats(np.concatenate(actions)) if actions else None,
        "state_stats": _stats(np.concatenate(states)) if states else None,
        "sources": {src: sum(r.get("source", "expert") == src for r in done)
                    for src in sorted({r.get("source", "expert") for r in done})},
        "episodes": [{**{k: r[k] for k in ("file", "task", "task_id", "seed", "length", "instruction")},
                      "source": r.get("source", "expert"), "round": r.get("round", 0), "success": r["success"],
                      **({"camera_poses": r["camera_poses"]} if "camera_poses" in r else {})}
                     for r in done],
    }
    write_json(Path(root) / "manifest.json", manifest)
    return manifest

"""Expert demonstrations: run Meta-World's scripted experts in worker processes and write an episode dataset.

    from sim.collect import CollectConfig, collect
    collect(CollectConfig(tasks=("push-v3",), episodes=50, out="data/mt10", workers=2))

Seeds 0, 1, 2, ... are tried per task until `episodes` successes (failures are recorded and counted, never
written as episodes). Every file is written atomically and an episode's .json is written last, so a killed
run leaves only complete episodes; rerunning the same command skips them and continues.
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

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.episodes < 1 or self.workers < 1:
            raise ValueError(f"episodes={self.episodes} and workers={self.workers} must be >= 1")
        if self.max_attempts == 0:
            object.__setattr__(self, "max_attempts", 2 * self.episodes + 10)
        if self.max_attempts >= schema.EVAL_SEED_BASE:
            raise ValueError(f"max_attempts={self.max_attempts} would reach the held-out evaluation seeds")

    def env_kwargs(self) -> dict[str, Any]:
        return dict(task=self.tasks[0], cameras=self.cameras, image_size=self.image_size, depth=self.depth,
                    quality=self.quality, max_steps=self.max_steps, terminate_on_success=True,
                    instructions="train")

    def layout(self) -> dict[str, Any]:
        """The settings every episode in one dataset must share."""
        return dict(cameras=list(self.cameras), image_size=self.image_size, depth=self.depth,
                    quality=self.quality, max_steps=self.max_steps)


# -- one episode (runs in a worker process) -------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_env(kwargs: dict[str, Any]):
    if _WORKER.get("kwargs") != kwargs:
        from sim.env import MetaWorldRGBD
        from sim.policies import ExpertPolicy

        if "env" in _WORKER:
            _WORKER["env"].close()
        elif mp.parent_process() is not None:
            # Close the renderer before interpreter teardown: EGL's own __del__ then fails noisily.
            mp_util.Finalize(None, _close_worker, exitpriority=10)
        _WORKER.update(kwargs=kwargs, env=MetaWorldRGBD(**kwargs), expert=ExpertPolicy())
    return _WORKER["env"], _WORKER["expert"]


def _close_worker() -> None:
    if "env" in _WORKER:
        _WORKER.pop("env").close()
    _WORKER.clear()


def run_episode(job: tuple[str, int, dict[str, Any], str]) -> dict[str, Any]:
    """Roll out the expert on (task, seed); write the episode (success) or a failure record; -> summary."""
    task, seed, kwargs, root = job
    env, expert = _worker_env(kwargs)
    obs, info = env.reset(seed=seed, options={"task": task})
    rgbs, depths, states, actions, rewards, successes = [], [], [], [], [], []
    while True:
        action = expert.predict({"raw_obs": info["raw_obs"][None], "task": [task]})[0, 0]
        rgbs.append(obs["rgb"])
        depths.append(obs.get("depth"))
        states.append(obs["state"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        successes.append(info["success"])
        if terminated or truncated:
            break
    success = bool(any(successes))
    if not success:
        write_failure(root, task, seed, len(actions))
        return {"task": task, "seed": seed, "success": False, "steps": len(actions)}
    intrinsics = obs["intrinsics"]
    meta = {"task": task, "task_id": schema.all_tasks().index(task), "seed": seed,
            "instruction": obs["instruction"], "success": True, "cameras": list(kwargs["cameras"]),
            "image_size": kwargs["image_size"], "intrinsics": intrinsics.tolist()}
    arrays = {"actions": np.stack(actions).astype(np.float32), "state": np.stack(states),
              "rewards": np.asarray(rewards, np.float32), "success": np.asarray(successes, bool),
              "intrinsics": intrinsics}
    write_episode(root, meta, rgbs, depths if kwargs["depth"] else None, arrays)
    return {"task": task, "seed": seed, "success": True, "steps": len(actions)}


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
    kwargs = cfg.env_kwargs()

    def next_job():
        for t in cfg.tasks:
            if ok[t] + inflight[t] < cfg.episodes and len(tried[t]) < cfg.max_attempts:
                seed = next(s for s in range(cfg.max_attempts) if s not in tried[t])
                tried[t].add(seed)
                inflight[t] += 1
                return (t, seed, kwargs, cfg.out)
        return None

    bar = tqdm(total=len(cfg.tasks) * cfg.episodes, initial=sum(min(v, cfg.episodes) for v in ok.values()),
               desc="episodes", unit="ep", disable=not progress)
    n_failed = 0

    def record(res):
        nonlocal n_failed
        inflight[res["task"]] -= 1
        if res["success"]:
            ok[res["task"]] += 1
            bar.update(1)
        else:
            n_failed += 1
            bar.set_postfix(failed=n_failed)

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
    for r in done:
        t = tasks.setdefault(r["task"], {"episodes": 0, "failures": 0, "steps": 0})
        t["episodes"] += 1
        t["steps"] += r["length"]
    for r in failed:
        tasks.setdefault(r["task"], {"episodes": 0, "failures": 0, "steps": 0})["failures"] += 1
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
        "episodes": [{k: r[k] for k in ("file", "task", "task_id", "seed", "length", "instruction")} for r in done],
    }
    write_json(Path(root) / "manifest.json", manifest)
    return manifest

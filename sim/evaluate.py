"""Evaluation runner: any `sim.schema.Policy` against vectorised Meta-World environments on held-out seeds.

    from sim.evaluate import EvalConfig, evaluate, load_policy
    results = evaluate(load_policy("expert"), EvalConfig(tasks=("push-v3",), episodes=20))

Episodes are (task, seed) jobs, seeds EVAL_SEED_BASE + i (never used for collection; `seeds="train"` takes the
training-split collection seeds instead, to measure the fit), spread over `workers` environment processes
(gymnasium AsyncVectorEnv, one per core); a finished environment takes the next job, of
any task. The policy sees the whole batch each time any environment needs a new chunk; rows that do not need
one are ignored. Success = Meta-World's `info["success"]` at any step (the episode ends there).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim import schema
from sim.chunking import ChunkEnsembler, ChunkQueue
from vla.errors import UserError


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = schema.MT10
    episodes: int = 20
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    horizon: int = 1  # actions executed from each chunk before asking again (ignored when ensembling)
    ensemble: bool = False
    ensemble_coef: float = 0.8
    cameras: tuple[str, ...] = schema.DEFAULT_CAMERAS
    image_size: int = schema.DEFAULT_IMAGE_SIZE
    depth: bool = True
    quality: str = "fast"
    max_steps: int = schema.MAX_EPISODE_STEPS
    instructions: str = "heldout"
    seed_base: int = schema.EVAL_SEED_BASE
    # 'heldout': seeds seed_base + i (layouts never collected); 'train': the first training-split collection
    # seeds (0, 1, ... without the validation ones): how well the policy fits the layouts it was trained on.
    seeds: str = "heldout"
    video_dir: str | None = None
    vector: str = "async"  # 'async' (a process per environment) or 'sync' (in-process, for debugging)

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if not self.tasks:
            raise ValueError("tasks is empty")
        for name, value in (("episodes", self.episodes), ("workers", self.workers), ("horizon", self.horizon)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if self.seed_base < schema.EVAL_SEED_BASE:
            raise ValueError(f"seed_base={self.seed_base} overlaps collection seeds (< {schema.EVAL_SEED_BASE})")
        if self.seeds not in ("heldout", "train"):
            raise ValueError(f"seeds={self.seeds!r} is not 'heldout' or 'train'")
        if self.vector not in ("async", "sync"):
            raise ValueError(f"vector={self.vector!r} is not 'async' or 'sync'")

    def episode_seeds(self) -> list[int]:
        if self.seeds == "train":
            return [s for s in range(2 * self.episodes + 2) if not schema.is_val_seed(s)][: self.episodes]
        return [self.seed_base + k for k in range(self.episodes)]

    def env_kwargs(self) -> dict[str, Any]:
        return dict(task=self.tasks[0], cameras=self.cameras, image_size=self.image_size, depth=self.depth,
                    quality=self.quality, max_steps=self.max_steps, instructions=self.instructions,
                    terminate_on_success=True)


def load_policy(spec: str, *, seed: int = 0, token: str | None = None, tls: bool | str = False) -> schema.Policy:
    """A command-line policy spec -> Policy: 'default' (the committed default model), 'expert', 'random',
    'server:HOST:PORT' or a checkpoint folder.

    For a server, `token` (default $VLA_TOKEN) and `tls` (False, True for system CAs, or a PEM path) are passed on;
    an unreachable or refusing server is a UserError naming the address and the gRPC status.
    """
    from sim.policies import ExpertPolicy, RandomPolicy

    if spec == "expert":
        return ExpertPolicy()
    if spec == "random":
        return RandomPolicy(seed=seed)
    if spec.startswith("server:"):
        import grpc

        from vla.client import RemoteSimPolicy

        address = spec[len("server:"):]
        try:
            return RemoteSimPolicy(address, token=token or os.environ.get("VLA_TOKEN"), tls=tls)
        except grpc.RpcError as e:
            raise UserError(f"--server {address}: {e.code().name}: {e.details()}") from None
    if spec == "default":
        from vla.default_model import DEFAULT_DIR, default_checkpoint

        found = default_checkpoint()
        if found is None:
            raise UserError(f"--policy default: no default model is committed in {DEFAULT_DIR} (train one with "
                            "scripts/train_default.py --export, or give --policy CHECKPOINT|expert)")
        spec = str(found)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise UserError(f"--policy {spec!r}: not 'default', 'expert', 'random' or a checkpoint folder "
                        "(with config.json)")
    from vla.policy import VLAPolicy

    return VLAPolicy.load(path)


def model_execution(policy: Any) -> dict[str, Any]:
    """The execution settings a policy was evaluated with ({"horizon", "ensemble"}), read from its metadata
    (in-process) or the server's model info; horizon 1 without ensembling when it states none."""
    meta = {}
    if callable(getattr(policy, "metadata", None)):
        meta = policy.metadata()
    elif isinstance(getattr(policy, "info", None), dict):
        meta = policy.info.get("metadata", {})
    ex = meta.get("execution") or {}
    return {"horizon": int(ex.get("horizon") or 1), "ensemble": bool(ex.get("ensemble", False))}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sound at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _make_env(kwargs: dict[str, Any]):
    from sim.env import MetaWorldRGBD

    return MetaWorldRGBD(**kwargs)


def _vector_env(cfg: EvalConfig, n: int):
    import gymnasium as gym

    fns = [functools.partial(_make_env, cfg.env_kwargs()) for _ in range(n)]
    mode = gym.vector.AutoresetMode.DISABLED
    if cfg.vector == "sync" or n == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    # spawn: a forked child would inherit the parent's GL state; shared memory cannot hold the Text space.
    return gym.vector.AsyncVectorEnv(fns, context="spawn", shared_memory=False, autoreset_mode=mode)


class _Slots:
    """Which (task, seed, episode index) job each vector-env row is running, and its running tallies."""

    def __init__(self, n: int, jobs: deque):
        self.jobs, self.job = jobs, [None] * n
        self.steps = np.zeros(n, np.int64)
        self.success = np.zeros(n, bool)

    def assign(self, ids) -> tuple[list, list]:
        """Give each row in ids its next job (None when the queue is empty); -> tasks, seeds for reset."""
        tasks, seeds = [], []
        for i in ids:
            self.job[i] = self.jobs.popleft() if self.jobs else None
            # an idle row keeps stepping on a throw-away layout (vector envs step all rows)
            task, seed, _ = self.job[i] or (None, schema.EVAL_SEED_BASE - 1, -1)
            tasks.append(task)
            seeds.append(seed)
            self.steps[i], self.success[i] = 0, False
        return tasks, seeds


def _policy_batch(obs: dict, raw: np.ndarray, tasks: list, privileged: bool) -> dict:
    batch = dict(obs)
    if privileged:
        batch["raw_obs"], batch["task"] = raw, list(tasks)
    return batch


def evaluate(policy: schema.Policy, cfg: EvalConfig, progress: bool = False) -> dict[str, Any]:
    """Run cfg.episodes held-out episodes per task; -> the results dict (see `summarise`)."""
    jobs = deque((t, seed, k) for t in cfg.tasks for k, seed in enumerate(cfg.episode_seeds()))
    n = min(cfg.workers, len(jobs))
    venv = _vector_env(cfg, n)
    chunker = ChunkEnsembler(n, schema.ACTION_DIM, cfg.ensemble_coef) if cfg.ensemble else \
        ChunkQueue(n, cfg.horizon, schema.ACTION_DIM)
    privileged = bool(getattr(policy, "privileged", False))
    slots, records = _Slots(n, jobs), []
    videos = _VideoRecorder(cfg) if cfg.video_dir else None
    bar = _progress(progress, len(jobs))
    t0, env_steps = time.perf_counter(), 0
    try:
        tasks, seeds = slots.assign(range(n))
        venv.set_attr("next_task", [t or cfg.tasks[0] for t in tasks])
        obs, info = venv.reset(seed=seeds)
        raw = np.array(info["raw_obs"])
        cur_task = list(info["task"])
        policy.reset(None)
        while any(j is not None for j in slots.job):
            need = chunker.needs_chunk()
            if need.any():
                chunks = np.asarray(policy.predict(_policy_batch(obs, raw, cur_task, privileged)))
                if chunks.ndim != 3 or chunks.shape[0] != n or chunks.shape[2] != schema.ACTION_DIM:
                    raise ValueError(f"{type(policy).__name__}.predict returned shape {chunks.shape}, "
                                     f"expected ({n}, T, {schema.ACTION_DIM})")
                ids = np.flatnonzero(need)
                chunker.add(chunks[ids], ids)
            actions = chunker.pop()
            obs, _, term, trunc, info = venv.step(actions)
            env_steps += n
            raw = np.array(info["raw_obs"])
            slots.steps += 1
            slots.success |= np.asarray(info["success"], bool)
            if videos:
                videos.add(obs, slots.job)
            done = np.flatnonzero(np.asarray(term) | np.asarray(trunc))
            if len(done) == 0:
                continue
            for i in done:
                if slots.job[i] is not None:
                    task, seed, k = slots.job[i]
                    records.append(dict(task=task, seed=seed, success=bool(slots.success[i]),
                                        steps=int(slots.steps[i])))
                    if videos:
                        videos.finish(i, slots.job[i])
                    bar.update(1)
            tasks, seeds = slots.assign(done)
            row_of = {int(i): r for r, i in enumerate(done)}
            venv.set_attr("next_task", [tasks[row_of[i]] or cur_task[i] if i in row_of else cur_task[i]
                                        for i in range(n)])
            mask = np.zeros(n, bool)
            mask[done] = True
            all_seeds = [seeds[row_of[i]] if i in row_of else None for i in range(n)]
            obs, info = venv.reset(seed=all_seeds, options={"reset_mask": mask})
            raw[mask] = np.array(info["raw_obs"])[mask]
            cur_task = [info["task"][i] if mask[i] else cur_task[i] for i in range(n)]
            policy.reset(done)
            chunker.reset(done)
    finally:
        bar.close()
        venv.close()
    wall = time.perf_counter() - t0
    return summarise(records, cfg, wall, env_steps, type(policy).__name__)


def summarise(records: list[dict], cfg: EvalConfig, wall_s: float, env_steps: int, policy_name: str) -> dict:
    """Per-task success rate with a 95% Wilson interval, mean episode length, throughput."""
    out: dict[str, Any] = {"tasks": {}}
    for task in cfg.tasks:
        rs = [r for r in records if r["task"] == task]
        k = sum(r["success"] for r in rs)
        out["tasks"][task] = {
            "success_rate": k / len(rs) if rs else 0.0,
            "episodes": len(rs),
            "successes": k,
            "ci95": list(wilson_interval(k, len(rs))),
            "mean_steps": float(np.mean([r["steps"] for r in rs])) if rs else 0.0,
            "seeds": [r["seed"] for r in sorted(rs, key=lambda r: r["seed"])],
        }
    k, total = sum(r["success"] for r in records), len(records)
    out["overall"] = {"success_rate": k / total if total else 0.0, "episodes": total,
                      "ci95": list(wilson_interval(k, total)),
                      "mean_steps": float(np.mean([r["steps"] for r in records])) if records else 0.0}
    out["policy"] = policy_name
    out["wall_seconds"] = wall_s
    out["steps_per_second"] = env_steps / wall_s if wall_s > 0 else 0.0
    out["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    return out


def markdown_table(results: dict) -> str:
    lines = ["| task | success | 95% CI | episodes | mean steps |", "|---|---|---|---|---|"]
    rows = list(results["tasks"].items()) + [("**overall**", results["overall"])]
    for task, r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {task} | {r['success_rate']:.2f} | [{lo:.2f}, {hi:.2f}] | {r['episodes']} | "
                     f"{r['mean_steps']:.1f} |")
    lines.append(f"\n{results['steps_per_second']:.1f} env steps/s, {results['wall_seconds']:.1f} s")
    return "\n".join(lines)


def _progress(enabled: bool, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="episodes", unit="ep", disable=not enabled)


class _VideoRecorder:
    """Frames of the first episode (index 0) of each task: RGB of camera 0 beside its colour-mapped depth."""

    def __init__(self, cfg: EvalConfig):
        self.dir, self.max_depth, self.frames = cfg.video_dir, None, {}

    def add(self, obs: dict, jobs: list) -> None:
        for i, job in enumerate(jobs):
            if job is not None and job[2] == 0:
                from sim.video import side_by_side

                depth = obs["depth"][i, 0] if "depth" in obs else None
                self.frames.setdefault(job[0], []).append(side_by_side(obs["rgb"][i, 0], depth))

    def finish(self, i: int, job) -> None:
        if job[2] == 0 and job[0] in self.frames:
            from sim.video import write_video

            write_video(os.path.join(self.dir, f"{job[0]}_seed{job[1]}.gif"), self.frames.pop(job[0]))

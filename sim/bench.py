"""Simulation benchmarks (not tests): env steps/s, expert episodes/min, expert MT10 success on held-out seeds.

    vla bench sim                      # everything (about 10 min on 2 cores)
    vla bench sim --skip-success       # throughput only
    vla bench sim --success-episodes 50  # the issue's full 50 seeds per task

Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def env_steps_per_second(size: int, depth: bool, quality: str = "fast", steps: int = 200) -> float:
    from sim.env import MetaWorldRGBD

    env = MetaWorldRGBD(task="push-v3", image_size=size, depth=depth, quality=quality, max_steps=500)
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            if term or trunc:
                env.reset()
        return steps / (time.perf_counter() - t0)
    finally:
        env.close()


def expert_episodes_per_minute(workers: int, episodes: int, size: int) -> float:
    from sim.collect import CollectConfig, collect

    with tempfile.TemporaryDirectory() as out:
        cfg = CollectConfig(tasks=("reach-v3", "push-v3", "drawer-open-v3", "window-open-v3"),
                            episodes=max(1, episodes // 4), out=out, workers=workers, image_size=size)
        t0 = time.perf_counter()
        m = collect(cfg, progress=False)
        return m["num_episodes"] / (time.perf_counter() - t0) * 60


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla bench sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--collect-episodes", type=int, default=8)
    p.add_argument("--success-episodes", type=int, default=20, help="held-out seeds per MT10 task")
    p.add_argument("--success-image-size", type=int, default=32, help="the expert ignores pixels")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-success", action="store_true")
    args = p.parse_args(argv)

    import sim.gl

    sim.gl.configure()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; GL {sim.gl.renderer_info()}; {time.strftime('%Y-%m-%d')}\n")
    print("| image | channels | quality | env steps/s |\n|---|---|---|---|")
    for size, depth, quality in [(128, False, "default"), (128, False, "fast"), (128, True, "fast"),
                                 (224, False, "fast"), (224, True, "fast")]:
        sps = env_steps_per_second(size, depth, quality, args.steps)
        print(f"| {size} px | {'RGB-D' if depth else 'RGB'} | {quality} | {sps:.1f} |", flush=True)

    print("\n| expert collection | episodes/min |\n|---|---|")
    for w in (1, 2):
        epm = expert_episodes_per_minute(w, args.collect_episodes, 128)
        print(f"| {w} worker{'s' if w > 1 else ''}, 128 px RGB-D | {epm:.1f} |", flush=True)

    if not args.skip_success:
        from sim.evaluate import EvalConfig, evaluate, load_policy, markdown_table
        from sim.schema import MT10

        cfg = EvalConfig(tasks=MT10, episodes=args.success_episodes, workers=args.workers,
                         image_size=args.success_image_size, depth=False)
        res = evaluate(load_policy("expert"), cfg)
        print(f"\nExpert on MT10, {args.success_episodes} held-out seeds per task "
              f"({args.success_image_size} px RGB, {args.workers} workers):\n")
        print(markdown_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

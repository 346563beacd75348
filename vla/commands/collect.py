"""`vla collect`: demonstrations from Meta-World's scripted experts into an episode dataset.

    vla collect --episodes 20 --out data/expert                       # the expert drives
    vla collect --episodes 20 --out data/noise --noise 0.2            # expert + noise runs, clean labels stored
    vla collect --episodes 10 --out data/dagger1 --driver out/policy --beta 0.3 --round 1 --seed-start 10000
                                                                      # DAgger: the policy drives, the expert labels
Then train on the union: `vla train --data data/expert,data/noise,data/dagger1 --init out/policy ...`.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="collect expert demonstrations (Meta-World)", description=__doc__)
    p.add_argument("--tasks", default="mt10", help="mt10 | mt50 | comma-separated task names (default mt10)")
    p.add_argument("--episodes", type=int, required=True,
                   help="episodes per task (expert: successful ones; noise/DAgger: every episode counts)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--cameras", default="corner", help="comma-separated camera names (default corner)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default 128)")
    p.add_argument("--no-depth", action="store_true", help="do not record depth")
    p.add_argument("--quality", choices=("fast", "default"), default="fast", help="render quality")
    p.add_argument("--max-steps", type=int, default=500, help="episode step limit (default 500)")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="execute the expert's action + N(0, SIGMA^2) noise, store the clean label (default 0)")
    p.add_argument("--driver", default=None, metavar="CHECKPOINT",
                   help="DAgger: this policy drives and the expert labels every state it visits")
    p.add_argument("--beta", type=float, default=0.0,
                   help="DAgger: probability per step of executing the expert's action instead (default 0)")
    p.add_argument("--horizon", type=int, default=None,
                   help="DAgger: actions executed per driver chunk (default: the checkpoint's, else 2)")
    p.add_argument("--round", type=int, default=0, help="DAgger round number, recorded per episode")
    p.add_argument("--seed-start", type=int, default=0, help="first episode seed per task (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sim.collect import CollectConfig, collect
    from sim.schema import parse_tasks
    from vla.errors import UserError

    try:
        cfg = CollectConfig(tasks=parse_tasks(args.tasks), episodes=args.episodes, out=args.out,
                            workers=args.workers, cameras=tuple(c for c in args.cameras.split(",") if c),
                            image_size=args.image_size, depth=not args.no_depth, quality=args.quality,
                            max_steps=args.max_steps, noise=args.noise, driver=args.driver, beta=args.beta,
                            horizon=args.horizon or driver_horizon(args.driver), round=args.round,
                            seed_start=args.seed_start)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e
    manifest = collect(cfg, progress=not args.no_progress)
    for task, c in manifest["tasks"].items():
        failures = f", {c['failures']} expert failures" if cfg.source == "expert" else ""  # kept when not expert
        print(f"{task}: {c['episodes']} episodes ({c['successes']} successful){failures}, {c['steps']} steps")
    print(f"{manifest['num_episodes']} episodes ({manifest['num_steps']} steps) in {args.out}")
    return 0


def driver_horizon(driver: str | None) -> int:
    """The execution horizon a driver checkpoint was evaluated with (its config), else 2."""
    if driver is None:
        return 2
    from vla.policy.checkpoint import load_config

    return load_config(driver).exec_horizon or 2

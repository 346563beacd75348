"""`vla collect`: expert demonstrations from Meta-World's scripted policies into an episode dataset."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="collect expert demonstrations (Meta-World)", description=__doc__)
    p.add_argument("--tasks", default="mt10", help="mt10 | mt50 | comma-separated task names (default mt10)")
    p.add_argument("--episodes", type=int, required=True, help="successful episodes per task")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--cameras", default="corner", help="comma-separated camera names (default corner)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default 128)")
    p.add_argument("--no-depth", action="store_true", help="do not record depth")
    p.add_argument("--quality", choices=("fast", "default"), default="fast", help="render quality")
    p.add_argument("--max-steps", type=int, default=500, help="episode step limit (default 500)")
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
                            max_steps=args.max_steps)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e
    manifest = collect(cfg, progress=not args.no_progress)
    for task, c in manifest["tasks"].items():
        print(f"{task}: {c['episodes']} episodes, {c['failures']} expert failures, {c['steps']} steps")
    print(f"{manifest['num_episodes']} episodes ({manifest['num_steps']} steps) in {args.out}")
    return 0

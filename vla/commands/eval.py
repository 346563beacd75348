"""`vla eval`: success rates of a policy on Meta-World tasks over held-out seeds (vectorised environments)."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a policy in simulation (Meta-World)", description=__doc__)
    p.add_argument("--tasks", default="mt10", help="mt10 | mt50 | comma-separated task names (default mt10)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task (default 20)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--policy", default="default",
                     help="default (the committed default model) | expert | random | CHECKPOINT (default: default)")
    who.add_argument("--server", metavar="HOST:PORT", help="evaluate the policy served at HOST:PORT")
    p.add_argument("--token", default=None, help="--server: bearer token (default: $VLA_TOKEN)")
    p.add_argument("--tls", default=None, metavar="PEM|system",
                   help="--server: TLS with this server certificate (PEM file), or 'system' for the system CAs")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="environment processes")
    p.add_argument("--horizon", type=int, default=None,
                   help="actions executed per predicted chunk (default: the model's own setting, else 1)")
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=None,
                   help="temporal ensembling of overlapping chunks (default: the model's own setting)")
    p.add_argument("--ensemble-coef", type=float, default=0.8, help="weight exp(-coef * age) (default 0.8)")
    p.add_argument("--cameras", default="corner", help="comma-separated camera names (default corner)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default 128)")
    p.add_argument("--max-steps", type=int, default=500, help="episode step limit (default 500)")
    p.add_argument("--instructions", choices=("heldout", "train"), default="heldout",
                   help="paraphrase set (default heldout: wording never used for collection)")
    p.add_argument("--seeds", choices=("heldout", "train"), default="heldout",
                   help="layouts: heldout (never collected, the default) or train (the training-split collection "
                        "seeds 0, 1, ..., i.e. how well the policy fits what it was trained on)")
    p.add_argument("--output", help="results JSON path")
    p.add_argument("--video-dir", help="write a GIF of the first episode per task here")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sim.evaluate import EvalConfig, evaluate, load_policy, markdown_table, model_execution
    from sim.schema import parse_tasks
    from vla.errors import UserError
    from vla.files import write_json_atomic as write_json

    if (args.token or args.tls) and not args.server:
        raise UserError("--token and --tls go with --server")
    tls = True if args.tls == "system" else (args.tls or False)
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as e:
        raise UserError(str(e)) from e
    policy = load_policy(f"server:{args.server}" if args.server else args.policy, seed=args.seed,
                         token=args.token, tls=tls)
    ex = model_execution(policy)
    try:
        cfg = EvalConfig(tasks=tasks, episodes=args.episodes, workers=args.workers,
                         horizon=args.horizon or ex["horizon"],
                         ensemble=ex["ensemble"] if args.ensemble is None else args.ensemble,
                         ensemble_coef=args.ensemble_coef,
                         cameras=tuple(c for c in args.cameras.split(",") if c), image_size=args.image_size,
                         max_steps=args.max_steps, instructions=args.instructions, seeds=args.seeds,
                         video_dir=args.video_dir)
    except ValueError as e:
        if hasattr(policy, "close"):
            policy.close()
        raise UserError(str(e)) from e
    print(f"== {len(cfg.tasks)} tasks x {cfg.episodes} {'held-out' if cfg.seeds == 'heldout' else 'training'} "
          f"seeds, horizon {cfg.horizon}"
          f"{', temporal ensembling' if cfg.ensemble else ''}, max {cfg.max_steps} steps", flush=True)
    try:
        results = evaluate(policy, cfg, progress=True)
    finally:
        if hasattr(policy, "close"):
            policy.close()
    print(markdown_table(results))
    if args.output:
        write_json(args.output, results)
    return 0

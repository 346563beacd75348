"""`vla dataset`: episode datasets between formats.

    vla dataset export --format lerobot data/mt10 data/mt10_lerobot           # LeRobot v3.0, AV1 video
    vla dataset export --format lerobot data/mt10 data/mt10_exact --codec lossless
    vla dataset info data/aloha_sim                                           # what `vla train --data` would read

The export is built in a temporary folder beside DST and renamed into place when complete; SRC is only read.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("dataset", help="export episodes as a LeRobot dataset; show what a dataset holds",
                       description=__doc__)
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    e = dsub.add_parser("export", help="write a `vla collect` folder in another format (LeRobot v3.0)")
    e.add_argument("src", help="episode folder (vla collect)")
    e.add_argument("dst", help="new output folder (must not exist)")
    e.add_argument("--format", choices=["lerobot"], default="lerobot")
    e.add_argument("--codec", choices=["av1", "h264", "lossless"], default="av1",
                   help="RGB video codec: av1 (LeRobot's default), h264, or lossless (H.264 RGB, exact pixels)")
    e.add_argument("--fps", type=int, default=80, help="frames per second (Meta-World's control rate: 80)")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.set_defaults(func=run_export)
    i = dsub.add_parser("info", help="episodes, features and the feature mapping of a dataset folder")
    i.add_argument("path")
    i.add_argument("--features", default=None, help="a mapping as for `vla train --features`")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_export(args) -> int:
    import json

    from sim.lerobot.writer import export_lerobot

    info = export_lerobot(args.src, args.dst, codec=args.codec, fps=args.fps, progress=args.progress)
    print(json.dumps({"out": args.dst, "codebase_version": info["codebase_version"],
                      "episodes": info["total_episodes"], "frames": info["total_frames"], "tasks": info["total_tasks"],
                      "features": sorted(info["features"])}))
    return 0


def run_info(args) -> int:
    import json

    from sim.dataset import open_source
    from sim.lerobot import is_lerobot_dataset, open_lerobot

    source = open_source(open_lerobot(args.path, args.features))
    eps = source.episodes()
    out = {"path": args.path, "format": "lerobot" if is_lerobot_dataset(args.path) else "vla-sim-episodes",
           "episodes": len(eps), "frames": int(sum(e["length"] for e in eps)), "cameras": list(source.cameras),
           "instructions": sorted({e["instruction"] for e in eps})[:20]}
    fmap = getattr(source, "fmap", None)
    if fmap is not None:
        out.update(codebase_version=source.meta.version, fps=source.fps, state_dim=source.state_dim,
                   action_dim=source.action_dim, image_size=list(source.image_size),
                   mapping={"cameras": fmap.cameras, "state": fmap.state, "action": fmap.action,
                            "instruction": fmap.instruction, "depth": fmap.depth, "intrinsics": fmap.intrinsics})
    print(json.dumps(out, indent=1))
    return 0

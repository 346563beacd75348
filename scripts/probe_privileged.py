"""Does the vision path know where things are? The privileged readout of a policy trained with `privileged_dim`
against the true object and goal positions, on the first frame of training layouts and of held-out layouts.

    .venv/bin/python scripts/probe_privileged.py --policy runs/priv/policy --episodes 10

Per task: RMS 3-D error in cm of the object position and of the goal position, and beside each the error of the
policy's per-task mean (`stats.json`), i.e. of a readout that ignores the image. A readout near that baseline
has learned the task, not the layout; one far below it localises. For a keypoint policy the readout is the affine
map of each supervised keypoint's 3-D point (vla.policy.keypoints), so this measures the keypoints themselves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def probe(policy_path: str, tasks: tuple[str, ...], episodes: int, image_size: int = 128) -> list[dict]:
    import torch

    from sim import schema
    from sim.env import MetaWorldRGBD
    from vla.errors import UserError
    from vla.policy import VLAPolicy

    pol = VLAPolicy.load(policy_path)
    if pol.privileged_head is None:
        raise UserError(f"{policy_path}: this policy was trained without privileged targets (privileged_dim 0)")
    s = pol.stats["privileged"]
    std = np.asarray(s["std"])
    obj, goal = slice(0, 3), slice(6, 9)  # sim.schema.PRIVILEGED_TARGETS: object, second object, goal
    rms = lambda e: float(np.sqrt((e ** 2).sum(1).mean()) * 100)  # noqa: E731  (N, 3) metres -> cm
    env = MetaWorldRGBD(task=tasks[0], cameras=pol.config.cameras, image_size=image_size)
    rows = []
    try:
        for task in tasks:
            tid = str(schema.all_tasks().index(task))
            if tid not in s["task_mean"]:
                raise UserError(f"{policy_path} was not trained on {task}")
            mean = np.asarray(s["task_mean"][tid])
            row = {"task": task}
            train_seeds = [k for k in range(2 * episodes + 2) if not schema.is_val_seed(k)][:episodes]
            for split, seeds in (("train", train_seeds),
                                 ("heldout", [schema.EVAL_SEED_BASE + k for k in range(episodes)])):
                err, base = [], []
                for seed in seeds:
                    obs, info = env.reset(seed=seed, options={"task": task})
                    batch = {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}
                    with torch.inference_mode():
                        _, pred = pol(**pol.prepare(batch), privileged=True)
                    true = info["raw_obs"][schema.PRIVILEGED_INDEX]
                    pos = pred[0].numpy() if pol.privileged_in_units else pred[0].numpy() * std + mean
                    err.append(pos - true)
                    base.append(mean - true)
                err, base = np.array(err), np.array(base)
                row[split] = {"object_cm": rms(err[:, obj]), "goal_cm": rms(err[:, goal]),
                              "object_mean_cm": rms(base[:, obj]), "goal_mean_cm": rms(base[:, goal])}
            rows.append(row)
    finally:
        env.close()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| task | object, train layouts | object, held-out | goal, train layouts | goal, held-out |",
             "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[s][k + '_cm']:.1f} ({r[s][k + '_mean_cm']:.1f})" for k in ("object", "goal")
                 for s in ("train", "heldout")]
        lines.append(f"| {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nRMS error in cm of the readout (in brackets: of the per-task mean, no image)."


def main(argv: list[str] | None = None) -> int:
    from sim.schema import parse_tasks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="a policy folder trained with privileged_dim > 0")
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=10, help="layouts per task and split (default 10)")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args(argv)
    from vla.errors import UserError

    try:
        print(markdown(probe(args.policy, parse_tasks(args.tasks), args.episodes, args.image_size)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

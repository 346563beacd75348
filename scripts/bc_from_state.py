"""The perception ceiling: behaviour cloning from the privileged state instead of pixels, on the same episodes.

    .venv/bin/python scripts/bc_from_state.py --data data/expert --episodes 10

An MLP maps proprio (hand, gripper), the object, second-object and goal positions (sim.schema.PRIVILEGED_TARGETS)
and a task one-hot to the expert's action (MSE), then drives Meta-World on held-out seeds with no rendering. What
it solves is what a pixel policy trained on the same demonstrations could solve if it located those three points
exactly; the gap to the pixel policy is the vision path's share (docs/policy_experiments.md, row S).
`--no-positions` drops the three points (proprio and task only): the floor for a policy that sees nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def features(raw: np.ndarray, task_id: int, positions: bool = True) -> np.ndarray:
    from sim import schema

    cols = list(range(schema.STATE_DIM)) + (list(schema.PRIVILEGED_INDEX) if positions else [])
    onehot = np.zeros(len(schema.MT10), np.float32)
    onehot[task_id] = 1
    return np.concatenate([raw[cols].astype(np.float32), onehot])


def run(data: str, steps: int, episodes: int, max_steps: int, positions: bool, seed: int = 0) -> dict:
    import torch

    from sim import schema
    from sim.env import _make_metaworld
    from sim.episodes import EpisodeReader, scan
    from vla.errors import UserError

    tasks = list(schema.MT10)
    meta, _ = scan(data)
    X, Y = [], []
    for m in meta:
        r = EpisodeReader(Path(data) / m["file"])
        if r.raw_obs is None:
            raise UserError(f"{r.path} has no raw_obs: collect the data with this version")
        if m["task"] not in tasks:
            continue
        X += [features(o, tasks.index(m["task"]), positions) for o in r.raw_obs]
        Y += list(r.actions)
    if not X:
        raise UserError(f"{data} has no MT10 episodes")
    X, Y = torch.tensor(np.array(X)), torch.tensor(np.array(Y))
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-3)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(X), (256,), generator=g)
        loss = torch.nn.functional.mse_loss(net((X[idx] - mu) / sd), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    per_task = {}
    warnings.simplefilter("ignore")  # Meta-World warns about its own gains
    for tid, task in enumerate(tasks):
        env, ok = _make_metaworld(task, max_steps), 0
        for k in range(episodes):
            env.seed(schema.EVAL_SEED_BASE + k)
            raw, _ = env.reset()
            for _ in range(max_steps):
                with torch.no_grad():
                    a = net((torch.tensor(features(raw, tid, positions))[None] - mu) / sd)[0].numpy()
                raw, _, _, _, info = env.step(np.clip(a, -1, 1))
                if info["success"]:
                    ok += 1
                    break
        env.close()
        per_task[task] = ok / episodes
    return {"samples": len(X), "final_mse": float(loss), "per_task": per_task,
            "success": float(np.mean(list(per_task.values()))), "episodes_per_task": episodes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an episode folder collected with raw_obs")
    ap.add_argument("--steps", type=int, default=5000, help="training steps of 256 samples")
    ap.add_argument("--episodes", type=int, default=10, help="held-out seeds per task")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--no-positions", dest="positions", action="store_false")
    args = ap.parse_args(argv)
    from vla.errors import UserError

    try:
        print(json.dumps(run(args.data, args.steps, args.episodes, args.max_steps, args.positions), indent=1))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A minimal robot control loop against `vla serve`: fixed rate, chunk execution or temporal ensembling.

    python scripts/robot_client.py --address 127.0.0.1:50051 --hz 10 --steps 100 --horizon 4
    python scripts/robot_client.py --address 127.0.0.1:50051 --hz 10 --ensemble

The loop reads an observation, gets actions, sends one action, then sleeps until the next tick (missed ticks are
counted, never caught up in a burst). Chunks are turned into actions by `sim.chunking` on the client (unary
calls), or with --server-side by the server's streaming session. `FakeRobot` stands in for real hardware: replace
`observe`/`act` with your drivers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.chunking import ChunkEnsembler, ChunkQueue  # noqa: E402
from vla.client import RemotePolicy  # noqa: E402


class FakeRobot:
    """Synthetic camera frames and a gripper state integrating the commanded deltas."""

    def __init__(self, cameras: int, size: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.cameras, self.size = cameras, size
        self.state = np.zeros(4, np.float32)

    def observe(self, instruction: str) -> dict[str, Any]:
        s = self.size
        K = np.array([[s, 0, s / 2], [0, s, s / 2], [0, 0, 1]], np.float32)
        return {"rgb": self.rng.integers(0, 256, (self.cameras, s, s, 3), dtype=np.uint8),
                "depth": self.rng.uniform(0.3, 2.0, (self.cameras, s, s)).astype(np.float32),
                "intrinsics": np.stack([K] * self.cameras), "state": self.state.copy(), "instruction": instruction}

    def act(self, action: np.ndarray) -> None:
        self.state[:3] += 0.01 * np.clip(action[:3], -1, 1)
        self.state[3] = float(action[3] > 0)


def control_loop(remote: RemotePolicy, robot, steps: int, hz: float, instruction: str, horizon: int = 0,
                 ensemble: bool = False, coef: float = 0.8, server_side: bool = False) -> dict[str, Any]:
    """Run `steps` control ticks; returns the executed actions and timing statistics."""
    info = remote.info()
    horizon = horizon or info["chunk_len"]
    runner = ChunkEnsembler(1, info["action_dim"], coef) if ensemble else ChunkQueue(1, horizon, info["action_dim"])
    session = remote.session(horizon=0 if ensemble else horizon, ensemble=ensemble, ensemble_coef=coef) \
        if server_side else None
    period, actions, latencies, missed = 1.0 / hz, [], [], 0
    next_tick = time.monotonic()
    try:
        for _ in range(steps):
            obs = robot.observe(instruction)
            t = time.perf_counter()
            if session is not None:
                action = session.step(obs).action
            else:
                if runner.needs_chunk()[0]:
                    runner.add(remote.predict(obs)[None])  # (1, T, A)
                action = runner.pop()[0]
            latencies.append(time.perf_counter() - t)
            robot.act(action)
            actions.append(action)
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                missed += 1
                next_tick = time.monotonic()
    finally:
        if session is not None:
            session.close()
    lat = np.array(latencies) * 1e3
    return {"actions": np.stack(actions), "p50_ms": float(np.median(lat)), "max_ms": float(lat.max()),
            "missed_ticks": missed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--token", default=None)
    p.add_argument("--tls-ca", default=None, help="server certificate (PEM) for TLS")
    p.add_argument("--hz", type=float, default=10.0, help="control rate (default 10)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--horizon", type=int, default=0, help="actions executed per chunk (default: whole chunk)")
    p.add_argument("--ensemble", action="store_true", help="temporal ensembling (a chunk every step)")
    p.add_argument("--coef", type=float, default=0.8, help="ensembling weight exp(-coef * age)")
    p.add_argument("--server-side", action="store_true", help="let the server's streaming session run the chunks")
    p.add_argument("--instruction", default="push the red block to the goal")
    args = p.parse_args(argv)
    with RemotePolicy(args.address, token=args.token, tls=args.tls_ca or False) as remote:
        info = remote.info()
        robot = FakeRobot(len(info["cameras"]), (info["image_size"] or (128, 128))[0])
        out = control_loop(remote, robot, args.steps, args.hz, args.instruction, args.horizon, args.ensemble,
                           args.coef, args.server_side)
    print(f"{args.steps} steps at {args.hz} Hz: action latency p50 {out['p50_ms']:.2f} ms, max {out['max_ms']:.2f} ms, "
          f"missed ticks {out['missed_ticks']}, final state {robot.state.round(3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

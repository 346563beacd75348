"""`vla bench policy`: in-process latency and throughput of `VLAPolicy.predict`.

    vla bench policy                                   # tiny + default, CPU (+ GPU when present), batch 1/8/32
    python -m vla.policy.bench --configs default --batches 1 --calls 200 --json out/bench_policy.json

Per (config, device, batch): `--warmup` untimed calls, then `--calls` timed calls (capped by --max-seconds per
cell; the table says how many ran); p50/p99 latency of one call and throughput in observations/s. Inputs are
simulator-sized (128 px RGB + depth, one instruction repeated: the text-token cache is warm, as in a control
loop). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch

from vla.files import write_json_atomic


def make_obs(policy, batch: int, size: int, seed: int = 0) -> dict[str, Any]:
    cfg = policy.config
    rng = np.random.default_rng(seed)
    V = len(cfg.cameras)
    f = size / (2 * np.tan(np.radians(45) / 2))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
    return {
        "rgb": rng.integers(0, 256, (batch, V, size, size, 3), dtype=np.uint8),
        "depth": rng.uniform(0.5, 2.5, (batch, V, size, size)).astype(np.float32),
        "intrinsics": np.tile(K, (batch, V, 1, 1)),
        "state": rng.normal(0, 0.3, (batch, cfg.state_dim)).astype(np.float32),
        "instruction": ["push the puck to the goal"] * batch,
    }


def time_cell(policy, batch: int, size: int, calls: int, warmup: int, max_seconds: float) -> dict[str, Any]:
    obs = make_obs(policy, batch, size)
    for _ in range(warmup):
        policy.predict(obs)
    times = []
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        policy.predict(obs)  # returns numpy: includes the device sync and the copy back
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds and len(times) >= 10:
            break
    ms = np.array(times) * 1e3
    return {"batch": batch, "calls": len(times), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "obs_per_s": float(batch / ms.mean() * 1e3)}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | params | device | batch | calls | p50 ms | p99 ms | obs/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f} M | {r['device']} | {r['batch']} | {r['calls']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['obs_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from vla.policy.config import PolicyConfig
    from vla.policy.model import VLAPolicy

    p = argparse.ArgumentParser(prog="vla bench policy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,default", help="comma-separated presets or config JSON paths")
    p.add_argument("--checkpoint", default=None, help="benchmark a saved policy instead of --configs")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap per (config, device, batch) cell")
    p.add_argument("--device", default="all", help="cpu | cuda | all (cpu, and cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--obs-size", type=int, default=128, help="input image size in pixels (simulator: 128)")
    p.add_argument("--json", default="out/bench_policy.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    names = [args.checkpoint] if args.checkpoint else args.configs.split(",")
    for name in names:
        for dev in devices:
            if args.checkpoint:
                policy = VLAPolicy.load(name, device=dev)
            else:
                policy = VLAPolicy.from_config(PolicyConfig.resolve(name), device=dev)
            for b in batches:
                cell = time_cell(policy, b, args.obs_size, args.calls, args.warmup, args.max_seconds)
                rows.append({"config": name, "params": policy.param_count, "device": dev, **cell})
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    print()
    print(table)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "date": time.strftime("%Y-%m-%d")}
    write_json_atomic(args.json, {"meta": meta, "args": vars(args), "results": rows})
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

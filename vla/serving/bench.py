"""`vla bench serve`: latency and throughput of the gRPC service over loopback, next to the same model in-process.

    vla bench serve                                   # noop + tiny, 128 px RGB-D, 1/8/32 clients, unary+stream
    vla bench serve --policy noop --configs 128,224,128x2 --duration 3 --output out/bench_serve.json

The server runs in its own process (`vla serve --port 0`), the load generator (grpc.aio, one channel per client,
requests encoded once up front) in this one. Each client sends its next request when the previous answer arrives.
The in-process figures time `policy.predict` on batches of 1 and `max_batch` in this process, so the serving
overhead is a ratio measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = {"128": (128, 1), "224": (224, 1), "128x2": (128, 2)}  # name -> (image side, cameras), RGB-D


def parse_args(argv):
    p = argparse.ArgumentParser(prog="vla bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="noop,tiny", help="comma list of noop | tiny | CHECKPOINT (default noop,tiny)")
    p.add_argument("--configs", default="128", help=f"comma list of {sorted(CONFIGS)} (default 128: RGB-D, 1 camera)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients (default 1,8,32)")
    p.add_argument("--modes", default="unary,stream", help="unary,stream")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per measurement")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--output", help="write all results as JSON here")
    return p.parse_args(argv)


def make_obs(size: int, cameras: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    K = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32)
    return {"rgb": rng.integers(0, 256, (cameras, size, size, 3), dtype=np.uint8),
            "depth": rng.uniform(0.2, 3, (cameras, size, size)).astype(np.float32),
            "intrinsics": np.stack([K] * cameras), "state": rng.normal(size=4).astype(np.float32),
            "instruction": "push the red block to the goal"}


def load_policy(spec: str):
    if spec == "noop":
        from vla.serving.noop import NoopPolicy

        return NoopPolicy()
    from vla.policy import PolicyConfig, VLAPolicy

    return (VLAPolicy.from_config(PolicyConfig.tiny()) if spec == "tiny" else VLAPolicy.load(spec)).eval()


def in_process(policy, obs: dict[str, Any], max_batch: int, seconds: float) -> dict[str, float]:
    """p50 latency of predict on one observation and rows/s of predict on max_batch observations."""
    def batch(n):
        out = {k: np.stack([obs[k]] * n) for k in ("rgb", "depth", "intrinsics", "state")}
        out["instruction"] = [obs["instruction"]] * n
        return out

    res = {}
    for n, key in ((1, "p50_ms_b1"), (max_batch, "rows_per_s_bmax")):
        b = batch(n)
        policy.predict(b)
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            policy.predict(b)
            times.append(time.perf_counter() - t)
        res[key] = float(np.median(times)) * 1e3 if n == 1 else n / float(np.median(times))
    return res


class ServerProcess:
    def __init__(self, spec: str, size: int, cameras: int, max_batch: int, threads: int):
        self.tmp = tempfile.TemporaryDirectory()
        ready = Path(self.tmp.name) / "port"
        cmd = [sys.executable, "-m", "vla.commands.serve", "--port", "0", "--ready-file", str(ready),
               "--max-batch", str(max_batch), "--threads", str(threads)]
        if spec in ("noop", "tiny"):
            cmd += ["--policy", spec]
        else:
            cmd += ["--checkpoint", spec]
        names = ["corner", "corner2", "corner3", "topview"][:cameras]
        cmd += ["--noop-cameras", ",".join(names), "--noop-image-size", str(size)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, env=env)
        end = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.close()
                raise RuntimeError(f"server did not start: {' '.join(cmd)}")
            time.sleep(0.05)
        self.port = int(ready.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.tmp.cleanup()


async def _load(address: str, request, mode: str, clients: int, warmup: float, duration: float) -> dict[str, Any]:
    import grpc

    from vla._proto.v1 import policy_pb2_grpc

    lat: list[float] = []
    errors = {"n": 0}
    t_start = time.perf_counter() + warmup
    t_end = t_start + duration

    async def one(channel):
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        call = stub.StreamPredict() if mode == "stream" else None
        while True:
            t = time.perf_counter()
            if t >= t_end:
                break
            try:
                if call is None:
                    await stub.Predict(request, timeout=30)
                else:
                    await call.write(request)
                    await call.read()
            except grpc.aio.AioRpcError:
                errors["n"] += 1
                continue
            if t >= t_start:
                lat.append(time.perf_counter() - t)
        if call is not None:
            await call.done_writing()

    channels = [grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                            ("grpc.max_send_message_length", 64 << 20)])
                for _ in range(clients)]
    await asyncio.gather(*(one(c) for c in channels))
    for c in channels:
        await c.close()
    ms = np.array(lat) * 1e3
    return {"mode": mode, "clients": clients, "calls": len(lat), "calls_per_s": len(lat) / duration,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "errors": errors["n"]}


def bench_config(spec: str, cname: str, args) -> list[dict[str, Any]]:
    from vla._proto.v1 import policy_pb2
    from vla.client import observation_message

    size, cams = CONFIGS[cname]
    obs = make_obs(size, cams)
    names = ["corner", "corner2", "corner3", "topview"][:cams]
    server = ServerProcess(spec, size, cams, args.max_batch, args.server_threads)
    try:
        if spec != "noop":  # a served checkpoint names its own cameras
            from vla.client import RemotePolicy

            with RemotePolicy(f"127.0.0.1:{server.port}") as rp:
                names = rp.info()["cameras"]
                obs = make_obs(size, len(names))
        request = policy_pb2.PredictRequest(observation=observation_message(obs, names))
        rows = []
        for mode in args.modes.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                r = asyncio.run(_load(f"127.0.0.1:{server.port}", request, mode, clients, args.warmup, args.duration))
                rows.append({"policy": spec, "config": cname, **r})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.close()
    policy = load_policy(spec)
    local = in_process(policy, obs, args.max_batch, min(args.duration, 2.0))
    for r in rows:
        r.update({f"inproc_{k}": v for k, v in local.items()})
        if r["p50_ms"]:
            r["overhead_x"] = r["p50_ms"] / local["p50_ms_b1"] if local["p50_ms_b1"] > 0 else None
            r["throughput_vs_inproc_bmax"] = r["calls_per_s"] / local["rows_per_s_bmax"]
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| policy | obs | mode | clients | p50 ms | p99 ms | calls/s | errors | in-process p50 ms (B=1) | "
            "in-process rows/s (B=32) | calls/s / in-process |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['config']} px RGB-D | {r['mode']} | {r['clients']} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['calls_per_s']:.0f} | {r['errors']} | {r['inproc_p50_ms_b1']:.3f} | "
                     f"{r['inproc_rows_per_s_bmax']:.0f} | {r['throughput_vs_inproc_bmax']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for c in args.configs.split(","):
        if c not in CONFIGS:
            raise SystemExit(f"vla bench serve: unknown config {c!r}; choose from {sorted(CONFIGS)}")
    rows = []
    for spec in args.policy.split(","):
        for cname in args.configs.split(","):
            rows.extend(bench_config(spec, cname, args))
    print(markdown(rows))
    if args.output:
        from vla.files import atomic_path

        with atomic_path(Path(args.output)) as tmp:
            Path(tmp).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

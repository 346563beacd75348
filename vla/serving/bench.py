"""`vla bench serve`: latency and throughput of the gRPC service over loopback, next to the same model in-process.

    vla bench serve                                   # bare + noop + tiny, 128 px RGB-D, 1/8/32 clients
    vla bench serve --policy bare,noop --configs 128,224,128x2 --duration 3 --output out/bench_serve.json
    vla bench serve --policy bare,noop --clients 1,8 --pin --load-procs 2   # server and clients on own cores
    vla bench serve --fleet 2,4,6,8 --hz 10 --deadline-ms 100 --duration 10 # robots at a control rate (fleet.py)

The server runs in its own process (`vla serve --port 0`), the load generator (vla.serving.loadgen: grpc.aio, one
channel per client, the request serialized once up front) in this one or in `--load-procs` worker processes.
`bare` is grpcio alone (vla.serving.bare: a generic handler answering fixed bytes, nothing parsed), driven by the
same load generator in the same run, so `vs_bare` is our latency/throughput over the transport's own; the server
process's CPU time per call over the same window (Linux /proc) is the steadier figure where the clients share the
server's cores (`cpu_vs_bare`). Our server runs with `vla serve`'s glibc allocator settings (vla.serving.allocator),
bare with glibc's defaults: give both the same with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in the
environment to compare the handlers alone. The
in-process figures time `policy.predict` on batches of 1 and `max_batch`, so the overhead over the model is a ratio
measured in one run on one machine too. `--pin` puts the server on the first `--server-cpus` CPUs of this
process's affinity and the load generator on the rest.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--policy", default=None,
                   help="comma list of bare | noop | tiny | CHECKPOINT (default bare,noop,tiny; with --fleet one "
                        "policy, default the committed default model)")
    p.add_argument("--configs", default="128", help=f"comma list of {sorted(CONFIGS)} (default 128: RGB-D, 1 camera)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients (default 1,8,32)")
    p.add_argument("--modes", default="unary,stream", help="unary,stream")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per measurement")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every measurement this many times, interleaved; report medians (default 1)")
    p.add_argument("--load-procs", type=int, default=0,
                   help="load-generator processes (default 0: this process); clients are split between them")
    p.add_argument("--pin", action="store_true", help="pin server and load generator to different CPUs")
    p.add_argument("--server-cpus", type=int, default=1, help="with --pin: CPUs given to the server (default 1)")
    p.add_argument("--output", help="write all results as JSON here")
    fleet = p.add_argument_group("fleet (vla.serving.fleet)")
    fleet.add_argument("--fleet", help="comma list of fleet sizes: that many robot processes call Predict at --hz")
    fleet.add_argument("--hz", type=float, default=10.0, help="--fleet: calls per second per robot (default 10)")
    fleet.add_argument("--deadline-ms", type=float, default=100.0,
                       help="--fleet: gRPC deadline of every call (default 100 ms: one period at 10 Hz)")
    args = p.parse_args(argv)
    if args.policy is None:
        args.policy = _default_model() if args.fleet else "bare,noop,tiny"
    return args


def _default_model() -> str:
    from vla.default_model import DEFAULT_DIR, default_checkpoint

    found = default_checkpoint()
    if found is None:
        raise SystemExit(f"vla bench serve --fleet: no default model in {DEFAULT_DIR}; give --policy CHECKPOINT")
    return str(found)


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


def noop_reply(chunk_len: int = 4, action_dim: int = 4) -> bytes:
    """What the noop server answers (a zero chunk, timing zeros): the bare server's fixed reply."""
    from vla._proto.v1 import policy_pb2, tensor_pb2
    from vla.serving.codec import to_tensor

    return policy_pb2.PredictResponse(actions=to_tensor(np.zeros((chunk_len, action_dim), np.float32)),
                                      timing=tensor_pb2.Timing(batch_size=1)).SerializeToString()


class ServerProcess:
    """`vla serve` (or the bare baseline) in its own process, optionally pinned to `cpus`."""

    def __init__(self, spec: str, size: int, cameras: int, max_batch: int, threads: int,
                 cpus: list[int] | None = None):
        self.tmp = tempfile.TemporaryDirectory()
        ready = Path(self.tmp.name) / "port"
        if spec == "bare":
            cmd = [sys.executable, "-m", "vla.serving.bare", "--port", "0", "--ready-file", str(ready),
                   "--reply-hex", noop_reply().hex()]
        else:
            cmd = [sys.executable, "-m", "vla.commands.serve", "--port", "0", "--ready-file", str(ready),
                   "--max-batch", str(max_batch), "--threads", str(threads)]
            if spec in ("noop", "tiny"):
                cmd += ["--policy", spec]
            else:
                cmd += ["--checkpoint", spec]
            names = ["corner", "corner2", "corner3", "topview"][:cameras]
            cmd += ["--noop-cameras", ",".join(names), "--noop-image-size", str(size)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # before exec: every thread inherits it
        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=pin)
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


def bench_config(spec: str, cname: str, args, load, server_cpus) -> list[dict[str, Any]]:
    from vla._proto.v1 import policy_pb2
    from vla.client import observation_message

    size, cams = CONFIGS[cname]
    obs = make_obs(size, cams)
    names = ["corner", "corner2", "corner3", "topview"][:cams]
    server = ServerProcess(spec, size, cams, args.max_batch, args.server_threads, server_cpus)
    try:
        if spec not in ("noop", "bare"):  # a served checkpoint names its own cameras
            from vla.client import RemotePolicy

            with RemotePolicy(f"127.0.0.1:{server.port}") as rp:
                names = rp.info()["cameras"]
                obs = make_obs(size, len(names))
        request = policy_pb2.PredictRequest(observation=observation_message(obs, names)).SerializeToString()
        rows = []
        for mode in args.modes.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                r = load.run(f"127.0.0.1:{server.port}", request, mode, clients, args.warmup, args.duration,
                             server.proc.pid)
                rows.append({"policy": spec, "config": cname, "load_procs": args.load_procs, "pinned": args.pin, **r})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.close()
    return rows


def add_in_process(rows: list[dict[str, Any]], spec: str, cname: str, args) -> None:
    """The same policy on the same observation in this process: serving overhead as a ratio."""
    if spec == "bare":
        return
    size, cams = CONFIGS[cname]
    policy = load_policy(spec)
    if spec != "noop":  # a checkpoint names its own cameras
        cams = len(policy.metadata().get("cameras") or [None] * cams)
    local = in_process(policy, make_obs(size, cams), args.max_batch, min(args.duration, 2.0))
    for r in rows:
        r.update({f"inproc_{k}": v for k, v in local.items()})
        if r["p50_ms"]:
            r["overhead_x"] = r["p50_ms"] / local["p50_ms_b1"] if local["p50_ms_b1"] > 0 else None
            r["throughput_vs_inproc_bmax"] = r["calls_per_s"] / local["rows_per_s_bmax"]


def median_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several rounds -> one row per measurement: median p50/p99/calls/s, errors and calls summed."""
    out = []
    for same in zip(*rounds):
        row = dict(same[0])
        for k in ("p50_ms", "p99_ms", "calls_per_s", "server_cpu_us_per_call"):
            vals = [r[k] for r in same if r.get(k) is not None]
            row[k] = float(np.median(vals)) if vals else None
        row["errors"] = sum(r["errors"] for r in same)
        row["calls"] = sum(r["calls"] for r in same)
        row["rounds"] = len(same)
        out.append(row)
    return out


def add_bare_ratios(rows: list[dict[str, Any]]) -> None:
    """p50 and calls/s of every row over the bare row of the same config, mode and clients (same run)."""
    bare = {(r["config"], r["mode"], r["clients"]): r for r in rows if r["policy"] == "bare"}
    for r in rows:
        b = bare.get((r["config"], r["mode"], r["clients"]))
        if b and r["p50_ms"] and b["p50_ms"] and b["calls_per_s"]:
            r["p50_vs_bare"] = r["p50_ms"] / b["p50_ms"]
            r["calls_vs_bare"] = r["calls_per_s"] / b["calls_per_s"]
        if b and r.get("server_cpu_us_per_call") and b.get("server_cpu_us_per_call"):
            r["cpu_vs_bare"] = r["server_cpu_us_per_call"] / b["server_cpu_us_per_call"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| policy | obs | mode | clients | p50 ms | p99 ms | calls/s | errors | p50 / bare | calls/s / bare | "
            "server CPU us/call | CPU / bare | in-process p50 ms (B=1) | in-process rows/s (B=32) | "
            "calls/s / in-process |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        g = r.get
        lines.append(f"| {r['policy']} | {r['config']} px RGB-D | {r['mode']} | {r['clients']} | "
                     f"{_fmt(g('p50_ms'), '.3f')} | {_fmt(g('p99_ms'), '.3f')} | {r['calls_per_s']:.0f} | "
                     f"{r['errors']} | {_fmt(g('p50_vs_bare'), '.2f')} | {_fmt(g('calls_vs_bare'), '.2f')} | "
                     f"{_fmt(g('server_cpu_us_per_call'), '.1f')} | {_fmt(g('cpu_vs_bare'), '.2f')} | "
                     f"{_fmt(g('inproc_p50_ms_b1'), '.4f')} | {_fmt(g('inproc_rows_per_s_bmax'), '.0f')} | "
                     f"{_fmt(g('throughput_vs_inproc_bmax'), '.2f')} |")
    return "\n".join(lines)


def split_cpus(pin: bool, server_cpus: int) -> tuple[list[int] | None, list[int] | None]:
    """--pin: (server CPUs, load-generator CPUs) from this process's affinity; else (None, None)."""
    if not pin:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= server_cpus or server_cpus < 1:
        raise SystemExit(f"vla bench serve: --pin needs more than --server-cpus {server_cpus} CPUs; this process "
                         f"may use {cpus}")
    return cpus[:server_cpus], cpus[server_cpus:]


def _fleet(args) -> int:
    from vla.serving import fleet

    if "," in args.policy or args.policy == "bare":
        raise SystemExit(f"vla bench serve --fleet: one served policy, not --policy {args.policy}")
    server_cpus, _ = split_cpus(args.pin, args.server_cpus)
    rows = fleet.main(args, lambda: ServerProcess(args.policy, 128, 1, args.max_batch, args.server_threads,
                                                  server_cpus), make_obs)
    if args.output:
        from vla.files import atomic_path

        with atomic_path(Path(args.output)) as tmp:
            Path(tmp).write_text(json.dumps({"capacity": fleet.capacity(rows), "rows": rows}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from vla.serving.loadgen import LoadGenerator

    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.fleet:
        return _fleet(args)
    for c in args.configs.split(","):
        if c not in CONFIGS:
            raise SystemExit(f"vla bench serve: unknown config {c!r}; choose from {sorted(CONFIGS)}")
    if args.load_procs < 0 or args.rounds < 1:
        raise SystemExit(f"vla bench serve: --load-procs {args.load_procs} must be >= 0, --rounds {args.rounds} >= 1")
    server_cpus, load_cpus = split_cpus(args.pin, args.server_cpus)
    load = LoadGenerator(args.load_procs, load_cpus)
    jobs = [(spec, cname) for spec in args.policy.split(",") for cname in args.configs.split(",")]
    rounds: list[list[dict[str, Any]]] = []
    try:
        for _ in range(args.rounds):  # rounds interleave bare and ours, so slow phases of a shared machine hit both
            rounds.append([r for spec, cname in jobs for r in bench_config(spec, cname, args, load, server_cpus)])
    finally:
        load.close()
    rows = median_rounds(rounds)
    for spec, cname in jobs:
        add_in_process([r for r in rows if r["policy"] == spec and r["config"] == cname], spec, cname, args)
    add_bare_ratios(rows)
    print(markdown(rows))
    if args.output:
        from vla.files import atomic_path

        with atomic_path(Path(args.output)) as tmp:
            Path(tmp).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`vla bench serve --fleet N[,N...]`: how many robots one server holds at a control rate, within a deadline.

    vla bench serve --fleet 2,4,6,8 --hz 10 --deadline-ms 100 --duration 10                 # the default model
    vla bench serve --fleet 1,2,3,4 --hz 10 --deadline-ms 100 --duration 10 --max-batch 1   # no batching

N simulated robots, each its own process with its own channel and `vla-client` id, call `Predict` at a fixed rate
(tick k at t0 + k / hz; a call that returns after the next tick skips the ticks it overran, counted) with a gRPC
deadline of `--deadline-ms`, against `vla serve` with the real model and dynamic batching, for `--duration`
seconds. A miss is any call that did not return OK within its deadline (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
...) plus every skipped tick. Per fleet size: calls, misses and the worst robot's miss rate, achieved calls/s per
robot, p50/p99 latency of the answered calls, and the batch sizes the server ran (its metrics before and after).
The capacity is the largest N whose miss rate stays under 1%. Robots send the same pre-serialised observation (the
model's cameras and image size, RGB-D), so their own CPU cost is one small gRPC call per tick.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from typing import Any

import numpy as np

MISS_LIMIT = 0.01  # capacity: largest fleet whose miss rate stays under this


def _robot(job: dict[str, Any]) -> dict[str, Any]:
    """One robot's fixed-rate loop (runs in a worker process)."""
    import grpc

    from vla._proto.v1 import policy_pb2

    channel = grpc.insecure_channel(job["address"])
    predict = channel.unary_unary("/vla.v1.PolicyService/Predict", None, policy_pb2.PredictResponse.FromString)
    grpc.channel_ready_future(channel).result(timeout=30)
    metadata = (("vla-client", f"robot-{job['robot']}"),)
    period, deadline = 1.0 / job["hz"], job["deadline_s"]
    codes: dict[str, int] = {}
    latencies: list[float] = []
    skipped = 0
    t0, t_end = job["t_start"] + job["robot"] * period / job["robots"], job["t_end"]  # robots spread over a period
    k = 0
    while True:
        tick = t0 + k * period
        if tick >= t_end:
            break
        pause = tick - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t = time.monotonic()
        try:
            predict(job["request"], timeout=deadline, metadata=metadata)
            code = "OK"
            latencies.append(time.monotonic() - t)
        except grpc.RpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1
        k += 1
        late = int((time.monotonic() - (t0 + k * period)) // period)  # ticks that passed while this call ran
        if late > 0:
            skipped += late
            k += late
    channel.close()
    return {"robot": job["robot"], "codes": codes, "latencies": latencies, "skipped": skipped}


def _worker(jobs, results) -> None:
    results.put("ready")
    for job in iter(jobs.get, None):
        try:
            results.put(_robot(job))
        except Exception as e:  # noqa: BLE001 (reported to the parent, which names the robot)
            results.put({"robot": job["robot"], "error": repr(e)})


class Fleet:
    """`size` robot processes, started once and reused for every fleet size of a sweep."""

    def __init__(self, size: int):
        ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self.jobs = [ctx.Queue() for _ in range(size)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(q, self.results), daemon=True) for q in self.jobs]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            assert self.results.get(timeout=120) == "ready"

    def run(self, address: str, request: bytes, robots: int, hz: float, deadline_s: float,
            duration: float) -> list[dict[str, Any]]:
        t_start = time.monotonic() + 2.0  # time for every robot to connect (CLOCK_MONOTONIC is system-wide)
        for i in range(robots):
            self.jobs[i].put({"address": address, "request": request, "robot": i, "robots": robots, "hz": hz,
                              "deadline_s": deadline_s, "t_start": t_start, "t_end": t_start + duration})
        out = [self.results.get(timeout=duration + 120) for _ in range(robots)]
        errors = [r for r in out if "error" in r]
        if errors:
            raise RuntimeError(f"robot {errors[0]['robot']} failed: {errors[0]['error']}")
        return sorted(out, key=lambda r: r["robot"])

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(30)


def summarise(robots: list[dict[str, Any]], duration: float, batch_sizes: dict[int, int]) -> dict[str, Any]:
    """Per-robot results of one run -> one row (miss rates, achieved rate, latency, batch sizes)."""
    per = []
    for r in robots:
        calls = sum(r["codes"].values())
        ok = r["codes"].get("OK", 0)
        misses = calls - ok + r["skipped"]
        per.append({"robot": r["robot"], "ticks": calls + r["skipped"], "ok": ok, "misses": misses,
                    "miss_rate": misses / max(calls + r["skipped"], 1), "calls_per_s": ok / duration,
                    "codes": r["codes"], "skipped": r["skipped"]})
    lat = np.array([x for r in robots for x in r["latencies"]]) * 1e3
    ticks = sum(p["ticks"] for p in per)
    misses = sum(p["misses"] for p in per)
    rows = sum(k * v for k, v in batch_sizes.items())
    return {
        "robots": len(robots), "ticks": ticks, "misses": misses, "miss_rate": misses / max(ticks, 1),
        "worst_robot_miss_rate": max(p["miss_rate"] for p in per),
        "calls_per_s_per_robot": float(np.mean([p["calls_per_s"] for p in per])),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_batch": rows / max(sum(batch_sizes.values()), 1), "max_batch_seen": max(batch_sizes, default=0),
        "batch_sizes": dict(sorted(batch_sizes.items())), "per_robot": per,
    }


def capacity(rows: list[dict[str, Any]]) -> int:
    """The largest fleet size whose miss rate is under MISS_LIMIT (0 if none)."""
    return max((r["robots"] for r in rows if r["miss_rate"] < MISS_LIMIT), default=0)


def markdown(rows: list[dict[str, Any]], hz: float, deadline_ms: float, max_batch: int) -> str:
    lines = ["| robots | Hz | deadline ms | max batch | ticks | miss rate | worst robot | calls/s per robot | "
             "p50 ms | p99 ms | mean batch | largest batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
        lines.append(f"| {r['robots']} | {hz:g} | {deadline_ms:g} | {max_batch} | {r['ticks']} | "
                     f"{r['miss_rate']:.1%} | {r['worst_robot_miss_rate']:.1%} | {r['calls_per_s_per_robot']:.2f} | "
                     f"{p50} | {p99} | {r['mean_batch']:.2f} | {r['max_batch_seen']} |")
    lines.append(f"\ncapacity (miss rate < {MISS_LIMIT:.0%}): {capacity(rows)} robots at {hz:g} Hz, "
                 f"deadline {deadline_ms:g} ms, max batch {max_batch}")
    return "\n".join(lines)


def _batch_sizes(address: str) -> dict[int, int]:
    from vla.client import RemotePolicy

    with RemotePolicy(address, client_id="fleet-bench") as rp:
        return dict(rp.metrics().batch_sizes)


def main(args, server_process, make_obs) -> list[dict[str, Any]]:
    """Run the sweep of `args.fleet` (comma list) against a fresh server; prints a table, returns the rows."""
    from vla._proto.v1 import policy_pb2
    from vla.client import RemotePolicy, observation_message

    sizes = [int(n) for n in str(args.fleet).split(",")]
    if min(sizes) < 1 or args.hz <= 0 or args.deadline_ms <= 0 or args.duration <= 0:
        raise SystemExit(f"vla bench serve: --fleet {args.fleet} needs sizes >= 1, --hz {args.hz}, --deadline-ms "
                         f"{args.deadline_ms} and --duration {args.duration} > 0")
    server = server_process()
    fleet = None
    try:
        address = f"127.0.0.1:{server.port}"
        with RemotePolicy(address, client_id="fleet-bench", timeout=60) as rp:
            info = rp.info()
            obs = make_obs(info["image_size"][0] if info["image_size"] else 128, len(info["cameras"]))
            for _ in range(5):  # warm-up: first forward passes, text-token cache
                rp.predict(obs)
        request = policy_pb2.PredictRequest(observation=observation_message(obs, info["cameras"])).SerializeToString()
        fleet = Fleet(max(sizes))
        rows = []
        for n in sizes:
            before = _batch_sizes(address)
            robots = fleet.run(address, request, n, args.hz, args.deadline_ms / 1e3, args.duration)
            after = _batch_sizes(address)
            diff = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) > before.get(k, 0)}
            row = summarise(robots, args.duration, diff)
            row.update(hz=args.hz, deadline_ms=args.deadline_ms, max_batch=args.max_batch, duration_s=args.duration)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_robot"}), flush=True)
    finally:
        if fleet is not None:
            fleet.close()
        server.close()
    print(markdown(rows, args.hz, args.deadline_ms, args.max_batch))
    return rows

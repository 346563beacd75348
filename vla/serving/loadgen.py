"""Closed-loop gRPC load generator for `vla bench serve`: N clients, each sends its next request when the answer
to the previous one arrives; unary (`Predict`) or one stream per client (`StreamPredict`).

One process (grpc.aio, one channel per client) or several (`procs > 1`, clients split between them), optionally
pinned to CPUs so that the load generator and the server do not fight over the same core. All processes measure
the same window of CLOCK_MONOTONIC (`time.monotonic`, shared by all processes on Linux), so their calls add up.
Given the server's pid, the CPU time the server process spent in that window is read from /proc (Linux): its CPU
per call is a steadier figure than latency on a machine whose cores the clients share.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from typing import Any

import numpy as np

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


async def _clients(address: str, request: bytes, mode: str, clients: int, t_start: float,
                   t_end: float) -> tuple[list[float], int]:
    """Run `clients` closed-loop clients until t_end; latencies (s) of calls started in [t_start, t_end)."""
    import grpc

    lat: list[float] = []
    errors = 0
    from vla._proto.v1 import policy_pb2

    parse = policy_pb2.PredictResponse.FromString  # requests go pre-serialized (None), replies are parsed

    async def one(channel):
        nonlocal errors
        if mode == "stream":
            call = channel.stream_stream("/vla.v1.PolicyService/StreamPredict", None, parse)()
        else:
            predict = channel.unary_unary("/vla.v1.PolicyService/Predict", None, parse)
            call = None
        while True:
            t = time.monotonic()
            if t >= t_end:
                break
            try:
                if call is None:
                    await predict(request, timeout=30)
                else:
                    await call.write(request)
                    await call.read()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if t >= t_start:
                lat.append(time.monotonic() - t)
        if call is not None:
            await call.done_writing()

    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(clients)]
    await asyncio.gather(*(one(c) for c in channels))
    for c in channels:
        await c.close()
    return lat, errors


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads) from /proc/PID/stat; None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


class _CpuWindow(threading.Thread):
    """Reads a process's CPU time at two CLOCK_MONOTONIC instants (the measurement window)."""

    def __init__(self, pid: int, t_start: float, t_end: float):
        super().__init__(name="cpu-window", daemon=True)
        self.pid, self.t_start, self.t_end = pid, t_start, t_end
        self.cpu_s: float | None = None

    def run(self) -> None:
        time.sleep(max(0.0, self.t_start - time.monotonic()))
        first = process_cpu_s(self.pid)
        time.sleep(max(0.0, self.t_end - time.monotonic()))
        last = process_cpu_s(self.pid)
        if first is not None and last is not None:
            self.cpu_s = last - first


def _worker(args: tuple) -> tuple[list[float], int]:
    return asyncio.run(_clients(*args))


def _pin(cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


class LoadGenerator:
    """`procs` load processes (0: this process) pinned to `cpus` (None: anywhere); reused across measurements."""

    def __init__(self, procs: int = 0, cpus: list[int] | None = None):
        self.procs, self.cpus = procs, cpus
        self.pool = None
        if procs > 0:
            ctx = multiprocessing.get_context("spawn")  # no inherited grpc state (grpc does not survive fork)
            self.pool = ctx.Pool(procs, initializer=_pin, initargs=(cpus,))
            self.pool.map(_pin, [cpus] * procs)  # wait until every worker is up
        else:
            _pin(cpus)

    def run(self, address: str, request: bytes, mode: str, clients: int, warmup: float,
            duration: float, server_pid: int | None = None) -> dict[str, Any]:
        """Latency and calls/s of the window; with `server_pid`, also the server's CPU microseconds per call."""
        t0 = time.monotonic() + (0.2 if self.pool else 0.0)  # time for the workers to receive the job
        t_start, t_end = t0 + warmup, t0 + warmup + duration
        window = None
        if server_pid is not None:
            window = _CpuWindow(server_pid, t_start, t_end)
            window.start()
        if self.pool is None:
            lat, errors = asyncio.run(_clients(address, request, mode, clients, t_start, t_end))
        else:
            split = [clients // self.procs + (i < clients % self.procs) for i in range(self.procs)]
            jobs = [(address, request, mode, n, t_start, t_end) for n in split if n]
            lat, errors = [], 0
            for part, err in self.pool.map(_worker, jobs):
                lat += part
                errors += err
        cpu_us = None
        if window is not None:
            window.join()
            cpu_us = window.cpu_s / len(lat) * 1e6 if window.cpu_s is not None and lat else None
        ms = np.array(lat) * 1e3
        return {"mode": mode, "clients": clients, "calls": len(lat), "calls_per_s": len(lat) / duration,
                "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "errors": errors,
                "server_cpu_us_per_call": cpu_us}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()

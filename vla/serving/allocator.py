"""glibc malloc settings for `vla serve`: keep freed request buffers in the heap instead of handing them back to the
kernel after every message.

glibc serves an allocation above M_MMAP_THRESHOLD with its own mmap, and gives the top of the heap back to the kernel
whenever more than M_TRIM_THRESHOLD of it is free; both thresholds move by themselves as the program runs. A policy
server receives one 0.1-4 MB request after another (a 128 px RGB-D frame is 114 KB): with the moving thresholds a
freed request buffer is returned to the kernel (munmap or a heap trim) and the next request's buffer is faulted
back in page by page, zero-filled by the kernel. Fixed thresholds above the request sizes stop that: 5-15 page
faults per message go to none, and the noop server's CPU per streamed call with 8 clients falls by 7% (unary:
1-2%; 2-core dev machine, docs/benchmarks.md). The price is memory that stays with the process between
requests: up to `trim_mb` of free heap at the top of each malloc arena (grpc's threads have arenas of their own),
and freed request buffers inside the heaps. `trim_when_idle` gives that back once a burst is over: malloc_trim
after `period_s` without calls, so steady traffic never pays for a trim. 64 clients sending 0.67 MB requests for
3 s: 125 MiB resident at the end of the burst and 74 MiB a few seconds later (idle: 67 MiB), where glibc's
defaults kept 120 MiB; a 64 MiB trim threshold had kept 224 MiB even after the trim (arena tops are trimmed only
at free()).

Only `vla serve` (`server.serve`, a process of its own) tunes; in-process servers (ServerThread, tests,
notebooks) leave the host program's allocator alone. Settings given in the environment (MALLOC_TRIM_THRESHOLD_,
MALLOC_MMAP_THRESHOLD_, or glibc.malloc tunables in GLIBC_TUNABLES, read by glibc at start-up) win: then nothing is
changed.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
from collections.abc import Callable

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
MMAP_MB = 4  # above every request of up to 4 cameras at 224 px RGB-D (1.4 MB)
TRIM_MB = 8  # above any single request buffer, small beside the ~64 MB heaps of grpc's per-thread arenas


def glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (it has mallopt and gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def tune(mmap_mb: float = MMAP_MB, trim_mb: float = TRIM_MB) -> dict[str, int] | None:
    """Fix glibc's mmap and trim thresholds (bytes); returns what was set, or None when nothing was (not glibc,
    or the environment already sets a threshold)."""
    if any(name in os.environ for name in ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    libc = glibc()
    if libc is None:
        return None
    settings = {"mmap_threshold": int(mmap_mb * 2**20), "trim_threshold": int(trim_mb * 2**20)}
    if not (libc.mallopt(M_MMAP_THRESHOLD, settings["mmap_threshold"]) and
            libc.mallopt(M_TRIM_THRESHOLD, settings["trim_threshold"])):
        return None  # glibc refused a value (mmap_threshold is capped at 32 MB on 64-bit)
    return settings


async def trim_when_idle(calls: Callable[[], int], period_s: float = 2.0) -> None:
    """Run forever (cancel to stop): after a burst, once `calls()` (a running count of answered calls) has not
    moved for `period_s`, give the free heap back to the kernel (malloc_trim) once, until calls come again."""
    libc = glibc()
    if libc is None:
        return
    last, trimmed = calls(), True
    while True:
        await asyncio.sleep(period_s)
        now = calls()
        if now != last:
            last, trimmed = now, False
        elif not trimmed:
            libc.malloc_trim(0)
            trimmed = True

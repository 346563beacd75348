"""glibc malloc settings for `vla serve`: keep freed request buffers in the heap instead of handing them back to the
kernel after every message.

glibc serves an allocation above M_MMAP_THRESHOLD with its own mmap, and gives the top of the heap back to the kernel
whenever more than M_TRIM_THRESHOLD of it is free; both thresholds move by themselves as the program runs. A policy
server receives one 0.1-4 MB request after another (a 128 px RGB-D frame is 114 KB): with the moving thresholds a
freed request buffer is returned to the kernel (munmap or a heap trim) and the next request's buffer is faulted
back in page by page, zero-filled by the kernel. Fixed thresholds above the request sizes stop that: 7-12 page
faults per message go to none, and the noop server's CPU per streamed message falls by 7-10% (2-core dev machine,
docs/benchmarks.md). The price is memory that stays with the process: up to `trim_mb` of free heap is kept at its
top, and buffers up to `mmap_mb` come from the heap (fragmentation is bounded by the open requests, themselves
bounded by `--max-concurrent-rpcs` x `--max-message-mb`).

Only `vla serve` (a process of its own) calls `tune`; in-process servers (ServerThread, tests, notebooks) leave
the host program's allocator alone. Settings given in the environment (MALLOC_TRIM_THRESHOLD_,
MALLOC_MMAP_THRESHOLD_, read by glibc at start-up) win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
MMAP_MB = 4  # above every request of up to 4 cameras at 224 px RGB-D (1.4 MB)
TRIM_MB = 64


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
    if any(name in os.environ for name in ENV):
        return None
    libc = glibc()
    if libc is None:
        return None
    settings = {"mmap_threshold": int(mmap_mb * 2**20), "trim_threshold": int(trim_mb * 2**20)}
    if not (libc.mallopt(M_MMAP_THRESHOLD, settings["mmap_threshold"]) and
            libc.mallopt(M_TRIM_THRESHOLD, settings["trim_threshold"])):
        return None  # glibc refused a value (mmap_threshold is capped at 32 MB on 64-bit)
    return settings

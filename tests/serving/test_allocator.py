"""vla.serving.allocator against glibc's own behaviour, observed in a fresh process through the program break
(sbrk(0)) and the resident size: after `tune` a 3 MiB request-sized buffer comes from the heap (glibc's default
serves it with a fresh mmap, faulted in page by page each time) and freeing it does not shrink the heap (the
control, a small trim threshold, does); settings in the environment win and `tune` then changes nothing;
`trim_when_idle` gives a burst's freed memory back once calls stop, and only then."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from vla.serving import allocator

pytestmark = pytest.mark.skipif(allocator.glibc() is None, reason="glibc's mallopt only")

PROBE = r"""
import ctypes, json, sys
from vla.serving import allocator
tuned = allocator.tune() if sys.argv[1] == "tune" else None
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
view = ctypes.c_char * (3 << 20)  # everything the probe needs exists before the buffer: it ends the heap
big = bytearray(3 << 20)
brk = libc.sbrk(0)
on_heap = ctypes.addressof(view.from_buffer(big)) < brk
del big
kept = libc.sbrk(0) == brk
print(json.dumps({"tuned": tuned, "on_heap": on_heap, "heap_kept": kept}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.ENV and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_tuned_request_buffers_stay_in_the_heap():
    default, tuned = probe("default"), probe("tune")
    assert default["tuned"] is None and not default["on_heap"]  # glibc's default: an mmap of its own
    assert tuned["tuned"] == {"mmap_threshold": allocator.MMAP_MB << 20, "trim_threshold": allocator.TRIM_MB << 20}
    assert tuned["on_heap"] and tuned["heap_kept"]


def test_a_small_trim_threshold_would_shrink_the_heap():
    """The control for heap_kept: the same buffer from the heap, but glibc's default trim threshold (128 KiB)."""
    got = probe("default", MALLOC_MMAP_THRESHOLD_=str(allocator.MMAP_MB << 20), MALLOC_TRIM_THRESHOLD_="131072")
    assert got["on_heap"] and not got["heap_kept"]


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_settings_in_the_environment_win(env):
    got = probe("tune", **env)
    assert got["tuned"] is None and not got["on_heap"]  # nothing changed: the mmap threshold is glibc's default


TRIM_PROBE = r"""
import asyncio, json
from vla.serving import allocator

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))

allocator.tune()
big, small = [], []
for _ in range(200):  # a burst: 140 MB of request buffers, small live objects between them (no trim at free)
    big.append(bytearray(700_000))
    small.append(bytearray(2000))
del big
held, calls = rss_mb(), [0]

async def main():
    task = asyncio.ensure_future(allocator.trim_when_idle(lambda: calls[0], period_s=0.05))
    await asyncio.sleep(0.01)
    calls[0] = 1  # the burst's calls were answered; then nothing
    await asyncio.sleep(0.3)
    task.cancel()

asyncio.run(main())
print(json.dumps({"held": held, "after": rss_mb()}))
"""


def test_trim_when_idle_gives_a_bursts_memory_back():
    clean = {k: v for k, v in os.environ.items() if k not in allocator.ENV}
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], env=clean, capture_output=True, text=True, timeout=60,
                         check=True)
    got = json.loads(out.stdout)
    assert got["held"] - got["after"] > 100, got  # MiB: the freed buffers were resident until the trim


def test_trim_when_idle_trims_once_per_quiet_spell(monkeypatch):
    """malloc_trim after a period without calls following calls; never while calls keep coming, not twice."""
    trims = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(calls[0])
            return 1

    monkeypatch.setattr(allocator, "glibc", lambda: FakeLibc())
    calls = [0]

    async def main():
        task = asyncio.ensure_future(allocator.trim_when_idle(lambda: calls[0], period_s=0.02))
        await asyncio.sleep(0.1)  # quiet from the start: nothing to give back
        for _ in range(8):  # steady traffic
            calls[0] += 1
            await asyncio.sleep(0.02)
        assert trims == []
        await asyncio.sleep(0.4)  # quiet: one trim
        calls[0] += 1  # another burst, then quiet again: one more
        await asyncio.sleep(0.4)
        task.cancel()

    asyncio.run(main())
    assert trims == [8, 9]

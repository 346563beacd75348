"""vla.serving.allocator against glibc's own behaviour, observed through the program break (sbrk(0)) in a fresh
process: after `tune` a 3 MiB request-sized buffer comes from the heap (glibc's default serves it with a fresh
mmap, faulted in page by page each time) and freeing it does not shrink the heap (the control, a small trim
threshold, does); settings in the environment win and `tune` then changes nothing."""

from __future__ import annotations

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
big = bytearray(3 << 20)
on_heap = ctypes.addressof((ctypes.c_char * len(big)).from_buffer(big)) < libc.sbrk(0)
brk = libc.sbrk(0)
del big
print(json.dumps({"tuned": tuned, "on_heap": on_heap, "heap_kept": libc.sbrk(0) == brk}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.ENV}
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


def test_settings_in_the_environment_win():
    got = probe("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert got["tuned"] is None and not got["on_heap"]  # nothing changed: the mmap threshold is glibc's default

"""Shared by the collection tests: run a collector in a child process and SIGKILL it after its first episode."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def episode_files(root: Path) -> list[Path]:
    """The complete episodes' sidecars (written last, so each marks a finished episode)."""
    return sorted(p for p in root.glob("*/*.json") if not p.name.endswith(".failed.json"))


def kill_after_first_episode(code: str, out: Path, timeout: float = 180.0) -> list[Path]:
    """Run `python -c code`, SIGKILL it once `out` holds a complete episode; -> the episodes it left."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        deadline = time.time() + timeout
        while not episode_files(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert episode_files(out), "the collector wrote no episode before the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return episode_files(out)

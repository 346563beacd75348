"""Offscreen OpenGL back-end selection for MuJoCo, done before `mujoco` is imported.

MuJoCo reads MUJOCO_GL once, at import, so the choice must happen first. An explicit MUJOCO_GL (the Makefile
and tests/conftest.py set `egl`) is respected. When unset we probe EGL in a child process (about 1 s, once:
the result is exported so worker processes inherit it) and fall back to OSMesa, logging which one we use.
Both are software renderers on a CPU machine (Mesa llvmpipe); EGL is the faster of the two.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

_PROBE = (
    "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); "
    "r = mujoco.Renderer(m, 8, 8); r.render(); r.close()"
)


def _works(backend: str) -> bool:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _preload_triton() -> None:
    """Load triton's native library before MuJoCo creates an EGL context in this process: loading it afterwards
    segfaults (triton 3.8 + Mesa EGL; seen when `vla demo` rendered scenes, then imported the kernels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


def configure() -> str:
    """Set MUJOCO_GL (and PYOPENGL_PLATFORM) if unset; return the back-end in use."""
    _preload_triton()
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        if chosen in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
        return chosen
    if "mujoco" in sys.modules:
        log.warning("mujoco was imported before sim.gl.configure(); MUJOCO_GL cannot be changed now")
        return "unknown"
    for backend in ("egl", "osmesa"):
        if _works(backend):
            if backend != "egl":
                log.warning("EGL rendering failed; falling back to %s (slower)", backend)
            else:
                log.info("offscreen rendering with MUJOCO_GL=egl")
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    raise RuntimeError(
        "no offscreen OpenGL back-end works (tried MUJOCO_GL=egl and osmesa): install the Debian packages "
        "libegl1 libgl1 libosmesa6 (`make system-deps`)"
    )


def renderer_info() -> str:
    """The GL vendor/renderer string of the current back-end (for benchmark reports)."""
    import mujoco

    m = mujoco.MjModel.from_xml_string("<mujoco/>")
    r = mujoco.Renderer(m, 8, 8)
    try:
        from OpenGL import GL

        return f"{os.environ.get('MUJOCO_GL')}: {GL.glGetString(GL.GL_RENDERER).decode()}"
    except Exception as e:  # the string is informational only
        return f"{os.environ.get('MUJOCO_GL')}: unknown renderer ({type(e).__name__})"
    finally:
        r.close()

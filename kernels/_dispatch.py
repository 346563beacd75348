"""Backend choice for every kernel in this package, in one place.

Rules (decided per call from the input tensors):
- ``"triton"``: all tensors on CUDA and triton importable -> the registered ``torch.library`` op, whose
  body launches the Triton kernels (``torch.compile`` traces it);
- ``"interpret"``: ``TRITON_INTERPRET=1`` was set before this package was imported and all tensors are
  on the CPU -> the Triton launchers are called *directly* (not through the op: a registered CPU kernel
  would silently run the torch reference instead, see DESIGN.md section 6);
- ``"torch"``: anything else -> the plain torch reference.

``LAUNCHES`` counts Triton kernel launches by kernel name so tests can prove a kernel really ran.
"""

from __future__ import annotations

import collections
import os

import torch

try:  # triton is optional: a CPU-only install without it must still import this package.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

# Triton decides at @triton.jit time whether a kernel is interpreted, so this is read once, at import.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LAUNCHES: collections.Counter[str] = collections.Counter()
POISON = False  # tests set it: see ``empty``

try:
    from torch.library import triton_op as _triton_op
    from torch.library import wrap_triton as _wrap_triton
except Exception:  # pragma: no cover - older/newer torch without the API
    _triton_op = None
    _wrap_triton = None


def backend(*tensors: torch.Tensor) -> str:
    """Return ``"triton"``, ``"interpret"`` or ``"torch"`` for these inputs (see module docstring)."""
    if not HAS_TRITON:
        return "torch"
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"} and not INTERPRET:
        return "triton"
    if devices == {"cpu"} and INTERPRET:
        return "interpret"
    return "torch"


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; NaN/sentinel-filled when ``POISON`` is set (tests), so an
    element a kernel forgot to write fails the comparison instead of holding stale memory."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -12345)
    return out


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` and count it; traceable inside a ``triton_op`` body."""
    LAUNCHES[kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__] += 1
    runner = _wrap_triton(kernel) if _wrap_triton is not None else kernel
    runner[grid](*args, **kwargs)


def register_op(name: str, fn, cpu_ref, autograd=None):
    """Register ``fn`` as ``vla_kernels::<name>`` with ``cpu_ref`` as CPU kernel; ``None`` if unsupported.

    Never raises: with another torch/triton pair the package falls back to calling launchers directly.
    """
    # Under the interpreter CPU tensors must reach the launchers directly (a registered CPU kernel would
    # win), so the op is not registered there: that also keeps interpreted kernels out of the op table.
    if _triton_op is None or not HAS_TRITON or INTERPRET:
        return None
    try:
        op = _triton_op(f"vla_kernels::{name}", fn, mutates_args=())
        op.register_kernel("cpu")(cpu_ref)
        if autograd is not None:
            backward, setup_context = autograd
            op.register_autograd(backward, setup_context=setup_context)
        return op
    except Exception:  # pragma: no cover - API drift between torch versions
        return None


def check_tensor(name: str, t, ndim: int, dtypes=None) -> None:
    """Raise a ``ValueError`` naming ``name`` when ``t`` is not a tensor of ``ndim`` dims and allowed dtype."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} has dtype {t.dtype}; expected one of {allowed}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise a ``ValueError`` listing devices when the named tensors are not all on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

"""Tests that run the Triton kernels through the interpreter, in a process started with TRITON_INTERPRET=1.

Triton decides at import/``@triton.jit`` time whether kernels are interpreted, and the interpreter needs
``triton.language`` itself imported in that mode. In the full suite other directories import triton first
(``open_clip`` pulls it in), and a process-wide switch would push every later CPU user of ``kernels``
through the interpreter (~2 ms per program). So these files are collected only when the variable is set;
``tests/kernels/test_kernels_interpreter.py`` runs each of them in a child ``pytest`` with it set:

    TRITON_INTERPRET=1 python -m pytest tests/kernels/interpreted -q
"""

from __future__ import annotations

import os
import types

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETING:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def ik():
    """The kernels modules, with poisoned (NaN-filled) outputs and a cleared launch counter."""
    from kernels import _dispatch, attention, layers, ponet

    assert _dispatch.INTERPRET, "kernels was imported before TRITON_INTERPRET=1 took effect"
    _dispatch.POISON = True
    _dispatch.LAUNCHES.clear()
    yield types.SimpleNamespace(dispatch=_dispatch, ponet=ponet, attention=attention, layers=layers)
    _dispatch.POISON = False

"""The fused attention kernel on CUDA in fp16 and bf16 (the half-precision branch GPU users run), forward and
backward, against float64 autograd of the reference in ``conftest.py``. Skipped without a CUDA device; part of
``scripts/gpu_check.sh``:

    python -m pytest -q -m gpu tests/kernels

Sequences span many autotuned query blocks (64 or 128 queries each) so the causal / prefix-LM block skipping
and the online-softmax rescale across key blocks both run. ``interpreted/test_interp_attention.py`` runs the same
case helper on small fp16 cases, so this file's code is exercised without a GPU too.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels import _dispatch  # noqa: E402
from kernels import attention as attn  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Forward: elementwise (inputs are rounded to the dtype first, so only the kernel's own rounding counts: p cast
# to the dtype before the P @ V dot, and the stored output). Backward (SDPA in the same dtype): max error over
# max(1, max |reference|) within 4x the forward tolerance, as in kernels/gpu_check.py.
TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
CASES = [  # (B, H, Nq, Nk, Dh, causal, prefix_len, with mask)
    (2, 4, 1000, 1000, 64, True, None, True),
    (2, 3, 777, 777, 40, False, 300, True),
    (3, 2, 513, 513, 128, False, None, True),
    (2, 2, 300, 1001, 32, True, None, False),
    (1, 8, 4099, 4099, 64, False, 17, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}q{}k{}d{}-causal{}-prefix{}-mask{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_attention_matches_reference_on_cuda(kdata, dtype, case):
    assert not attn.upcasts(dtype)  # the half-precision branch
    before = _dispatch.LAUNCHES["_attn_fwd"]
    out, grads, want, want_grads = kdata.attention_case(attn.attention, dtype, case, "cuda")
    assert _dispatch.LAUNCHES["_attn_fwd"] == before + 1 and out.dtype == dtype
    torch.testing.assert_close(out.double(), want, **TOL[dtype])
    for name, got, ref in zip("qkv", grads, want_grads):
        assert got.dtype == dtype and kdata.rel_err(got, ref) <= 4 * TOL[dtype]["atol"], (name, kdata.rel_err(got, ref))

"""The registered torch ops: CPU kernel = reference, autograd through the op, torch.compile on CUDA.

On a CPU-only machine torch.compile traces a ``triton_op`` into its Triton body, which needs a GPU
driver; that is why the public functions call the reference (not the op) for CPU tensors, and why the
compile test needs CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels import attention as attn  # noqa: E402
from kernels import ponet  # noqa: E402


def _ponet_check(kdata, device, compile_fn=None):
    q, k, o, s, l, seg, mask = (t.to(device) for t in kdata.ponet_inputs(2, 2, 9, 4, torch.float32, kdata.gen))
    op = torch.ops.vla_kernels.ponet_mixing
    fn = lambda *x: op(*x, seg, mask, 1)  # noqa: E731
    if compile_fn is not None:
        fn = compile_fn(fn)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, o, s, l)]
    out = fn(*leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, o, s, l)]
    ref = ponet.ponet_mixing_ref(*ref_leaves, seg, mask, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, leaves, dy), torch.autograd.grad(ref, ref_leaves, dy)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_ponet_op_cpu_kernel_and_autograd_are_the_reference(kdata):
    _ponet_check(kdata, "cpu")


def test_attention_op_cpu_kernel_is_the_reference(kdata):
    q, k, v = (torch.randn(2, 2, 7, 8, generator=kdata.gen) for _ in range(3))
    mask = kdata.mask(2, 7, kdata.gen)
    out = torch.ops.vla_kernels.attention(q, k, v, mask.to(torch.int8), True, False, 0.25, 0, "ieee")
    torch.testing.assert_close(out, attn.attention_ref(q, k, v, mask=mask, scale=0.25))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ponet_op_compiles_fullgraph_on_cuda(kdata):
    _ponet_check(kdata, "cuda", lambda fn: torch.compile(fn, fullgraph=True))

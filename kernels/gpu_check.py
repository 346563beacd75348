"""GPU numerics check without the interpreter: Triton kernels vs torch references on CUDA.

Run by ``scripts/gpu_check.sh`` on a machine with a GPU; exits non-zero on any mismatch and writes a
JSON report (atomically) when ``--json`` is given. Imports: torch, triton, stdlib.

    python -m kernels.gpu_check --json $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from kernels import attention as attn
from kernels import ponet
from kernels.bench import write_json

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs error relative to max(1, max |want|)."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1.0)).item()


def check_ponet(B, H, N, Dh, dtype) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, o = (torch.randn(B, H, N, Dh, device="cuda", generator=g).to(dtype) for _ in range(3))
    s, l = (torch.randn(B, N, H * Dh, device="cuda", generator=g).to(dtype) for _ in range(2))
    seg = (torch.arange(N, device="cuda") * 5 // N).expand(B, N).contiguous()
    mask = torch.rand(B, N, device="cuda", generator=g) > 0.1
    mask[-1, N // 2 :] = False
    leaves = [t.clone().requires_grad_(True) for t in (q, k, o, s, l)]
    out = ponet.ponet_mixing(*leaves, seg, mask, 1)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, o, s, l)]
    ref = ponet.ponet_mixing_ref(*ref_leaves, seg, mask, 1)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dy)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
    errs = {"out": _err(out, ref), **{f"d{n}": _err(a, b) for n, a, b in zip("qkosl", grads, ref_grads)}}
    return dict(op="ponet_mixing", B=B, H=H, N=N, Dh=Dh, dtype=str(dtype), errors=errs,
                ok=all(e <= TOL[dtype] * 4 for e in errs.values()))


def check_attention(B, H, N, Dh, dtype, causal, prefix_len) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, Dh, device="cuda", generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(B, N, dtype=torch.bool, device="cuda")
    mask[-1, N - N // 3 :] = False
    out = attn.attention(q, k, v, mask=mask, causal=causal, prefix_len=prefix_len)
    allowed = attn.allowed_mask(mask, causal, prefix_len, N, N, q.device)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    err = _err(out, want)
    return dict(op="attention", B=B, H=H, N=N, Dh=Dh, dtype=str(dtype), causal=causal, prefix_len=prefix_len,
                errors={"out": err}, ok=err <= TOL[dtype])


def check_compile() -> dict:
    """torch.compile(fullgraph=True) traces the registered PoNet op on CUDA."""
    B, H, N, Dh = 2, 2, 33, 16
    q, k, o = (torch.randn(B, H, N, Dh, device="cuda") for _ in range(3))
    s, l = (torch.randn(B, N, H * Dh, device="cuda") for _ in range(2))
    try:
        fn = torch.compile(lambda *x: ponet.ponet_mixing(*x), fullgraph=True)
        err = _err(fn(q, k, o, s, l), ponet.ponet_mixing_ref(q, k, o, s, l))
        return dict(op="compile_ponet", errors={"out": err}, ok=err <= 1e-4)
    except Exception as exc:
        return dict(op="compile_ponet", error=f"{type(exc).__name__}: {exc}"[:500], ok=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Triton vs reference numerics on CUDA")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    results = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in ((2, 2, 37, 16), (3, 8, 1000, 64), (1, 4, 4099, 32)):
            results.append(check_ponet(*shape, dtype))
        for shape, causal, prefix in (((2, 2, 37, 16), False, None), ((4, 8, 256, 64), True, None),
                                      ((2, 4, 1000, 128), False, 100), ((2, 2, 300, 40), False, None)):
            results.append(check_attention(*shape, dtype, causal, prefix))
    results.append(check_compile())
    for r in results:
        print(("ok   " if r["ok"] else "FAIL ") + str({k: v for k, v in r.items() if k != "ok"}))
    if args.json:
        write_json(args.json, dict(device=torch.cuda.get_device_name(), results=results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

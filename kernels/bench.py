"""Benchmark PoNet mixing and fused attention: torch reference vs Triton (vs SDPA and torch.compile).

On CUDA: CUDA-event timing, median of ``--reps`` runs after ``--warmup`` runs, for the eager reference,
``torch.compile`` of the reference, the Triton kernels and (attention) SDPA. On CPU only the torch
reference runs, timed with ``time.perf_counter`` (no Triton CPU backend exists). Imports are limited to
torch, triton and the standard library so it runs on a bare GPU box.

    python scripts/bench_kernels.py --json out/bench_kernels.json     # or: vla bench kernels
    python -m kernels.bench --quick                                    # a few small shapes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

# Peak memory bandwidth (GB/s) of cards we may be lent, to report % of peak; matched on the device name.
PEAK_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}

PONET_POLICY = [(1, 64, 256), (8, 256, 512), (32, 256, 512), (64, 512, 768), (16, 1024, 512)]  # (B, N, D)
PONET_LONG = [(32, 4096, 512), (4, 8192, 512), (2, 16384, 512)]
ATTN_POLICY = [(1, 4, 64, 64), (16, 8, 256, 64), (64, 8, 256, 64), (8, 12, 1024, 64)]  # (B, H, N, Dh)
ATTN_LONG = [(1, 8, 4096, 64), (1, 8, 16384, 64)]
QUICK_PONET = [(1, 64, 256), (8, 256, 512)]
QUICK_ATTN = [(1, 4, 64, 64), (4, 8, 256, 64)]


def time_fn(fn, device: str, warmup: int, reps: int) -> float:
    """Median milliseconds per call: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _ponet_inputs(B, N, D, heads, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    q, k, o = (torch.randn(B, heads, N, D // heads, device=device, dtype=dtype, generator=g) for _ in range(3))
    s, l = (torch.randn(B, N, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    seg = (torch.arange(N, device=device) * 4 // N).expand(B, N).contiguous()  # 4 segments per row
    mask = torch.ones(B, N, dtype=torch.bool, device=device)
    mask[:, N - N // 8 :] = False  # padded tail
    return (q, k, o, s, l, seg, mask)


def _attn_inputs(B, H, N, Dh, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, Dh, device=device, dtype=dtype, generator=g) for _ in range(3))
    mask = torch.ones(B, N, dtype=torch.bool, device=device)
    mask[:, N - N // 8 :] = False
    return q, k, v, mask


def bench_ponet(shapes, dtype, device, args) -> list[dict]:
    from kernels import ponet

    rows = []
    for B, N, D in shapes:
        inputs = _ponet_inputs(B, N, D, 8, dtype, device)
        nbytes = 6 * B * N * D * inputs[0].element_size()  # q, k, o, s, l read once, out written once
        impls = {"reference": lambda x=inputs: ponet.ponet_mixing_ref(*x)}
        if device == "cuda":
            impls["torch.compile(ref)"] = _compiled(ponet.ponet_mixing_ref, inputs)
            impls["triton"] = lambda x=inputs: ponet.ponet_mixing(*x)
        rows += _measure("ponet_mixing", dict(B=B, N=N, D=D, H=8), impls, device, args, nbytes=nbytes)
    return rows


def bench_attention(shapes, dtype, device, args) -> list[dict]:
    from kernels import attention as attn

    rows = []
    for B, H, N, Dh in shapes:
        q, k, v, mask = _attn_inputs(B, H, N, Dh, dtype, device)
        flops = 4 * B * H * N * N * Dh
        x = dict(q=q, k=k, v=v)
        impls = {}
        if N <= 4096 or device == "cuda":  # the reference materialises (B, H, N, N) scores
            impls["reference"] = lambda x=x, m=mask: attn.attention_ref(**x, mask=m)
        if device == "cuda":
            impls["sdpa"] = lambda x=x, m=mask[:, None, None, :]: F.scaled_dot_product_attention(**x, attn_mask=m)
            impls["triton"] = lambda x=x, m=mask: attn.attention(**x, mask=m)
        rows += _measure("attention", dict(B=B, H=H, N=N, Dh=Dh), impls, device, args, flops=flops)
    return rows


def _compiled(fn, inputs):
    compiled = torch.compile(fn)
    return lambda: compiled(*inputs)


def _measure(op, shape, impls, device, args, nbytes=None, flops=None) -> list[dict]:
    rows, base = [], None
    for name, fn in impls.items():
        try:
            with torch.no_grad():
                ms = time_fn(fn, device, args.warmup, args.reps)
        except Exception as exc:  # a failing variant (e.g. OOM in the O(N^2) reference) is reported
            rows.append(dict(op=op, impl=name, **shape, error=f"{type(exc).__name__}: {exc}"[:200]))
            continue
        base = ms if name == "reference" else base
        row = dict(op=op, impl=name, **shape, ms=ms)
        if nbytes:
            row["GB/s"] = nbytes / ms / 1e6
        if flops:
            row["TFLOP/s"] = flops / ms / 1e9
        row["speedup_vs_ref"] = base / ms if base else None
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict]) -> None:
    cols = ["op", "impl", "B", "H", "N", "D", "Dh", "ms", "GB/s", "pct_peak_bw", "TFLOP/s", "speedup_vs_ref",
            "error"]
    cols = [c for c in cols if any(c in r for r in rows)]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for line in cells:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))


def write_json(path: str, payload: dict) -> None:
    """Atomic write: temp file in the same directory, then os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def environment(device: str) -> dict:
    env = dict(torch=torch.__version__, python=platform.python_version(), device=device,
               cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
        env["gpu"] = name
        env["peak_GBps"] = next((v for k, v in PEAK_GBPS.items() if k in name), None)
    return env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--ops", default="ponet,attention", help="comma list: ponet, attention")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--long", action="store_true", help="add long sequences (N 4K-16K); default on CUDA")
    p.add_argument("--quick", action="store_true", help="two small shapes per op, few repetitions")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--json", default=None, help="write results here (atomically)")
    return p


def main(argv=None) -> int:
    """CLI entry (``vla bench kernels`` forwards its arguments here); returns the exit status."""
    run(argv)
    return 0


def run(argv=None) -> dict:
    """Parse ``argv``, run the benchmark, print the table, write JSON; returns the JSON payload."""
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops) - {"ponet", "attention"})
    if unknown:
        raise ValueError(f"unknown --ops {unknown}; choose from ponet, attention")
    dtype = getattr(torch, args.dtype)
    if device == "cpu" and dtype != torch.float32:
        print(f"note: CPU run uses float32 instead of {args.dtype} (CPU half-precision matmul is not representative)")
        dtype = torch.float32
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick or device == "cpu" else 10)
    args.reps = args.reps if args.reps is not None else (5 if args.quick or device == "cpu" else 50)
    long = (args.long or device == "cuda") and not args.quick
    if device == "cpu":
        print("note: CPU run -- only the torch reference is timed (time.perf_counter, median); "
              "Triton has no CPU backend")
    rows = []
    if "ponet" in ops:
        rows += bench_ponet((QUICK_PONET if args.quick else PONET_POLICY) + (PONET_LONG if long else []),
                            dtype, device, args)
    if "attention" in ops:
        rows += bench_attention((QUICK_ATTN if args.quick else ATTN_POLICY) + (ATTN_LONG if long else []),
                                dtype, device, args)
    env = environment(device)
    if env.get("peak_GBps"):
        for r in rows:
            if "GB/s" in r:
                r["pct_peak_bw"] = 100.0 * r["GB/s"] / env["peak_GBps"]
    print_table(rows)
    payload = dict(env=env, dtype=str(dtype).replace("torch.", ""), warmup=args.warmup, reps=args.reps,
                   timer="cuda events" if device == "cuda" else "time.perf_counter", rows=rows,
                   date=time.strftime("%Y-%m-%d"))
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return payload


if __name__ == "__main__":
    raise SystemExit(main())

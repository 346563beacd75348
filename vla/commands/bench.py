"""`vla bench kernels|policy|serve|sim`: benchmarks (not tests). Each target forwards its arguments to its own main;
`vla bench <target> --help` lists them."""

from __future__ import annotations

import argparse

TARGETS = {
    "kernels": ("kernels.bench", "Triton kernels vs torch reference / SDPA / torch.compile"),
    "policy": ("vla.policy.bench", "in-process policy latency and throughput"),
    "serve": ("vla.serving.bench", "gRPC serving latency and throughput (noop and real model)"),
    "sim": ("sim.bench", "simulator steps/s and expert episodes/min"),
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(TARGETS), description=__doc__)
    p.add_argument("target", choices=sorted(TARGETS), help="; ".join(f"{k}: {v[1]}" for k, v in TARGETS.items()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the target (see `vla bench TARGET --help`)")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib

    module = importlib.import_module(TARGETS[args.target][0])
    return int(module.main(args.args) or 0)

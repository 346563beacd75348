"""`vla serve` argument handling and a short `vla bench serve` run end to end."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from vla.commands import serve
from vla.errors import UserError


def _args(argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("argv,match", [
    (["--checkpoint", "/nonexistent/ckpt"], "not a directory|not available"),
    (["--policy", "noop", "--port", "70000"], "port 70000"),
    (["--policy", "noop", "--tls-cert", "c.pem"], "go together"),
    (["--policy", "noop", "--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"], "/no/c.pem"),
    (["--policy", "noop", "--coop-context", "a=b"], "needs --clip"),
])
def test_serve_refuses_bad_flags(argv, match):
    with pytest.raises(UserError, match=match):
        serve.run(_args(argv))


def test_serve_without_flags_uses_the_default_model(fake_default_model, tmp_path):
    from vla import default_model

    with pytest.raises(UserError, match=f"nothing to serve: no default model is committed in {tmp_path}"):
        serve.run(_args([]))
    folder = fake_default_model()
    args = _args(["--coop-context", "mine=m.safetensors"])
    serve.use_default_model(args)
    assert args.checkpoint == str(folder)
    assert (args.clip, args.clip_weights) == ("vla-small", str(folder / default_model.CLIP_FILE))
    assert args.coop_context == [f"scenes={folder / default_model.CONTEXT_FILE}", "mine=m.safetensors"]


def test_bench_serve_runs(tmp_path):
    from vla.serving import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--policy", "bare,noop", "--configs", "128", "--clients", "1,2", "--modes", "unary,stream",
                       "--duration", "0.3", "--warmup", "0.1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    want = [("unary", 1), ("unary", 2), ("stream", 1), ("stream", 2)]
    assert [(r["policy"], r["mode"], r["clients"]) for r in rows] == [(p, *w) for p in ("bare", "noop") for w in want]
    assert all(r["errors"] == 0 and r["calls"] > 0 and r["p50_ms"] > 0 for r in rows)
    bare = {(r["mode"], r["clients"]): r for r in rows if r["policy"] == "bare"}
    for r in rows[4:]:  # ratios against the bare row of the same mode and clients, from the same run
        b = bare[(r["mode"], r["clients"])]
        assert r["p50_vs_bare"] == pytest.approx(r["p50_ms"] / b["p50_ms"])
        assert r["calls_vs_bare"] == pytest.approx(r["calls_per_s"] / b["calls_per_s"])


def test_bench_median_rounds_and_cpu_split():
    from vla.serving import bench

    def row(p50, calls, errors):
        return {"policy": "noop", "mode": "unary", "clients": 1, "p50_ms": p50, "p99_ms": p50 * 2,
                "calls_per_s": calls, "calls": int(calls), "errors": errors}

    rounds = [[row(1.0, 100, 0)], [row(3.0, 300, 1)], [row(2.0, 50, 0)]]
    (m,) = bench.median_rounds(rounds)
    assert (m["p50_ms"], m["p99_ms"], m["calls_per_s"], m["errors"], m["calls"], m["rounds"]) == (
        2.0, 4.0, 100, 1, 450, 3)
    assert bench.split_cpus(False, 1) == (None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        server, load = bench.split_cpus(True, 1)
        assert server == cpus[:1] and load == cpus[1:]
    with pytest.raises(SystemExit, match="--pin"):
        bench.split_cpus(True, len(cpus))

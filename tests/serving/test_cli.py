"""`vla serve` argument handling and a short `vla bench serve` run end to end."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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
        if sys.platform.startswith("linux"):  # the server's CPU over the window, from /proc (10 ms ticks)
            assert r["server_cpu_us_per_call"] >= 0 and b["server_cpu_us_per_call"] >= 0
            if r["server_cpu_us_per_call"] and b["server_cpu_us_per_call"]:
                assert r["cpu_vs_bare"] == pytest.approx(r["server_cpu_us_per_call"] / b["server_cpu_us_per_call"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_process_cpu_matches_the_process_clock():
    """The /proc reading the benchmark takes of the server, checked on this process against time.process_time."""
    from vla.serving.loadgen import process_cpu_s

    proc0, clock0 = process_cpu_s(os.getpid()), time.process_time()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of CPU
        pass
    spent = process_cpu_s(os.getpid()) - proc0
    assert spent == pytest.approx(time.process_time() - clock0, abs=0.03)  # /proc counts in 10 ms ticks
    assert process_cpu_s(2**22 + 7) is None  # no such process


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


@pytest.mark.slow  # a server and two robot processes: ~10 s on the 2-core machine, a minute when it is busy
def test_bench_serve_fleet_runs(tmp_path):
    """Two robot processes at 20 Hz against the noop server: every tick answered, batch sizes from the server."""
    from vla.serving import bench

    out = tmp_path / "fleet.json"
    assert bench.main(["--fleet", "1,2", "--policy", "noop", "--hz", "20", "--deadline-ms", "2000",
                       "--duration", "0.5", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["robots"] for r in rows] == [1, 2]
    for r in rows:
        assert [p["robot"] for p in r["per_robot"]] == list(range(r["robots"]))
        assert all(p["ticks"] == p["ok"] + p["misses"] and p["ticks"] >= 1 for p in r["per_robot"])
        assert r["ticks"] == sum(p["ticks"] for p in r["per_robot"])
        assert sum(int(k) * v for k, v in r["batch_sizes"].items()) == sum(p["ok"] for p in r["per_robot"])
    assert result["capacity"] == bench_capacity(rows)


def bench_capacity(rows):
    return max((r["robots"] for r in rows if r["miss_rate"] < 0.01), default=0)


def test_fleet_summary_counts_misses_and_skipped_ticks():
    from vla.serving import fleet

    robots = [{"robot": 0, "codes": {"OK": 8, "DEADLINE_EXCEEDED": 1}, "latencies": [0.01] * 8, "skipped": 1},
              {"robot": 1, "codes": {"OK": 10}, "latencies": [0.02] * 10, "skipped": 0}]
    row = fleet.summarise(robots, 1.0, {1: 6, 2: 6})
    assert (row["ticks"], row["misses"], row["miss_rate"]) == (20, 2, 0.1)
    assert row["worst_robot_miss_rate"] == 0.2 and row["per_robot"][1]["miss_rate"] == 0
    assert row["calls_per_s_per_robot"] == 9.0 and row["mean_batch"] == 1.5 and row["max_batch_seen"] == 2
    assert fleet.capacity([{"robots": 2, "miss_rate": 0.0}, {"robots": 4, "miss_rate": 0.009},
                           {"robots": 6, "miss_rate": 0.05}]) == 4

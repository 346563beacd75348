"""`vla serve` argument handling and a short `vla bench serve` run end to end."""

from __future__ import annotations

import argparse
import json

import pytest

from vla.commands import serve
from vla.errors import UserError


def _args(argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("argv,match", [
    (["--checkpoint", "/nonexistent/ckpt"], "not a directory|not available"),
    ([], "nothing to serve"),
    (["--policy", "noop", "--port", "70000"], "port 70000"),
    (["--policy", "noop", "--tls-cert", "c.pem"], "go together"),
    (["--policy", "noop", "--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"], "/no/c.pem"),
    (["--coop-context", "a=b"], "needs --clip"),
])
def test_serve_refuses_bad_flags(argv, match):
    with pytest.raises(UserError, match=match):
        serve.run(_args(argv))


def test_bench_serve_runs(tmp_path):
    from vla.serving import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--policy", "noop", "--configs", "128", "--clients", "1,2", "--modes", "unary,stream",
                       "--duration", "0.3", "--warmup", "0.1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["clients"]) for r in rows] == [("unary", 1), ("unary", 2), ("stream", 1), ("stream", 2)]
    assert all(r["errors"] == 0 and r["calls"] > 0 and r["p50_ms"] > 0 for r in rows)

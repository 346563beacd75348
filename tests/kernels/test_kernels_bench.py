"""The benchmark runs on CPU (reference only) and writes its JSON; no timing assertions."""

from __future__ import annotations

import json

import pytest

from kernels import bench


def test_cpu_benchmark_writes_json(tmp_path, capsys):
    path = tmp_path / "sub" / "bench.json"
    assert bench.main(["--device", "cpu", "--quick", "--ops", "attention", "--reps", "1", "--warmup", "0",
                       "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["timer"] == "time.perf_counter" and data["env"]["device"] == "cpu"
    assert {r["impl"] for r in data["rows"]} == {"reference"}
    assert all(r["ms"] > 0 and r["TFLOP/s"] > 0 for r in data["rows"])
    assert "only the torch reference is timed" in capsys.readouterr().out
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temp file left


def test_bad_options_raise():
    with pytest.raises(ValueError, match="unknown --ops"):
        bench.main(["--device", "cpu", "--ops", "conv"])

"""Graceful shutdown (health NOT_SERVING first, in-flight requests finish), SIGTERM, restart under retries,
the robot control loop example, and the committed stubs being current."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_batching import GatedPolicy, _wait_for

from sim.chunking import ChunkEnsembler, ChunkQueue
from vla.client import RemotePolicy
from vla.serving.server import ServeConfig, ServerThread

ROOT = Path(__file__).resolve().parents[2]


def test_graceful_stop_health_first_inflight_finishes(server_factory):
    policy = GatedPolicy()
    srv = server_factory(policy)
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", timeout=30, retries=0)
    remote.info()
    watch = health_pb2_grpc.HealthStub(remote.channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    result = {}
    inflight = threading.Thread(target=lambda: result.setdefault("a", remote.predict(make_obs(4))))
    inflight.start()
    _wait_for(lambda: len(policy.seen) == 1)
    stopper = threading.Thread(target=srv.stop, args=(20,))
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # before the model is released
    watch.cancel()  # an open stream would hold the server for the whole grace period
    assert inflight.is_alive()
    policy.gate.set()
    inflight.join(30)
    stopper.join(30)
    np.testing.assert_array_equal(result["a"], FakePolicy().predict(batch_of([make_obs(4)]))[0])
    with pytest.raises(grpc.RpcError) as e:
        remote.predict(make_obs(5), timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    remote.close()


def test_client_retries_through_a_restart():
    policy = FakePolicy()
    first = ServerThread(policy, ServeConfig(port=0)).start()
    port = first.port
    remote = RemotePolicy(f"127.0.0.1:{port}", timeout=20, retries=12, backoff_s=0.02)
    obs = make_obs(6)
    want = policy.predict(batch_of([obs]))[0]
    np.testing.assert_array_equal(remote.predict(obs), want)
    first.stop(0)
    second = []
    threading.Timer(0.5, lambda: second.append(ServerThread(policy, ServeConfig(port=port)).start())).start()
    try:
        np.testing.assert_array_equal(remote.predict(obs), want)  # UNAVAILABLE while down, retried
    finally:
        _wait_for(lambda: second)
        second[0].stop(0)
        remote.close()


def test_sigterm_stops_the_process(tmp_path):
    ready = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "vla.commands.serve", "--policy", "noop", "--port", "0",
                             "--ready-file", str(ready), "--noop-image-size", "32"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stderr.read()
        with RemotePolicy(f"127.0.0.1:{int(ready.read_text())}") as remote:
            assert np.all(remote.predict(make_obs(0)) == 0) and remote.info()["chunk_len"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert '"event": "stopped"' in err  # structured log lines
        from vla.serving import allocator

        tuned = allocator.glibc() is not None and not any(k in env for k in allocator.ENV)
        assert (f'"mmap_threshold": {allocator.MMAP_MB << 20}' in err) == tuned, err  # vla serve tunes glibc
    finally:
        if proc.poll() is None:
            proc.kill()


def _robot_client():
    spec = importlib.util.spec_from_file_location("robot_client", ROOT / "scripts" / "robot_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ensemble,server_side", [(False, False), (True, False), (True, True), (False, True)])
def test_robot_control_loop(server_factory, ensemble, server_side):
    rc = _robot_client()
    policy = FakePolicy()
    srv = server_factory(policy)
    with RemotePolicy(f"127.0.0.1:{srv.port}") as remote:
        out = rc.control_loop(remote, rc.FakeRobot(1, 32, seed=1), steps=6, hz=200, instruction="open the drawer",
                              horizon=2, ensemble=ensemble, server_side=server_side)
    robot, runner = rc.FakeRobot(1, 32, seed=1), (ChunkEnsembler(1, 4) if ensemble else ChunkQueue(1, 2, 4))
    for t in range(6):  # the same loop in-process
        obs = robot.observe("open the drawer")
        if runner.needs_chunk()[0]:
            runner.add(policy.predict(batch_of([obs])))
        action = runner.pop()[0]
        robot.act(action)
        np.testing.assert_allclose(out["actions"][t], action, rtol=0, atol=1e-6)


def test_committed_stubs_are_current():
    from vla.serving.protos_build import stale_files

    assert stale_files() == []


def test_no_pickle_on_the_wire():
    sources = [*(ROOT / "vla" / "serving").glob("*.py"), ROOT / "vla" / "client.py"]
    for path in sources:
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path

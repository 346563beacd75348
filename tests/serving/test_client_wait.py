"""The client waits for a restarting server up to `wait_s`, then fails with one clear error; shape mistakes are
named on the client; the README's client snippet runs as written against a test server."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from test_batching import _wait_for

from vla.client import RemotePolicy, ServerUnavailable
from vla.serving.server import ServeConfig, ServerThread

ROOT = Path(__file__).resolve().parents[2]


def test_client_made_before_a_restart_gets_its_answer_within_wait_s():
    policy = FakePolicy()
    first = ServerThread(policy, ServeConfig(port=0)).start()
    port = first.port
    remote = RemotePolicy(f"127.0.0.1:{port}", timeout=5, wait_s=60)
    obs = make_obs(6)
    want = policy.predict(batch_of([obs]))[0]
    np.testing.assert_array_equal(remote.predict(obs), want)
    first.stop(0)
    with pytest.raises(grpc.RpcError):  # the channel has seen the server gone (its reconnect backoff grows)
        RemotePolicy(f"127.0.0.1:{port}", retries=0).predict(obs)
    second = []
    # down for 3 s: with grpc's default reconnect backoff the channel would still be waiting after the restart
    timer = threading.Timer(3.0, lambda: second.append(ServerThread(policy, ServeConfig(port=port)).start()))
    timer.start()
    try:
        np.testing.assert_array_equal(remote.predict(obs), want)  # one call: it waits for the server to return
        assert remote.info()["chunk_len"] == 4
    finally:
        timer.join(30)
        _wait_for(lambda: second)
        second[0].stop(0)
        remote.close()
    assert second[0].metrics.rows == 1


def test_a_session_made_before_a_restart_reopens_its_stream_within_wait_s():
    """The stream dies with the server; the session opens a new one when the server is back and resends the step,
    which starts the episode's server state afresh (step counter back to the first step)."""
    policy = FakePolicy()
    first = ServerThread(policy, ServeConfig(port=0)).start()
    port = first.port
    remote = RemotePolicy(f"127.0.0.1:{port}", timeout=5, wait_s=60)
    obs = make_obs(3)
    want = policy.predict(batch_of([obs]))[0]
    session = remote.session(horizon=0)
    steps = [session.step(obs).step for _ in range(3)]
    first.stop(0)
    second = []
    timer = threading.Timer(2.0, lambda: second.append(ServerThread(policy, ServeConfig(port=port)).start()))
    timer.start()
    try:
        r = session.step(obs)  # waits for the server, on a new stream
        np.testing.assert_array_equal(r.actions, want)
        assert session.reopened >= 1 and r.step == steps[0] and steps == [steps[0] + i for i in range(3)]
        assert session.step(obs).step == steps[1]  # the new stream goes on from there
    finally:
        timer.join(30)
        _wait_for(lambda: second)
        session.close()
        second[0].stop(0)
        remote.close()


def test_a_session_past_wait_s_fails_with_one_clear_error(server_factory):
    srv = server_factory(FakePolicy())
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", timeout=5, wait_s=0.5)
    session = remote.session(horizon=0)
    session.step(make_obs(0))
    srv.stop(0)
    with pytest.raises(ServerUnavailable, match="unavailable: no answer after waiting"):
        session.step(make_obs(0))
    session.close()
    remote.close()


def test_beyond_wait_s_one_clear_error(server_factory):
    srv = server_factory(FakePolicy())
    addr = f"127.0.0.1:{srv.port}"
    remote = RemotePolicy(addr, timeout=5, wait_s=1.0)
    remote.info()
    srv.stop(0)
    t = time.monotonic()
    with pytest.raises(ServerUnavailable) as e:
        remote.predict(make_obs(0))
    assert time.monotonic() - t >= 1.0  # it did wait (a bound from below, not a speed check)
    err = e.value
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.address == addr and err.attempts > 1 and err.last.code() == grpc.StatusCode.UNAVAILABLE
    assert str(err).startswith(f"server {addr} unavailable: no answer after waiting 1.")
    assert "last status UNAVAILABLE: " in str(err)
    remote.close()


def test_retries_zero_fails_at_the_first_unavailable():
    remote = RemotePolicy("127.0.0.1:1", retries=0, wait_s=60)
    with pytest.raises(ServerUnavailable, match=r"127\.0\.0\.1:1 unavailable: .*\(1 attempt\(s\)\)"):
        remote.info()
    remote.close()
    with pytest.raises(ValueError, match="timeout=0"):
        RemotePolicy("127.0.0.1:1", timeout=0)


def test_env_observation_with_an_extra_axis_is_named_on_the_client(server_factory):
    srv = server_factory(FakePolicy())
    obs = make_obs(0)  # rgb (1, 32, 32, 3), depth (1, 32, 32), intrinsics (1, 3, 3), state (4,): one observation
    with RemotePolicy(f"127.0.0.1:{srv.port}") as remote:
        with pytest.raises(ValueError) as e:
            remote.predict({**obs, "rgb": obs["rgb"][None], "depth": obs["depth"][None],
                            "intrinsics": obs["intrinsics"][None]})
        msg = str(e.value)
        assert "rgb (1, 1, 32, 32, 3) reads as a batch of 1 observations" in msg and "state (4,)" in msg
        assert "pass rgb (1, 32, 32, 3) as it is" in msg
        for bad, names in (({"rgb": obs["rgb"][0, :, :, 0]}, "rgb (32, 32)"),
                           ({"rgb": obs["rgb"].astype(np.float32)}, "rgb has dtype float32"),
                           ({"depth": obs["depth"][:, :8]}, "depth should be (1, 32, 32) for rgb (1, 32, 32, 3)"),
                           ({"state": obs["state"][:3]}, "state should be (4,)"),
                           ({"instruction": ["a", "b"]}, "instruction is list")):
            with pytest.raises(ValueError, match=re.escape(names)):
                remote.predict({**obs, **bad})
        np.testing.assert_array_equal(remote.predict(obs), FakePolicy().predict(batch_of([obs]))[0])
        assert srv.metrics.rows == 1  # none of the bad ones reached the server's model


def _readme_client_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Serving over gRPC"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # building the Meta-World environment takes ~15 s on the 2-core machine
def test_readme_client_snippet_runs_as_written(server_factory, capsys):
    policy = FakePolicy(cameras=("corner",), image_size=128, execution={"horizon": 2, "ensemble": False})
    srv = server_factory(policy)  # executed like the default model: its stated horizon
    code = _readme_client_snippet()
    assert '"127.0.0.1:50051"' in code
    exec(compile(code.replace("127.0.0.1:50051", f"127.0.0.1:{srv.port}"), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "4 ['corner']"
    assert srv.metrics.codes["Predict"]["OK"] == 1 and srv.metrics.codes["StreamPredict"]["OK"] == 1


def test_stream_broken_by_a_stop_names_the_address(server_factory):
    srv = server_factory(FakePolicy())
    addr = f"127.0.0.1:{srv.port}"
    with RemotePolicy(addr) as remote:
        with remote.session(horizon=2) as s:
            assert s.step(make_obs(0)).step == 0
            srv.stop(0)
            with pytest.raises(ServerUnavailable, match=f"server {re.escape(addr)} unavailable"):
                s.step(make_obs(1))

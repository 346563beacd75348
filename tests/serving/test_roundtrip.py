"""Every RPC against the same model in-process: identical actions, metadata, health, reflection, metrics."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import batch_of, make_obs, make_policy

from sim.chunking import ChunkEnsembler, ChunkQueue
from vla.client import RemotePolicy, RemoteSimPolicy


@pytest.fixture(scope="module")
def served():
    from vla.serving.server import ServeConfig, ServerThread

    policy = make_policy()
    srv = ServerThread(policy, ServeConfig(port=0)).start()
    remote = RemotePolicy(f"127.0.0.1:{srv.port}")
    yield policy, srv, remote
    remote.close()
    srv.stop(0)


def _obs(policy, seed, **kw):
    meta = policy.metadata()
    return make_obs(seed, size=meta["image_size"][0], cameras=len(meta["cameras"]), state_dim=meta["state_dim"], **kw)


@pytest.mark.parametrize("image_format,depth_format", [("raw", "float32"), ("png", "uint16"), ("raw", "none")])
def test_predict_matches_in_process(served, image_format, depth_format):
    policy, srv, _ = served
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", image_format=image_format,
                          depth_format="uint16" if depth_format == "uint16" else "float32")
    for seed in range(3):
        obs = _obs(policy, seed, depth=depth_format != "none", intrinsics=depth_format != "none")
        if depth_format == "uint16":  # millimetres on the wire: the server sees the rounded depth in metres
            obs["depth"] = np.round(obs["depth"] * 1000).astype(np.float32) / np.float32(1000)
        got, timing = remote.predict(obs, with_timing=True)
        want = policy.predict(batch_of([obs]))[0]
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32 and got.shape == (policy.metadata()["chunk_len"], 4)
        assert timing["batch_size"] == 1 and timing["total_ms"] >= timing["model_ms"] > 0
    remote.close()


def test_batched_adapter_matches_in_process(served):
    policy, srv, _ = served
    obs_list = [_obs(policy, 10 + i) for i in range(5)]
    adapter = RemoteSimPolicy(f"127.0.0.1:{srv.port}")
    from sim.schema import Policy

    assert isinstance(adapter, Policy)
    got = adapter.predict(batch_of(obs_list))  # (B, T, A) through 5 concurrent calls
    want = np.stack([policy.predict(batch_of([o]))[0] for o in obs_list])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    adapter.close()


def test_streaming_sessions_match_local_chunking(served):
    policy, _, remote = served
    obs_seq = [_obs(policy, 100 + t) for t in range(7)]
    chunks = [policy.predict(batch_of([o]))[0] for o in obs_seq]  # (T, A) per step, in-process
    with remote.session() as s:  # plain: a chunk every step, step counter
        for t, o in enumerate(obs_seq):
            r = s.step(o)
            assert r.step == t and r.action is None
            np.testing.assert_array_equal(r.actions, chunks[t])
    with remote.session(horizon=3) as s:
        q = ChunkQueue(1, 3, 4)
        for t, o in enumerate(obs_seq):
            ran = bool(q.needs_chunk()[0])
            if ran:
                q.add(chunks[t][None])
            r = s.step(o)
            assert (r.actions is not None) == ran
            np.testing.assert_array_equal(r.action, q.pop()[0])
    with remote.session(ensemble=True, ensemble_coef=0.5) as s:
        e = ChunkEnsembler(1, 4, 0.5)
        for t, o in enumerate(obs_seq):
            e.add(chunks[t][None])
            np.testing.assert_array_equal(s.step(o).action, e.pop()[0])
        e.reset()  # a new episode on the same stream starts from scratch
        s.reset()
        e.add(chunks[0][None])
        r = s.step(obs_seq[0])
        assert r.step == 0
        np.testing.assert_array_equal(r.action, e.pop()[0])


def test_model_info_health_reflection_metrics(served):
    policy, srv, remote = served
    meta = policy.metadata()
    info = remote.info()
    assert info["cameras"] == list(meta["cameras"]) and info["chunk_len"] == meta["chunk_len"]
    assert info["state_dim"] == meta["state_dim"] and list(info["image_size"]) == list(meta["image_size"])
    assert info["metadata"]["model_version"] == meta["model_version"] and info["max_batch"] == 32
    assert len(info["action_layout"]) == meta["action_dim"]  # one name per action dim

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(remote.channel)
    for name in ("", "vla.v1.PolicyService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="vla.v1.VisionService"))  # not served here
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    refl = reflection_pb2_grpc.ServerReflectionStub(remote.channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"vla.v1.PolicyService", "vla.v1.MetricsService", "grpc.health.v1.Health"} <= names

    before = remote.metrics()
    remote.predict(_obs(policy, 0))
    after = remote.metrics()
    count = {m.method: m.codes["OK"] for m in after.methods}
    # `before` may have no Predict entry yet: under xdist this test can be the module's first on its worker.
    assert count["Predict"] == {m.method: m.codes["OK"] for m in before.methods}.get("Predict", 0) + 1
    assert after.rows == before.rows + 1 and after.queue_capacity == 256


def test_client_round_robins_over_replicas(server_factory, fake_policy):
    from conftest import FakePolicy

    a, b = server_factory(fake_policy), server_factory(FakePolicy())
    client = RemotePolicy(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}")
    obs = make_obs(0)
    first = client.predict(obs)
    for _ in range(11):
        np.testing.assert_array_equal(client.predict(obs), first)
    # Stateless replicas share the unary load (round robin), and answer identically.
    assert a.metrics.rows > 0 and b.metrics.rows > 0 and a.metrics.rows + b.metrics.rows == 12
    client.close()


def test_session_defaults_to_the_models_execution_settings(server_factory):
    """A model evaluated with horizon 3 is executed with horizon 3 by `session()` when the caller names none."""
    from conftest import FakePolicy

    srv = server_factory(FakePolicy(execution={"horizon": 3, "ensemble": False}))
    remote = RemotePolicy(f"127.0.0.1:{srv.port}")
    try:
        obs_seq = [make_obs(200 + t) for t in range(5)]
        with remote.session() as s:
            ran = [s.step(o).actions is not None for o in obs_seq]
        assert ran == [True, False, False, True, False]
        with remote.session(horizon=0) as s:  # explicit: the whole chunk every step
            assert all(s.step(o).actions is not None and s.step(o).action is None for o in obs_seq[:2])
    finally:
        remote.close()

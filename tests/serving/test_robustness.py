"""Failure isolation and bounds: one bad row fails alone, model-thread crashes, streaming reset keeps settings,
concurrent-RPC and pixel limits, cancelled vs expired counters, vision deadlines."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_batching import _wait_for

from sim.chunking import ChunkQueue
from vla._proto.v1 import metrics_pb2, metrics_pb2_grpc, policy_pb2, policy_pb2_grpc, vision_pb2, vision_pb2_grpc
from vla.client import observation_message
from vla.errors import UserError
from vla.serving.codec import encode_image


class Boom(BaseException):
    """Not an Exception: escapes `except Exception`."""


class TrapPolicy(FakePolicy):
    """Waits for `gate`; refuses batches holding "BAD" (UserError), raises Boom for "boom", SystemExit for "exit".
    `attempts` lists the batch size of every forward pass tried."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.attempts: list[int] = []

    def predict(self, obs):
        self.attempts.append(len(obs["instruction"]))
        assert self.gate.wait(30)
        if any("BAD" in s for s in obs["instruction"]):
            raise UserError("prompt too long for the text tower")
        if "boom" in obs["instruction"]:
            raise Boom("model blew up")
        if "exit" in obs["instruction"]:
            raise SystemExit(3)
        return super().predict(obs)


def _req(obs):
    return policy_pb2.PredictRequest(observation=observation_message(obs, ["corner"]))


@pytest.fixture
def stubs(server_factory):
    """start(policy, **cfg) -> (server, policy stub, channel)."""
    channels = []

    def start(policy, **cfg):
        srv = server_factory(policy, **cfg)
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        channels.append(ch)
        return srv, policy_pb2_grpc.PolicyServiceStub(ch), ch

    yield start
    for ch in channels:
        ch.close()


def _queue(srv, policy, stub, obs_list):
    """One request blocks in the model, then `obs_list` are queued behind it; returns all futures."""
    policy.gate.clear()
    first = stub.Predict.future(_req(make_obs(100)), timeout=30)
    _wait_for(lambda: len(policy.attempts) == 1)
    futures = [stub.Predict.future(_req(o), timeout=30) for o in obs_list]
    _wait_for(lambda: srv.metrics.queue_depth() == len(obs_list))
    policy.gate.set()
    return first, futures


def test_one_bad_instruction_fails_only_its_request(stubs):
    policy = TrapPolicy()
    srv, stub, _ = stubs(policy, max_batch=8)
    obs = [make_obs(i) for i in range(5)]
    obs[2]["instruction"] = "BAD " + "word " * 40
    first, futures = _queue(srv, policy, stub, obs)
    first.result()
    futures[0].exception()  # the queued five are answered (their batch ran) before the model's attempts are read
    assert policy.attempts[:2] == [1, 5]  # the batch of five was tried, then rerun row by row
    ref = FakePolicy()
    for i, f in enumerate(futures):
        if i == 2:
            with pytest.raises(grpc.RpcError) as e:
                f.result()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "prompt too long for the text tower" in e.value.details()
        else:
            got = np.frombuffer(f.result().actions.data, np.float32).reshape(4, 4)
            np.testing.assert_allclose(got, ref.predict(batch_of([obs[i]]))[0], rtol=0, atol=1e-6)


def test_check_instruction_refuses_before_the_model(stubs):
    policy = TrapPolicy()

    def check_instruction(text):
        if len(text.split()) > 8:
            raise UserError(f"instruction of {len(text.split())} words does not fit the text tower (8 max)")

    policy.check_instruction = check_instruction
    _, stub, _ = stubs(policy)
    obs = make_obs(0)
    obs["instruction"] = "one two three four five six seven eight nine"
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_req(obs), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "observation.instruction: instruction of 9 words does not fit the text tower (8 max)"
    assert policy.attempts == []
    stub.Predict(_req(make_obs(1)), timeout=30)  # a short one still works
    assert policy.attempts == [1]


def test_base_exception_is_internal_and_the_model_thread_survives(stubs):
    policy = TrapPolicy()
    _, stub, _ = stubs(policy)
    obs = make_obs(0)
    obs["instruction"] = "boom"
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_req(obs), timeout=30)
    assert e.value.code() == grpc.StatusCode.INTERNAL and "Boom" in e.value.details()
    got = np.frombuffer(stub.Predict(_req(make_obs(1)), timeout=30).actions.data, np.float32)
    np.testing.assert_allclose(got, FakePolicy().predict(batch_of([make_obs(1)]))[0].ravel(), rtol=0, atol=1e-6)


def test_system_exit_stops_serving_and_answers_queued_unavailable(stubs):
    policy = TrapPolicy()
    srv, stub, ch = stubs(policy)
    policy.gate.clear()
    bomb = make_obs(0)
    bomb["instruction"] = "exit"
    first = stub.Predict.future(_req(bomb), timeout=30)
    _wait_for(lambda: len(policy.attempts) == 1)
    queued = [stub.Predict.future(_req(make_obs(i)), timeout=30) for i in (1, 2)]
    _wait_for(lambda: srv.metrics.queue_depth() == 2)
    policy.gate.set()
    for f in [first, *queued]:
        with pytest.raises(grpc.RpcError) as e:
            f.result()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "SystemExit" in e.value.details()
    assert policy.attempts == [1]  # the queued ones never reached the model
    health = health_pb2_grpc.HealthStub(ch)
    _wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
              == health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_req(make_obs(3)), timeout=30)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_reset_without_session_keeps_horizon(stubs):
    policy = FakePolicy()
    _, stub, _ = stubs(policy)
    obs = [make_obs(i) for i in range(6)]
    reqs = [_req(o) for o in obs]
    reqs[0].session.horizon = 3
    reqs[2].reset = True  # no session message: horizon 3 must stay
    replies = list(stub.StreamPredict(iter(reqs), timeout=30))
    runner = ChunkQueue(1, 3, 4)
    for i, (o, r) in enumerate(zip(obs, replies)):
        if i == 2:
            runner = ChunkQueue(1, 3, 4)
        fresh = bool(runner.needs_chunk()[0])
        if fresh:
            runner.add(policy.predict(batch_of([o])))
        assert r.HasField("actions") == fresh and r.step == [0, 1, 0, 1, 2, 3][i]
        got = np.frombuffer(r.action.data, np.float32)
        np.testing.assert_allclose(got, runner.pop()[0], rtol=0, atol=1e-6)


def test_max_concurrent_rpcs_refuses_the_excess(stubs):
    policy = TrapPolicy()
    policy.gate.clear()
    _, stub, _ = stubs(policy, max_concurrent_rpcs=1)
    first = stub.Predict.future(_req(make_obs(0)), timeout=30)
    _wait_for(lambda: len(policy.attempts) == 1)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_req(make_obs(1)), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    policy.gate.set()
    assert first.result().actions.shape == [4, 4]


def test_max_concurrent_rpcs_default_and_check():
    from vla.serving.server import ServeConfig

    assert ServeConfig(max_queue=10).max_concurrent_rpcs == 74
    with pytest.raises(ValueError, match="max_concurrent_rpcs=0"):
        ServeConfig(max_concurrent_rpcs=0)


def test_cancelled_and_expired_are_counted_apart(stubs):
    policy = TrapPolicy()
    srv, stub, ch = stubs(policy)
    policy.gate.clear()
    first = stub.Predict.future(_req(make_obs(0)), timeout=30)
    _wait_for(lambda: len(policy.attempts) == 1)
    gone = stub.Predict.future(_req(make_obs(1)), timeout=30)
    _wait_for(lambda: srv.metrics.queue_depth() == 1)
    gone.cancel()
    _wait_for(lambda: srv.metrics.codes["Predict"]["CANCELLED"] == 1)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_req(make_obs(2)), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)  # the server's deadline (taken on receipt) passes too before the model thread frees up
    policy.gate.set()
    first.result()
    stub.Predict(_req(make_obs(3)), timeout=30)
    m = metrics_pb2_grpc.MetricsServiceStub(ch).GetMetrics(metrics_pb2.MetricsRequest(), timeout=10)
    assert (m.dropped_cancelled, m.dropped_expired, m.rows) == (1, 1, 2)


class GatedVision:
    """A stand-in VisionModel: uniform probabilities, after `gate`; `calls` counts forward passes."""

    contexts: dict = {}

    def __init__(self):
        self.gate, self.calls = threading.Event(), 0

    def classify(self, images, names, templates, context_id):
        self.calls += 1
        assert self.gate.wait(30)
        return np.full((len(images), len(names)), 1 / len(names), np.float32), list(names)


def test_vision_request_past_its_deadline_is_not_run(server_factory):
    model = GatedVision()
    srv = server_factory(None, vision=model)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = vision_pb2_grpc.VisionServiceStub(ch)
        req = vision_pb2.ClassifyRequest(images=[encode_image(np.zeros((8, 8, 3), np.uint8))], class_names=["a", "b"])
        first = stub.Classify.future(req, timeout=30)
        _wait_for(lambda: model.calls == 1)
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(req, timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server's copy of the deadline was taken on receipt, a little after the client's: let it pass too
        # before the vision thread frees up (otherwise the queued request may still be in time when it starts).
        time.sleep(0.3)
        model.gate.set()
        np.testing.assert_allclose(first.result().top[0].probabilities, [0.5, 0.5])
        stub.Classify(req, timeout=30)
    assert model.calls == 2  # the expired one never ran


def test_vision_request_pixel_budget(monkeypatch):
    from vla.serving import vision_service
    from vla.serving.codec import FieldError
    from vla.serving.metrics import Metrics

    monkeypatch.setattr(vision_service, "MAX_REQUEST_PIXELS", 1000)
    servicer = vision_service.VisionServicer(GatedVision(), Metrics())
    try:
        imgs = [encode_image(np.full((20, 20, 3), i, np.uint8), fmt) for i, fmt in enumerate(["raw", "png"])]
        got = servicer._images(imgs, "images", True)  # 800 pixels: within budget
        assert [int(g[0, 0, 0]) for g in got] == [0, 1]
        for fmt in ("raw", "png"):
            with pytest.raises(FieldError) as e:
                servicer._images([*imgs, encode_image(np.zeros((20, 20, 3), np.uint8), fmt)], "images", True)
            assert e.value.field.startswith("images[2]") and "request limit 1000 pixels, 800 used" in str(e.value)
    finally:
        servicer.close()

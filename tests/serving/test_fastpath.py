"""The fast paths keep the safety properties: the inline (noop) batcher still validates, honours deadlines and
refuses work while closing; the model-thread batcher reports a failing model to every caller and keeps serving;
small-tensor finiteness checks agree with numpy; the bare baseline answers its fixed bytes."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from test_batching import _wait_for

from vla._proto.v1 import policy_pb2
from vla.client import RemotePolicy, observation_message
from vla.serving.codec import FieldError, from_tensor, to_tensor


def test_inline_batcher_same_answers_deadline_and_close():
    from vla.serving.batcher import DynamicBatcher, Expired, Overloaded

    policy = FakePolicy()

    async def main():
        b = DynamicBatcher(policy.predict, inline=True)
        b.start()
        res = await b.submit(make_obs(3))
        with pytest.raises(Expired):
            await b.submit(make_obs(4), deadline=time.perf_counter() - 1)
        await b.close()
        with pytest.raises(Overloaded):
            await b.submit(make_obs(5))
        return res, b.metrics

    res, metrics = asyncio.run(main())
    np.testing.assert_array_equal(res.actions, policy.predict(batch_of([make_obs(3)]))[0])
    assert res.batch_size == 1 and metrics.dropped_expired == 1 and policy.calls[0] == 1


def test_collate_copies_unless_asked_not_to():
    from vla.serving.batcher import collate

    obs = make_obs(0)
    ro = {k: v.copy() for k, v in obs.items() if k != "instruction"}
    for v in ro.values():
        v.flags.writeable = False
    ro["instruction"] = obs["instruction"]
    one = collate([ro])
    assert all(one[k].flags.writeable and one[k].shape == (1, *ro[k].shape) for k in ("rgb", "depth", "state"))
    np.testing.assert_array_equal(one["rgb"][0], ro["rgb"])
    view = collate([ro], copy=False)
    assert np.shares_memory(view["rgb"], ro["rgb"]) and not view["rgb"].flags.writeable
    two = collate([ro, make_obs(1)])
    np.testing.assert_array_equal(two["depth"], np.stack([ro["depth"], make_obs(1)["depth"]]))


@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, math.nan], [math.inf, 0.0], [-math.inf] * 9, [0.0] * 200,
                                    [0.0] * 199 + [math.nan]])
def test_small_and_large_finite_checks_agree_with_numpy(values):
    arr = np.array(values, np.float32)
    if np.isfinite(arr).all():
        np.testing.assert_array_equal(from_tensor(to_tensor(arr), "x", finite=True), arr)
    else:
        with pytest.raises(FieldError, match="NaN or infinity"):
            from_tensor(to_tensor(arr), "x", finite=True)


def test_noop_server_inline_path_validates_and_answers(server_factory):
    from vla.serving.noop import NoopPolicy

    srv = server_factory(NoopPolicy(image_size=32))
    assert srv.server.batcher.inline
    remote = RemotePolicy(f"127.0.0.1:{srv.port}")
    np.testing.assert_array_equal(remote.predict(make_obs(0)), np.zeros((4, 4), np.float32))
    bad = make_obs(1)
    bad["depth"] = bad["depth"].copy()
    bad["depth"][0, 3, 3] = -0.5
    with pytest.raises(grpc.RpcError) as e:
        remote.predict(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cameras[0].depth" in e.value.details()
    with remote.session(horizon=2) as s:
        steps = [s.step(make_obs(i)) for i in range(3)]
    assert [st.step for st in steps] == [0, 1, 2] and [st.actions is not None for st in steps] == [True, False, True]
    assert remote.metrics().batch_sizes[1] >= 3
    remote.close()


class FailingPolicy(FakePolicy):
    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.attempts: list[int] = []  # batch size of every forward pass, failed ones included

    def predict(self, obs):
        self.attempts.append(len(obs["instruction"]))
        assert self.gate.wait(30)
        if any("boom" in s for s in obs["instruction"]):
            raise RuntimeError("model exploded")
        return super().predict(obs)


def test_model_failure_reaches_every_caller_of_the_batch(server_factory):
    policy = FailingPolicy()
    srv = server_factory(policy, max_batch=8)
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", timeout=30)
    remote.info()
    first = remote._policy.Predict.future(policy_pb2.PredictRequest(
        observation=observation_message(make_obs(0), ["corner"])), timeout=30)  # blocks the model thread
    _wait_for(lambda: policy.attempts == [1])
    booms = []
    for i in range(3):
        obs = make_obs(i + 1)
        obs["instruction"] = f"boom {i}"
        booms.append(remote._policy.Predict.future(policy_pb2.PredictRequest(
            observation=observation_message(obs, ["corner"])), timeout=30))
    _wait_for(lambda: srv.metrics.queue_depth() == 3)
    policy.gate.set()
    assert first.result().actions.shape == [4, 4]
    for f in booms:
        with pytest.raises(grpc.RpcError) as e:
            f.result()
        assert e.value.code() == grpc.StatusCode.INTERNAL and "model exploded" in e.value.details()
    assert policy.attempts[:2] == [1, 3]  # the three failed together, in one forward pass
    assert remote.predict(make_obs(9)).shape == (4, 4)  # still serving
    remote.close()


def test_bare_baseline_answers_fixed_reply():
    from vla.serving.bare import serve
    from vla.serving.bench import noop_reply

    reply = noop_reply()
    request = policy_pb2.PredictRequest(observation=observation_message(make_obs(0), ["corner"]))

    async def main():
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            ready = Path(d) / "port"
            stop = asyncio.Event()
            task = asyncio.ensure_future(serve(reply, 0, str(ready), stop=stop))
            while not ready.exists():
                await asyncio.sleep(0.01)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{int(ready.read_text())}") as ch:
                unary = await ch.unary_unary("/vla.v1.PolicyService/Predict")(request.SerializeToString())
                call = ch.stream_stream("/vla.v1.PolicyService/StreamPredict")()
                await call.write(b"anything")
                streamed = await call.read()
                await call.done_writing()
            stop.set()
            await task
            return unary, streamed

    unary, streamed = asyncio.run(main())
    assert unary == streamed == reply
    got = policy_pb2.PredictResponse.FromString(reply)
    np.testing.assert_array_equal(from_tensor(got.actions, "actions"), np.zeros((4, 4), np.float32))


def test_pinned_multiprocess_load_generator():
    import os

    from vla.serving import bench
    from vla.serving.loadgen import LoadGenerator

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, load_cpus = bench.split_cpus(len(cpus) > 1, 1)
    server = bench.ServerProcess("bare", 32, 1, 8, 1, server_cpus)
    load = LoadGenerator(2, load_cpus)
    try:
        request = policy_pb2.PredictRequest(observation=observation_message(make_obs(0), ["corner"]))
        r = load.run(f"127.0.0.1:{server.port}", request.SerializeToString(), "stream", 3, 0.2, 0.5)
    finally:
        load.close()
        server.close()
    assert r["clients"] == 3 and r["errors"] == 0 and r["calls"] > 0 and r["p50_ms"] > 0

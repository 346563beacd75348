"""Dynamic batching gives the same answers as sequential calls; overload and deadlines are refused in time."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs

from vla._proto.v1 import policy_pb2
from vla.client import RemotePolicy, observation_message


class GatedPolicy(FakePolicy):
    """Forward passes wait for `gate`; `seen` lists every instruction that reached the model."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.seen: list[str] = []

    def predict(self, obs):
        self.seen.extend(obs["instruction"])
        assert self.gate.wait(30)
        return super().predict(obs)


def _wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_concurrent_clients_batched_same_answers(server_factory):
    policy = FakePolicy()
    srv = server_factory(policy, max_batch=16, max_wait_ms=300)
    obs = [make_obs(i, size=32 if i % 4 else 40) for i in range(16)]  # two image sizes: two layouts
    want = [policy.predict(batch_of([o]))[0] for o in obs]  # sequential, in-process
    policy.calls.clear()
    remotes = [RemotePolicy(f"127.0.0.1:{srv.port}") for _ in range(16)]
    for r in remotes:
        r.info()
    got: list = [None] * 16
    barrier = threading.Barrier(16)

    def client(i):
        barrier.wait()
        got[i] = remotes[i].predict(obs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(16):
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-6)
    sizes = dict(remotes[0].metrics().batch_sizes)
    assert sum(k * v for k, v in sizes.items()) == 16 and max(sizes) > 1, sizes
    assert sum(policy.calls) == 16 and len(policy.calls) < 16
    for r in remotes:
        r.close()


def test_overload_is_refused_at_once(server_factory):
    policy = GatedPolicy()
    srv = server_factory(policy, max_batch=1, max_queue=2)
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", timeout=30)
    remote.info()
    futures = []
    for i in range(3):  # one in the model (blocked), two queued
        obs = make_obs(i)
        req = policy_pb2.PredictRequest(observation=observation_message(obs, ["corner"]))
        futures.append(remote._policy.Predict.future(req, timeout=30))
        _wait_for(lambda i=i: len(policy.seen) == 1 and srv.metrics.queue_depth() == i)
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:  # the same client (connection) as the queued two
        remote._policy.Predict(policy_pb2.PredictRequest(observation=observation_message(make_obs(9), ["corner"])),
                               timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - t < 5
    policy.gate.set()
    assert all(f.result().actions.shape == [4, 4] for f in futures)
    assert remote.metrics().rejected_overload == 1
    remote.close()


def test_deadline_expired_requests_never_reach_the_model(server_factory):
    policy = GatedPolicy()
    srv = server_factory(policy, max_batch=4)
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", timeout=30)
    remote.info()
    blocker = threading.Thread(target=remote.predict, args=(make_obs(0),))
    blocker.start()
    _wait_for(lambda: len(policy.seen) == 1)
    late = make_obs(1)
    late["instruction"] = "too late"
    with pytest.raises(grpc.RpcError) as e:
        remote.predict(late, timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)  # the server's deadline (taken on receipt) passes too before the model thread frees up
    policy.gate.set()
    blocker.join(30)
    remote.predict(make_obs(2))  # the batcher moves on
    assert "too late" not in policy.seen
    assert remote.metrics().dropped_expired == 1
    remote.close()


def test_batcher_expires_queued_deadline_itself():
    """Server-side check (no client cancellation involved): an item past its deadline is answered Expired."""
    import asyncio

    from vla.serving.batcher import DynamicBatcher, Expired

    policy = FakePolicy()

    async def main():
        b = DynamicBatcher(policy.predict, max_batch=4)
        b.start()
        ok = asyncio.ensure_future(b.submit(make_obs(0)))
        late = asyncio.ensure_future(b.submit(make_obs(1), deadline=time.perf_counter() - 1))
        res = await ok
        with pytest.raises(Expired):
            await late
        await b.close()
        return res

    res = asyncio.run(main())
    np.testing.assert_array_equal(res.actions, policy.predict(batch_of([make_obs(0)]))[0])
    assert policy.calls[-1] == 1

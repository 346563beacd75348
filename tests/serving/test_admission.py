"""Admission counts live requests only (expired and cancelled entries never hold a place), requests past their
deadline are DEADLINE_EXCEEDED and never RESOURCE_EXHAUSTED, batches are filled round robin across clients, one
client flooding the server does not keep a steady one out, and requests expired before they are read are
answered quietly and counted."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from test_batching import GatedPolicy, _wait_for

from vla._proto.v1 import policy_pb2, policy_pb2_grpc
from vla.client import RemotePolicy, observation_message
from vla.serving.batcher import DynamicBatcher, Expired, Overloaded, _Item


def _req(seed: int, instruction: str | None = None) -> policy_pb2.PredictRequest:
    obs = make_obs(seed)
    if instruction:
        obs["instruction"] = instruction
    return policy_pb2.PredictRequest(observation=observation_message(obs, ["corner"]))


def _code(future) -> grpc.StatusCode:
    try:
        future.result()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK



async def _busy_batcher(policy, client: str | None = None, **kwargs):
    """A started DynamicBatcher whose model thread is held in `policy` by one request (returned as `first`)."""
    b = DynamicBatcher(policy.predict, **kwargs)
    b.start()
    first = asyncio.ensure_future(b.submit(make_obs(0), **({"client": client} if client else {})))
    while not policy.seen:
        await asyncio.sleep(0.005)
    return b, first

def test_queue_full_of_dead_entries_admits_a_live_request(server_factory):
    """Q=4 entries whose callers gave up (client deadline) must not refuse the next live call."""
    policy = GatedPolicy()
    srv = server_factory(policy, max_batch=1, max_queue=4)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        blocker = stub.Predict.future(_req(0), timeout=30)
        _wait_for(lambda: len(policy.seen) == 1)
        for wave in range(3):  # each wave fills the queue with requests that then expire in it
            short = [stub.Predict.future(_req(10 * wave + i, "dies queued"), timeout=0.2) for i in range(4)]
            assert [_code(f) for f in short] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4
        _wait_for(lambda: srv.metrics.queue_depth() == 0)  # dead entries are not counted as queued
        live = stub.Predict.future(_req(99, "live"), timeout=30)
        _wait_for(lambda: srv.metrics.queue_depth() == 1)
        policy.gate.set()
        assert blocker.result().actions.shape == [4, 4]
        assert live.result().actions.shape == [4, 4]
        m = srv.metrics
        assert m.rejected_overload == 0 and m.codes["Predict"]["RESOURCE_EXHAUSTED"] == 0
        assert "dies queued" not in policy.seen and m.rows == 2


def test_expired_entries_are_answered_deadline_exceeded_when_found():
    """Server-side deadlines (no client cancellation): a full queue of expired entries is pruned on the next
    submit; those get Expired at once, the live request is admitted, nothing is Overloaded."""
    policy = GatedPolicy()

    async def main():
        b, first = await _busy_batcher(policy, max_batch=1, max_queue=2)
        soon = time.perf_counter() + 0.05
        late = [asyncio.ensure_future(b.submit(make_obs(i), deadline=soon)) for i in (1, 2)]
        await asyncio.sleep(0.1)  # both expire in the queue (the model is still blocked)
        assert b.depth() == 0
        with pytest.raises(Expired):  # already past its deadline on arrival: Expired, not Overloaded
            await b.submit(make_obs(3), deadline=time.perf_counter() - 1)
        live = asyncio.ensure_future(b.submit(make_obs(4)))
        await asyncio.sleep(0)
        results = await asyncio.gather(*late, return_exceptions=True)  # answered by the prune, model still blocked
        assert [type(r) for r in results] == [Expired, Expired] and not first.done()
        policy.gate.set()
        out = await live
        await first
        await b.close()
        return out, b.metrics

    out, metrics = asyncio.run(main())
    np.testing.assert_array_equal(out.actions, FakePolicy().predict(batch_of([make_obs(4)]))[0])
    assert (metrics.dropped_expired, metrics.rejected_overload, metrics.rows) == (3, 0, 2)


def test_live_requests_still_fill_the_queue():
    """Pruning frees only dead places: Q live requests of one client refuse the next at once."""
    policy = GatedPolicy()

    async def main():
        b, first = await _busy_batcher(policy, client="a", max_batch=1, max_queue=2)
        queued = [asyncio.ensure_future(b.submit(make_obs(i), client="a")) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="request queue full"):
            await b.submit(make_obs(3), client="a")
        policy.gate.set()
        await asyncio.gather(first, *queued)
        await b.close()
        return b.metrics

    assert asyncio.run(main()).rejected_overload == 1


def test_batches_are_filled_round_robin_across_clients():
    policy = GatedPolicy()

    async def main():
        b, first = await _busy_batcher(policy, client="x", max_batch=4, max_queue=16)
        jobs = []
        for client, n in (("a", 6), ("b", 2), ("c", 1)):
            for i in range(n):
                obs = make_obs(i)
                obs["instruction"] = f"{client}{i}"
                jobs.append(asyncio.ensure_future(b.submit(obs, client=client)))
        await asyncio.sleep(0)
        policy.gate.set()
        await asyncio.gather(first, *jobs)
        await b.close()

    asyncio.run(main())
    batches = policy.calls[1:]
    assert batches == [4, 4, 1]
    seen = policy.seen[1:]
    assert seen[:4] == ["a0", "b0", "c0", "a1"]  # one per client per round
    assert seen[4:8] == ["b1", "a2", "a3", "a4"]  # b was served longest ago, then a's rest
    assert seen[8:] == ["a5"]


def test_full_queue_pushes_out_the_flooders_newest():
    policy = GatedPolicy()

    async def main():
        b, first = await _busy_batcher(policy, client="flood", max_batch=1, max_queue=3)
        flood = [asyncio.ensure_future(b.submit(make_obs(i), client="flood")) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        steady = asyncio.ensure_future(b.submit(make_obs(9), client="steady"))
        with pytest.raises(Overloaded, match="pushed out"):  # the newest flood request, while the model is blocked
            await flood[2]
        assert not first.done()
        policy.gate.set()
        await asyncio.gather(first, steady, *flood[:2])
        await b.close()
        return b.metrics

    metrics = asyncio.run(main())
    assert metrics.rejected_overload == 1 and metrics.rows == 4


def test_per_client_limit_refuses_at_once():
    policy = GatedPolicy()

    async def main():
        b, first = await _busy_batcher(policy, client="a", max_batch=1, max_queue=10, max_queue_per_client=2)
        mine = [asyncio.ensure_future(b.submit(make_obs(i), client="a")) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="client 'a' has 2 requests queued"):
            await b.submit(make_obs(3), client="a")
        other = asyncio.ensure_future(b.submit(make_obs(4), client="b"))
        policy.gate.set()
        await asyncio.gather(first, other, *mine)
        await b.close()

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_queue_per_client=0"):
        DynamicBatcher(FakePolicy().predict, max_queue_per_client=0)


def test_steady_client_is_served_while_another_floods(server_factory):
    """One client keeps 16 calls in flight against a queue of 8 (one request per forward pass); another calls
    one at a time. Every steady call succeeds; the flooder gets the refusals; per-client metrics show both."""
    srv = server_factory(FakePolicy(delay_s=0.01), max_batch=1, max_queue=8)
    addr = f"127.0.0.1:{srv.port}"
    flooder = RemotePolicy(addr, client_id="flooder", retries=0)
    steady = RemotePolicy(addr, client_id="steady", retries=0)
    flooder.info(), steady.info()
    stop = threading.Event()
    flood_codes: list[str] = []

    def flood(i):
        while not stop.is_set():
            try:
                flooder.predict(make_obs(i), timeout=30)
                flood_codes.append("OK")
            except grpc.RpcError as e:
                flood_codes.append(e.code().name)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: "RESOURCE_EXHAUSTED" in flood_codes, timeout=30)  # the queue is full now
        got = [steady.predict(make_obs(100 + i), timeout=30) for i in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    want = FakePolicy().predict(batch_of([make_obs(100 + i) for i in range(10)]))
    np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-6)
    clients = {c.client: c for c in steady.metrics().clients}
    assert (clients["steady"].calls, clients["steady"].ok, clients["steady"].refused) == (10, 10, 0)
    assert clients["flooder"].refused == flood_codes.count("RESOURCE_EXHAUSTED") > 0
    assert clients["flooder"].ok == flood_codes.count("OK")
    flooder.close(), steady.close()


def test_per_client_metrics_count_deadline_misses(server_factory):
    policy = GatedPolicy()
    srv = server_factory(policy, max_batch=1)
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", client_id="robot-7", retries=0)
    remote.info()
    blocker = threading.Thread(target=remote.predict, args=(make_obs(0),), kwargs={"timeout": 30})
    blocker.start()
    _wait_for(lambda: len(policy.seen) == 1)
    with pytest.raises(grpc.RpcError) as e:
        remote.predict(make_obs(1), timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    policy.gate.set()
    blocker.join(30)
    _wait_for(lambda: srv.metrics.clients["robot-7"]["calls"] == 2)  # the server records after the client gave up
    (c,) = [c for c in remote.metrics().clients if c.client == "robot-7"]
    assert (c.calls, c.ok, c.deadline_missed, c.refused, c.queued) == (2, 1, 1, 0, 0)
    remote.close()


class _GoneContext:
    """A servicer context whose RPC grpc's core has already finished: abort fails like ExecuteBatchError."""

    def __init__(self, remaining: float):
        self.remaining, self.aborts = remaining, 0

    def time_remaining(self):
        return self.remaining

    def invocation_metadata(self):
        return (("vla-client", "late"),)

    def peer(self):
        return "ipv4:127.0.0.1:1"

    async def abort(self, code, details):
        self.aborts += 1
        raise RuntimeError("Failed \"execute_batch\": (<grpc._cython.cygrpc.SendStatusFromServerOperation>,)")


class _OpenContext(_GoneContext):
    async def abort(self, code, details):
        self.aborts += 1
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def test_request_expired_before_it_is_read_is_quiet_and_counted(server_factory, caplog):
    from vla.serving.metrics import Metrics
    from vla.serving.policy_service import PolicyServicer
    from vla.serving.validation import ObservationSpec

    policy = FakePolicy()
    metrics = Metrics()
    servicer = PolicyServicer(policy, DynamicBatcher(policy.predict, metrics=metrics), metrics,
                              ObservationSpec.from_metadata(policy.metadata()), None, 32)
    caplog.set_level(logging.DEBUG, logger="vla.serving")

    async def call(ctx):
        return await servicer.Predict(_req(0), ctx)

    open_ctx = _OpenContext(-0.001)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(call(open_ctx))
    assert open_ctx.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert open_ctx.details == "deadline passed before the request was read"
    gone = _GoneContext(-0.001)  # grpc already answered DEADLINE_EXCEEDED itself
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call(gone))
    assert gone.aborts == 1
    assert metrics.expired_unread == 2 and metrics.codes["Predict"]["DEADLINE_EXCEEDED"] == 2
    assert metrics.clients["late"]["deadline_missed"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert policy.calls == []


@pytest.mark.parametrize("remaining, code", [(-0.01, "DEADLINE_EXCEEDED"), (0.1, "DEADLINE_EXCEEDED"),
                                             (0.3, "CANCELLED"), (5.0, "CANCELLED"), (None, "CANCELLED")])
def test_a_cancel_at_the_deadline_counts_as_a_deadline_miss(remaining, code):
    """The client's deadline fires before the server's copy (which includes the transit): a cancel that close to
    the deadline is the deadline, not a client that gave up."""
    from vla.serving.rpc import DEADLINE_SLACK_S, cancelled_code

    assert DEADLINE_SLACK_S == 0.25
    assert cancelled_code(_GoneContext(remaining)) == code


class _LoopBlockingPolicy(FakePolicy):
    """Runs on the event loop (`serve_inline`) and holds it until `release` is set: grpc's core ends an RPC (deadline
    or client gone) while the handler cannot notice, and the handler answers afterwards."""

    serve_inline = True

    def __init__(self, hold_s: float = 30.0):
        super().__init__()
        self.entered, self.release, self.hold_s = threading.Event(), threading.Event(), hold_s

    def predict(self, obs):
        self.entered.set()
        self.release.wait(self.hold_s)
        return super().predict(obs)


def _grpc_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("grpc") and r.levelno >= logging.ERROR]


def test_an_answer_after_the_deadline_counts_as_a_deadline_miss(server_factory, caplog):
    """The deadline passes while the request runs: the caller has DEADLINE_EXCEEDED, and so do the server's
    metrics (method and client), not OK; the late answer is dropped quietly."""
    policy = _LoopBlockingPolicy(hold_s=0.6)
    srv = server_factory(policy)
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(_req(0), timeout=0.2, metadata=(("vla-client", "slow"),))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: srv.metrics.codes["Predict"].total() == 1)
        stub.Predict(_req(1), timeout=30)  # the loop is free again; the server still answers
    assert srv.metrics.codes["Predict"] == {"DEADLINE_EXCEEDED": 1, "OK": 1}
    assert srv.metrics.clients["slow"]["deadline_missed"] == 1
    assert _grpc_errors(caplog) == []


def test_grpcs_own_traceback_for_an_ended_rpc_is_counted_not_logged(caplog):
    """grpc logs "ExecuteBatchError raised in core by servicer method [M]" with a traceback (logger.exception on
    grpc._cython.cygrpc; seen in `vla bench serve --fleet 32 --max-batch 1`) when its core had ended an RPC before
    the handler's answer went out. The same call here: one count and a DEBUG line, no ERROR; other grpc errors
    pass."""
    from vla.serving.metrics import Metrics
    from vla.serving.rpc import EndedRpcFilter

    caplog.set_level(logging.DEBUG)
    grpc_log, metrics = logging.getLogger(EndedRpcFilter.LOGGER), Metrics()
    ended = EndedRpcFilter(metrics).install()
    try:
        try:
            raise RuntimeError('Failed "execute_batch": (<SendStatusFromServerOperation>,)')
        except RuntimeError:
            grpc_log.exception("ExecuteBatchError raised in core by servicer method [%s]",
                               "/vla.v1.PolicyService/Predict")
            grpc_log.exception("Unexpected [%s] raised by servicer method [%s]", "ValueError", "/x.Y/Z")
    finally:
        ended.remove()
    assert metrics.ended_before_reply == 1
    assert _grpc_errors(caplog) == ["Unexpected [ValueError] raised by servicer method [/x.Y/Z]"]
    gone = [r for r in caplog.records if '"event": "rpc_gone"' in r.getMessage()]
    assert [r.levelno for r in gone] == [logging.DEBUG] and "/vla.v1.PolicyService/Predict" in gone[0].getMessage()


def test_the_server_filters_grpcs_logger_while_it_runs(server_factory):
    from vla.serving.rpc import EndedRpcFilter

    def ours():
        return [f for f in logging.getLogger(EndedRpcFilter.LOGGER).filters if isinstance(f, EndedRpcFilter)]

    srv = server_factory(FakePolicy())
    assert [f.metrics for f in ours()] == [srv.metrics]
    srv.stop(0)
    assert ours() == []


class _RowTimedPolicy(FakePolicy):
    """A forward pass takes `row_s` per row (a CPU: no batching gain), after waiting for `gate`; `passes` lists
    (start, end, rows) in time.perf_counter seconds."""

    def __init__(self, row_s: float):
        super().__init__()
        self.row_s, self.gate, self.entered = row_s, threading.Event(), threading.Event()
        self.gate.set()
        self.passes: list[tuple[float, float, int]] = []

    def predict(self, obs):
        self.entered.set()
        assert self.gate.wait(30)
        t = time.perf_counter()
        time.sleep(self.row_s * len(obs["instruction"]))
        self.passes.append((t, time.perf_counter(), len(obs["instruction"])))
        return super().predict(obs)


def test_a_batch_is_cut_to_its_deadline_and_hopeless_requests_never_run():
    """100 ms a row; six requests queue behind a pass with 350 ms left when it ends: a batch of all six would end
    at ~600 ms, past every deadline. Cut to what fits (3 rows, fewer if this machine is slow now), the rest
    answered DEADLINE_EXCEEDED without running once even one row cannot finish in time."""
    row_s = 0.1
    policy = _RowTimedPolicy(row_s)

    async def main():
        b = DynamicBatcher(policy.predict, max_batch=32)
        b.start()
        await b.submit(make_obs(0))  # a size's first pass is not timed
        policy.gate.clear()
        policy.entered.clear()
        held = asyncio.ensure_future(b.submit(make_obs(1)))  # timed: the batcher learns ~100 ms a row
        while not policy.entered.is_set():
            await asyncio.sleep(0.002)
        deadline = time.perf_counter() + row_s + 0.35  # the held pass's 100 ms, then 350 ms
        rest = [asyncio.ensure_future(b.submit(make_obs(i), deadline=deadline)) for i in range(2, 8)]
        await asyncio.sleep(0.005)
        policy.gate.set()
        await held
        out = await asyncio.gather(*rest, return_exceptions=True)
        await b.close()
        return deadline, out, b.metrics

    deadline, out, metrics = asyncio.run(main())
    ok = [r for r in out if not isinstance(r, BaseException)]
    refused = [r for r in out if isinstance(r, Expired)]
    assert len(ok) + len(refused) == 6 and 1 <= len(ok) <= 3, out
    assert metrics.dropped_late >= 1 and metrics.dropped_late + metrics.dropped_expired == len(refused)
    timed = policy.passes[2:]  # the passes for the six
    assert sum(rows for *_, rows in timed) == len(ok)
    assert all(end <= deadline + 0.05 for _, end, _ in timed), (deadline, timed)  # none ran past the deadline


def test_a_stale_slow_time_stops_counting():
    """One slow pass (a stall) must not lock requests out: while its time is recent, a request that cannot make its
    deadline by it is refused without running; once it is older than LATE_S, requests run and are timed again."""
    policy = _RowTimedPolicy(0.005)

    async def main():
        b = DynamicBatcher(policy.predict)
        b.LATE_S = 0.3
        b.start()
        b._sizes_run.add(1)
        b._cost[1] = (0.5, time.perf_counter())  # a 500 ms pass just now
        with pytest.raises(Expired, match="deadline too close"):
            await b.submit(make_obs(0), deadline=time.perf_counter() + 0.1)
        await asyncio.sleep(0.35)
        res = await b.submit(make_obs(1), deadline=time.perf_counter() + 0.1)
        again = await b.submit(make_obs(2), deadline=time.perf_counter() + 0.1)
        await b.close()
        return res, again, b

    res, again, b = asyncio.run(main())
    assert res.batch_size == again.batch_size == 1 and len(policy.passes) == 2
    assert b._cost[1][0] < 0.1  # timed afresh


def test_a_cut_request_goes_back_before_its_layouts_queue():
    """Items of another layout ahead of it in its client's FIFO keep their place; the cut item leads its own
    layout again."""
    b = DynamicBatcher(FakePolicy().predict)
    loop = asyncio.new_event_loop()
    try:
        def item(key):
            return _Item({}, key, loop.create_future(), 0.0, None, "c")

        other, next_same, cut = item(("a",)), item(("b",)), item(("b",))
        b._queues["c"] = collections.deque([other, next_same])
        b._put_back(cut)
        assert list(b._queues["c"]) == [other, cut, next_same] and b._n == 1
    finally:
        loop.close()


def test_forward_pass_estimate_from_the_passes_seen():
    """Hand-computed: one size timed scales by rows; two or more give a least-squares line, never below a smaller
    batch's time; a size timed is its own average; nothing recent, no estimate; a size's first pass is not
    timed."""
    b = DynamicBatcher(FakePolicy().predict)
    now = time.perf_counter()
    assert b.estimate(8) == 0.0
    b._time_pass(1, 0.3, now)  # the first pass of size 1: one-time costs, not kept
    assert b.estimate(1) == 0.0
    b._time_pass(1, 0.004, now)
    assert b.estimate(1) == 0.004 and b.estimate(28) == pytest.approx(0.112)
    b._cost = {4: (0.012, now)}
    assert b.estimate(2) == pytest.approx(0.006)  # smaller than timed: scaled down (errs low)
    b._cost = {1: (0.004, now), 4: (0.010, now)}  # line 0.002 + 0.002 * rows
    assert b.estimate(10) == pytest.approx(0.022) and b.estimate(4) == 0.010
    b._cost = {1: (0.004, now), 2: (0.0038, now)}  # a noisy fit falls with size: held at the smaller batches' time
    assert b.estimate(8) == pytest.approx(0.004)
    b._cost = {1: (0.004, now - b.LATE_S - 1)}  # too old to refuse a request on, recent enough to cut a batch
    assert b.estimate(1) == 0.0 and b.estimate(3, max_age=b.CUT_S) == pytest.approx(0.012)
    b._cost = {1: (0.004, now - b.CUT_S - 1)}
    assert b.estimate(3, max_age=b.CUT_S) == 0.0

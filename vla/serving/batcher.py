"""Dynamic batching: concurrent requests -> one forward pass on the model thread -> one answer each.

A batch is whatever is queued when the model thread becomes free (up to `max_batch`), so a lone client pays no
waiting time and batches grow by themselves under load while the previous forward pass runs; `max_wait_ms > 0`
additionally holds a batch open for stragglers. Only observations of the same layout (cameras, image size,
depth/intrinsics present) share a pass.

Admission counts live requests only. The queue is bounded: `max_queue` requests in all, and optionally
`max_queue_per_client` per client (the caller's `vla-client` id, else its peer address); beyond, `Overloaded` at
once (RESOURCE_EXHAUSTED) instead of growing memory. Entries whose caller gave up (cancelled future) or whose
deadline passed stay in the FIFOs until someone looks, so a limit that looks reached first prunes them (expired
ones are answered `Expired` right there) and only then refuses. A request already past its deadline when it
arrives is `Expired`, never `Overloaded`. Requests that die while queued never reach the model (counted as
`dropped_expired` / `dropped_cancelled`).

Deadline-aware batches: the model thread keeps the time its recent forward passes took per batch size (not the
first pass of a size: one-time costs). A request that could not finish before its deadline even alone is answered
`Expired` at once instead of running (counted as `dropped_late`), and a batch is cut back from its end until its
expected forward pass ends before the earliest deadline in it; the requests cut go back into their FIFOs and
lead the next batch. A request is refused as late only on times measured in the last `LATE_S` seconds, so one
slow pass (a stall, a neighbour's burst) cannot keep requests out for longer than that (nothing would run to time
the model again); batches are cut on times of the last `CUT_S` seconds, so after a quiet spell the first burst is
already cut, and a stale time makes batches small for at most that long while smaller batches keep running.
Estimates err low (smaller batches are scaled down by rows), which errs towards running a request. Without it, on a
CPU where a batch costs about its size times one row, a backlog made batches whose every request missed its
deadline, and the next batch formed from a longer backlog still: `vla bench serve --fleet 28` went from 0% to
62% misses and stayed there.

Fairness: one FIFO per client; batches are filled round robin across clients (one request per client per round),
starting with the clients served longest ago. When the whole queue is full, a client holding fewer requests than
the longest FIFO pushes out that FIFO's newest request (answered `Overloaded`), so one client flooding the server
cannot keep a client calling at a steady rate out; a lone client may still use the whole queue.

A batch whose predict raises a ValueError (UserError included: e.g. one instruction too long for the text tower)
is rerun row by row, so only the offending request fails. Any other exception fails the batch; SystemExit or
KeyboardInterrupt in the model stops the model thread: the batch and everything queued are answered
`Unavailable` and `on_fatal(exc)` runs on the loop (the server marks itself NOT_SERVING).

The event loop only appends to the queue and resolves futures. One dedicated model thread takes batches, collates,
runs the model and hands each finished batch back with one `call_soon_threadsafe`: two thread switches per batch.
(The first version went loop task -> run_in_executor -> loop task -> handler, about 220 us per noop request on
the 2-core dev machine against about 100 us now.) `inline=True` runs the forward pass on the event loop instead,
with no queue at all and read-only input views: only for policies whose `predict` is trivially cheap, never
blocks and does not write to its inputs (the noop policy, which then measures the RPC layer alone); a real model
always runs on the model thread.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla.serving.metrics import Metrics, log_event


class Overloaded(Exception):
    """The request queue (or this client's share of it) is full."""


class Expired(Exception):
    """The request's deadline passed before the model could run it."""


class Unavailable(Exception):
    """The model thread has stopped (SystemExit/KeyboardInterrupt in predict): nothing will run any more."""


@dataclass
class BatchResult:
    actions: np.ndarray  # (T, A) float32 for this request
    queue_s: float
    collate_s: float
    model_s: float
    batch_size: int


@dataclass(eq=False)
class _Item:
    obs: dict[str, Any]
    key: tuple
    future: asyncio.Future
    t_enqueue: float
    deadline: float | None = None  # time.perf_counter() seconds
    client: str = ""
    t_start: float = field(default=0.0)

    def dead(self, now: float) -> bool:
        """Cancelled (the caller gave up) or past its deadline: it must not hold a place or reach the model."""
        return self.future.done() or (self.deadline is not None and self.deadline <= now)


def layout_key(obs: dict[str, Any]) -> tuple:
    """Observations that can be stacked into one batch have the same key."""
    return obs["rgb"].shape, "depth" in obs, "intrinsics" in obs, obs["state"].shape


def collate(obs_list: list[dict[str, Any]], copy: bool = True) -> dict[str, Any]:
    """B single observations -> one batch in the sim.schema layout (leading batch dim, instruction list): a fresh,
    writable copy (requests are read-only views of the message bytes), or for one observation and copy=False
    read-only views (inline policies, which only read)."""
    keys = [k for k in ("rgb", "depth", "intrinsics", "state") if k in obs_list[0]]
    if len(obs_list) == 1:  # [None].copy(): the same array as np.stack, without its per-call overhead (~10 us)
        batch: dict[str, Any] = {k: obs_list[0][k][None].copy() if copy else obs_list[0][k][None] for k in keys}
    else:
        batch = {k: np.stack([o[k] for o in obs_list]) for k in keys}  # rgb (B, V, H, W, 3), state (B, S) ...
    batch["instruction"] = [o["instruction"] for o in obs_list]
    return batch


class DynamicBatcher:
    LATE_S = 2.0  # a request is refused as late only on forward-pass times this recent (seconds)
    CUT_S = 60.0  # batches are cut on forward-pass times this recent

    def __init__(self, predict: Callable[[dict], np.ndarray], *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_queue: int = 256, max_queue_per_client: int | None = None, metrics: Metrics | None = None,
                 inline: bool = False, on_fatal: Callable[[BaseException], Any] | None = None):
        per_client = max_queue if max_queue_per_client is None else max_queue_per_client
        if max_batch < 1 or max_queue < 1 or per_client < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue}, max_queue_per_client={per_client} must "
                             f"be >= 1, max_wait_ms={max_wait_ms} >= 0")
        self.predict, self.max_batch, self.max_queue, self.inline = predict, max_batch, max_queue, inline
        self.max_queue_per_client = per_client
        self.max_wait = max_wait_ms / 1e3
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth = self.depth
        self.metrics.client_depths = self.client_depths
        self.metrics.queue_capacity = max_queue
        # client -> its FIFO; dict order is the round-robin order (served clients move to the end)
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._n = 0  # entries in all FIFOs, dead ones included until pruned
        self._cond = threading.Condition()  # guards _queues and _n between the loop and the model thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._dead: BaseException | None = None  # set when the model thread stopped for good
        # batch size -> (seconds a forward pass took (moving average), when last measured); model thread only
        self._cost: dict[int, tuple[float, float]] = {}
        self._sizes_run: set[int] = set()  # batch sizes that ran once (their first pass is not timed)
        self.on_fatal = on_fatal  # called on the loop with the SystemExit/KeyboardInterrupt that stopped it

    def start(self) -> None:
        """Bind to the running event loop and start the model thread."""
        self._loop = asyncio.get_running_loop()
        if not self.inline:
            self._thread = threading.Thread(target=self._run, name="vla-model", daemon=True)
            self._thread.start()

    def depth(self) -> int:
        """Live requests queued (cancelled and expired entries not counted)."""
        now = time.perf_counter()
        with self._cond:
            return sum(not it.dead(now) for q in self._queues.values() for it in q)

    def client_depths(self) -> dict[str, int]:
        """Live requests queued per client."""
        now = time.perf_counter()
        with self._cond:
            return {c: n for c, q in self._queues.items() if (n := sum(not it.dead(now) for it in q))}

    async def submit(self, obs: dict[str, Any], deadline: float | None = None, client: str = "") -> BatchResult:
        """Queue one observation; resolves with its (T, A) chunk. Raises Expired at once if `deadline` has passed,
        Overloaded at once when the live requests fill the queue or this client's share of it."""
        if self._closing:
            raise Overloaded("server is shutting down")
        now = time.perf_counter()
        if deadline is not None and deadline <= now:
            self.metrics.dropped_expired += 1
            raise Expired("deadline passed before the request was queued")
        if self.inline:
            return self._run_inline(obs, deadline)
        item = _Item(obs, layout_key(obs), self._loop.create_future(), now, deadline, client)
        with self._cond:
            if self._dead is not None:
                raise Unavailable(f"model stopped ({type(self._dead).__name__}); server is not serving")
            q = self._queues.get(client)
            if q is not None and self.max_queue_per_client < self.max_queue and \
                    len(q) >= self.max_queue_per_client and self._prune(q, now) >= self.max_queue_per_client:
                self.metrics.rejected_overload += 1
                raise Overloaded(f"client {client!r} has {len(q)} requests queued (limit --max-queue-per-client "
                                 f"{self.max_queue_per_client})")
            if self._n >= self.max_queue:
                for other in self._queues.values():
                    self._prune(other, now)
                if self._n >= self.max_queue and not self._push_out(len(q) if q is not None else 0):
                    self.metrics.rejected_overload += 1
                    raise Overloaded(f"request queue full ({self._n} live requests waiting, limit --max-queue "
                                     f"{self.max_queue})")
            if q is None:
                q = self._queues[client] = collections.deque()
            q.append(item)
            self._n += 1
            self._cond.notify()
        return await item.future  # cancelled with the RPC: the model thread then skips the item

    def _push_out(self, mine: int) -> bool:
        """(Event loop, lock held, queue full of live requests.) Refuse the newest request of the longest FIFO if
        it holds at least two more than the caller's `mine`; True if a place was freed."""
        longest = max(self._queues.values(), key=len)
        if len(longest) < mine + 2:
            return False
        victim = longest.pop()
        self._n -= 1
        self.metrics.rejected_overload += 1
        victim.future.set_exception(Overloaded(f"request queue full ({self.max_queue} waiting): pushed out by a "
                                               "client with fewer requests queued"))
        return True

    def _prune(self, q: collections.deque[_Item], now: float) -> int:
        """(Event loop, lock held.) Drop the dead entries of one client's FIFO, answering expired ones; returns
        what is left. An emptied FIFO stays in `_queues` (the model thread forgets it at its next take)."""
        live = []
        for it in q:
            if not it.dead(now):
                live.append(it)
            elif it.deadline is not None and it.deadline <= now:
                self.metrics.dropped_expired += 1
                if not it.future.done():
                    it.future.set_exception(Expired("deadline passed while queued"))
            else:
                self.metrics.dropped_cancelled += 1
        if len(live) != len(q):
            self._n -= len(q) - len(live)
            q.clear()
            q.extend(live)
        return len(q)

    def _run_inline(self, obs: dict[str, Any], deadline: float | None) -> BatchResult:
        out, collate_s, model_s = self._forward([obs])
        return BatchResult(out[0], 0.0, collate_s, model_s, 1)

    async def close(self) -> None:
        """Finish what is queued, then stop the model thread."""
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        while self._thread is not None and self._thread.is_alive():
            await asyncio.sleep(0.005)  # the loop keeps resolving the batches the thread hands back
        await asyncio.sleep(0)  # run the last hand-back callbacks

    # --- model thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._n and not self._closing:
                    self._cond.wait()
                if not self._n:
                    return  # closing and drained
                if self.max_wait > 0:
                    self._linger()
                batch, expired, late = self._take()
            if expired:
                self._loop.call_soon_threadsafe(_fail, expired, Expired("deadline passed while queued"))
            if late:
                self._loop.call_soon_threadsafe(_fail, late, Expired(
                    f"deadline too close: the model needs about {self.estimate(1) * 1e3:.1f} ms"))
            if batch and not self._run_batch(batch):
                return  # fatal: _fatal answered everything and refuses new work

    def _linger(self) -> None:
        """(Lock held.) Hold the batch open up to max_wait after its first request arrived, or until it is full."""
        t_end = min(it.t_enqueue for q in self._queues.values() for it in q) + self.max_wait
        while self._n < self.max_batch and not self._closing:
            remaining = t_end - time.perf_counter()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> tuple[list[_Item], list[_Item], list[_Item]]:
        """(Lock held.) Pop up to max_batch live items, one per client per round, all of the layout of the first
        one taken; items of another layout keep their place; then fit the batch to its deadlines (`_fit`). Clients
        served move to the end of the round-robin order (the one served last goes last). Returns (batch, expired,
        late): expired and late items are answered on the loop (futures are not thread-safe)."""
        now = time.perf_counter()
        batch: list[_Item] = []
        expired: list[_Item] = []
        key = None
        served: dict[str, None] = {}  # clients in the order of their last service
        active = list(self._queues.items())
        while active and len(batch) < self.max_batch:
            still = []
            for client, q in active:
                if len(batch) == self.max_batch:
                    break
                item = self._pop(q, key, now, expired)
                if item is None:
                    continue  # nothing (of this layout) left: not visited again for this batch
                key = item.key
                item.t_start = now
                batch.append(item)
                served.pop(client, None)
                served[client] = None
                still.append((client, q))
            active = still
        batch, late = self._fit(batch, now)
        kept = {it.client for it in batch}
        for client in [c for c in served if c in kept]:  # a client whose item was cut keeps its turn
            self._queues[client] = self._queues.pop(client)
        for client in [c for c, q in self._queues.items() if not q]:
            del self._queues[client]
        return batch, expired, late

    def _fit(self, batch: list[_Item], now: float) -> tuple[list[_Item], list[_Item]]:
        """(Lock held.) Deadline-aware batch: items that cannot finish in time even alone are taken out (late), then
        the batch loses items from its end, back into their FIFOs, until its estimated forward pass ends by the
        earliest deadline in it. Returns (batch, late). Nothing changes without a recent forward-pass time, nor for
        a batch without deadlines."""
        if all(it.deadline is None for it in batch):
            return batch, []
        recent, estimate = self._estimator(now, self.LATE_S), self._estimator(now, self.CUT_S)
        late = []
        if recent is not None:
            alone = now + recent(1)
            late = [it for it in batch if it.deadline is not None and it.deadline < alone]
        if late:
            batch = [it for it in batch if it.deadline is None or it.deadline >= alone]
            self.metrics.dropped_late += len(late)
        while estimate is not None and len(batch) > 1:
            first = min((it.deadline for it in batch if it.deadline is not None), default=None)
            if first is None or now + estimate(len(batch)) <= first:
                break
            self._put_back(batch.pop())
        return batch, late

    def _put_back(self, item: _Item) -> None:
        """(Lock held.) An item cut from a batch goes back before the first item of its layout in its client's
        FIFO: where `_pop` took it from, as far as its layout's order goes."""
        q = self._queues[item.client]
        at = next((i for i, other in enumerate(q) if other.key == item.key), len(q))
        q.insert(at, item)
        self._n += 1

    def _estimator(self, now: float, max_age: float) -> Callable[[int], float] | None:
        """size -> expected seconds of a forward pass, from the passes timed in the last `max_age` seconds (None
        if there are none): a size timed is its own average; else a straight line through two or more sizes timed,
        never below a smaller batch's time (noisy fits); else the one size timed, scaled by rows (no batching gain
        assumed: on a CPU a batch costs about its rows; a GPU's larger batches, once timed, are cheaper per row and
        the line follows)."""
        fresh = {k: t for k, (t, at) in self._cost.items() if now - at <= max_age}
        if not fresh:
            return None
        line: list[float] = []  # slope, intercept: fitted on the first size that needs it (the lock is held)

        def estimate(size: int) -> float:
            if size in fresh:
                return fresh[size]
            if len(fresh) >= 2:
                if not line:
                    line.extend(np.polyfit(np.fromiter(fresh, float), np.fromiter(fresh.values(), float), 1))
                return max(float(line[1] + line[0] * size), *(t for k, t in fresh.items() if k < size), 0.0)
            ((k, t),) = fresh.items()
            return t * size / k

        return estimate

    def estimate(self, size: int, max_age: float | None = None) -> float:
        """Expected seconds of a forward pass on `size` rows from the times of the last `max_age` seconds (default
        LATE_S); 0.0 without one. See `_estimator`."""
        estimate = self._estimator(time.perf_counter(), self.LATE_S if max_age is None else max_age)
        return 0.0 if estimate is None else estimate(size)

    def _time_pass(self, size: int, seconds: float, now: float) -> None:
        """(Model thread.) Keep a forward pass's time for deadline-aware batches; a size's first pass is not kept."""
        if size not in self._sizes_run:
            self._sizes_run.add(size)
            return
        old = self._cost.get(size)
        fresh = old is not None and now - old[1] <= self.LATE_S
        self._cost[size] = (0.7 * old[0] + 0.3 * seconds if fresh else seconds, now)

    def _pop(self, q: collections.deque[_Item], key: tuple | None, now: float, expired: list[_Item]) -> _Item | None:
        """(Lock held.) Remove and return the first live item of `key` (any, if None) from one client's FIFO;
        dead items before it are removed and counted (expired ones added to `expired`)."""
        i = 0
        while i < len(q):
            item = q[i]
            if item.dead(now):
                del q[i]
                self._n -= 1
                if item.deadline is not None and item.deadline <= now:
                    self.metrics.dropped_expired += 1
                    if not item.future.done():
                        expired.append(item)
                else:
                    self.metrics.dropped_cancelled += 1
                continue
            if key is None or item.key == key:
                del q[i]
                self._n -= 1
                return item
            i += 1
        return None

    def _forward(self, obs_list: list[dict[str, Any]]) -> tuple[np.ndarray, float, float]:
        t0 = time.perf_counter()
        batch = collate(obs_list, copy=not self.inline)
        t1 = time.perf_counter()
        out = np.asarray(self.predict(batch), dtype=np.float32)
        t2 = time.perf_counter()
        if out.ndim != 3 or out.shape[0] != len(obs_list):
            raise RuntimeError(f"policy returned shape {out.shape} for a batch of {len(obs_list)} (expected (B, T, A))")
        self.metrics.record_batch(len(obs_list), t2 - t1)
        if not self.inline:
            self._time_pass(len(obs_list), t2 - t0, t2)
        return out, t1 - t0, t2 - t1

    def _attempt(self, items: list[_Item]) -> BaseException | None:
        """Run one forward pass and hand its answers to the loop; returns what it raised, if anything."""
        try:
            out, collate_s, model_s = self._forward([b.obs for b in items])
        except BaseException as e:  # noqa: BLE001 (the model thread must outlive any model error)
            return e
        self._loop.call_soon_threadsafe(_deliver, items, out, collate_s, model_s)
        return None

    def _run_batch(self, batch: list[_Item]) -> bool:
        """Run a batch, rerunning it row by row on a ValueError; False when the model thread must stop."""
        e = self._attempt(batch)
        if e is None:
            return True
        if not (isinstance(e, ValueError) and len(batch) > 1):
            return self._failed(batch, e)
        log_event("batch_split", size=len(batch), error=repr(e))  # one bad row must not fail the others
        for i, item in enumerate(batch):
            e = self._attempt([item])
            if e is not None and not self._failed(batch[i:] if _is_fatal(e) else [item], e):
                return False
        return True

    def _failed(self, items: list[_Item], e: BaseException) -> bool:
        """Answer `items` with the model's error (INTERNAL unless a UserError); False if `e` is fatal."""
        if _is_fatal(e):
            self._fatal(items, e)
            return False
        if not isinstance(e, Exception):  # e.g. GeneratorExit or a custom BaseException: a Future won't take it
            e = RuntimeError(f"model raised {type(e).__name__}: {e}")
        log_event("batch_failed", size=len(items), error=repr(e))
        self._loop.call_soon_threadsafe(_fail, items, e)
        return True

    def _fatal(self, items: list[_Item], e: BaseException) -> None:
        """Stop for good: answer `items` and everything queued Unavailable, refuse new work, tell the server."""
        with self._cond:
            self._dead = e
            items = items + [it for q in self._queues.values() for it in q]
            self._queues.clear()
            self._n = 0
        log_event("model_stopped", 40, error=repr(e), answered=len(items))  # 40 = ERROR
        err = Unavailable(f"model stopped ({type(e).__name__}: {e}); server is not serving")
        self._loop.call_soon_threadsafe(_fail, items, err)
        if self.on_fatal is not None:
            self._loop.call_soon_threadsafe(self.on_fatal, e)


def _is_fatal(e: BaseException) -> bool:
    return isinstance(e, (SystemExit, KeyboardInterrupt))


def _deliver(batch: list[_Item], out: np.ndarray, collate_s: float, model_s: float) -> None:
    """(Event loop.) Resolve the futures of a finished batch; row i of `out` is batch[i]'s chunk."""
    n = len(batch)
    for i, item in enumerate(batch):
        if not item.future.done():
            item.future.set_result(BatchResult(out[i], item.t_start - item.t_enqueue, collate_s, model_s, n))


def _fail(items: list[_Item], e: BaseException) -> None:
    """(Event loop.) Answer every still-waiting item with `e`."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(e)

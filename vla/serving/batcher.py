"""Dynamic batching: concurrent requests -> one forward pass in a worker thread -> one answer each.

A batch is whatever is queued when the model thread becomes free (up to `max_batch`), so a lone client pays no
waiting time and batches grow by themselves under load while the previous forward pass runs; `max_wait_ms > 0`
additionally holds a batch open for stragglers. Only observations of the same layout (cameras, image size,
depth/intrinsics present) share a pass. The queue is bounded: a full queue is `Overloaded` at once (the server
answers RESOURCE_EXHAUSTED) instead of growing memory. Requests whose deadline passed, or whose caller gave up,
while queued are dropped before the model runs. The event loop only moves futures; collation and the model run on
one worker thread, so a slow model never stalls the gRPC loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla.serving.metrics import Metrics, log_event


class Overloaded(Exception):
    """The request queue is full."""


class Expired(Exception):
    """The request's deadline passed before the model could run it."""


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
    t_start: float = field(default=0.0)


def layout_key(obs: dict[str, Any]) -> tuple:
    """Observations that can be stacked into one batch have the same key."""
    return obs["rgb"].shape, "depth" in obs, "intrinsics" in obs, obs["state"].shape


def collate(obs_list: list[dict[str, Any]]) -> dict[str, Any]:
    """B single observations -> one batch in the sim.schema layout (leading batch dim, instruction list)."""
    batch: dict[str, Any] = {k: np.stack([o[k] for o in obs_list]) for k in ("rgb", "depth", "intrinsics", "state")
                             if k in obs_list[0]}  # rgb (B, V, H, W, 3), depth (B, V, H, W), state (B, S) ...
    batch["instruction"] = [o["instruction"] for o in obs_list]
    return batch


class DynamicBatcher:
    def __init__(self, predict: Callable[[dict], np.ndarray], *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_queue: int = 256, metrics: Metrics | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue} must be >= 1, max_wait_ms={max_wait_ms} "
                             ">= 0")
        self.predict, self.max_batch, self.max_queue = predict, max_batch, max_queue
        self.max_wait = max_wait_ms / 1e3
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth = lambda: len(self._queue)
        self.metrics.queue_capacity = max_queue
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vla-model")

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vla-batcher")

    async def submit(self, obs: dict[str, Any], deadline: float | None = None) -> BatchResult:
        """Queue one observation; resolves with its (T, A) chunk. Raises Overloaded at once on a full queue."""
        if self._closing:
            raise Overloaded("server is shutting down")
        if len(self._queue) >= self.max_queue:
            self.metrics.rejected_overload += 1
            raise Overloaded(f"request queue full ({self.max_queue} waiting)")
        item = _Item(obs, layout_key(obs), asyncio.get_running_loop().create_future(), time.perf_counter(), deadline)
        self._queue.append(item)
        self._wakeup.set()
        return await item.future  # cancelled with the RPC: the batcher then skips the item

    async def close(self) -> None:
        """Finish what is queued, then stop the loop and the model thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait > 0:
                await self._linger()
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    async def _linger(self) -> None:
        """Hold the batch open up to max_wait after its first request arrived, or until it is full."""
        t_end = self._queue[0].t_enqueue + self.max_wait
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = t_end - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Pop up to max_batch live items of the first live item's layout; others keep their place."""
        now = time.perf_counter()
        batch: list[_Item] = []
        skipped: list[_Item] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # cancelled by the client or the RPC deadline
                self.metrics.dropped_expired += 1
            elif item.deadline is not None and item.deadline <= now:
                self.metrics.dropped_expired += 1
                item.future.set_exception(Expired("deadline passed while queued"))
            elif batch and item.key != batch[0].key:
                skipped.append(item)
            else:
                item.t_start = now
                batch.append(item)
        self._queue.extendleft(reversed(skipped))
        return batch

    def _forward(self, obs_list: list[dict[str, Any]]) -> tuple[np.ndarray, float, float]:
        t0 = time.perf_counter()
        batch = collate(obs_list)
        t1 = time.perf_counter()
        out = np.asarray(self.predict(batch), dtype=np.float32)
        t2 = time.perf_counter()
        if out.ndim != 3 or out.shape[0] != len(obs_list):
            raise RuntimeError(f"policy returned shape {out.shape} for a batch of {len(obs_list)} (expected (B, T, A))")
        self.metrics.record_batch(len(obs_list), t2 - t1)
        return out, t1 - t0, t2 - t1

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            out, collate_s, model_s = await loop.run_in_executor(self._executor, self._forward, [b.obs for b in batch])
        except Exception as e:  # the model failed: every caller of this batch learns why
            log_event("batch_failed", size=len(batch), error=repr(e))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        for i, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(BatchResult(out[i], item.t_start - item.t_enqueue, collate_s, model_s,
                                                   len(batch)))

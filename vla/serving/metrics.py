"""Server counters (requests by method and status, per client, batch sizes, latencies) and JSON log lines.

All updates happen on the server's event-loop thread except `record_batch` (model thread), so a lock guards
only what both touch. `MetricsService.GetMetrics` returns a snapshot.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time

import numpy as np

from vla._proto.v1 import metrics_pb2, metrics_pb2_grpc

log = logging.getLogger("vla.serving")
WINDOW = 4096  # latency samples kept per method for the percentiles
MAX_CLIENTS = 256  # per-client counters kept (the least recently seen client is forgotten first)
_CLIENT_FIELDS = {"OK": "ok", "RESOURCE_EXHAUSTED": "refused", "DEADLINE_EXCEEDED": "deadline_missed"}


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    """One JSON object per line: easy to grep and to ship to a log store."""
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": event, **fields}, default=str, sort_keys=True))


def _pct(samples, q: float) -> float:
    return float(np.percentile(np.fromiter(samples, float), q)) if samples else 0.0


class Metrics:
    def __init__(self):
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.latency: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=WINDOW))
        self.batch_sizes: collections.Counter = collections.Counter()
        self.model_ms: collections.deque = collections.deque(maxlen=WINDOW)
        self.rows = 0
        self.dropped_expired = 0  # deadline passed while queued
        self.dropped_cancelled = 0  # caller gave up while queued
        self.dropped_late = 0  # could not finish before its deadline even alone (batcher._fit)
        self.rejected_overload = 0
        self.expired_unread = 0  # deadline passed before the request was read
        self.ended_before_reply = 0  # answered after grpc's core had ended the RPC (rpc.EndedRpcFilter)
        self.clients: collections.OrderedDict[str, collections.Counter] = collections.OrderedDict()
        self.queue_depth = lambda: 0
        self.client_depths = dict
        self.queue_capacity = 0

    def record(self, method: str, code: str, seconds: float, client: str | None = None) -> None:
        with self._lock:
            self.codes[method][code] += 1
            self.latency[method].append(seconds * 1e3)
            if client is not None:
                c = self.clients.get(client)
                if c is None:
                    c = self.clients[client] = collections.Counter()
                    if len(self.clients) > MAX_CLIENTS:
                        self.clients.popitem(last=False)
                else:
                    self.clients.move_to_end(client)
                c["calls"] += 1
                if code in _CLIENT_FIELDS:
                    c[_CLIENT_FIELDS[code]] += 1

    def record_batch(self, size: int, model_s: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.rows += size
            self.model_ms.append(model_s * 1e3)

    def snapshot(self) -> metrics_pb2.Metrics:
        depths = self.client_depths()
        with self._lock:
            clients = [metrics_pb2.ClientMetrics(client=k, queued=depths.get(k, 0), **v)
                       for k, v in reversed(self.clients.items())]
            methods = [
                metrics_pb2.MethodMetrics(method=m, codes=dict(c), latency_p50_ms=_pct(self.latency[m], 50),
                                          latency_p99_ms=_pct(self.latency[m], 99), window=len(self.latency[m]))
                for m, c in sorted(self.codes.items())
            ]
            return metrics_pb2.Metrics(
                methods=methods, batch_sizes=dict(self.batch_sizes), batches=sum(self.batch_sizes.values()),
                rows=self.rows, dropped_expired=self.dropped_expired,
                dropped_cancelled=self.dropped_cancelled, rejected_overload=self.rejected_overload,
                queue_depth=self.queue_depth(), queue_capacity=self.queue_capacity,
                uptime_s=time.monotonic() - self.started, model_p50_ms=_pct(self.model_ms, 50),
                expired_unread=self.expired_unread, clients=clients, ended_before_reply=self.ended_before_reply,
                dropped_late=self.dropped_late)


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def GetMetrics(self, request, context):
        return self.metrics.snapshot()

"""Server counters (requests by method and status, batch sizes, latencies) and structured JSON log lines.

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
        self.rejected_overload = 0
        self.queue_depth = lambda: 0
        self.queue_capacity = 0

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.codes[method][code] += 1
            self.latency[method].append(seconds * 1e3)

    def record_batch(self, size: int, model_s: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.rows += size
            self.model_ms.append(model_s * 1e3)

    def snapshot(self) -> metrics_pb2.Metrics:
        with self._lock:
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
                uptime_s=time.monotonic() - self.started, model_p50_ms=_pct(self.model_ms, 50))


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def GetMetrics(self, request, context):
        return self.metrics.snapshot()

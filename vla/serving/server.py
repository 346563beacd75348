"""The gRPC server: PolicyService (+ VisionService), health, reflection, metrics, auth, TLS, graceful stop.

    vla serve --checkpoint DIR                     # 127.0.0.1:50051, plaintext, no token
    vla serve --policy noop --port 0               # serving layer alone (zero chunks)
    vla serve --checkpoint DIR --host 0.0.0.0 --token "$TOKEN" --tls-cert cert.pem --tls-key key.pem

Everything RPC-facing runs on one asyncio loop; forward passes run on the batcher's model thread (except a policy
that sets `serve_inline = True`: the noop policy, whose predict is a np.zeros), PNG/JPEG decoding on a small pool.
SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused, in-flight ones finish (up to `grace_s`), then the
batcher drains and the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vla._proto.v1 import metrics_pb2, policy_pb2, vision_pb2
from vla.serving import allocator
from vla.serving.auth import TokenAuthInterceptor
from vla.serving.batcher import DynamicBatcher
from vla.serving.metrics import Metrics, MetricsServicer, log_event
from vla.serving.policy_service import PolicyServicer
from vla.serving.rpc import EndedRpcFilter, add_service
from vla.serving.validation import ObservationSpec


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 256
    max_queue_per_client: int | None = None  # live requests one client may queue (None: max_queue)
    max_concurrent_rpcs: int | None = None  # RPCs open at once, streams included (None: max_queue + 64)
    max_message_mb: float = 16.0
    grace_s: float = 10.0
    decode_threads: int = 2
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} outside 0..65535")
        if self.max_message_mb <= 0 or self.grace_s < 0 or self.decode_threads < 1:
            raise ValueError(f"max_message_mb={self.max_message_mb} must be > 0, grace_s={self.grace_s} >= 0, "
                             f"decode_threads={self.decode_threads} >= 1")
        if self.max_queue_per_client is None:
            self.max_queue_per_client = self.max_queue
        if self.max_queue_per_client < 1:
            raise ValueError(f"max_queue_per_client={self.max_queue_per_client} must be >= 1")
        if self.max_concurrent_rpcs is None:  # room for a full queue plus info/health/metrics calls and streams
            self.max_concurrent_rpcs = self.max_queue + 64
        if self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs={self.max_concurrent_rpcs} must be >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")


class PolicyServer:
    """One server on the current event loop: `await start()` -> port, `await stop()`."""

    def __init__(self, policy: Any = None, cfg: ServeConfig | None = None, vision: Any = None):
        if policy is None and vision is None:
            raise ValueError("nothing to serve: give a policy, a vision model or both")
        self.policy, self.cfg, self.vision = policy, cfg or ServeConfig(), vision
        self.metrics = Metrics()
        self.port: int | None = None
        self._stopped: asyncio.Event | None = None

    def _credentials_port(self, server: grpc.aio.Server) -> int:
        addr = f"{self.cfg.host}:{self.cfg.port}"
        if self.cfg.tls_cert:
            key, cert = Path(self.cfg.tls_key).read_bytes(), Path(self.cfg.tls_cert).read_bytes()
            port = server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(addr)
        if not port:
            raise OSError(f"could not bind {addr}")
        return port

    async def start(self) -> int:
        cfg = self.cfg
        limit = int(cfg.max_message_mb * 2**20)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", 0)]
        interceptors = [TokenAuthInterceptor(cfg.token)] if cfg.token else []
        # bounds memory: each open RPC holds its request (up to max_message_mb); the rest get RESOURCE_EXHAUSTED
        self.server = grpc.aio.server(options=options, interceptors=interceptors,
                                      maximum_concurrent_rpcs=cfg.max_concurrent_rpcs)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [add_service(self.server, MetricsServicer(self.metrics), metrics_pb2.DESCRIPTOR.services_by_name[
            "MetricsService"])]
        self.batcher = self.decode_pool = self.vision_servicer = None
        if self.policy is not None:
            self.batcher = DynamicBatcher(self.policy.predict, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                                          max_queue=cfg.max_queue, max_queue_per_client=cfg.max_queue_per_client,
                                          metrics=self.metrics,
                                          inline=bool(getattr(self.policy, "serve_inline", False)),
                                          on_fatal=self._model_stopped)
            self.decode_pool = concurrent.futures.ThreadPoolExecutor(cfg.decode_threads, "vla-decode")
            spec = ObservationSpec.from_metadata(self.policy.metadata(), check_instruction=getattr(
                self.policy, "check_instruction", None))
            servicer = PolicyServicer(self.policy, self.batcher, self.metrics, spec, self.decode_pool, cfg.max_batch)
            names.append(add_service(self.server, servicer, policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]))
        if self.vision is not None:
            from vla.serving.vision_service import VisionServicer

            self.vision_servicer = VisionServicer(self.vision, self.metrics)
            names.append(add_service(self.server, self.vision_servicer,
                                     vision_pb2.DESCRIPTOR.services_by_name["VisionService"]))
        reflection.enable_server_reflection([*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                             reflection.SERVICE_NAME], self.server)
        self.port = self._credentials_port(self.server)
        if self.batcher is not None:
            self.batcher.start()
        await self.server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ended_filter = EndedRpcFilter(self.metrics).install()  # once serving; removed by stop()
        self._stopped = asyncio.Event()
        log_event("serving", host=cfg.host, port=self.port, services=names, tls=bool(cfg.tls_cert),
                  auth=bool(cfg.token), max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue,
                  max_queue_per_client=cfg.max_queue_per_client)
        return self.port

    def _model_stopped(self, e: BaseException) -> None:
        """(Event loop.) The model thread died: every service NOT_SERVING for good (grpc-health's shutdown
        switch), so balancers and clients go elsewhere."""
        self._not_serving_task = asyncio.ensure_future(self.health.enter_graceful_shutdown())  # loop holds it weakly

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first, then refuse new RPCs and let in-flight ones finish within `grace` seconds."""
        if self._stopped is None or self._stopped.is_set():
            return
        grace = self.cfg.grace_s if grace is None else grace
        log_event("stopping", grace_s=grace)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.batcher is not None:
            await self.batcher.close()
            self.decode_pool.shutdown(wait=True)
        if self.vision_servicer is not None:
            self.vision_servicer.close()
        self._ended_filter.remove()
        self._stopped.set()
        log_event("stopped", rows=self.metrics.rows, batches=sum(self.metrics.batch_sizes.values()))

    async def wait(self) -> None:
        await self._stopped.wait()


def serve(policy: Any = None, cfg: ServeConfig | None = None, vision: Any = None,
          ready: Any = None) -> None:
    """`vla serve`: this process serves until SIGTERM/SIGINT, then stops gracefully. `ready(port)` is called once
    serving (tests, scripts). The process's allocator is tuned for a stream of large requests and its heap given
    back after bursts (vla.serving.allocator)."""
    tuned = allocator.tune()  # after the model is loaded (its weights are read once), before the first request
    log_event("allocator", **(tuned or {"tuned": False}))

    async def main() -> None:
        server = PolicyServer(policy, cfg, vision)
        port = await server.start()
        if tuned:
            calls = server.metrics.codes
            trimmer = asyncio.ensure_future(allocator.trim_when_idle(lambda: sum(c.total() for c in calls.values())))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(port)
        await stop.wait()
        if tuned:
            trimmer.cancel()
        await server.stop()

    asyncio.run(main())


class ServerThread:
    """A PolicyServer on its own event loop in a background thread (tests, benchmarks, notebooks).

        with ServerThread(policy, ServeConfig(port=0)) as srv:
            RemotePolicy(f"127.0.0.1:{srv.port}").predict(obs)
    """

    def __init__(self, policy: Any = None, cfg: ServeConfig | None = None, vision: Any = None):
        self.server = PolicyServer(policy, cfg or ServeConfig(port=0), vision)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vla-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics(self) -> Metrics:
        return self.server.metrics

    def call(self, coro, timeout: float = 60.0):
        """Run a coroutine on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def stop(self, grace: float | None = 0.0) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.server.stop(grace))
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
                self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Client for `vla serve`: numpy in, numpy out, no torch needed.

    from vla.client import RemotePolicy
    with RemotePolicy("127.0.0.1:50051") as policy:
        info = policy.info()                       # cameras, image size, chunk length, stats...
        chunk = policy.predict(obs)                # obs in the sim.schema layout -> (T, A) float32
        with policy.session(ensemble=True) as s:   # streaming: the server ensembles, returns the action to run
            action = s.step(obs).action

Unary calls retry on UNAVAILABLE (server restarting) with exponential backoff, within each call's deadline.
`RemoteSimPolicy` adapts a server to the `sim.schema.Policy` protocol for `vla eval --server`.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vla._proto.v1 import metrics_pb2, metrics_pb2_grpc, policy_pb2, policy_pb2_grpc, vision_pb2, vision_pb2_grpc
from vla._proto.v1 import tensor_pb2 as tpb
from vla.serving.codec import encode_image, from_tensor, to_tensor

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


@dataclass
class StepResult:
    """One streaming step: the chunk if the model ran, the action to execute (horizon/ensemble), timing."""

    actions: np.ndarray | None  # (T, A)
    action: np.ndarray | None  # (A,)
    step: int
    timing: dict[str, float]


def _timing(t: tpb.Timing) -> dict[str, float]:
    return {"queue_ms": t.queue_ms, "preprocess_ms": t.preprocess_ms, "model_ms": t.model_ms,
            "total_ms": t.total_ms, "batch_size": t.batch_size}


def _credentials(tls: bool | str | bytes) -> grpc.ChannelCredentials | None:
    """tls: False (plaintext), True (system roots), a CA/cert PEM path or PEM bytes (self-signed servers)."""
    if tls is False or tls is None:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    pem = tls if isinstance(tls, bytes) else Path(tls).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


def observation_message(obs: dict[str, Any], cameras: list[str], image_format: str = "raw",
                        depth_format: str = "float32") -> policy_pb2.Observation:
    """One observation in the sim.schema layout (rgb (V, H, W, 3), ...) -> Observation message."""
    rgb = np.asarray(obs["rgb"])
    if rgb.ndim == 3:
        rgb = rgb[None]  # (1, H, W, 3)
    if rgb.shape[0] != len(cameras):
        raise ValueError(f"rgb has {rgb.shape[0]} camera(s), the model has {cameras}")
    depth, K = obs.get("depth"), obs.get("intrinsics")
    msg = policy_pb2.Observation(state=to_tensor(np.asarray(obs["state"], np.float32)),
                                 instruction=str(obs["instruction"]))
    for v, name in enumerate(cameras):
        cam = msg.cameras.add(name=name)
        cam.rgb.CopyFrom(encode_image(rgb[v], image_format))
        if depth is not None:
            d = np.asarray(depth).reshape(len(cameras), *rgb.shape[1:3])[v]
            if depth_format == "uint16":
                d = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)  # millimetres
            cam.depth.CopyFrom(to_tensor(d.astype(np.float32) if depth_format != "uint16" else d))
        if K is not None:
            cam.intrinsics.CopyFrom(to_tensor(np.asarray(K, np.float32).reshape(len(cameras), 3, 3)[v]))
    return msg


class Session:
    """A StreamPredict session: one request, one response, in order; the server keeps the step counter and
    (optionally) executes or ensembles chunks. Not thread-safe: one control loop per session."""

    def __init__(self, owner: RemotePolicy, horizon: int = 0, ensemble: bool = False, ensemble_coef: float = 0.8,
                 timeout: float | None = None):
        self._owner = owner
        self._config = policy_pb2.SessionConfig(horizon=horizon, ensemble=ensemble, ensemble_coef=ensemble_coef)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = owner._policy.StreamPredict(iter(self._requests.get, None), metadata=owner._metadata,
                                                 timeout=timeout)
        self._first = True
        self._n = 0

    def step(self, obs: dict[str, Any], reset: bool = False) -> StepResult:
        req = policy_pb2.PredictRequest(observation=self._owner._observation(obs), reset=reset or self._first,
                                        request_id=self._n)
        if req.reset:
            req.session.CopyFrom(self._config)
        self._first = False
        self._n += 1
        self._requests.put(req)
        r = next(self._call)
        return StepResult(
            actions=from_tensor(r.actions, "actions") if r.HasField("actions") else None,
            action=from_tensor(r.action, "action") if r.HasField("action") else None,
            step=int(r.step), timing=_timing(r.timing))

    def reset(self) -> None:
        """The next step starts a new episode (step counter and chunk buffers cleared on the server)."""
        self._first = True

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemotePolicy:
    """A policy served by `vla serve`. `tls`: False, True (system CAs) or the server's PEM certificate.

    `address` may list several stateless replicas ("ipv4:10.0.0.1:50051,10.0.0.2:50051" or a DNS name with several
    records): unary calls are spread over them round robin.
    """

    def __init__(self, address: str, token: str | None = None, tls: bool | str | bytes = False,
                 timeout: float = 10.0, retries: int = 5, backoff_s: float = 0.05, image_format: str = "raw",
                 depth_format: str = "float32", max_message_mb: float = 16.0, server_name: str | None = None):
        limit = int(max_message_mb * 2**20)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.lb_policy_name", "round_robin")]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = _credentials(tls)
        self.channel = (grpc.secure_channel(address, creds, options) if creds is not None
                        else grpc.insecure_channel(address, options))
        self.address, self.timeout, self.retries, self.backoff_s = address, timeout, retries, backoff_s
        self.image_format, self.depth_format = image_format, depth_format
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self._vision = vision_pb2_grpc.VisionServiceStub(self.channel)
        self._metrics = metrics_pb2_grpc.MetricsServiceStub(self.channel)
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # --- plumbing ----------------------------------------------------------------------------------------
    def _call(self, method, request, timeout: float | None = None):
        """Unary call with a deadline; UNAVAILABLE is retried with jittered exponential backoff until it passes."""
        timeout = self.timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=max(end - time.monotonic(), 1e-3), metadata=self._metadata)
            except grpc.RpcError as e:
                pause = self.backoff_s * 2**attempt * (0.5 + random.random())
                if e.code() not in RETRYABLE or attempt == self.retries or time.monotonic() + pause >= end:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _observation(self, obs: dict[str, Any]) -> policy_pb2.Observation:
        return observation_message(obs, self.info()["cameras"], self.image_format, self.depth_format)

    # --- API ---------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model metadata (cached): cameras, image_size, chunk_len, action_dim, state_dim, stats, metadata..."""
        with self._lock:
            if self._info is None:
                m = self._call(self._policy.GetModelInfo, policy_pb2.ModelInfoRequest())
                self._info = {
                    "cameras": [c.name for c in m.cameras],
                    "image_size": (m.cameras[0].height, m.cameras[0].width) if m.cameras else None,
                    "action_layout": list(m.action_layout), "action_dim": m.action_dim, "chunk_len": m.chunk_len,
                    "control_hz": m.control_hz or None, "state_dim": m.state_dim, "max_batch": m.max_batch,
                    "stats": {k: from_tensor(v, f"stats[{k}]") for k, v in m.stats.items()},
                    "model_version": m.model_version, "checkpoint": m.checkpoint or None,
                    "param_count": m.param_count, "metadata": json.loads(m.metadata_json or "{}"),
                }
            return self._info

    def predict(self, obs: dict[str, Any], timeout: float | None = None, with_timing: bool = False):
        """One observation -> (T, A) float32 chunk; a batch (rgb (B, V, H, W, 3)) -> (B, T, A), sent as B
        concurrent calls that the server batches. with_timing=True also returns the server timing(s)."""
        if np.asarray(obs["rgb"]).ndim == 5:
            return self._predict_batch(obs, timeout, with_timing)
        r = self._call(self._policy.Predict, policy_pb2.PredictRequest(observation=self._observation(obs)), timeout)
        actions = from_tensor(r.actions, "actions")
        return (actions, _timing(r.timing)) if with_timing else actions

    def _predict_batch(self, obs: dict[str, Any], timeout: float | None, with_timing: bool):
        B = len(obs["rgb"])
        keys = [k for k in ("rgb", "depth", "intrinsics", "state", "instruction") if obs.get(k) is not None]
        rows = [{k: obs[k][b] for k in keys} for b in range(B)]
        timeout = self.timeout if timeout is None else timeout
        futures = [self._policy.Predict.future(policy_pb2.PredictRequest(observation=self._observation(r),
                                                                         request_id=b),
                                               timeout=timeout, metadata=self._metadata)
                   for b, r in enumerate(rows)]
        replies = []
        for b, (f, row) in enumerate(zip(futures, rows)):
            try:
                replies.append(f.result())
            except grpc.RpcError as e:  # one retry path for a restarting server: redo this row alone
                if e.code() not in RETRYABLE:
                    raise
                replies.append(self._call(self._policy.Predict, policy_pb2.PredictRequest(
                    observation=self._observation(row), request_id=b), timeout))
        actions = np.stack([from_tensor(r.actions, "actions") for r in replies])  # (B, T, A)
        return (actions, [_timing(r.timing) for r in replies]) if with_timing else actions

    def session(self, horizon: int = 0, ensemble: bool = False, ensemble_coef: float = 0.8,
                timeout: float | None = None) -> Session:
        """Open a streaming session (see Session). `timeout` bounds the whole stream (None: none)."""
        return Session(self, horizon, ensemble, ensemble_coef, timeout)

    def metrics(self) -> metrics_pb2.Metrics:
        return self._call(self._metrics.GetMetrics, metrics_pb2.MetricsRequest())

    def classify(self, images: list[np.ndarray], class_names: list[str] | None = None,
                 templates: list[str] | None = None, context_id: str = "", top_k: int = 0) -> dict[str, Any]:
        """Images (H, W, 3) uint8 -> {"probabilities" (N, C), "class_names", "top": [(labels, probs)...]}."""
        req = vision_pb2.ClassifyRequest(images=[encode_image(im, self.image_format) for im in images],
                                         class_names=class_names or [], templates=templates or [],
                                         context_id=context_id, top_k=top_k)
        r = self._call(self._vision.Classify, req)
        return {"probabilities": from_tensor(r.probabilities, "probabilities"), "class_names": list(r.class_names),
                "top": [(list(t.labels), list(t.probabilities)) for t in r.top], "timing": _timing(r.timing)}

    def embed(self, images: list[np.ndarray] | None = None, texts: list[str] | None = None,
              normalize: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """-> (image embeddings (N, E) or None, text embeddings (M, E) or None)."""
        req = vision_pb2.EmbedRequest(images=[encode_image(im, self.image_format) for im in images or []],
                                      texts=texts or [], normalize=normalize)
        r = self._call(self._vision.Embed, req)
        img = from_tensor(r.image_embeddings, "image_embeddings") if r.HasField("image_embeddings") else None
        txt = from_tensor(r.text_embeddings, "text_embeddings") if r.HasField("text_embeddings") else None
        return img, txt

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteSimPolicy:
    """`sim.schema.Policy` over a server: batched observations in, (B, T, A) chunks out. The runner keeps the
    chunk execution/ensembling (sim.chunking), so the model sees the same inputs as in-process evaluation."""

    privileged = False

    def __init__(self, address: str, **kwargs):
        self.remote = RemotePolicy(address, **kwargs)
        self.info = self.remote.info()

    def reset(self, env_ids=None) -> None:
        """The served model keeps no per-environment state (unary calls)."""

    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        return self.remote.predict(obs_batch)

    def close(self) -> None:
        self.remote.close()


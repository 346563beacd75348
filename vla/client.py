"""Client for `vla serve`: numpy in, numpy out, no torch needed.

    from vla.client import RemotePolicy
    with RemotePolicy("127.0.0.1:50051") as policy:
        info = policy.info()                       # cameras, image size, chunk length, stats...
        chunk = policy.predict(obs)                # obs in the sim.schema layout -> (T, A) float32
        with policy.session(ensemble=True) as s:   # streaming: the server ensembles, returns the action to run
            action = s.step(obs).action

`timeout` is each call's deadline once the server is there; `wait_s` is how long a call waits for a server that is
not reachable (restarting, not up yet): UNAVAILABLE is retried with jittered backoff (the channel reconnects
within about a second of the server coming back) until `wait_s` has passed since the first failure, then one
`ServerUnavailable` names the address and the last status. `RemoteSimPolicy` adapts a server to the
`sim.schema.Policy` protocol for `vla eval --server`.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import socket
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
# grpc's default reconnect backoff grows to 120 s: a channel that saw the server down for 10 s would wait many
# seconds more after it is back. A robot wants to know within a second.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
_INSTANCES = itertools.count()


class ServerUnavailable(grpc.RpcError):
    """No answer from the server within the wait budget: names the address, how long it waited and the last
    status. A grpc.RpcError with code() UNAVAILABLE, so existing handlers keep working."""

    def __init__(self, address: str, waited_s: float, attempts: int, last: grpc.RpcError):
        self.address, self.waited_s, self.attempts, self.last = address, waited_s, attempts, last
        last_code = last.code().name if hasattr(last, "code") else "?"
        last_details = last.details() if hasattr(last, "details") else str(last)
        super().__init__(f"server {address} unavailable: no answer after waiting {waited_s:.1f} s ({attempts} "
                         f"attempt(s)); last status {last_code}: {last_details}")

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)


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


def _shapes(obs: dict[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(np.shape(obs[k]))}" for k in ("rgb", "depth", "intrinsics", "state")
                     if obs.get(k) is not None)


def check_observation(obs: dict[str, Any], cameras: list[str], state_dim: int | None = None) -> dict[str, Any]:
    """One observation in the sim.schema layout -> its arrays with the camera axis (rgb (V, H, W, 3) uint8,
    depth (V, H, W), intrinsics (V, 3, 3), state (S,)); a ValueError naming every array's shape and what the
    model expects when something does not fit. An (H, W, 3) image is taken as one camera."""
    V = len(cameras)
    missing = [k for k in ("rgb", "state", "instruction") if obs.get(k) is None]
    if missing:
        raise ValueError(f"observation lacks {missing} (has {sorted(obs)})")
    rgb = np.asarray(obs["rgb"])
    if rgb.ndim == 3 and V == 1:
        rgb = rgb[None]  # (1, H, W, 3)
    want = (f"expected rgb (V, H, W, 3) uint8, depth (V, H, W), intrinsics (V, 3, 3), state "
            f"({state_dim if state_dim else 'S'},) with V = {V} camera(s) {list(cameras)}")
    if rgb.ndim != 4 or rgb.shape[0] != V or rgb.shape[3] != 3:
        hint = ""
        if rgb.ndim == 5 and rgb.shape[1] == V:
            hint = ("; rgb has one leading axis too many: an environment observation is already (V, H, W, 3), "
                    "pass it as it is (a batch of B observations needs every array batched: rgb (B, V, H, W, 3), "
                    "state (B, S), B instructions)")
        raise ValueError(f"observation shapes {_shapes(obs)}: {want}{hint}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"observation rgb has dtype {rgb.dtype}: expected uint8 (0..255)")
    out: dict[str, Any] = {"rgb": rgb, "instruction": obs["instruction"]}
    H, W = rgb.shape[1:3]
    for key, shape in (("depth", (V, H, W)), ("intrinsics", (V, 3, 3))):
        if obs.get(key) is None:
            continue
        arr = np.asarray(obs[key])
        if arr.shape != shape and not (V == 1 and arr.shape == shape[1:]):
            raise ValueError(f"observation shapes {_shapes(obs)}: {key} should be {shape} for rgb {rgb.shape}; "
                             f"{want}")
        out[key] = arr.reshape(shape)
    state = np.asarray(obs["state"], np.float32)
    if state.ndim != 1 or (state_dim and state.shape[0] != state_dim):
        raise ValueError(f"observation shapes {_shapes(obs)}: state should be ({state_dim or 'S'},); {want}")
    out["state"] = state
    if not isinstance(obs["instruction"], str):
        raise ValueError(f"observation instruction is {type(obs['instruction']).__name__}: expected one str")
    return out


def observation_message(obs: dict[str, Any], cameras: list[str], image_format: str = "raw",
                        depth_format: str = "float32", state_dim: int | None = None) -> policy_pb2.Observation:
    """One observation in the sim.schema layout (rgb (V, H, W, 3), ...) -> Observation message."""
    obs = check_observation(obs, cameras, state_dim)
    rgb, depth, K = obs["rgb"], obs.get("depth"), obs.get("intrinsics")
    msg = policy_pb2.Observation(state=to_tensor(obs["state"]), instruction=obs["instruction"])
    for v, name in enumerate(cameras):
        cam = msg.cameras.add(name=name)
        cam.rgb.CopyFrom(encode_image(rgb[v], image_format))
        if depth is not None:
            d = depth[v]
            if depth_format == "uint16":
                d = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)  # millimetres
            cam.depth.CopyFrom(to_tensor(d.astype(np.float32) if depth_format != "uint16" else d))
        if K is not None:
            cam.intrinsics.CopyFrom(to_tensor(np.asarray(K[v], np.float32)))
    return msg


class Session:
    """A StreamPredict session: one request, one response, in order; the server keeps the step counter and
    (optionally) executes or ensembles chunks. Not thread-safe: one control loop per session.

    A stream broken because the server went away (UNAVAILABLE: a restart) is reopened within the client's
    `wait_s`, as unary calls are retried, and the step is sent again on the new stream. The server's state for
    the episode (step counter, the chunk being executed, ensembling buffers) died with the old process, so the
    resent step starts them afresh (`reopened` counts these); past `wait_s`, one `ServerUnavailable`."""

    def __init__(self, owner: RemotePolicy, horizon: int = 0, ensemble: bool = False, ensemble_coef: float = 0.8,
                 timeout: float | None = None):
        self._owner = owner
        self._config = policy_pb2.SessionConfig(horizon=horizon, ensemble=ensemble, ensemble_coef=ensemble_coef)
        self._timeout = timeout
        self._first = True
        self._n = 0
        self.reopened = 0
        self._open()

    def _open(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = self._owner._policy.StreamPredict(iter(self._requests.get, None), metadata=self._owner._metadata,
                                                       timeout=self._timeout)

    def step(self, obs: dict[str, Any], reset: bool = False) -> StepResult:
        message = self._owner._observation(obs)
        first_failure = None
        for attempt in itertools.count():
            req = policy_pb2.PredictRequest(observation=message, reset=reset or self._first, request_id=self._n)
            if req.reset:
                req.session.CopyFrom(self._config)
            self._requests.put(req)
            try:
                r = next(self._call)
                break
            except grpc.RpcError as e:
                first_failure = self._owner._wait_after(e, attempt, first_failure)
                self._requests.put(None)  # ends the old stream's request iterator
                self._open()
                self._first = True  # the new stream starts the episode's server state afresh
                self.reopened += 1
        self._first = False
        self._n += 1
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

    `timeout`: each call's deadline (seconds) once the server answers. `wait_s`: how long a call keeps trying a
    server that is unreachable (None: `timeout`), then `ServerUnavailable`; `retries` optionally caps the attempts
    (0: fail at the first UNAVAILABLE). `client_id` names this client to the server, which queues and counts each
    client apart (default: host/pid/instance).

    `address` may list several stateless replicas ("ipv4:10.0.0.1:50051,10.0.0.2:50051" or a DNS name with several
    records): unary calls are spread over them round robin.
    """

    def __init__(self, address: str, token: str | None = None, tls: bool | str | bytes = False,
                 timeout: float = 10.0, retries: int | None = None, backoff_s: float = 0.05,
                 image_format: str = "raw", depth_format: str = "float32", max_message_mb: float = 16.0,
                 server_name: str | None = None, wait_s: float | None = None, client_id: str | None = None):
        if timeout <= 0 or (wait_s is not None and wait_s < 0) or (retries is not None and retries < 0):
            raise ValueError(f"timeout={timeout} must be > 0, wait_s={wait_s} and retries={retries} >= 0")
        limit = int(max_message_mb * 2**20)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.lb_policy_name", "round_robin"), *RECONNECT_OPTIONS]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = _credentials(tls)
        self.channel = (grpc.secure_channel(address, creds, options) if creds is not None
                        else grpc.insecure_channel(address, options))
        self.address, self.timeout, self.retries, self.backoff_s = address, timeout, retries, backoff_s
        self.wait_s = timeout if wait_s is None else wait_s
        self.image_format, self.depth_format = image_format, depth_format
        self.client_id = client_id or f"{socket.gethostname()}/{os.getpid()}/{next(_INSTANCES)}"
        self._metadata = (("vla-client", self.client_id),) + ((("authorization", f"Bearer {token}"),) if token
                                                               else ())
        self._policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self._vision = vision_pb2_grpc.VisionServiceStub(self.channel)
        self._metrics = metrics_pb2_grpc.MetricsServiceStub(self.channel)
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # --- plumbing ----------------------------------------------------------------------------------------
    def _call(self, method, request, timeout: float | None = None):
        """Unary call with a deadline of `timeout`; UNAVAILABLE is retried (jittered exponential backoff, at most
        1 s apart) until `wait_s` has passed since the first failure, then ServerUnavailable."""
        timeout = self.timeout if timeout is None else timeout
        first_failure = None
        for attempt in itertools.count():
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                first_failure = self._wait_after(e, attempt, first_failure)
        raise AssertionError("unreachable")

    def _wait_after(self, error: grpc.RpcError, attempt: int, first_failure: float | None) -> float:
        """After failed attempt `attempt`: re-raise a non-retryable error, raise ServerUnavailable once `wait_s`
        (or `retries`) is spent, else sleep the jittered backoff; returns the time of the first failure."""
        if error.code() not in RETRYABLE:
            raise error
        now = time.monotonic()
        first_failure = now if first_failure is None else first_failure
        left = first_failure + self.wait_s - now
        if left <= 0 or (self.retries is not None and attempt >= self.retries):
            raise ServerUnavailable(self.address, now - first_failure, attempt + 1, error) from None
        time.sleep(min(left, 1.0, self.backoff_s * 2**attempt * (0.5 + random.random())))
        return first_failure

    def _observation(self, obs: dict[str, Any]) -> policy_pb2.Observation:
        info = self.info()
        return observation_message(obs, info["cameras"], self.image_format, self.depth_format, info.get("state_dim"))

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
        if np.ndim(obs.get("rgb")) == 5:
            return self._predict_batch(obs, timeout, with_timing)
        r = self._call(self._policy.Predict, policy_pb2.PredictRequest(observation=self._observation(obs)), timeout)
        actions = from_tensor(r.actions, "actions")
        return (actions, _timing(r.timing)) if with_timing else actions

    def _predict_batch(self, obs: dict[str, Any], timeout: float | None, with_timing: bool):
        B = len(obs["rgb"])
        keys = [k for k in ("rgb", "depth", "intrinsics", "state", "instruction") if obs.get(k) is not None]
        instructions = obs.get("instruction")
        batched = (np.ndim(obs.get("state")) == 2 and isinstance(instructions, (list, tuple))
                   and len(instructions) == B
                   and all(np.shape(obs[k])[:1] == (B,) for k in ("depth", "intrinsics", "state") if k in keys))
        if not batched:
            info = self.info()
            V = len(info["cameras"])
            hint = (f" For one observation (what an environment returns) pass rgb {np.shape(obs['rgb'])[1:]} "
                    "as it is, without the extra leading axis (depth and intrinsics likewise)."
                    if np.shape(obs["rgb"])[1] == V and np.ndim(obs.get("state")) == 1 else "")
            raise ValueError(f"rgb {np.shape(obs['rgb'])} reads as a batch of {B} observations, but {_shapes(obs)}, "
                             f"instruction {type(obs.get('instruction')).__name__}: a batch needs rgb (B, V, H, W, 3), "
                             f"state (B, {info.get('state_dim') or 'S'}), B instructions (V = {V} camera(s) "
                             f"{info['cameras']}).{hint}")
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

    def session(self, horizon: int | None = None, ensemble: bool | None = None, ensemble_coef: float = 0.8,
                timeout: float | None = None) -> Session:
        """Open a streaming session (see Session). horizon / ensemble None: the execution settings the model
        was evaluated with (its metadata's "execution"); horizon 0: every step returns the whole chunk and the
        caller executes it. `timeout` bounds the whole stream (None: none)."""
        if horizon is None or ensemble is None:
            ex = (self.info().get("metadata") or {}).get("execution") or {}
            ensemble = bool(ex.get("ensemble", False)) if ensemble is None else ensemble
            if horizon is None:
                horizon = 0 if ensemble else int(ex.get("horizon") or 0)
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


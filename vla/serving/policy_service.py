"""PolicyService: decode -> batcher -> policy -> encode. Unary Predict, streaming sessions, model metadata."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from sim.chunking import ChunkEnsembler, ChunkQueue
from vla._proto.v1 import policy_pb2 as ppb
from vla._proto.v1 import policy_pb2_grpc
from vla._proto.v1 import tensor_pb2 as tpb
from vla.serving.batcher import BatchResult, DynamicBatcher
from vla.serving.codec import FieldError, float32_field, to_tensor, varint
from vla.serving.layout import LayoutCache
from vla.serving.metrics import Metrics
from vla.serving.rpc import abort_for, cancelled_code, client_of, deadline_of, parse_message, status_of, unary
from vla.serving.validation import ObservationSpec, check_session, needs_decoding, parse_observation


def _layout_names(layout: Any, action_dim: int) -> list[str]:
    if isinstance(layout, str):
        return [layout] if action_dim == 1 else [f"{layout}[{i}]" for i in range(action_dim)]
    if isinstance(layout, dict):
        return [str(k) for k in layout]
    if isinstance(layout, (list, tuple)):
        names: list[str] = []
        for x in layout:  # groups {"name", "dims"} (vla.policy.action_grid) expand to one name per dim
            if isinstance(x, dict) and len(x.get("dims", ())) > 1:
                names += [f"{x['name']}[{i}]" for i in range(len(x["dims"]))]
            else:
                names.append(str(x.get("name", x)) if isinstance(x, dict) else str(x))
        return names
    return []


def _flat_stats(stats: Any, prefix: str = "") -> dict[str, tpb.Tensor]:
    """Numeric leaves of a nested stats dict -> {"a.b": float32 Tensor}; the full dict is in metadata_json."""
    out: dict[str, tpb.Tensor] = {}
    if isinstance(stats, dict):
        for k, v in stats.items():
            out.update(_flat_stats(v, f"{prefix}{k}."))
        return out
    try:
        arr = np.asarray(stats, dtype=np.float32)
    except (TypeError, ValueError):
        return out
    if arr.dtype == np.float32 and prefix:
        out[prefix[:-1]] = to_tensor(arr)
    return out


def model_info(meta: dict[str, Any], max_batch: int) -> ppb.ModelInfo:
    """The policy's metadata() -> ModelInfo (typed fields for clients, the whole dict as JSON)."""
    h, w = (list(meta.get("image_size") or [0, 0]) + [0, 0])[:2]
    intr = meta.get("intrinsics") or {}
    cams = []
    for name in meta.get("cameras") or ():
        cam = ppb.CameraInfo(name=name, height=int(h), width=int(w))
        if name in intr:
            cam.intrinsics.CopyFrom(to_tensor(np.asarray(intr[name], np.float32)))
        cams.append(cam)
    hz = meta.get("control_hz")
    return ppb.ModelInfo(
        action_layout=_layout_names(meta.get("action_layout"), int(meta.get("action_dim", 0))),
        action_dim=int(meta.get("action_dim", 0)), chunk_len=int(meta.get("chunk_len", 0)),
        control_hz=float(hz) if hz else 0.0, cameras=cams, state_dim=int(meta.get("state_dim", 0)),
        stats=_flat_stats(meta.get("stats") or {}), model_version=str(meta.get("model_version") or ""),
        checkpoint=str(meta.get("checkpoint") or ""), param_count=int(meta.get("param_count") or 0),
        uses_depth=bool(meta.get("uses_depth", False)), uses_intrinsics=bool(meta.get("uses_intrinsics", False)),
        max_batch=max_batch, metadata_json=json.dumps(meta, default=str, sort_keys=True))


_TIMING = struct.Struct("<BdBdBdBd")  # Timing's four doubles with their tags (fields 1-4, fixed64)


def _reply(t0: float, parse_s: float, res: BatchResult | None, request_id: int, actions: np.ndarray | None = None,
           action: np.ndarray | None = None, step: int = 0) -> bytes:
    """A serialized PredictResponse, written field by field (vla.serving.codec.float32_field): the reply of
    every call, so no message objects are built for it. Timing is measured up to this call."""
    parts = [] if actions is None else [float32_field(1, actions)]
    if action is not None:
        parts.append(float32_field(2, action))
    if step:
        parts.append(b"\x18" + varint(step))
    total = (time.perf_counter() - t0) * 1e3
    if res is None:
        timing = _TIMING.pack(0x09, 0.0, 0x11, parse_s * 1e3, 0x19, 0.0, 0x21, total)
    else:
        timing = _TIMING.pack(0x09, res.queue_s * 1e3, 0x11, (parse_s + res.collate_s) * 1e3, 0x19,
                              res.model_s * 1e3, 0x21, total) + b"\x28" + varint(res.batch_size)
    parts.append(b"\x22" + varint(len(timing)) + timing)
    if request_id:
        parts.append(b"\x28" + varint(request_id))
    return b"".join(parts)


class _Session:
    """Per-stream state: step counter and the chunk executor (sim.chunking), configured by SessionConfig."""

    def __init__(self, action_dim: int, client: str = ""):
        self.action_dim, self.client = action_dim, client
        self.step = 0
        self.runner: ChunkQueue | ChunkEnsembler | None = None
        self._cfg: tuple[int, bool, float] = (0, False, 0.0)  # (horizon, ensemble, coef) from check_session

    def configure(self, cfg: ppb.SessionConfig) -> None:
        horizon, ensemble, coef = check_session(cfg)
        self._cfg = (horizon, ensemble, coef)
        self.reset()

    def reset(self) -> None:
        """A new episode with the current settings: step 0, empty chunk buffers."""
        horizon, ensemble, coef = self._cfg
        self.step = 0
        if ensemble:
            self.runner = ChunkEnsembler(1, self.action_dim, coef)
        elif horizon:
            self.runner = ChunkQueue(1, horizon, self.action_dim)
        else:
            self.runner = None

    def needs_chunk(self) -> bool:
        return self.runner is None or bool(self.runner.needs_chunk()[0])


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    raw_methods = ("Predict", "StreamPredict")  # bytes in and out: a learnt layout skips the protobuf parse

    def __init__(self, policy: Any, batcher: DynamicBatcher, metrics: Metrics, spec: ObservationSpec,
                 decode_pool: Executor, max_batch: int):
        self.policy, self.batcher, self.metrics, self.spec = policy, batcher, metrics, spec
        self.decode_pool = decode_pool
        self.layouts = LayoutCache(spec)
        meta = policy.metadata()
        self.action_dim = int(meta["action_dim"])
        self.info = model_info(meta, max_batch)

    async def _observe(self, data: bytes) -> tuple[dict[str, Any], Any]:
        """PredictRequest bytes -> (checked observation, the request message; for a request of a learnt layout
        (vla.serving.layout) without its observation field). Other requests are parsed and checked in full, then
        their layout is learnt."""
        hit = self.layouts.lookup(data)
        if hit is not None:
            return hit
        request = parse_message(ppb.PredictRequest, data)
        if not request.HasField("observation"):
            raise FieldError("observation", "missing")
        if needs_decoding(request.observation):  # PNG/JPEG decoding is CPU work: keep it off the event loop
            loop = asyncio.get_running_loop()
            obs = await loop.run_in_executor(self.decode_pool, parse_observation, request.observation, self.spec)
        else:
            obs = parse_observation(request.observation, self.spec)
            self.layouts.learn(data, request, obs)
        return obs, request

    @unary("Predict", per_client=True)
    async def Predict(self, data, context, client: str):
        t0 = time.perf_counter()
        deadline = deadline_of(context)
        obs, request = await self._observe(data)
        parse_s = time.perf_counter() - t0
        res = await self.batcher.submit(obs, deadline, client)
        return _reply(t0, parse_s, res, request.request_id, res.actions)

    async def StreamPredict(self, request_iterator, context):
        """An async generator: `yield` costs about 40 us a message where `await context.write()` cost about
        500 us (grpcio 1.85 aio, cProfile self time on the 2-core dev machine)."""
        session = _Session(self.action_dim, client_of(context))
        first = True
        async for data in request_iterator:
            t0 = time.perf_counter()
            code = "OK"
            try:
                reply = await self._step(session, data, first, context, t0)
            except asyncio.CancelledError:
                code = cancelled_code(context)
                raise
            except Exception as e:
                code = status_of(e).name
                await abort_for(context, "StreamPredict", e, self.metrics)
            finally:
                self.metrics.record("StreamPredict", code, time.perf_counter() - t0, session.client)
            yield reply
            first = False

    async def _step(self, session: _Session, data: bytes, first: bool, context, t0: float) -> bytes:
        deadline = deadline_of(context)
        obs, request = await self._observe(data)
        if first or (request.reset and request.HasField("session")):
            session.configure(request.session)
        elif request.reset:
            session.reset()  # a reset without a session message keeps the stream's horizon/ensembling
        parse_s = time.perf_counter() - t0
        res = actions = action = None
        if session.needs_chunk():
            res = await self.batcher.submit(obs, deadline, session.client)
            actions = res.actions
            if session.runner is not None:
                session.runner.add(actions[None])  # (1, T, A)
        if session.runner is not None:
            action = session.runner.pop()[0]
        step, session.step = session.step, session.step + 1
        return _reply(t0, parse_s, res, request.request_id, actions, action, step)

    @unary("GetModelInfo")
    async def GetModelInfo(self, request, context):
        return self.info

"""Exception -> gRPC status mapping shared by the servicers, with per-method metrics."""

from __future__ import annotations

import asyncio
import functools
import time

import grpc

from vla.errors import UserError
from vla.serving.batcher import Expired, Overloaded, Unavailable
from vla.serving.metrics import log, log_event


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, UserError):  # FieldError included
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(e, Expired):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(e, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def abort_for(context, method: str, e: Exception):
    """Answer the RPC with the status for `e`; unexpected errors are logged with a traceback."""
    code = status_of(e)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        await context.abort(code, f"{method}: internal error: {type(e).__name__}: {e}")
    log_event("rpc_error", 10, method=method, code=code.name, message=str(e))  # 10 = DEBUG
    await context.abort(code, str(e))


def unary(method: str):
    """Decorate an async unary handler: map exceptions to statuses, count the call and its latency."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context):
            t0 = time.perf_counter()
            code = "OK"
            try:
                if isinstance(request, Malformed):
                    request.raise_error()
                return await fn(self, request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as e:
                code = status_of(e).name
                await abort_for(context, method, e)
            finally:
                self.metrics.record(method, code, time.perf_counter() - t0)

        return wrapper

    return deco


def deadline_of(context) -> float | None:
    """The RPC deadline as a time.perf_counter() instant (None: no deadline); Expired if already passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise Expired("deadline passed before the request was read")
    return time.perf_counter() + remaining


class Malformed:
    """Stands in for a request whose bytes do not parse, so the handler answers INVALID_ARGUMENT (grpc's own
    deserializer failure would be UNKNOWN plus a logged traceback per bad request)."""

    def __init__(self, type_name: str, error: str):
        self.type_name, self.error = type_name, error

    def raise_error(self):
        from vla.serving.codec import FieldError

        raise FieldError("request", f"not a valid {self.type_name} message ({self.error})")


def _tolerant(cls):
    from google.protobuf.message import DecodeError

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(cls.DESCRIPTOR.full_name, str(e))

    return parse


def add_service(server, servicer, service) -> str:
    """Register `servicer` for the ServiceDescriptor `service` with tolerant request parsing; returns its name."""
    from google.protobuf.message_factory import GetMessageClass

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for m in service.methods:
        make = kinds[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = make(getattr(servicer, m.name),
                                request_deserializer=_tolerant(GetMessageClass(m.input_type)),
                                response_serializer=GetMessageClass(m.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name

"""Exception -> gRPC status mapping shared by the servicers, with per-method (and per-client) metrics.

A request whose deadline passed before its handler read it is answered DEADLINE_EXCEEDED and counted
(`expired_unread`), not logged; a unary one whose deadline passed while it ran is DEADLINE_EXCEEDED too, its late
answer dropped. An RPC that grpc's core has already finished (its deadline timer fired first, or the client went away)
can no longer be answered: the handler ends as cancelled (a DEBUG line), instead of the ERROR traceback grpc logs
when `context.abort` fails; where grpc itself fails to send a handler's answer for that reason, `EndedRpcFilter`
turns its ERROR traceback into a counted DEBUG event (`ended_before_reply`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from vla.errors import UserError
from vla.serving.batcher import Expired, Overloaded, Unavailable
from vla.serving.metrics import log, log_event

CLIENT_KEY = "vla-client"  # request metadata naming the caller for fairness and per-client metrics
MAX_CLIENT_CHARS = 64


class ExpiredUnread(Expired):
    """The deadline passed before the handler read the request."""


def client_of(context) -> str:
    """Who is calling: the `vla-client` metadata (RemotePolicy sends one per instance), else the peer address
    (one per connection)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_KEY:
            return str(value)[:MAX_CLIENT_CHARS]
    return context.peer()


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


async def abort_for(context, method: str, e: Exception, metrics=None):
    """Answer the RPC with the status for `e`; unexpected errors are logged with a traceback. Raises
    CancelledError (quietly) when the RPC has already ended and cannot be answered any more."""
    code = status_of(e)
    if isinstance(e, ExpiredUnread) and metrics is not None:
        metrics.expired_unread += 1
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        details = f"{method}: internal error: {type(e).__name__}: {e}"
    else:
        log_event("rpc_error", 10, method=method, code=code.name, message=str(e))  # 10 = DEBUG
        details = str(e)
    try:
        await context.abort(code, details)
    except grpc.aio.AbortError:
        raise
    except Exception as gone:  # noqa: BLE001 (grpc's ExecuteBatchError: the call already has its status)
        log_event("rpc_gone", 10, method=method, code=code.name, error=repr(gone))
        raise asyncio.CancelledError from None


def unary(method: str, per_client: bool = False):
    """Decorate an async unary handler: map exceptions to statuses, count the call and its latency (per client
    too with per_client=True: the handler then gets the client's name as a fourth argument)."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context):
            t0 = time.perf_counter()
            code = "OK"
            client = client_of(context) if per_client else None
            try:
                if isinstance(request, Malformed):
                    request.raise_error()
                reply = await (fn(self, request, context, client) if per_client else fn(self, request, context))
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:  # grpc's core has ended the RPC, or is about to
                    raise Expired("deadline passed while the request ran")
                return reply
            except asyncio.CancelledError:
                code = cancelled_code(context)
                raise
            except Exception as e:
                code = status_of(e).name
                await abort_for(context, method, e, self.metrics)
            finally:
                self.metrics.record(method, code, time.perf_counter() - t0, client)

        return wrapper

    return deco


class EndedRpcFilter(logging.Filter):
    """On grpc's own logger: its ERROR traceback for a handler's answer to an RPC its core had already ended (the
    client went away, or the deadline fired while the handler ran and before grpc told it) becomes a counted DEBUG
    event. Nothing is lost: that caller has its status from grpc's core already. Installed by the server while it
    runs (`install`, `remove`). grpc's logger is the process's: with several servers in one process (tests), the
    first one installed counts them all, and another grpc.aio server's such tracebacks are quiet too."""

    LOGGER = "grpc._cython.cygrpc"
    MESSAGE = "ExecuteBatchError raised in core by servicer method"

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        self.metrics.ended_before_reply += 1
        log_event("rpc_gone", 10, method=str(record.args[0]) if record.args else "", source="grpc")
        return False

    def install(self) -> EndedRpcFilter:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def remove(self) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


# The server's copy of a deadline is the client's plus the request's transit: a client whose own deadline fired
# cancels while the server still sees up to this much time left (seen under CPU load in tests/serving).
DEADLINE_SLACK_S = 0.25


def cancelled_code(context) -> str:
    """What a cancelled RPC counts as: DEADLINE_EXCEEDED when its deadline has passed or is within
    DEADLINE_SLACK_S (grpc cancels the handler then, or the client's deadline fired first), else CANCELLED (the
    client gave up)."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


def deadline_of(context) -> float | None:
    """The RPC deadline as a time.perf_counter() instant (None: no deadline); Expired if already passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise ExpiredUnread("deadline passed before the request was read")
    return time.perf_counter() + remaining


class Malformed:
    """Stands in for a request whose bytes do not parse, so the handler answers INVALID_ARGUMENT (grpc's own
    deserializer failure would be UNKNOWN plus a logged traceback per bad request)."""

    def __init__(self, type_name: str, error: str):
        self.type_name, self.error = type_name, error

    def raise_error(self):
        from vla.serving.codec import FieldError

        raise FieldError("request", f"not a valid {self.type_name} message ({self.error})")


def parse_message(cls, data: bytes):
    """Request bytes -> message; FieldError (INVALID_ARGUMENT) when they do not parse."""
    parsed = _tolerant(cls)(data)
    if isinstance(parsed, Malformed):
        parsed.raise_error()
    return parsed


def _tolerant(cls):
    from google.protobuf.message import DecodeError

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(cls.DESCRIPTOR.full_name, str(e))

    return parse


def add_service(server, servicer, service) -> str:
    """Register `servicer` for the ServiceDescriptor `service` with tolerant request parsing; returns its name.
    Methods named in the servicer's `raw_methods` take and return serialized bytes (the handler parses the request
    and writes the reply itself: no (de)serializer call per message)."""
    from google.protobuf.message_factory import GetMessageClass

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    raw = set(getattr(servicer, "raw_methods", ()))
    handlers = {}
    for m in service.methods:
        make = kinds[(m.client_streaming, m.server_streaming)]
        if m.name in raw:
            handlers[m.name] = make(getattr(servicer, m.name))
        else:
            handlers[m.name] = make(getattr(servicer, m.name), request_deserializer=_tolerant(
                GetMessageClass(m.input_type)), response_serializer=GetMessageClass(m.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name

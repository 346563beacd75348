"""Bearer-token authentication as a gRPC ServerInterceptor: UNAUTHENTICATED before any handler runs.

Clients send metadata `authorization: Bearer <token>`. The health service stays open so that load balancers and
`grpc_health_probe` can check liveness without the secret. Comparison is constant-time.
"""

from __future__ import annotations

import hmac

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
MESSAGE = "missing or wrong bearer token (send metadata 'authorization: Bearer <token>')"


async def _deny(request_or_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


def _denying_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary/stream) that only aborts."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(_deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        if not token:
            raise ValueError("empty --token")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        got = next((v for k, v in (details.invocation_metadata or ()) if k == "authorization"), "")
        got = got.encode() if isinstance(got, str) else bytes(got)
        if hmac.compare_digest(got, self._expected):
            return handler
        return _denying_handler(handler)

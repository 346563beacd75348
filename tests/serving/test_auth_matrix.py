"""Token auth over every RPC the server can answer: each method of each service in the descriptors (our generated
protos, found by scanning vla._proto, plus reflection and health), called without a token, with a wrong one, with
a prefix of the right one and with other near misses, answers UNAUTHENTICATED; only health stays open. An RPC or a
service added to the protos later is picked up without editing this file, and a service the server registers
(its reflection list) that the scan did not find fails the last test.
"""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import pytest
from conftest import FakePolicy
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import vla._proto.v1 as proto_pkg

TOKEN = "s3cret-token"
OPEN = {"grpc.health.v1.Health"}
NEAR_MISSES = {  # the authorization metadata sent (None: no metadata at all)
    "none": None,
    "wrong": "Bearer wrong",
    "prefix": f"Bearer {TOKEN[:-1]}",
    "scheme-only": "Bearer ",
    "no-scheme": TOKEN,
    "longer": f"Bearer {TOKEN}x",
    "other-scheme": f"Basic {TOKEN}",
}


def _services():
    files = [importlib.import_module(f"{proto_pkg.__name__}.{m.name}").DESCRIPTOR
             for m in pkgutil.iter_modules(proto_pkg.__path__) if m.name.endswith("_pb2")]
    files += [reflection_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR]
    return [s for f in files for s in f.services_by_name.values()]


SERVICES = _services()
METHODS = [(s, m) for s in SERVICES for m in s.methods]
GUARDED = [(s, m) for s, m in METHODS if s.full_name not in OPEN]
_ids = lambda sm: f"{sm[0].name}.{sm[1].name}"  # noqa: E731


def test_the_scan_finds_every_service_and_method():
    names = {f"{s.full_name}/{m.name}" for s, m in METHODS}
    for want in ("vla.v1.PolicyService/Predict", "vla.v1.PolicyService/StreamPredict",
                 "vla.v1.PolicyService/GetModelInfo", "vla.v1.VisionService/Classify", "vla.v1.VisionService/Embed",
                 "vla.v1.MetricsService/GetMetrics", "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                 "grpc.health.v1.Health/Check"):
        assert want in names


@pytest.fixture(scope="module")
def server():
    from vla.clip import load_clip
    from vla.serving.server import ServeConfig, ServerThread
    from vla.serving.vision_service import VisionModel

    srv = ServerThread(FakePolicy(), ServeConfig(port=0, token=TOKEN), VisionModel(load_clip("vla-tiny"))).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield channel
    channel.close()
    srv.stop(0)


def call(channel, service, method, authorization) -> grpc.StatusCode:
    """One call of any kind with an empty request message; the status it ends with (streams: at the first reply)."""
    request = message_factory.GetMessageClass(method.input_type)()
    reply = message_factory.GetMessageClass(method.output_type)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    stub = kind(f"/{service.full_name}/{method.name}", request_serializer=type(request).SerializeToString,
                response_deserializer=reply.FromString)
    metadata = () if authorization is None else (("authorization", authorization),)
    arg = iter([request]) if method.client_streaming else request
    try:
        if method.server_streaming:
            responses = stub(arg, metadata=metadata, timeout=30)
            next(responses)
            responses.cancel()
        else:
            stub(arg, metadata=metadata, timeout=30)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("miss", list(NEAR_MISSES))
@pytest.mark.parametrize("sm", GUARDED, ids=_ids)
def test_guarded_method_refuses_without_the_token(server, sm, miss):
    assert call(server, *sm, NEAR_MISSES[miss]) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("sm", METHODS, ids=_ids)
def test_right_token_reaches_every_handler(server, sm):
    """The control: with the token the same call passes the interceptor (OK, or the handler's own refusal of an
    empty request), so the refusals above come from auth and not from the empty request."""
    assert call(server, *sm, f"Bearer {TOKEN}") != grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("sm", [(s, m) for s, m in METHODS if s.full_name in OPEN], ids=_ids)
def test_health_is_open(server, sm):
    """Probes need no secret (the installed servicer may not implement every health method: only the interceptor
    is under test here, Check must answer)."""
    code = call(server, *sm, None)
    assert code != grpc.StatusCode.UNAUTHENTICATED
    assert code == grpc.StatusCode.OK or sm[1].name != "Check"


def test_server_registers_no_service_the_scan_missed(server):
    stub = server.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub(iter([request]), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30))
    listed = {s.name for s in reply.list_services_response.service}
    assert {"vla.v1.PolicyService", "vla.v1.VisionService", "vla.v1.MetricsService"} <= listed
    assert listed <= {s.full_name for s in SERVICES}, listed - {s.full_name for s in SERVICES}

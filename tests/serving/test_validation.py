"""Every invalid field -> INVALID_ARGUMENT naming it, and the server keeps serving; a seeded fuzz of malformed
requests (field mutations and raw bytes) followed by a valid request that must succeed."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, make_obs

from vla._proto.v1 import policy_pb2, policy_pb2_grpc
from vla._proto.v1 import tensor_pb2 as tpb
from vla.client import observation_message
from vla.serving.codec import to_tensor


@pytest.fixture(scope="module")
def stub():
    from vla.serving.server import ServeConfig, ServerThread

    srv = ServerThread(FakePolicy(cameras=("left", "right")), ServeConfig(port=0, max_message_mb=1)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield policy_pb2_grpc.PolicyServiceStub(channel), channel
    channel.close()
    srv.stop(0)


def valid() -> policy_pb2.PredictRequest:
    return policy_pb2.PredictRequest(observation=observation_message(make_obs(0, cameras=2), ["left", "right"]))


def _png(shape=(32, 32, 3), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.zeros(shape, np.uint16 if mode == "I;16" else np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")  # uint16 (H, W) -> a 16-bit greyscale PNG
    return buf.getvalue()


def _set(path: str, value):
    def mutate(r):
        *parents, last = path.split(".")
        obj = r.observation
        for p in parents:
            obj = obj.cameras[int(p[8:-1])] if p.startswith("cameras[") else getattr(obj, p)
        if isinstance(value, tpb.Tensor):
            getattr(obj, last).CopyFrom(value)
        else:
            setattr(obj, last, value)
    return mutate


def _nan_state(r):
    r.observation.state.CopyFrom(to_tensor(np.array([0, np.nan, 0, 0], np.float32)))


CASES = {  # name: (mutation, field named in the message)
    "no observation": (lambda r: r.ClearField("observation"), "observation"),
    "no camera": (lambda r: r.observation.ClearField("cameras"), "observation.cameras"),
    "unknown camera": (_set("cameras[1].name", "top"), "observation.cameras[1].name"),
    "repeated camera": (_set("cameras[1].name", "left"), "observation.cameras[1].name"),
    "missing camera": (lambda r: r.observation.cameras.pop(), "observation.cameras"),
    "no rgb": (lambda r: r.observation.cameras[0].ClearField("rgb"), "observation.cameras[0].rgb"),
    "rgb dtype": (_set("cameras[0].rgb.raw", to_tensor(np.zeros((32, 32, 3), np.float32))),
                  "observation.cameras[0].rgb.raw.dtype"),
    "rgb shape": (_set("cameras[0].rgb.raw", to_tensor(np.zeros((32, 32), np.uint8))),
                  "observation.cameras[0].rgb.raw.shape"),
    "rgb 4 channels": (_set("cameras[0].rgb.raw", to_tensor(np.zeros((32, 32, 4), np.uint8))),
                       "observation.cameras[0].rgb.raw.shape"),
    "rgb bytes": (_set("cameras[0].rgb.raw", tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[32, 32, 3], data=b"x" * 7)),
                  "observation.cameras[0].rgb.raw.data"),
    "rgb unknown dtype": (_set("cameras[0].rgb.raw", tpb.Tensor(dtype=99, shape=[1, 1, 3], data=b"xyz")),
                          "observation.cameras[0].rgb.raw.dtype"),
    "rgb negative dim": (_set("cameras[0].rgb.raw", tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[-1, 1, 3])),
                         "observation.cameras[0].rgb.raw.shape"),
    "rgb empty": (_set("cameras[0].rgb.raw", to_tensor(np.zeros((0, 32, 3), np.uint8))),
                  "observation.cameras[0].rgb.raw.shape"),
    "image size differs": (_set("cameras[1].rgb.raw", to_tensor(np.zeros((16, 32, 3), np.uint8))),
                           "observation.cameras[1].rgb"),
    "not an image": (_set("cameras[0].rgb.encoded", b"GIF89a...."), "observation.cameras[0].rgb.encoded"),
    "truncated png": (_set("cameras[0].rgb.encoded", _png()[:40]), "observation.cameras[0].rgb.encoded"),
    "16-bit png": (_set("cameras[0].rgb.encoded", _png((8, 8), "I;16")), "observation.cameras[0].rgb.encoded"),
    "depth dtype": (_set("cameras[0].depth", to_tensor(np.zeros((32, 32), np.float64))),
                    "observation.cameras[0].depth.dtype"),
    "depth shape": (_set("cameras[0].depth", to_tensor(np.zeros((32, 31), np.float32))),
                    "observation.cameras[0].depth.shape"),
    "depth nan": (_set("cameras[1].depth", to_tensor(np.full((32, 32), np.nan, np.float32))),
                  "observation.cameras[1].depth"),
    "depth inf": (_set("cameras[0].depth", to_tensor(np.full((32, 32), np.inf, np.float32))),
                  "observation.cameras[0].depth"),
    "depth negative": (_set("cameras[0].depth", to_tensor(np.full((32, 32), -1, np.float32))),
                       "observation.cameras[0].depth"),
    "depth on one camera only": (lambda r: r.observation.cameras[1].ClearField("depth"),
                                 "observation.cameras[1].depth"),
    "intrinsics shape": (_set("cameras[0].intrinsics", to_tensor(np.eye(4, dtype=np.float32))),
                         "observation.cameras[0].intrinsics.shape"),
    "intrinsics focal": (_set("cameras[0].intrinsics", to_tensor(np.zeros((3, 3), np.float32))),
                         "observation.cameras[0].intrinsics"),
    "intrinsics on one camera only": (lambda r: r.observation.cameras[0].ClearField("intrinsics"),
                                      "observation.cameras[0].intrinsics"),
    "no state": (lambda r: r.observation.ClearField("state"), "observation.state"),
    "state shape": (_set("state", to_tensor(np.zeros(5, np.float32))), "observation.state.shape"),
    "state dtype": (_set("state", to_tensor(np.zeros(4, np.float64))), "observation.state.dtype"),
    "state nan": (_nan_state, "observation.state"),
    "empty instruction": (_set("instruction", "   "), "observation.instruction"),
    "long instruction": (_set("instruction", "x" * 5000), "observation.instruction"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_field(stub, name):
    predict, _ = stub
    mutate, field = CASES[name]
    req = valid()
    mutate(req)
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(field + ":") or e.value.details().startswith(field + "."), e.value.details()
    assert predict.Predict(valid(), timeout=10).actions.shape == [4, 4]  # still serving


def test_too_large_and_bad_session(stub):
    predict, _ = stub
    big = valid()
    big.observation.cameras[0].rgb.raw.CopyFrom(to_tensor(np.zeros((1024, 1024, 3), np.uint8)))  # 3 MiB > 1 MiB
    with pytest.raises(grpc.RpcError) as e:
        predict.Predict(big, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad = valid()
    bad.session.ensemble, bad.session.horizon = True, 2
    with pytest.raises(grpc.RpcError) as e:
        list(predict.StreamPredict(iter([bad]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("session.horizon")


def _mutations(rng):
    """Field-level mutations that always make a request invalid."""
    def rand_tensor():
        shape = rng.integers(-2, 40, rng.integers(0, 5)).tolist()
        return tpb.Tensor(dtype=int(rng.integers(0, 12)), shape=shape, data=rng.bytes(int(rng.integers(0, 64))))

    def camera_field(r):
        cam = r.observation.cameras[int(rng.integers(0, 2))]
        choice = rng.integers(0, 4)
        if choice == 0:
            cam.rgb.raw.CopyFrom(rand_tensor())
        elif choice == 1:
            cam.rgb.encoded = rng.bytes(int(rng.integers(0, 200)))
        elif choice == 2:
            cam.depth.CopyFrom(rand_tensor())
        else:
            cam.intrinsics.CopyFrom(rand_tensor())

    def name(r):
        r.observation.cameras[int(rng.integers(0, 2))].name = rng.bytes(4).hex()

    def state(r):
        r.observation.state.CopyFrom(rand_tensor())

    def instruction(r):
        r.observation.instruction = " " * int(rng.integers(0, 3))

    return [camera_field, name, state, instruction]


def test_fuzz_then_valid(stub):
    predict, channel = stub
    rng = np.random.default_rng(1234)
    mutations = _mutations(rng)
    raw = channel.unary_unary("/vla.v1.PolicyService/Predict")  # bytes in, bytes out
    template = valid()
    codes = {}
    for _ in range(20):  # 100 requests in flight at a time
        futures = []
        for _i in range(100):
            if rng.random() < 0.25:  # arbitrary bytes: either not a protobuf or a request missing its fields
                futures.append(raw.future(rng.bytes(int(rng.integers(0, 300))), timeout=30))
                continue
            req = policy_pb2.PredictRequest()
            req.CopyFrom(template)
            for m in rng.choice(len(mutations), int(rng.integers(1, 4))):
                mutations[m](req)
            futures.append(predict.Predict.future(req, timeout=30))
        for f in futures:
            code = f.exception().code() if f.exception() is not None else grpc.StatusCode.OK
            codes[code] = codes.get(code, 0) + 1
    # undecodable bytes included: every request is named INVALID_ARGUMENT, none got through or crashed the server
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT: 2000}, codes
    reply = predict.Predict(valid(), timeout=10)
    assert reply.actions.shape == [4, 4] and np.isfinite(np.frombuffer(reply.actions.data, np.float32)).all()

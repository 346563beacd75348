"""Learnt request layouts (vla.serving.layout) against the full check (validation.parse_observation, the reference):
the same observation for every request that hits, the same refusal for every bad value, and no hit for anything
whose structure differs or that protobuf would read differently. Also the replies written as bytes
(policy_service._reply, codec.float32_field) against protobuf's own messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla._proto.v1 import policy_pb2 as ppb
from vla._proto.v1 import tensor_pb2 as tpb
from vla.serving.batcher import BatchResult
from vla.serving.codec import FieldError, float32_field, to_tensor, varint
from vla.serving.layout import LayoutCache
from vla.serving.policy_service import _reply
from vla.serving.validation import ObservationSpec, parse_observation

SPEC = ObservationSpec(cameras=("left", "right"), state_dim=4)
ONE = ObservationSpec(cameras=("corner",), state_dim=4)


def request(seed: int = 0, spec: ObservationSpec = SPEC, order=None, depth: str | None = "float32", K: bool = True,
            size=(8, 6), instruction: str = " open it ", **fields) -> ppb.PredictRequest:
    """A random observation; `depth` None, float32 (metres) or uint16 (millimetres); other PredictRequest fields
    (request_id, reset, session) as keywords."""
    rng = np.random.default_rng(seed)
    obs = ppb.Observation(state=to_tensor(rng.normal(size=spec.state_dim).astype(np.float32)),
                          instruction=instruction)
    for name in order or spec.cameras:
        cam = obs.cameras.add(name=name)
        cam.rgb.raw.CopyFrom(to_tensor(rng.integers(0, 256, (*size, 3), dtype=np.uint8)))
        if depth == "float32":
            cam.depth.CopyFrom(to_tensor(rng.uniform(0.1, 4, size).astype(np.float32)))
        elif depth == "uint16":
            cam.depth.CopyFrom(to_tensor(rng.integers(0, 65535, size).astype(np.uint16)))
        if K:
            f = rng.uniform(50, 100)
            cam.intrinsics.CopyFrom(to_tensor(np.array([[f, 0, 3], [0, f, 4], [0, 0, 1]], np.float32)))
    return ppb.PredictRequest(observation=obs, **fields)


def full(data: bytes, spec: ObservationSpec = SPEC) -> dict:
    return parse_observation(ppb.PredictRequest.FromString(data).observation, spec)


def learnt(data: bytes, spec: ObservationSpec = SPEC) -> LayoutCache:
    cache = LayoutCache(spec)
    assert cache.lookup(data) is None
    cache.learn(data, ppb.PredictRequest.FromString(data), full(data, spec))
    return cache


def assert_same_observation(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        if key == "instruction":
            assert got[key] == want[key]
        else:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("kw", [
    {},
    {"order": ("right", "left"), "depth": "uint16", "K": False},
    {"depth": None, "K": False, "size": (5, 7)},
    {"spec": ONE, "size": (16, 16)},
])
def test_a_hit_gives_what_the_full_check_gives(kw):
    spec = kw.get("spec", SPEC)
    cache = learnt(request(0, **kw).SerializeToString(), spec)
    assert len(cache) == 1
    for seed in (1, 2, 3):  # other values, same layout
        data = request(seed, request_id=seed, **kw).SerializeToString()
        hit = cache.lookup(data)
        assert hit is not None
        obs, rest = hit
        assert_same_observation(obs, full(data, spec))
        assert rest.request_id == seed and not rest.HasField("observation")
        if len(spec.cameras) == 1:  # a view of the request bytes, not a copy (several cameras are stacked)
            assert not obs["rgb"].flags.writeable and obs["rgb"].base is not None


def test_fields_after_the_observation_are_read_every_time():
    cache = learnt(request(0).SerializeToString())
    data = request(1, reset=True, session=ppb.SessionConfig(horizon=3), request_id=2**40).SerializeToString()
    _, rest = cache.lookup(data)
    assert rest.reset and rest.HasField("session") and rest.session.horizon == 3 and rest.request_id == 2**40


def bad(kind: str) -> ppb.PredictRequest:
    req = request(5)
    cam = req.observation.cameras[1]
    if kind in ("nan depth", "negative depth"):
        d = np.frombuffer(cam.depth.data, np.float32).copy()
        d[7] = np.nan if kind == "nan depth" else -0.5
        cam.depth.data = d.tobytes()
    elif kind in ("inf state",):
        s = np.frombuffer(req.observation.state.data, np.float32).copy()
        s[2] = np.inf
        req.observation.state.data = s.tobytes()
    else:
        K = np.frombuffer(cam.intrinsics.data, np.float32).copy()
        K[{"zero fx": 0, "negative fy": 4, "nan K": 2}[kind]] = {"zero fx": 0, "negative fy": -3,
                                                                 "nan K": np.nan}[kind]
        cam.intrinsics.data = K.tobytes()
    return req


@pytest.mark.parametrize("kind", ["nan depth", "negative depth", "inf state", "zero fx", "negative fy", "nan K"])
def test_a_bad_value_is_refused_with_the_full_checks_message(kind):
    cache = learnt(request(0).SerializeToString())
    data = bad(kind).SerializeToString()
    with pytest.raises(FieldError) as reference:
        full(data)
    with pytest.raises(FieldError) as got:
        cache.lookup(data)
    assert str(got.value) == str(reference.value) and got.value.field == reference.value.field


@pytest.mark.parametrize("change", [
    {"instruction": "close it"}, {"size": (8, 7)}, {"depth": "uint16"}, {"K": False}, {"order": ("right", "left")},
])
def test_another_structure_misses_and_is_checked_in_full(change):
    cache = learnt(request(0).SerializeToString())
    assert cache.lookup(request(1, **change).SerializeToString()) is None


def test_a_request_the_full_check_refuses_never_hits():
    cache = learnt(request(0).SerializeToString())
    req = request(1)
    req.observation.instruction = " " * len(" open it ")  # same length: only the bytes differ
    data = req.SerializeToString()
    assert cache.lookup(data) is None
    with pytest.raises(FieldError, match="instruction: empty"):
        full(data)


def test_what_protobuf_would_read_differently_is_not_taken():
    data = request(0).SerializeToString()
    cache = learnt(data)
    extra = ppb.PredictRequest(observation=ppb.Observation(instruction="x")).SerializeToString()
    merged = data + extra  # protobuf merges a second observation field into the first
    assert ppb.PredictRequest.FromString(merged).observation.instruction == "x"
    assert cache.lookup(merged) is None
    assert cache.lookup(data[:-1]) is None  # truncated
    late = varint(4 << 3) + varint(7) + data  # request_id before the observation: not canonical
    assert ppb.PredictRequest.FromString(late).request_id == 7
    assert cache.lookup(late) is None
    fresh = LayoutCache(SPEC)
    for odd in (merged, late):
        fresh.learn(odd, ppb.PredictRequest.FromString(odd), full(odd))
    assert len(fresh) == 0


def test_encoded_images_are_not_learnt():
    from vla.serving.codec import encode_image

    req = request(0, depth=None, K=False)
    for cam in req.observation.cameras:
        cam.rgb.CopyFrom(encode_image(np.zeros((8, 6, 3), np.uint8), "png"))
    data = req.SerializeToString()
    cache = LayoutCache(SPEC)
    cache.learn(data, req, full(data))
    assert len(cache) == 0


def test_the_least_recently_learnt_layout_goes_first():
    cache = LayoutCache(SPEC, capacity=2)
    reqs = [request(0, instruction=t).SerializeToString() for t in ("a", "bb", "cc")]  # bb, cc: same length
    for data in reqs:
        cache.learn(data, ppb.PredictRequest.FromString(data), full(data))
    assert len(cache) == 2
    assert cache.lookup(reqs[0]) is None
    for data in (reqs[1], reqs[2], reqs[1]):  # alternating layouts of one length: each finds its own
        obs, _ = cache.lookup(data)
        assert_same_observation(obs, full(data))
    with pytest.raises(ValueError, match="capacity"):
        LayoutCache(SPEC, capacity=0)


# --- replies written as bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4), (7,), (1, 1, 1), (0, 3), (300, 2)])
def test_float32_field_is_the_tensor_protobuf_writes(shape):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = ppb.PredictResponse.FromString(float32_field(1, arr) + float32_field(2, arr[..., :1]))
    assert got.actions == to_tensor(arr) and got.action == to_tensor(arr[..., :1])
    assert float32_field(1, arr) == ppb.PredictResponse(actions=to_tensor(arr)).SerializeToString()


@pytest.mark.parametrize("res", [None, BatchResult(np.ones((4, 3), np.float32), 0.002, 0.001, 0.004, 300)])
@pytest.mark.parametrize("step,request_id", [(0, 0), (5, 1), (200, 2**63 + 5)])
def test_a_reply_parses_to_the_message_protobuf_would_build(res, step, request_id):
    action = np.arange(3, dtype=np.float32)
    actions = None if res is None else res.actions
    data = _reply(0.0, 0.0005, res, request_id, actions, action, step)
    got = ppb.PredictResponse.FromString(data)
    want = ppb.PredictResponse(action=to_tensor(action), step=step, request_id=request_id)
    if res is not None:
        want.actions.CopyFrom(to_tensor(actions))
        want.timing.CopyFrom(tpb.Timing(queue_ms=2.0, preprocess_ms=1.5, model_ms=4.0, batch_size=300))
    else:
        want.timing.preprocess_ms = 0.5
    want.timing.total_ms = got.timing.total_ms  # measured when the reply is written
    assert got.timing.total_ms > 0 and math.isfinite(got.timing.total_ms)
    for name in ("queue_ms", "preprocess_ms", "model_ms"):
        assert getattr(got.timing, name) == pytest.approx(getattr(want.timing, name))
        setattr(got.timing, name, getattr(want.timing, name))
    assert got == want


@pytest.mark.parametrize("x", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
def test_varint_reads_back(x):
    assert ppb.PredictResponse.FromString(b"\x28" + varint(x)).request_id == x


@pytest.mark.parametrize("name", ["c", "ca", "cam", "came"])
def test_depth_at_every_byte_alignment_is_checked_like_the_full_check(name):
    """The camera name's length moves the depth payload through the four offsets mod 4 (an unaligned payload is
    checked through the layout's own buffer): valid depth hits with the full check's arrays, NaN or a negative
    value anywhere is refused with its message, and one request's values never show up in another's answer."""
    spec = ObservationSpec(cameras=(name,), state_dim=4)
    cache = learnt(request(0, spec).SerializeToString(), spec)
    for seed in (1, 2):
        data = request(seed, spec).SerializeToString()
        obs, _ = cache.lookup(data)
        assert_same_observation(obs, full(data, spec))
    for index, value in ((0, -0.5), (47, np.nan), (23, np.inf)):
        req = request(3, spec)
        cam = req.observation.cameras[0]
        d = np.frombuffer(cam.depth.data, np.float32).copy()
        d.flat[index] = value
        cam.depth.data = d.tobytes()
        data = req.SerializeToString()
        with pytest.raises(FieldError) as reference:
            full(data, spec)
        with pytest.raises(FieldError) as got:
            cache.lookup(data)
        assert str(got.value) == str(reference.value)
    data = request(4, spec).SerializeToString()  # a good request after refused ones
    assert_same_observation(cache.lookup(data)[0], full(data, spec))


def test_the_alignment_test_covers_every_offset():
    """Where the depth payload starts in the request, found by searching the bytes (mod 4): all four occur."""
    offsets = set()
    for name in ("c", "ca", "cam", "came"):
        req = request(0, ObservationSpec(cameras=(name,), state_dim=4))
        offsets.add(req.SerializeToString().find(req.observation.cameras[0].depth.data) % 4)
    assert offsets == {0, 1, 2, 3}

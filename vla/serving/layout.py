"""A robot sends the same layout every call: check the layout once, then only the values.

Two serialized PredictRequests whose bytes are equal outside the tensor payloads (the tags, lengths, camera names,
dtypes, shapes and instruction of the observation) parse to the same structure with the payloads at the same
offsets: whatever the full check (`validation.parse_observation`) accepted about the first holds for the second,
except what depends on the payload values. So after a request passes the full check, its layout is kept (the
header bytes between its payloads and where each payload lies) and a later request with the same header bytes
gets only the value checks: depth finite and >= 0 (or uint16 millimetres converted), intrinsics finite with
fx, fy > 0, state finite. Its arrays are read-only views into the received bytes (no copy).

Why: on the two-core machine the full check through the protobuf object model took ~75 us per 128 px RGB-D frame
on the server (protobuf parse, a wrapper object per sub-message, a copy of every bytes field), most of the noop
server's overhead over bare grpcio; a layout hit takes a fraction of that. (A wire decoder in Python that built
light objects instead of protobuf's cost as much as protobuf: the saving is in not re-checking the structure.)

Only requests whose observation comes first and whose observation is in canonical form (each singular field once,
no unknown fields, raw images) are learnt; what follows the observation (reset, session, request_id) is parsed
with protobuf on every call. Anything else takes the full path, which stays the reference for every message.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla._proto.v1 import policy_pb2 as ppb
from vla.serving.codec import DTYPES
from vla.serving.validation import ObservationSpec, check_finite_values, check_intrinsics_values, depth_metres, depth_ok

_F32, _U32 = np.dtype("<f4"), np.dtype("<u4")
_EMPTY_REQUEST = ppb.PredictRequest()  # the fields after the observation when there are none; never written to


class _NotCanonical(Exception):
    pass


@dataclass(frozen=True)
class _Payload:
    """One tensor of a learnt layout: where its data lies in the request, and how to view it."""

    start: int
    count: int
    dtype: np.dtype
    shape: tuple[int, ...]
    field: str  # the request path, for value errors (cameras in request order, as the full check names them)
    unpack: Any = None  # float32 tensors: struct.Struct(f"<{count}f").unpack_from

    def view(self, data: bytes, shape: tuple[int, ...] | None = None, dtype: Any = None) -> np.ndarray:
        return np.ndarray(shape or self.shape, dtype or self.dtype, data, self.start)  # read-only, no copy

    def values(self, data: bytes) -> tuple[float, ...]:
        """The float32 values as Python floats (for the small tensors: no numpy call on the way)."""
        return self.unpack(data, self.start)


@dataclass(frozen=True)
class _Layout:
    obs_end: int  # the observation field ends here; the rest of the request is parsed with protobuf
    header: tuple[tuple[int, bytes], ...]  # (start, bytes) of everything between the payloads
    rgb: tuple[_Payload, ...]  # per model camera, in model order
    depth: tuple[_Payload, ...] | None
    intrinsics: tuple[_Payload, ...] | None
    state: _Payload
    instruction: str  # as checked (stripped)

    def matches(self, data: bytes) -> bool:
        if len(data) < self.obs_end:  # truncated: protobuf refuses it (the full path says so)
            return False
        for at, seg in self.header:
            if not data.startswith(seg, at):
                return False
        return True

    def observation(self, data: bytes) -> dict[str, Any]:
        """The checked observation of `data` (which matches): views of the payloads, values checked."""
        obs: dict[str, Any] = {"rgb": _cameras(data, self.rgb)}
        if self.depth is not None:
            for p in self.depth:
                if p.dtype == _F32 and not depth_ok(p.view(data, (p.count,), _U32)):
                    depth_metres(p.view(data), p.field)  # raises, naming what is wrong
            depth = _cameras(data, self.depth)
            obs["depth"] = depth if depth.dtype == _F32 else depth_metres(depth, "")  # uint16: to metres
        if self.intrinsics is not None:
            for p in self.intrinsics:
                check_intrinsics_values(p.values(data), p.field)
            obs["intrinsics"] = _cameras(data, self.intrinsics)
        check_finite_values(self.state.values(data), self.state.field)
        obs["state"] = self.state.view(data)
        obs["instruction"] = self.instruction
        return obs


def _cameras(data: bytes, payloads: tuple[_Payload, ...]) -> np.ndarray:
    """(V, ...) of the cameras' payloads: one camera is a view (as validation._stack: the batcher copies)."""
    if len(payloads) == 1:
        return payloads[0].view(data, (1, *payloads[0].shape))
    return np.stack([p.view(data) for p in payloads])


class LayoutCache:
    """Learnt layouts of one served policy, the most recently used `capacity` of them (lookups on the event loop
    only: no lock)."""

    def __init__(self, spec: ObservationSpec, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.spec, self.capacity = spec, capacity
        self._layouts: collections.OrderedDict[tuple, _Layout] = collections.OrderedDict()  # (end, header) -> it
        self._by_end: dict[int, list[_Layout]] = {}
        self._last: _Layout | None = None

    def __len__(self) -> int:
        return len(self._layouts)

    def lookup(self, data: bytes) -> tuple[dict[str, Any], Any] | None:
        """(checked observation, the request's other fields as a PredictRequest without observation) when `data`
        has a learnt layout, else None (parse it in full). Raises FieldError for a bad payload value."""
        layout = self._last  # a robot sends one layout: try the one that matched last first
        if layout is None or not layout.matches(data):
            layout = next((x for x in self._by_end.get(_observation_end(data), ()) if x.matches(data)), None)
        if layout is not None:
            rest = _rest(data, layout.obs_end)
            if rest is not None:
                self._last = layout
                return layout.observation(data), rest
        return None

    def learn(self, data: bytes, request: Any, obs: dict[str, Any]) -> None:
        """Keep the layout of `data`, which parsed to `request` and passed the full check as `obs`, if it is in
        canonical form with raw images; otherwise nothing."""
        try:
            layout = _layout_of(data, request, obs, self.spec)
        except (_NotCanonical, IndexError, KeyError):
            return
        if layout is None:
            return
        key = (layout.obs_end, layout.header)
        if key in self._layouts:
            return
        self._layouts[key] = layout
        self._by_end.setdefault(layout.obs_end, []).append(layout)
        if len(self._layouts) > self.capacity:
            _, old = self._layouts.popitem(last=False)
            same_end = self._by_end[old.obs_end]
            same_end.remove(old)
            if not same_end:
                del self._by_end[old.obs_end]
            if self._last is old:
                self._last = None


def _observation_end(data: bytes) -> int:
    """Where the observation field ends when it comes first (0 when it does not)."""
    if not data or data[0] != 0x0A:
        return 0
    try:
        n, i = _varint(data, 1)
    except (_NotCanonical, IndexError):
        return 0
    return i + n


def _rest(data: bytes, obs_end: int):
    """The fields after the observation, or None when they hold another observation (protobuf would merge it)
    or do not parse (the full path reports that)."""
    if obs_end == len(data):
        return _EMPTY_REQUEST
    from google.protobuf.message import DecodeError

    try:
        rest = ppb.PredictRequest.FromString(data[obs_end:])
    except DecodeError:
        return None
    return None if rest.HasField("observation") else rest


# --- learning a layout (once per layout: clarity over speed) ------------------------------------------------


def _varint(b: bytes, i: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        c = b[i]
        x |= (c & 0x7F) << shift
        i += 1
        if c < 0x80:
            return x, i
        shift += 7
        if shift > 63:
            raise _NotCanonical


def _fields(b: bytes, i: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of the fields of the message in b[i:end]; for length-delimited
    fields (type 2) start:end is the payload."""
    out = []
    while i < end:
        tag, i = _varint(b, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            _, j = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            j = i + n
        elif wt in (1, 5):
            j = i + (8 if wt == 1 else 4)
        else:
            raise _NotCanonical
        if j > end:
            raise _NotCanonical
        out.append((num, wt, i, j))
        i = j
    return out


def _once(fields: list[tuple[int, int, int, int]], allowed: dict[int, int]) -> dict[int, tuple[int, int]]:
    """{number: (start, end)} of a message's fields, each with its declared wire type and at most once."""
    got: dict[int, tuple[int, int]] = {}
    for num, wt, s, e in fields:
        if allowed.get(num) != wt or num in got:
            raise _NotCanonical
        got[num] = (s, e)
    return got


def _tensor_data(b: bytes, span: tuple[int, int]) -> tuple[int, int]:
    got = _once(_fields(b, *span), {1: 0, 2: 2, 3: 2})  # dtype, packed shape, data
    return got.get(3, (span[1], span[1]))


def _layout_of(data: bytes, request: Any, obs: dict[str, Any], spec: ObservationSpec) -> _Layout | None:
    obs_end = _observation_end(data)
    top = _fields(data, 0, len(data))
    if not obs_end or top[0][3] != obs_end or any(f[0] == 1 for f in top[1:]):
        return None
    msg = request.observation
    cameras, state, other = [], None, set()
    for num, wt, s, e in _fields(data, top[0][2], obs_end):
        if num == 1 and wt == 2:
            cameras.append(_once(_fields(data, s, e), {1: 2, 2: 2, 3: 2, 4: 2}))
        elif num in (2, 3) and wt == 2 and num not in other:
            other.add(num)
            if num == 2:
                state = _tensor_data(data, (s, e))
        else:
            return None
    if state is None or len(cameras) != len(msg.cameras):
        return None
    index = {cam.name: i for i, cam in enumerate(msg.cameras)}
    spans: list[tuple[int, int]] = [state]
    rgb, depth, intr = [], [], []
    for m, name in enumerate(spec.cameras):
        i = index[name]
        cam, fields, f = msg.cameras[i], cameras[i], f"observation.cameras[{i}]"
        image = _once(_fields(data, *fields[2]), {1: 2})  # raw only: an encoded image is decoded every time
        if 1 not in image:
            return None
        span = _tensor_data(data, image[1])
        spans.append(span)
        rgb.append(_Payload(span[0], span[1] - span[0], np.dtype(np.uint8), obs["rgb"][m].shape, f"{f}.rgb.raw"))
        for key, out in (("depth", depth), ("intrinsics", intr)):
            if key in obs:
                num = 3 if key == "depth" else 4
                span = _tensor_data(data, fields[num])
                spans.append(span)
                dt = DTYPES[getattr(cam, key).dtype]
                n = (span[1] - span[0]) // dt.itemsize
                out.append(_Payload(span[0], n, dt, obs[key][m].shape, f"{f}.{key}",
                                    _floats(n) if key == "intrinsics" else None))
    st = obs["state"]
    header, at = [], 0
    for s, e in [*sorted(spans), (obs_end, obs_end)]:
        if s > at:
            header.append((at, data[at:s]))
        at = e
    return _Layout(obs_end, tuple(header), tuple(rgb), tuple(depth) if "depth" in obs else None,
                   tuple(intr) if "intrinsics" in obs else None,
                   _Payload(state[0], st.size, np.dtype("<f4"), st.shape, "observation.state", _floats(st.size)),
                   obs["instruction"])


def _floats(n: int):
    return struct.Struct(f"<{n}f").unpack_from

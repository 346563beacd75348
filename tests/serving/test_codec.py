"""Tensor and image wire encoding: exact round trips, and refusal of malformed tensors with the field named."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from vla._proto.v1 import tensor_pb2 as tpb
from vla.serving.codec import FieldError, decode_image, encode_image, from_tensor, to_tensor


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<i4", "<i8", "<f2", "<f4", "<f8", "?", ">f4", ">i8"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (1, 0, 5)])
def test_tensor_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=shape) * 100).astype(dtype)
    t = to_tensor(a)
    assert len(t.data) == a.size * a.dtype.itemsize and list(t.shape) == list(shape)
    b = from_tensor(tpb.Tensor.FromString(t.SerializeToString()), "x")
    assert b.shape == a.shape and (b.dtype.kind, b.dtype.itemsize) == (a.dtype.kind, a.dtype.itemsize)
    np.testing.assert_array_equal(b, a)
    # little-endian on the wire whatever the host or array byte order
    assert t.data == np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()


def test_tensor_non_contiguous_and_unsupported():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(from_tensor(to_tensor(a), "x"), a)
    with pytest.raises(ValueError, match="complex64"):
        to_tensor(np.zeros(2, np.complex64))


@pytest.mark.parametrize("t,kw,field", [
    (tpb.Tensor(dtype=0, shape=[1], data=b"x"), {}, "x.dtype"),
    (tpb.Tensor(dtype=42, shape=[1], data=b"x"), {}, "x.dtype"),
    (tpb.Tensor(dtype=tpb.DTYPE_FLOAT32, shape=[2], data=b"x" * 7), {}, "x.data"),
    (tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[-1, 2], data=b""), {}, "x.shape"),
    (tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[1] * 9, data=b"x"), {}, "x.shape"),
    (tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[2, 2], data=b"xxxx"), {"shape": (2, 3)}, "x.shape"),
    (tpb.Tensor(dtype=tpb.DTYPE_UINT8, shape=[2], data=b"xx"), {"dtypes": (tpb.DTYPE_FLOAT32,)}, "x.dtype"),
    (to_tensor(np.array([1.0, np.inf], np.float32)), {"finite": True}, "x"),
])
def test_tensor_refused(t, kw, field):
    with pytest.raises(FieldError) as e:
        from_tensor(t, "x", **kw)
    assert e.value.field == field and str(e.value).startswith(field + ":")


def test_image_formats():
    rng = np.random.default_rng(1)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), 8, 0), 8, 1)  # (32, 40, 3)
    for fmt in ("raw", "png"):
        np.testing.assert_array_equal(decode_image(encode_image(smooth, fmt), "img"), smooth)
    jpeg = decode_image(encode_image(smooth, "jpeg", quality=95), "img")
    assert jpeg.shape == smooth.shape and np.abs(jpeg.astype(int) - smooth).mean() < 10  # lossy; noise would give ~85
    grey = np.asarray(Image.fromarray(smooth).convert("L"))

    buf = BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    out = decode_image(tpb.Image(encoded=buf.getvalue()), "img")
    assert out.shape == (32, 40, 3) and np.all(out == grey[..., None])
    with pytest.raises(FieldError, match="outside"):
        decode_image(encode_image(smooth, "png"), "img", max_pixels=100)
    with pytest.raises(FieldError, match="^img: missing"):
        decode_image(tpb.Image(), "img")

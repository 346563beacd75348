"""Request parsing, value by value (no server): what the model receives for valid fields, and the refusals that
need more than one bad component (one focal length bad, the other fine) or live in the streaming session config.
The field-by-field INVALID_ARGUMENT matrix through a real server is test_validation.py."""

from __future__ import annotations

import numpy as np
import pytest

from vla._proto.v1 import policy_pb2
from vla._proto.v1 import tensor_pb2 as tpb
from vla.serving.codec import FieldError, to_tensor
from vla.serving.validation import ObservationSpec, check_session, parse_observation

SPEC = ObservationSpec(cameras=("left", "right"), state_dim=4)


def message(depth=None, K=None, order=("left", "right")) -> policy_pb2.Observation:
    """Two 8 x 6 cameras; camera v's rgb is filled with v + 1 (so the order the model sees is checkable)."""
    msg = policy_pb2.Observation(state=to_tensor(np.arange(4, dtype=np.float32)), instruction="  open it ")
    for name in order:
        v = SPEC.cameras.index(name)
        cam = msg.cameras.add(name=name)
        cam.rgb.raw.CopyFrom(to_tensor(np.full((8, 6, 3), v + 1, np.uint8)))
        if depth is not None:
            cam.depth.CopyFrom(to_tensor(depth[v]))
        if K is not None:
            cam.intrinsics.CopyFrom(to_tensor(K[v]))
    return msg


def test_uint16_millimetres_arrive_as_float32_metres():
    rng = np.random.default_rng(0)
    mm = rng.integers(0, 65535, (2, 8, 6)).astype(np.uint16)
    obs = parse_observation(message(depth=mm), SPEC)
    assert obs["depth"].dtype == np.float32
    np.testing.assert_array_equal(obs["depth"], mm.astype(np.float32) / np.float32(1000.0))
    metres = rng.uniform(0, 5, (2, 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(parse_observation(message(depth=metres), SPEC)["depth"], metres)


def test_cameras_reach_the_model_in_its_order():
    K = np.stack([np.diag([5.0, 6.0, 1.0]), np.diag([7.0, 8.0, 1.0])]).astype(np.float32)
    obs = parse_observation(message(K=K, order=("right", "left")), SPEC)
    assert obs["rgb"].shape == (2, 8, 6, 3) and obs["rgb"][0].max() == 1 and obs["rgb"][1].max() == 2
    np.testing.assert_array_equal(obs["intrinsics"], K)
    assert obs["instruction"] == "open it"
    np.testing.assert_array_equal(obs["state"], np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("fx,fy", [(5.0, 0.0), (0.0, 5.0), (-5.0, 5.0), (5.0, -1.0)])
def test_each_focal_length_must_be_positive(fx, fy):
    K = np.stack([np.diag([5.0, 5.0, 1.0]), np.diag([fx, fy, 1.0])]).astype(np.float32)
    with pytest.raises(FieldError, match=r"^observation\.cameras\[1\]\.intrinsics: focal lengths"):
        parse_observation(message(K=K), SPEC)


@pytest.mark.parametrize("coef", [-0.1, -1e-30, float("nan"), float("inf")])
def test_session_ensemble_coef_must_be_finite_and_non_negative(coef):
    with pytest.raises(FieldError, match=r"^session\.ensemble_coef: "):
        check_session(policy_pb2.SessionConfig(ensemble=True, ensemble_coef=coef))


def test_session_config_values():
    assert check_session(policy_pb2.SessionConfig()) == (0, False, 0.0)
    assert check_session(policy_pb2.SessionConfig(horizon=3)) == (3, False, 0.0)
    assert check_session(policy_pb2.SessionConfig(ensemble=True)) == (0, True, 0.8)  # 0 means the default
    assert check_session(policy_pb2.SessionConfig(ensemble=True, ensemble_coef=0.5)) == (0, True, 0.5)
    with pytest.raises(FieldError, match=r"^session\.horizon: .*exclusive"):
        check_session(policy_pb2.SessionConfig(horizon=2, ensemble=True))


def test_depth_dtype_outside_the_two_units_refused():
    d = np.zeros((2, 8, 6), np.int32)
    msg = message()
    for cam in msg.cameras:
        cam.depth.CopyFrom(tpb.Tensor(dtype=tpb.DTYPE_INT32, shape=[8, 6], data=d[0].tobytes()))
    with pytest.raises(FieldError, match=r"^observation\.cameras\[0\]\.depth\.dtype"):
        parse_observation(msg, SPEC)

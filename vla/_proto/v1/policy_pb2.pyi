from vla._proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CameraObservation(_message.Message):
    __slots__ = ("name", "rgb", "depth", "intrinsics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rgb: _tensor_pb2.Image
    depth: _tensor_pb2.Tensor
    intrinsics: _tensor_pb2.Tensor
    def __init__(self, name: _Optional[str] = ..., rgb: _Optional[_Union[_tensor_pb2.Image, _Mapping]] = ..., depth: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., intrinsics: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("cameras", "state", "instruction")
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    cameras: _containers.RepeatedCompositeFieldContainer[CameraObservation]
    state: _tensor_pb2.Tensor
    instruction: str
    def __init__(self, cameras: _Optional[_Iterable[_Union[CameraObservation, _Mapping]]] = ..., state: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., instruction: _Optional[str] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("horizon", "ensemble", "ensemble_coef")
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_COEF_FIELD_NUMBER: _ClassVar[int]
    horizon: int
    ensemble: bool
    ensemble_coef: float
    def __init__(self, horizon: _Optional[int] = ..., ensemble: _Optional[bool] = ..., ensemble_coef: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("observation", "reset", "session", "request_id")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    reset: bool
    session: SessionConfig
    request_id: int
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ..., reset: _Optional[bool] = ..., session: _Optional[_Union[SessionConfig, _Mapping]] = ..., request_id: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("actions", "action", "step", "timing", "request_id")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    actions: _tensor_pb2.Tensor
    action: _tensor_pb2.Tensor
    step: int
    timing: _tensor_pb2.Timing
    request_id: int
    def __init__(self, actions: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., action: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., step: _Optional[int] = ..., timing: _Optional[_Union[_tensor_pb2.Timing, _Mapping]] = ..., request_id: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CameraInfo(_message.Message):
    __slots__ = ("name", "height", "width", "intrinsics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    height: int
    width: int
    intrinsics: _tensor_pb2.Tensor
    def __init__(self, name: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., intrinsics: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("action_layout", "action_dim", "chunk_len", "control_hz", "cameras", "state_dim", "stats", "model_version", "checkpoint", "param_count", "uses_depth", "uses_intrinsics", "max_batch", "metadata_json")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    ACTION_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LEN_FIELD_NUMBER: _ClassVar[int]
    CONTROL_HZ_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    USES_DEPTH_FIELD_NUMBER: _ClassVar[int]
    USES_INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    action_layout: _containers.RepeatedScalarFieldContainer[str]
    action_dim: int
    chunk_len: int
    control_hz: float
    cameras: _containers.RepeatedCompositeFieldContainer[CameraInfo]
    state_dim: int
    stats: _containers.MessageMap[str, _tensor_pb2.Tensor]
    model_version: str
    checkpoint: str
    param_count: int
    uses_depth: bool
    uses_intrinsics: bool
    max_batch: int
    metadata_json: str
    def __init__(self, action_layout: _Optional[_Iterable[str]] = ..., action_dim: _Optional[int] = ..., chunk_len: _Optional[int] = ..., control_hz: _Optional[float] = ..., cameras: _Optional[_Iterable[_Union[CameraInfo, _Mapping]]] = ..., state_dim: _Optional[int] = ..., stats: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., model_version: _Optional[str] = ..., checkpoint: _Optional[str] = ..., param_count: _Optional[int] = ..., uses_depth: _Optional[bool] = ..., uses_intrinsics: _Optional[bool] = ..., max_batch: _Optional[int] = ..., metadata_json: _Optional[str] = ...) -> None: ...

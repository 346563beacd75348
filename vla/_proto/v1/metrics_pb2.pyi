from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodMetrics(_message.Message):
    __slots__ = ("method", "codes", "latency_p50_ms", "latency_p99_ms", "window")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    method: str
    codes: _containers.ScalarMap[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    window: int
    def __init__(self, method: _Optional[str] = ..., codes: _Optional[_Mapping[str, int]] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., window: _Optional[int] = ...) -> None: ...

class ClientMetrics(_message.Message):
    __slots__ = ("client", "calls", "ok", "refused", "deadline_missed", "queued")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISSED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    client: str
    calls: int
    ok: int
    refused: int
    deadline_missed: int
    queued: int
    def __init__(self, client: _Optional[str] = ..., calls: _Optional[int] = ..., ok: _Optional[int] = ..., refused: _Optional[int] = ..., deadline_missed: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("methods", "batch_sizes", "batches", "rows", "dropped_expired", "rejected_overload", "queue_depth", "queue_capacity", "uptime_s", "model_p50_ms", "dropped_cancelled", "expired_unread", "clients", "ended_before_reply", "dropped_late")
    class BatchSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    METHODS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_OVERLOAD_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_P50_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_UNREAD_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ENDED_BEFORE_REPLY_FIELD_NUMBER: _ClassVar[int]
    DROPPED_LATE_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedCompositeFieldContainer[MethodMetrics]
    batch_sizes: _containers.ScalarMap[int, int]
    batches: int
    rows: int
    dropped_expired: int
    rejected_overload: int
    queue_depth: int
    queue_capacity: int
    uptime_s: float
    model_p50_ms: float
    dropped_cancelled: int
    expired_unread: int
    clients: _containers.RepeatedCompositeFieldContainer[ClientMetrics]
    ended_before_reply: int
    dropped_late: int
    def __init__(self, methods: _Optional[_Iterable[_Union[MethodMetrics, _Mapping]]] = ..., batch_sizes: _Optional[_Mapping[int, int]] = ..., batches: _Optional[int] = ..., rows: _Optional[int] = ..., dropped_expired: _Optional[int] = ..., rejected_overload: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., uptime_s: _Optional[float] = ..., model_p50_ms: _Optional[float] = ..., dropped_cancelled: _Optional[int] = ..., expired_unread: _Optional[int] = ..., clients: _Optional[_Iterable[_Union[ClientMetrics, _Mapping]]] = ..., ended_before_reply: _Optional[int] = ..., dropped_late: _Optional[int] = ...) -> None: ...

from vla._proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("images", "class_names", "templates", "context_id", "top_k")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Image]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    templates: _containers.RepeatedScalarFieldContainer[str]
    context_id: str
    top_k: int
    def __init__(self, images: _Optional[_Iterable[_Union[_tensor_pb2.Image, _Mapping]]] = ..., class_names: _Optional[_Iterable[str]] = ..., templates: _Optional[_Iterable[str]] = ..., context_id: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("indices", "probabilities", "labels")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("probabilities", "class_names", "top", "timing")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    probabilities: _tensor_pb2.Tensor
    class_names: _containers.RepeatedScalarFieldContainer[str]
    top: _containers.RepeatedCompositeFieldContainer[TopK]
    timing: _tensor_pb2.Timing
    def __init__(self, probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., top: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., timing: _Optional[_Union[_tensor_pb2.Timing, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("images", "texts", "normalize")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Image]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_tensor_pb2.Image, _Mapping]]] = ..., texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("image_embeddings", "text_embeddings", "timing")
    IMAGE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    image_embeddings: _tensor_pb2.Tensor
    text_embeddings: _tensor_pb2.Tensor
    timing: _tensor_pb2.Timing
    def __init__(self, image_embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., text_embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., timing: _Optional[_Union[_tensor_pb2.Timing, _Mapping]] = ...) -> None: ...

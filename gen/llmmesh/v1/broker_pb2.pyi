import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llmmesh.v1 import chat_pb2 as _chat_pb2
from llmmesh.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PayloadReference(_message.Message):
    __slots__ = ("bucket", "key", "size", "sha256")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    size: int
    sha256: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("request_id", "request", "payload_reference", "queue_deadline", "priority", "received", "total_deadline")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: _chat_pb2.ChatRequest
    payload_reference: PayloadReference
    queue_deadline: _timestamp_pb2.Timestamp
    priority: _chat_pb2.Priority
    received: _timestamp_pb2.Timestamp
    total_deadline: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[_chat_pb2.ChatRequest, _Mapping]] = ..., payload_reference: _Optional[_Union[PayloadReference, _Mapping]] = ..., queue_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[_Union[_chat_pb2.Priority, str]] = ..., received: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TaskRejection(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: _events_pb2.ErrorCode
    message: str
    field: str
    def __init__(self, code: _Optional[_Union[_events_pb2.ErrorCode, str]] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("request_id", "worker_id", "sequence_number", "events", "rejection")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    sequence_number: int
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.StreamEvent]
    rejection: TaskRejection
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., sequence_number: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_events_pb2.StreamEvent, _Mapping]]] = ..., rejection: _Optional[_Union[TaskRejection, _Mapping]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "max_context", "supports_tools")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_TOOLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_context: int
    supports_tools: bool
    def __init__(self, name: _Optional[str] = ..., max_context: _Optional[int] = ..., supports_tools: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("worker_id", "models", "priority", "capacity", "ready", "running", "sent", "hardware_class", "interval_seconds")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    priority: int
    capacity: int
    ready: bool
    running: int
    sent: _timestamp_pb2.Timestamp
    hardware_class: str
    interval_seconds: float
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., priority: _Optional[int] = ..., capacity: _Optional[int] = ..., ready: _Optional[bool] = ..., running: _Optional[int] = ..., sent: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hardware_class: _Optional[str] = ..., interval_seconds: _Optional[float] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("cancel", "heartbeat")
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    cancel: Cancel
    heartbeat: Heartbeat
    def __init__(self, cancel: _Optional[_Union[Cancel, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

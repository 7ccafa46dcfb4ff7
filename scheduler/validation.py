"""What the scheduler checks of a `ChatRequest` before it queues a task.

Only what needs no model (the worker checks the rest against the model: the context length,
tools, the engine's own limits):

- a model and at least one message, each with a role;
- every enum field holds a value the schema defines: proto3 enums are open, so a newer or a
  hostile client can send any number, and a worker should never meet one;
- `n` within `max_n`: every sequence costs the worker memory and time, and one request must
  not take a worker's whole capacity (or, with a huge `n`, its event loop);
- `max_tokens`, when set, at least 1.

`validate` raises `InvalidRequest` naming the first offending field (a dotted path, e.g.
`messages.0.role`).
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from llmmesh.v1 import chat_pb2

from scheduler.errors import InvalidRequest

__all__ = ["validate"]


def validate(chat: chat_pb2.ChatRequest, *, max_n: int) -> None:
    """Raises `InvalidRequest` for the first field the scheduler can tell is wrong."""
    if not chat.model:
        raise InvalidRequest("a model is required", field="model")
    if not chat.messages:
        raise InvalidRequest("at least one message is required", field="messages")
    for field, number in _unknown_enum_values(chat, ""):
        raise InvalidRequest(f"{field}: {number} is not a known value", field=field)
    for position, message in enumerate(chat.messages):
        if message.role == chat_pb2.ROLE_UNSPECIFIED:
            field = f"messages.{position}.role"
            raise InvalidRequest(f"{field} is required", field=field)
    parameters = chat.generation_parameters
    if parameters.HasField("n") and not 1 <= parameters.n <= max_n:
        field = "generation_parameters.n"
        raise InvalidRequest(f"{field} must be 1 to {max_n}", field=field)
    if parameters.HasField("max_tokens") and parameters.max_tokens < 1:
        field = "generation_parameters.max_tokens"
        raise InvalidRequest(f"{field} must be at least 1", field=field)


def _unknown_enum_values(message: Message, prefix: str) -> Iterator[tuple[str, int]]:
    """(field path, value) of every enum value, at any depth, that its enum does not define."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            known = field.enum_type.values_by_number
            for index, number in enumerate(value if repeated else [value]):
                if number not in known:
                    yield (f"{path}.{index}" if repeated else path), number
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            if field.message_type.GetOptions().map_entry:
                # A map (e.g. a google.protobuf.Struct's fields): its message values.
                entry_value = field.message_type.fields_by_name["value"]
                if entry_value.type == FieldDescriptor.TYPE_MESSAGE:
                    for key, child in value.items():
                        yield from _unknown_enum_values(child, f"{path}.{key}.")
                continue
            for index, child in enumerate(value if repeated else [value]):
                child_prefix = f"{path}.{index}." if repeated else f"{path}."
                yield from _unknown_enum_values(child, child_prefix)

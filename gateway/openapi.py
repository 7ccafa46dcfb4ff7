"""The gateway's OpenAPI 3.1 document (`GET /openapi.json`), built from the code, not by hand.

The OpenAI and Anthropic bodies come from the pydantic models that validate them; the native
body from the `ChatRequest` descriptor (proto field names, enums by name, well-known types in
their JSON mapping), so the document cannot drift from what the gateway accepts.
"""

from __future__ import annotations

from typing import Any, Final, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from llmmesh.v1 import chat_pb2
from pydantic import BaseModel

from gateway.anthropic_schema import MessagesRequest
from gateway.openai_schema import ChatCompletionRequest

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{model}"
_INT32: Final = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32: Final = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_INT64: Final = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_WELL_KNOWN: Final[dict[str, dict[str, Any]]] = {
    "google.protobuf.Duration": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,9})?s$"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
}
_SCALARS: Final[dict[int, dict[str, Any]]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        schema = _message_schema(field.message_type, schemas)
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        schema = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    else:
        schema = dict(_SCALARS.get(field.type, {"type": "integer", "minimum": 0}))
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return schema
    if field.is_repeated:
        return {"type": "array", "items": schema}
    return schema


def _message_schema(descriptor: Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if descriptor.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[descriptor.full_name])
    if descriptor.GetOptions().map_entry:
        value = descriptor.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    name = descriptor.full_name
    if name not in schemas:
        schemas[name] = {}  # placeholder: recursive messages refer to themselves
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                field.name: _field_schema(field, schemas) for field in descriptor.fields
            },
        }
        # A oneof allows at most one of its fields (proto3 `optional` fields sit alone in
        # synthetic oneofs: skipped).
        exclusive = [
            {"not": {"required": [first.name, second.name]}}
            for oneof in descriptor.oneofs
            if len(oneof.fields) > 1
            for position, first in enumerate(oneof.fields)
            for second in oneof.fields[position + 1 :]
        ]
        if exclusive:
            schema["allOf"] = exclusive
        schemas[name] = schema
    return {"$ref": _REF.format(model=name)}


def _pydantic_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _error_responses(error_schema: str) -> dict[str, Any]:
    ref = {"$ref": _REF.format(model=error_schema)}
    return {
        status: {"description": description, "content": {"application/json": {"schema": ref}}}
        for status, description in {
            "400": "Invalid request (names the field).",
            "401": "Missing or invalid API key.",
            "403": "The key may not use the model.",
            "404": "Unknown model (lists the available ones).",
            "413": "Request body too large.",
            "429": "Quota exceeded or load shed (Retry-After).",
            "503": "No worker or scheduler available (Retry-After).",
            "504": "No worker accepted the request in time.",
        }.items()
    }


def _generation(summary: str, body: dict[str, Any], error_schema: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {
                    "description": "The answer: one JSON document, or an SSE stream.",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_error_responses(error_schema),
            },
        }
    }


def _plain(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "503": {
                    "description": "Not ready",
                    "content": {"application/json": {"schema": {}}},
                },
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    schemas: dict[str, Any] = {
        "NativeError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": ["string", "null"]},
                        "retryable": {"type": "boolean"},
                        "available_models": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
    _message_schema(cast(Descriptor, chat_pb2.ChatRequest.DESCRIPTOR), schemas)
    native = dict(schemas[chat_pb2.ChatRequest.DESCRIPTOR.full_name])
    properties = native["properties"]
    native["properties"] = {
        **properties,
        "model": {"type": "string", "minLength": 1},
        "messages": {**properties["messages"], "minItems": 1},
        "stream": {"type": "boolean"},
    }
    native["required"] = ["model", "messages"]
    # What `gateway/validation.py` requires of each message beyond the proto's types.
    message = schemas[chat_pb2.Message.DESCRIPTOR.full_name]
    role = message["properties"]["role"]
    role["enum"] = [name for name in role["enum"] if name != "ROLE_UNSPECIFIED"]
    message["required"] = ["role"]
    message["if"] = {"properties": {"role": {"const": "ROLE_TOOL"}}}
    message["then"] = {
        "required": ["tool_call_id"],
        "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
    }
    schemas["NativeGenerateRequest"] = native
    openai_body = _pydantic_schema(ChatCompletionRequest, schemas)
    anthropic_body = _pydantic_schema(MessagesRequest, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-mesh gateway",
            "version": "1",
            "description": "Native, OpenAI- and Anthropic-compatible generation APIs.",
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "paths": {
            "/v1/generate": _generation(
                "Generate (native request and events)",
                {"$ref": _REF.format(model="NativeGenerateRequest")},
                "NativeError",
            ),
            "/v1/chat/completions": _generation(
                "OpenAI-compatible chat completions", openai_body, "OpenAIError"
            ),
            "/v1/messages": _generation(
                "Anthropic-compatible messages", anthropic_body, "AnthropicError"
            ),
            "/v1/models": {
                "get": {
                    "summary": "Models with a ready worker, and external models",
                    "responses": {
                        "200": {
                            "description": "The models",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": {
                            "description": "Missing or invalid API key.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="OpenAIError")}
                                }
                            },
                        },
                    },
                }
            },
            "/healthz": _plain("Liveness"),
            "/readyz": _plain("Readiness: every self-hosted model has a ready worker"),
        },
    }

"""JSON Schema → Gemini's `Schema` (https://ai.google.dev/api/caching#Schema), an OpenAPI 3.0
subset: upper-case `type`s, `nullable` instead of a `"null"` type, no `$ref` (local
definitions are inlined; recursive ones cannot be expressed), and only the keywords below.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.providers.errors import InvalidRequest

__all__ = ["gemini_schema"]

PROVIDER: Final = "gemini"

#: JSON Schema keywords Gemini's `Schema` understands (https://ai.google.dev/api/caching#Schema).
_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "description",
        "format",
        "enum",
        "required",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "nullable",
        "propertyOrdering",
        "title",
        "minLength",
        "maxLength",
        "pattern",
        "minProperties",
        "maxProperties",
        "default",
        "example",
    }
)


def _schema(schema: Any, definitions: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        ref = str(schema["$ref"])
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in definitions:
            raise InvalidRequest(
                f"schema reference {ref!r} is not a local definition",
                provider=PROVIDER,
                field="tools.parameters",
            )
        if ref in seen:
            raise InvalidRequest(
                f"recursive schema reference {ref!r} cannot be expressed for Gemini",
                provider=PROVIDER,
                field="tools.parameters",
            )
        return _schema(definitions[name], definitions, (*seen, ref))
    result: dict[str, Any] = {key: schema[key] for key in schema if key in _SCHEMA_KEYWORDS}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [str(item) for item in kind if item != "null"]
        if "null" in kind:
            result["nullable"] = True
        if len(kinds) == 1:
            kind = kinds[0]
        else:
            result["anyOf"] = [{"type": item.upper()} for item in kinds]
            kind = None
    if isinstance(kind, str):
        result["type"] = kind.upper()
    if "const" in schema:
        result["enum"] = [schema["const"]]
    if isinstance(schema.get("properties"), dict):
        result["properties"] = {
            key: _schema(value, definitions, seen) for key, value in schema["properties"].items()
        }
    if "items" in schema:
        result["items"] = _schema(schema["items"], definitions, seen)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        kept = [item for item in alternatives if item != {"type": "null"}]
        if len(kept) < len(alternatives):
            result["nullable"] = True
        converted = [_schema(item, definitions, seen) for item in kept]
        if len(converted) == 1:
            result.update(converted[0])
        else:
            result["anyOf"] = converted
    return result


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema as Gemini's `Schema` (see the module docstring)."""
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    result: dict[str, Any] = _schema(schema, definitions)
    return result

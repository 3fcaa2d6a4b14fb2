"""The fast path of the ``json`` format: a typed msgspec decoder compiled once per type.

Top-level fields of the common shapes (strings, UUIDs, booleans, numbers in range, and
their nullable forms) are parsed and checked in C by a msgspec ``Struct``; every other field
is parsed as plain JSON and handed to its compiled coercion. The fast path only ever accepts
what the exact path (``json`` + ``json_coercion``) accepts, with the same result; whatever it
refuses is decoded again by the exact path, which gives the document or the precise error.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from connector.formats.json_coercion import (
    FLOAT32_MAX,
    INT32,
    INT64,
    Field,
    copy_default,
)

FastDecode = Callable[[bytes], dict[str, Any]]

# Avro primitive (without a logical type) -> the msgspec type that accepts exactly the JSON
# values the coercion accepts unchanged. int/long refuse 5.0 and float refuses "NaN" here,
# which the exact path accepts: those records take the exact path.
_SIMPLE: dict[str, Any] = {
    "null": None,
    "boolean": bool,
    "string": str,
    "int": Annotated[int, Meta(ge=INT32[0], le=INT32[1])],
    "long": Annotated[int, Meta(ge=INT64[0], le=INT64[1])],
    "float": Annotated[float, Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)],
    "double": float,
}


def _simple(node: Any) -> Any:
    """The msgspec type of an Avro type node, or ``Any`` when the coercion must run."""
    if isinstance(node, list):
        others = [m for m in node if m != "null"]
        if "null" in node and len(others) == 1:
            inner = _simple(others[0])
            if inner is not Any and inner is not None:
                return Union[inner, None]  # noqa: UP007 (a runtime type, not an annotation)
        return Any
    if isinstance(node, dict):
        kind, logical = node.get("type"), node.get("logicalType")
        if kind == "string" and logical == "uuid":
            return uuid.UUID
        if logical is not None:
            return Any
        node = kind
    if isinstance(node, str) and node in _SIMPLE:
        return _SIMPLE[node]
    return Any


def compile_fast(fields: list[Field], unknown_fields: str, optional: frozenset[str]) -> FastDecode:
    """A decoder of a record value into the document of a record with ``fields``.

    Raises on anything it does not accept (``msgspec`` errors, ``CoercionError``, ...).
    """
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    coerced: list[Field] = []  # parsed as plain JSON, then coerced
    unset: list[str] = []  # optional fields without a default: absent from the document
    for f in fields:
        kind = _simple(f.node)
        if kind is Any:
            coerced.append(f)
            spec.append(
                (f.name, Any, UNSET) if f.has_default or f.name in optional else (f.name, Any)
            )
        elif f.has_default:
            spec.append((f.name, kind, f.default))
        elif f.name in optional:
            spec.append((f.name, Union[kind, UnsetType], UNSET))  # noqa: UP007
            unset.append(f.name)
        else:
            spec.append((f.name, kind))
    struct = msgspec.defstruct(
        "JsonRecord", spec, kw_only=True, forbid_unknown_fields=unknown_fields == "reject"
    )
    decode = msgspec.json.Decoder(struct).decode
    asdict = msgspec.structs.asdict
    if not coerced and not unset:
        return lambda value: asdict(decode(value))

    def fast(value: bytes) -> dict[str, Any]:
        document = asdict(decode(value))
        for name in unset:
            if document[name] is UNSET:
                del document[name]
        for name, _, coerce, has_default, default in coerced:
            item = document[name]
            if item is not UNSET:
                document[name] = coerce(item, name)
            elif has_default:
                document[name] = copy_default(default)
            else:
                del document[name]
        return document

    return fast

"""Canonical serialisation of backend documents.

Two documents are "identical" (R9) when their canonical JSON is equal: keys sorted, no
insignificant whitespace, logical types in one fixed text form. Backends that store JSON
text use the same form, so a comparison never depends on key order or formatting.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def canonical_json(document: dict[str, Any]) -> str:
    """The canonical JSON text of ``document``."""
    return json.dumps(
        document,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_default,
        allow_nan=False,
    )


def differing_fields(stored: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """Top-level field names whose values differ between two documents."""
    keys = sorted(set(stored) | set(incoming))
    return [k for k in keys if k not in stored or k not in incoming or stored[k] != incoming[k]]

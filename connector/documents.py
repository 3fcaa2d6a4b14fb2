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
import math
import uuid
from typing import Any

from bson import ObjectId


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
            suffix = "Z"
        else:
            suffix = ""
        if value.microsecond == 0:
            timespec = "seconds"
        elif value.microsecond % 1000 == 0:
            timespec = "milliseconds"
        else:
            timespec = "microseconds"
        return value.isoformat(timespec=timespec) + suffix
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _special_floats(value: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot hold, by Extended JSON's $numberDouble."""
    if isinstance(value, float) and not math.isfinite(value):
        return {
            "$numberDouble": "NaN"
            if math.isnan(value)
            else ("Infinity" if value > 0 else "-Infinity")
        }
    if isinstance(value, dict):
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def canonical_json(document: dict[str, Any]) -> str:
    """The canonical JSON text of ``document``."""
    try:
        return json.dumps(
            document,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_default,
            allow_nan=False,
        )
    except ValueError:
        # Rare: a double is NaN or infinite. The slow path keeps the common one fast.
        return json.dumps(
            _special_floats(document),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_default,
        )


def storage_id(value: Any) -> Any:
    """The ``_id`` as a plain scalar for key columns: text for UUID and ObjectId."""
    if isinstance(value, uuid.UUID | ObjectId):
        return str(value)
    return value


def differing_fields(stored: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """Top-level field names whose values differ between two documents."""
    keys = sorted(set(stored) | set(incoming))
    return [k for k in keys if k not in stored or k not in incoming or stored[k] != incoming[k]]

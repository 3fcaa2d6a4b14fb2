"""Mapped documents as BSON, the way Atlas Device Sync stored them, and their comparison.

The MongoDB backend stores what the Map stage produced (embedded objects as subdocuments,
links as the targets' ``_id`` values) with every logical type in its natural BSON type:

| Python value (as fastavro returns it) | BSON |
|---|---|
| ``datetime`` (tz-aware; naive means UTC) | date, **millisecond** precision (micros truncated) |
| ``date`` | date at midnight UTC |
| ``time`` | string, ISO 8601 (``13:45:00.250000``); BSON has no time of day |
| ``uuid.UUID`` | binary subtype 4 (``uuidRepresentation=standard``) |
| ``Decimal`` | Decimal128 (``decimals: decimal128``) or its text (``decimals: string``) |
| ``bytes`` | binary subtype 0 |
| ``ObjectId``, ``str``, ``int``, ``float`` (NaN and infinities too), ``bool``, ``None`` | as is |

``BsonConverter.document`` returns the document in exactly the form the client decodes it back
to with ``CODEC_OPTIONS``, so "identical" (R9) is Python equality of the stored and the converted
document, except that NaN equals NaN (``same_value``). Key order does not matter.

Two fields belong to the backend, not to the object type: ``_kafka`` (the coordinates
``{topic, partition, offset}`` of the write, in standard objects and in time-series
documents, which add the ``write`` id of their insert) and ``_deleted`` (true in the
tombstone marker that replaces a deleted standard object).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import Any, Literal

import bson
from bson import Decimal128, ObjectId
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument

DecimalMode = Literal["decimal128", "string"]

#: The Kafka coordinates of the write that stored a standard object or time-series document.
KAFKA_FIELD = "_kafka"
#: True in the tombstone marker of a deleted standard object.
DELETED_FIELD = "_deleted"

#: How the backend encodes and decodes: UUIDs as binary subtype 4, dates as aware UTC.
CODEC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, tzinfo=dt.UTC, uuid_representation=UuidRepresentation.STANDARD
)
#: The same, decoding into ``RawBSONDocument`` (documents encoded once, sent as bytes).
RAW_CODEC_OPTIONS: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument,
    tz_aware=True,
    tzinfo=dt.UTC,
    uuid_representation=UuidRepresentation.STANDARD,
)


class UnstorableValue(ValueError):
    """A value of the document has no BSON form (or one the server cannot take)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"field {path}: {problem}" if path else problem)


def bson_datetime(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC truncated to milliseconds: what a BSON date holds (naive = UTC)."""
    value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class BsonConverter:
    """Converts mapped documents to BSON-ready values (see the module docstring).

    With ``ferretdb`` (the server's name, e.g. "FerretDB v1.24.2") a NaN or a Decimal128
    is an ``UnstorableValue`` naming the field: FerretDB 1.x drops the connection on them
    instead of answering with an error, which a driver reports as a network error.
    """

    def __init__(self, decimals: DecimalMode = "decimal128", ferretdb: str | None = None) -> None:
        self.decimals = decimals
        self.ferretdb = ferretdb

    def document(self, document: dict[str, Any]) -> dict[str, Any]:
        """The BSON-ready copy of a mapped document; raises ``UnstorableValue``."""
        return self._mapping(document, "")

    def _mapping(self, value: dict[Any, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnstorableValue(path, f"key {key!r} is not a string")
            out[key] = self.value(item, _join(path, key))
        return out

    def value(self, value: Any, path: str = "") -> Any:
        """The BSON-ready form of one value at ``path`` (used in messages)."""
        # Most values are plain; test those first (bool is an int, so it passes as is).
        if value is None or isinstance(value, str | int):
            return value
        if isinstance(value, float):
            if self.ferretdb is not None and math.isnan(value):
                raise UnstorableValue(
                    path,
                    f"NaN cannot be written to {self.ferretdb}, which drops the connection "
                    "on NaN; send null or a number",
                )
            return value
        if isinstance(value, dict):
            return self._mapping(value, path)
        if isinstance(value, list | tuple):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dt.datetime):
            return bson_datetime(value)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        if isinstance(value, dt.time):
            return value.isoformat()
        if isinstance(value, uuid.UUID | ObjectId):
            return value
        if isinstance(value, decimal.Decimal):
            return self._decimal(value, path)
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, Decimal128):
            if self.ferretdb is not None:
                raise UnstorableValue(
                    path, f"Decimal128 cannot be written to {self.ferretdb}; use decimals: string"
                )
            return value
        raise UnstorableValue(path, f"cannot store a value of type {type(value).__name__}")

    def _decimal(self, value: decimal.Decimal, path: str) -> Any:
        if self.decimals == "string":
            return str(value)
        if self.ferretdb is not None:
            raise UnstorableValue(
                path, f"Decimal128 cannot be written to {self.ferretdb}; use decimals: string"
            )
        try:
            return Decimal128(value)
        except decimal.DecimalException:
            raise UnstorableValue(
                path,
                f"the decimal {value} does not fit a Decimal128 (34 significant digits, "
                "exponent -6176..6111); set backend.decimals: string to store it as text",
            ) from None


def encode(document: dict[str, Any], max_size: int) -> RawBSONDocument:
    """The document as BSON, encoded once; raises ``UnstorableValue`` if it cannot be sent.

    Encoding here, per document, keeps one bad document (a NUL in a key, a too large
    integer, more than ``max_size`` bytes) from failing the whole batch inside the driver.
    """
    try:
        data = bson.encode(document, codec_options=CODEC_OPTIONS)
    except (InvalidDocument, OverflowError, TypeError, ValueError) as exc:
        raise UnstorableValue("", f"not valid BSON: {exc}") from None
    if len(data) > max_size:
        raise UnstorableValue(
            "", f"the document is {len(data)} bytes as BSON; the server's limit is {max_size}"
        )
    return RawBSONDocument(data, RAW_CODEC_OPTIONS)


def same_value(a: Any, b: Any) -> bool:
    """Deep equality of decoded BSON values in which NaN equals NaN and bool is not int."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


def differing_fields(stored: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """Top-level field names whose values differ (``same_value``), sorted."""
    keys = sorted(set(stored) | set(incoming))
    return [
        k
        for k in keys
        if k not in stored or k not in incoming or not same_value(stored[k], incoming[k])
    ]

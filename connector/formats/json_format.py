"""The ``json`` format: one JSON object per record value (UTF-8), coerced into its type.

Values are decoded by the type's compiled msgspec decoder (``json_fast``); a value it
refuses is decoded again here by the exact path, for the same document or the precise error.
"""

from __future__ import annotations

import json
from typing import Any

from connector.errors import RecordError, RecordErrorKind
from connector.formats import decode_until_bad
from connector.formats.json_coercion import CoercionError, compile_record
from connector.formats.json_fast import compile_fast
from connector.records import SourceRecord
from connector.schemas import ObjectType


def _reject_constant(name: str) -> Any:
    # Python's json module accepts NaN/Infinity, which are not JSON.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def parse_json_object(record: SourceRecord) -> dict[str, Any]:
    """The record value as a JSON object; raises a decode ``RecordError`` otherwise."""
    assert record.value is not None
    try:
        value = json.loads(record.value.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RecordError(
            RecordErrorKind.DECODE,
            record.coordinates,
            f"value is not UTF-8 text (byte {exc.start}); the json format expects UTF-8 JSON",
        ) from None
    except json.JSONDecodeError as exc:
        raise RecordError(
            RecordErrorKind.DECODE,
            record.coordinates,
            f"value is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    if not isinstance(value, dict):
        raise RecordError(
            RecordErrorKind.DECODE,
            record.coordinates,
            f"value is a JSON {type(value).__name__}, expected a JSON object",
        )
    return value


class JsonDecoder:
    """Parses a record value as JSON and coerces it into the route's object type."""

    def __init__(self, target: ObjectType, unknown_fields: str) -> None:
        self._target = target
        # _id may be absent: the mapping derives it or takes it from the key (R10).
        self._coerce, fields = compile_record(target.schema, unknown_fields, optional_id=True)
        self._fast = compile_fast(fields, unknown_fields, frozenset({"_id"}))

    async def prepare(self, records: list[SourceRecord]) -> None:
        """Nothing to fetch for JSON."""

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]:
        assert record.value is not None
        try:
            return self._target, self._fast(record.value)
        except Exception:  # refused by the fast path: the exact path decides
            return self._target, self._exact(record)

    def decode_many(
        self, records: list[SourceRecord]
    ) -> tuple[list[tuple[ObjectType, dict[str, Any]]], RecordError | None]:
        target, fast = self._target, self._fast
        try:
            return [(target, fast(record.value)) for record in records], None  # type: ignore[arg-type]
        except Exception:  # some value is refused by the fast path: one at a time
            return decode_until_bad(self.decode, records)

    def _exact(self, record: SourceRecord) -> dict[str, Any]:
        value = parse_json_object(record)
        try:
            document: dict[str, Any] = self._coerce(value, "")
        except CoercionError as exc:
            raise RecordError(
                RecordErrorKind.SCHEMA_MISMATCH,
                record.coordinates,
                f"does not fit object type {self._target.name}: {exc}",
            ) from None
        return document

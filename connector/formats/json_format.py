"""The ``json`` format: one JSON object per record value (UTF-8), coerced into its type."""

from __future__ import annotations

import json
from typing import Any

from connector.errors import RecordError, RecordErrorKind
from connector.formats.json_coercion import CoercionError, compile_schema
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
        self._coerce = compile_schema(target.schema, unknown_fields, optional_id=True)

    async def prepare(self, records: list[SourceRecord]) -> None:
        """Nothing to fetch for JSON."""

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]:
        value = parse_json_object(record)
        try:
            return self._target, self._coerce(value, "")
        except CoercionError as exc:
            raise RecordError(
                RecordErrorKind.SCHEMA_MISMATCH,
                record.coordinates,
                f"does not fit object type {self._target.name}: {exc}",
            ) from None

"""The ``json`` format: one JSON object per record value (UTF-8)."""

from __future__ import annotations

import json
from typing import Any

from connector.errors import RecordError, RecordErrorKind
from connector.records import SourceRecord


def _reject_constant(name: str) -> Any:
    # Python's json module accepts NaN/Infinity, which are not JSON and cannot be stored.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


class JsonDecoder:
    """Parses a record value as a JSON object."""

    def decode(self, record: SourceRecord) -> dict[str, Any]:
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

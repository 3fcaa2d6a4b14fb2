"""The staging rows COPYed into PostgreSQL: columns in table order, then the coordinates."""

from __future__ import annotations

import json
import uuid
from typing import Any

from connector.backends.postgres import _Statements
from connector.backends.postgres_tables import derive_table
from connector.records import MappedObject, SourceRecord
from tests.fakes import TYPES


def mapped(type_name: str, document: dict[str, Any], offset: int, **extra: Any) -> MappedObject:
    record = SourceRecord(f"{type_name}-topic", 3, offset, None, b"{}")
    return MappedObject(TYPES.get(type_name), document["_id"], document, record, **extra)


def statements(type_name: str) -> _Statements:
    return _Statements(derive_table(TYPES.get(type_name), "ingest"))


def test_rows_follow_the_column_order_with_coordinates_and_position() -> None:
    ids = [uuid.UUID(int=i) for i in range(3)]
    objects = [
        mapped("Measurement", {"timestamp": i, "value": 1.5, "sensor": "s", "_id": ids[i]}, 10 + i)
        for i in range(3)
    ]
    rows = statements("Measurement").rows(objects)
    assert rows == [(ids[i], "s", 1.5, i, "Measurement-topic", 3, 10 + i, i) for i in range(3)]


def test_absent_fields_are_null_and_structured_fields_are_canonical_json() -> None:
    stmts = statements("AppEvent")
    full = {
        "_id": uuid.UUID(int=1),
        "app": "a",
        "level": "INFO",
        "message": "m",
        "occurred_at": 5,
        "attributes": {"b": "2", "a": "1"},
        "duration_ms": 2.0,
        "device": {"model": "x", "os": "y", "app_version": "1"},
    }
    sparse = {
        "_id": uuid.UUID(int=2),
        "app": "a",
        "level": "WARN",
        "message": "m",
        "occurred_at": 6,
    }
    rows = stmts.rows([mapped("AppEvent", full, 0), mapped("AppEvent", sparse, 1)])
    assert [len(row) for row in rows] == [len(stmts.columns) + 1] * 2
    first, second = rows
    assert json.loads(first[5]) == {"a": "1", "b": "2"}
    assert first[5] == '{"a":"1","b":"2"}'
    assert first[6] == 2.0
    assert json.loads(first[7]) == {"model": "x", "os": "y", "app_version": "1"}
    assert second[:8] == (uuid.UUID(int=2), "a", "WARN", "m", 6, None, None, None)
    assert second[8:] == ("AppEvent-topic", 3, 1, 1)


def test_standard_rows_carry_the_tombstone_flag() -> None:
    upsert = mapped("Sensor", {"_id": "s1", "name": "n", "unit": "LUX"}, 7)
    deleted = mapped("Sensor", {"_id": "s2"}, 8, tombstone=True)
    rows = statements("Sensor").rows([upsert, deleted])
    assert rows == [
        ("s1", "n", "LUX", None, None, "Sensor-topic", 3, 7, False, 0),
        ("s2", None, None, None, None, "Sensor-topic", 3, 8, True, 1),
    ]

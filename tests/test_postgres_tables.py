"""PostgreSQL tables derived from object types, and the start-up evolution plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from connector.backends.postgres_tables import (
    ExistingColumn,
    derive_table,
    plan_changes,
    table_problems,
)
from connector.schemas import load_object_types
from tests.fakes import TYPES


def columns(type_name: str) -> list[tuple[str, str, bool, str | None]]:
    table = derive_table(TYPES.get(type_name), "ingest")
    return [(c.name, c.sql_type, c.nullable, c.index) for c in table.columns]


def test_example_types_become_typed_columns() -> None:
    assert columns("Measurement") == [
        ("_id", "uuid", False, None),
        ("sensor", "text", False, "btree"),
        ("value", "double precision", False, None),
        ("timestamp", "timestamp with time zone", False, None),
    ]
    assert columns("Invoice") == [
        ("_id", "text", False, None),
        ("number", "text", False, None),
        ("customer", "bigint", False, "btree"),
        ("issued_at", "timestamp with time zone", False, None),
        ("due_on", "date", False, None),
        ("currency", "text", False, None),
        ("billing_address", "jsonb", False, None),
        ("lines", "jsonb", False, None),
        ("total", "numeric(14,2)", False, None),
        ("paid", "boolean", False, None),
    ]
    assert columns("AppEvent")[5:] == [
        ("attributes", "jsonb", False, None),
        ("duration_ms", "double precision", True, None),
        ("device", "jsonb", True, None),
    ]


def test_create_statements() -> None:
    table = derive_table(TYPES.get("Measurement"), "ingest")
    assert table.create_statements() == [
        'CREATE TABLE IF NOT EXISTS "ingest"."Measurement" ("_id" uuid NOT NULL, "sensor" text '
        'NOT NULL, "value" double precision NOT NULL, "timestamp" timestamp with time zone NOT '
        'NULL, "_topic" text NOT NULL, "_partition" integer NOT NULL, "_offset" bigint NOT NULL, '
        "PRIMARY KEY (_id))",
        'CREATE INDEX IF NOT EXISTS "Measurement_sensor_idx" ON "ingest"."Measurement" USING '
        'btree ("sensor")',
    ]


def types_of(tmp_path: Path, *fields: dict[str, Any]) -> Any:
    (tmp_path / "Sensor.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Sensor",
                "objectType": "standard",
                "fields": [
                    {"name": "_id", "type": {"type": "fixed", "name": "ObjectId", "size": 12}}
                ],
            }
        )
    )
    (tmp_path / "Thing.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Thing",
                "objectType": "asymmetric",
                "fields": [{"name": "_id", "type": "long"}, *fields],
            }
        )
    )
    return load_object_types(tmp_path)


def test_arrays_unions_and_object_id_links(tmp_path: Path) -> None:
    types = types_of(
        tmp_path,
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "sensors",
            "type": {"type": "array", "items": {"type": "fixed", "name": "ObjectId", "size": 12}},
            "link": "Sensor",
        },
        {
            "name": "parts",
            "type": {
                "type": "array",
                "items": {"type": "record", "name": "P", "fields": [{"name": "n", "type": "int"}]},
            },
        },
        {"name": "either", "type": ["null", "int", "string"], "default": None},
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": None},
        {"name": "micros", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "raw", "type": "bytes"},
        {"name": "small", "type": "float"},
    )
    table = derive_table(types.get("Thing"), "s")
    assert [(c.name, c.sql_type, c.nullable, c.index) for c in table.columns] == [
        ("_id", "bigint", False, None),
        ("tags", "text[]", False, None),
        ("sensors", "text[]", False, "gin"),
        ("parts", "jsonb", False, None),
        ("either", "jsonb", True, None),
        ("day", "date", True, None),
        ("micros", "timestamp without time zone", False, None),
        ("raw", "bytea", False, None),
        ("small", "real", False, None),
    ]
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    convert = {c.name: c.convert for c in table.columns}
    assert convert["sensors"]([oid]) == ["65a1b2c3d4e5f60718293a4b"]
    assert convert["parts"]([{"n": 1}]) == '[{"n":1}]'
    assert convert["tags"] is None


def test_names_longer_than_postgres_allows(tmp_path: Path) -> None:
    types = types_of(tmp_path, {"name": "x" * 64, "type": "int"})
    with pytest.raises(ValueError, match=r"Thing: name 'x{64}' is longer than 63 bytes"):
        derive_table(types.get("Thing"), "s")


BOOKKEEPING = {
    "_topic": ExistingColumn("text", False),
    "_partition": ExistingColumn("integer", False),
    "_offset": ExistingColumn("bigint", False),
}


def existing(**cols: tuple[str, bool]) -> dict[str, ExistingColumn]:
    return {**{k: ExistingColumn(*v) for k, v in cols.items()}, **BOOKKEEPING}


def test_additive_change_adds_a_column(tmp_path: Path) -> None:
    types = types_of(
        tmp_path,
        {"name": "a", "type": "int"},
        {"name": "b", "type": "string", "default": "x"},
        {"name": "c", "type": ["null", "long"], "default": None},
    )
    table = derive_table(types.get("Thing"), "s")
    statements, problems = plan_changes(
        table, existing(_id=("bigint", False), a=("integer", False))
    )
    assert problems == []
    assert statements == [
        'ALTER TABLE "s"."Thing" ADD COLUMN "b" text',
        'ALTER TABLE "s"."Thing" ADD COLUMN "c" bigint',
    ]


def test_incompatible_differences_are_refused_with_the_fix(tmp_path: Path) -> None:
    types = types_of(tmp_path, {"name": "a", "type": "long"}, {"name": "b", "type": "string"})
    table = derive_table(types.get("Thing"), "s")
    statements, problems = plan_changes(
        table, existing(_id=("bigint", False), a=("integer", False), old=("text", False))
    )
    assert statements == []
    assert problems == [
        "table s.Thing (Thing): column a is integer but field a needs bigint; migrate it (ALTER "
        'TABLE "s"."Thing" ALTER COLUMN "a" TYPE bigint) or rename the field',
        "table s.Thing (Thing): field b is new, required and has no default, so the rows already "
        'stored have no value for it; give it a default or make it nullable (["null", ...])',
        "table s.Thing (Thing): column old is NOT NULL but the type has no field old any more, so "
        'inserts would fail; run ALTER TABLE "s"."Thing" ALTER COLUMN "old" DROP NOT NULL',
    ]


def test_a_foreign_table_is_refused(tmp_path: Path) -> None:
    types = types_of(tmp_path)
    table = derive_table(types.get("Thing"), "s")
    _, problems = plan_changes(table, {"_id": ExistingColumn("bigint", False)})
    assert problems[0] == (
        "table s.Thing (Thing): bookkeeping column _topic (text) is missing or of another type; "
        "this table was not created by data-ingest: point backend.schema elsewhere"
    )


# -- standard types: tombstone markers and the reader view -------------------------------------


def test_a_standard_table_holds_markers_and_has_a_live_view() -> None:
    table = derive_table(TYPES.get("Sensor"), "ingest")
    assert table.create_statements() == [
        'CREATE TABLE IF NOT EXISTS "ingest"."Sensor" ("_id" text NOT NULL, "name" text, '
        '"unit" text, "location" jsonb, "installed_on" date, "_topic" text NOT NULL, '
        '"_partition" integer NOT NULL, "_offset" bigint NOT NULL, '
        '"_deleted" boolean NOT NULL DEFAULT false, PRIMARY KEY (_id))',
        'CREATE OR REPLACE VIEW "ingest"."Sensor_live" AS SELECT * FROM "ingest"."Sensor" '
        'WHERE NOT "_deleted"',
    ]


def sensor_columns(**extra: tuple[str, bool]) -> dict[str, ExistingColumn]:
    return existing(
        _id=("text", False),
        name=("text", False),
        unit=("text", False),
        location=("jsonb", True),
        installed_on=("date", True),
        **extra,
    )


def test_a_standard_table_from_before_markers_is_migrated() -> None:
    table = derive_table(TYPES.get("Sensor"), "s")
    statements, problems = plan_changes(table, sensor_columns(), has_view=False)
    assert problems == []
    assert statements == [
        'ALTER TABLE "s"."Sensor" ADD COLUMN "_deleted" boolean NOT NULL DEFAULT false',
        'ALTER TABLE "s"."Sensor" ALTER COLUMN "name" DROP NOT NULL',
        'ALTER TABLE "s"."Sensor" ALTER COLUMN "unit" DROP NOT NULL',
        'CREATE OR REPLACE VIEW "s"."Sensor_live" AS SELECT * FROM "s"."Sensor" '
        'WHERE NOT "_deleted"',
    ]


def test_a_current_standard_table_needs_nothing_but_a_missing_view() -> None:
    table = derive_table(TYPES.get("Sensor"), "s")
    current = existing(
        _id=("text", False),
        name=("text", True),
        unit=("text", True),
        location=("jsonb", True),
        installed_on=("date", True),
        _deleted=("boolean", False),
    )
    assert plan_changes(table, current, has_view=True) == ([], [])
    assert plan_changes(table, current, has_view=False)[0] == [table.view_statement()]


def test_fields_named_like_bookkeeping_columns_are_refused(tmp_path: Path) -> None:
    types = types_of(tmp_path, {"name": "_offset", "type": "long"})
    with pytest.raises(ValueError) as info:
        derive_table(types.get("Thing"), "s")
    assert str(info.value) == (
        f"{tmp_path / 'Thing.avsc'}: Thing._offset: the PostgreSQL backend keeps its own column "
        "_offset in this table; rename the field"
    )
    (tmp_path / "Sensor.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Sensor",
                "objectType": "standard",
                "collection": "s" * 59,
                "fields": [{"name": "_id", "type": "string"}, {"name": "_deleted", "type": "int"}],
            }
        )
    )
    problems = table_problems(load_object_types(tmp_path), "s")
    assert problems == [
        f"backend: Sensor: name '{'s' * 59}_live' is longer than 63 bytes",
        f"backend: {tmp_path / 'Thing.avsc'}: Thing._offset: the PostgreSQL backend keeps its "
        "own column _offset in this table; rename the field",
    ]

"""JSON coercion edge cases: times and zones, ranges, NaN, text, nesting, unknown fields."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

import pytest
from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.formats.json_coercion import CoercionError, compile_record, compile_schema
from connector.formats.json_fast import compile_fast

UTC = dt.UTC


def record(*fields: dict[str, Any], name: str = "T") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields)}


def fast_or_none(schema: dict[str, Any], value: Any, unknown_fields: str = "reject") -> Any:
    """The fast path's document of ``value`` as JSON, None when it refuses it."""
    _, fields = compile_record(schema, unknown_fields, optional_id=True)
    try:
        return compile_fast(fields, unknown_fields, frozenset({"_id"}))(json.dumps(value).encode())
    except Exception:
        return None


def agrees(schema: dict[str, Any], value: Any, unknown_fields: str = "reject") -> None:
    """The fast path refuses ``value`` or reads it exactly as the coercion does."""
    try:
        exact: Any = compile_record(schema, unknown_fields, optional_id=True)[0](value, "")
    except CoercionError:
        exact = None
    fast = fast_or_none(schema, value, unknown_fields)
    assert fast is None or repr(fast) == repr(exact), (value, fast, exact)


def coerce(field_type: Any, value: Any, unknown_fields: str = "reject") -> Any:
    schema = record({"name": "f", "type": field_type})
    agrees(schema, {"f": value}, unknown_fields)
    return compile_schema(schema, unknown_fields)({"f": value}, "")["f"]


def error(field_type: Any, value: Any) -> str:
    with pytest.raises(CoercionError) as info:
        coerce(field_type, value)
    return str(info.value)


TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
TS_MICROS = {"type": "long", "logicalType": "timestamp-micros"}
DATE = {"type": "int", "logicalType": "date"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-02-29T23:30:00+01:00", dt.datetime(2024, 2, 29, 22, 30, tzinfo=UTC)),
        ("2024-03-01T00:30:00.123456Z", dt.datetime(2024, 3, 1, 0, 30, 0, 123000, tzinfo=UTC)),
        ("2024-02-29T05:00:00-11:30", dt.datetime(2024, 2, 29, 16, 30, tzinfo=UTC)),
        ("1969-12-31T23:59:59.999Z", dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        (0, dt.datetime(1970, 1, 1, tzinfo=UTC)),
        (-1, dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        (1709249400000, dt.datetime(2024, 2, 29, 23, 30, tzinfo=UTC)),
        (1709249400000.0, dt.datetime(2024, 2, 29, 23, 30, tzinfo=UTC)),
    ],
)
def test_timestamp_millis(value: Any, expected: dt.datetime) -> None:
    assert coerce(TS_MILLIS, value) == expected


def test_timestamp_micros_keeps_microseconds_and_negative_epoch() -> None:
    assert coerce(TS_MICROS, "2024-02-29T12:00:00.000001+00:00") == dt.datetime(
        2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC
    )
    assert coerce(TS_MICROS, -1) == dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_timestamp_errors() -> None:
    assert error(TS_MILLIS, "2024-02-29T12:00:00") == (
        "field f: string '2024-02-29T12:00:00' has no timezone; write it with Z or an offset "
        "such as +01:00 (or send epoch milliseconds)"
    )
    assert error(TS_MILLIS, "2023-02-29T12:00:00Z") == (
        "field f: string '2023-02-29T12:00:00Z' is not an ISO-8601 timestamp (timestamp-millis)"
    )
    assert error(TS_MILLIS, 10**20) == (
        "field f: 100000000000000000000 epoch milliseconds is out of range"
    )
    assert error(TS_MILLIS, 1.5) == (
        "field f: expected an ISO-8601 timestamp or epoch milliseconds, got the fraction 1.5"
    )
    assert error(TS_MILLIS, True) == (
        "field f: expected an ISO-8601 timestamp or epoch milliseconds, got boolean true"
    )


def test_dates_leap_day_and_epoch_days() -> None:
    assert coerce(DATE, "2024-02-29") == dt.date(2024, 2, 29)
    assert coerce(DATE, -1) == dt.date(1969, 12, 31)
    assert coerce(DATE, 19782) == dt.date(2024, 2, 29)
    assert error(DATE, "2023-02-29") == (
        "field f: string '2023-02-29' is not an ISO-8601 date (YYYY-MM-DD)"
    )
    assert error(DATE, 10**9) == "field f: 1000000000 days since 1970-01-01 is out of range"


@pytest.mark.parametrize(
    ("field_type", "value", "message"),
    [
        ("int", 2**31, "field f: 2147483648 is out of range for int (-2147483648 to 2147483647)"),
        (
            "long",
            -(2**63) - 1,
            "field f: -9223372036854775809 is out of range for long (-9223372036854775808 to 9223372036854775807)",
        ),
        ("int", "5", "field f: expected int, got string '5'"),
        ("int", 2.5, "field f: expected int, got the fraction 2.5"),
        ("float", 1e39, "field f: 1e+39 is out of range for float"),
        ("double", "nan", "field f: expected double, got string 'nan'"),
        ("boolean", 1, "field f: expected boolean, got number 1"),
        ("string", None, "field f: expected string, got null"),
        ("bytes", "***", "field f: string '***' is not valid base64"),
    ],
)
def test_type_mismatches_and_ranges(field_type: Any, value: Any, message: str) -> None:
    assert error(field_type, value) == message


def test_nan_and_infinity_only_where_allowed() -> None:
    assert math.isnan(coerce("double", "NaN"))
    assert coerce("double", "-Infinity") == -math.inf
    assert math.isnan(coerce("float", "NaN"))
    assert error("long", "NaN") == "field f: expected long, got string 'NaN'"
    dec = {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}
    assert error(dec, "NaN") == "field f: string 'NaN' is not allowed: a decimal must be finite"
    assert (
        error(dec, "Infinity")
        == "field f: string 'Infinity' is not allowed: a decimal must be finite"
    )


def test_decimals() -> None:
    dec = {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}
    assert coerce(dec, "123.4") == decimal.Decimal("123.40")
    assert coerce(dec, 0.1) == decimal.Decimal("0.10")
    assert coerce(dec, -7) == decimal.Decimal("-7.00")
    assert error(dec, "1.234") == "field f: 1.234 has more than 2 decimal places (decimal(5,2))"
    assert error(dec, "1234.5") == "field f: 1234.5 has more than 5 digits (decimal(5,2))"
    assert error(dec, "12,5") == "field f: string '12,5' is not a decimal number"


def test_uuid_object_id_enum_and_fixed() -> None:
    assert coerce(
        {"type": "string", "logicalType": "uuid"}, "0B5F3C3E-8F52-4C8E-9B1F-2B7A3C4D5E6F"
    ) == uuid.UUID("0b5f3c3e-8f52-4c8e-9b1f-2b7a3c4d5e6f")
    assert (
        error({"type": "string", "logicalType": "uuid"}, "not-a-uuid")
        == "field f: string 'not-a-uuid' is not a valid UUID"
    )
    oid = {"type": "fixed", "name": "ObjectId", "size": 12}
    assert coerce(oid, "65a1b2c3d4e5f60718293a4b") == ObjectId("65a1b2c3d4e5f60718293a4b")
    assert coerce(oid, "ZaGyw9Tl9gcYKTpL") == ObjectId("65a1b2c3d4e5f60718293a4b")
    assert (
        error(oid, "65a1b2c3d4e5f60718293a4z")
        == "field f: '65a1b2c3d4e5f60718293a4z' is not a valid ObjectId"
    )
    enum = {"type": "enum", "name": "Level", "symbols": ["INFO", "WARN"]}
    assert coerce(enum, "WARN") == "WARN"
    assert error(enum, "warn") == "field f: 'warn' is not a symbol of enum Level (INFO, WARN)"
    fixed = {"type": "fixed", "name": "Hash", "size": 4}
    assert error(fixed, "AAAA") == "field f: fixed Hash needs 4 bytes, got 3"


def test_non_ascii_text_is_kept_exactly() -> None:
    text = "Zürich – 東京 – 🌡️ – \u0000 – \ud7ff"
    assert coerce("string", text) == text


def test_deeply_nested_embedded_objects_name_the_path() -> None:
    leaf: dict[str, Any] = {
        "type": "record",
        "name": "L0",
        "fields": [{"name": "v", "type": "int"}],
    }
    value: Any = {"v": 1}
    for depth in range(1, 40):
        leaf = {
            "type": "record",
            "name": f"L{depth}",
            "fields": [{"name": "c", "type": {"type": "array", "items": leaf}}],
        }
        value = {"c": [value]}
    coerced = coerce(leaf, value)
    inner = coerced
    for _ in range(39):
        inner = inner["c"][0]
    assert inner == {"v": 1}
    bad = value
    target = bad
    for _ in range(38):
        target = target["c"][0]
    target["c"][0] = {"v": "x"}
    assert error(leaf, bad) == "field f" + ".c[0]" * 39 + ".v: expected int, got string 'x'"


def test_missing_fields_take_defaults_and_unknown_fields_follow_the_route() -> None:
    schema = record(
        {"name": "a", "type": "int"},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
        {
            "name": "level",
            "type": {"type": "enum", "name": "L", "symbols": ["A", "B"]},
            "default": "B",
        },
        {"name": "raw", "type": "bytes", "default": "\u00ff\u0000"},
        {"name": "maybe", "type": ["null", "long"], "default": None},
    )
    strict = compile_schema(schema)
    first = strict({"a": 1}, "")
    assert first == {"a": 1, "tags": {}, "level": "B", "raw": b"\xff\x00", "maybe": None}
    first["tags"]["x"] = "y"
    assert strict({"a": 2}, "")["tags"] == {}  # defaults are not shared between records
    with pytest.raises(CoercionError) as info:
        strict({"a": 1, "colour": "red"}, "")
    assert str(info.value) == (
        "field colour: not declared in T (unknown_fields: reject); remove it from the record, "
        "declare it, or set unknown_fields: ignore on the route"
    )
    assert compile_schema(schema, "ignore")({"a": 1, "colour": "red"}, "")["a"] == 1
    with pytest.raises(CoercionError) as info:
        strict({"tags": {}}, "")
    assert str(info.value) == "field a: missing, and the field has no default"


def test_unions_pick_the_branch_that_fits() -> None:
    union = ["null", "long", "string"]
    assert coerce(union, 5) == 5
    assert coerce(union, "five") == "five"
    assert coerce(union, None) is None
    assert error(union, [1]) == "field f: expected null or long or string, got array"


def test_invalid_default_is_reported_at_compile_time() -> None:
    with pytest.raises(
        ValueError,
        match="record T: the default of field n is invalid: expected int, got string 'x'",
    ):
        compile_schema(record({"name": "n", "type": "int", "default": "x"}))


MEASUREMENT = record(
    {"name": "_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "sensor", "type": "string"},
    {"name": "value", "type": "double"},
    {"name": "level", "type": "float", "default": 1.5},
    {"name": "count", "type": ["null", "int"], "default": None},
    {"name": "flag", "type": "boolean", "default": False},
    {"name": "big", "type": "long", "default": 0},
    {"name": "timestamp", "type": TS_MILLIS},
    {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
    name="Measurement",
)

TIMES = st.builds(
    lambda t, fmt: t.isoformat(timespec=fmt),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex.upper()),
    TIMES,
    TIMES.map(lambda t: t + "Z"),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "2024-02-29T12:00:00.1234567Z",
            "{12345678-1234-5678-1234-567812345678}",
        ]
    ),
)
VALID = st.fixed_dictionaries(
    {"sensor": st.text(max_size=8), "value": st.floats(allow_nan=False), "timestamp": TIMES},
    optional={"_id": st.uuids().map(str), "count": st.integers(-(2**31), 2**31 - 1)},
)
DOCUMENTS = st.builds(
    lambda base, changes: {**base, **changes},
    VALID,
    st.dictionaries(
        st.sampled_from(
            ["_id", "sensor", "value", "level", "count", "flag", "big", "timestamp", "tags", "x"]
        ),
        st.one_of(SCALARS, st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)),
        max_size=3,
    ),
)


@settings(max_examples=500)
@given(DOCUMENTS, st.sampled_from(["reject", "ignore"]))
def test_fast_path_refuses_or_agrees_with_the_coercion(value: dict[str, Any], unknown: str) -> None:
    agrees(MEASUREMENT, value, unknown)

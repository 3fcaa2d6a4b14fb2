"""Mapped documents as BSON for the MongoDB backend, and their comparison (no server)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import Any

import bson
import pytest
from bson import Binary, Decimal128, ObjectId
from bson.codec_options import CodecOptions

from connector.backends.bson_documents import (
    CODEC_OPTIONS,
    BsonConverter,
    UnstorableValue,
    bson_datetime,
    differing_fields,
    encode,
    same_value,
)

UTC = dt.UTC
PLUS_2 = dt.timezone(dt.timedelta(hours=2))
MAX = 16 * 1024 * 1024
FERRETDB = "FerretDB v1.24.2"


def convert(document: dict[str, Any], decimals: Any = "decimal128") -> dict[str, Any]:
    return BsonConverter(decimals).document(document)


def stored(document: dict[str, Any], decimals: Any = "decimal128") -> dict[str, Any]:
    """What a server stores and the client decodes: encode, then decode with our options."""
    return bson.decode(encode(convert(document, decimals), MAX).raw, CODEC_OPTIONS)


def bson_types(document: dict[str, Any]) -> dict[str, Any]:
    """The encoded document decoded without interpretation (UUIDs stay Binary)."""
    return bson.decode(encode(convert(document), MAX).raw, CodecOptions())


# -- every logical type ------------------------------------------------------------------------


def test_timestamps_become_utc_dates_truncated_to_milliseconds() -> None:
    at = dt.datetime(2024, 2, 29, 23, 30, 15, 123999, tzinfo=PLUS_2)
    out = convert({"at": at, "naive": dt.datetime(2024, 1, 1, 12, 0, 0, 999)})
    assert out["at"] == dt.datetime(2024, 2, 29, 21, 30, 15, 123000, tzinfo=UTC)
    assert out["at"].tzinfo is UTC
    assert out["naive"] == dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)  # naive means UTC
    assert stored({"at": at}) == {"at": out["at"]}
    assert bson_types({"at": at})["at"] == dt.datetime(2024, 2, 29, 21, 30, 15, 123000)


def test_timestamps_before_1970_truncate_like_bson() -> None:
    before = dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert bson_datetime(before) == dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert stored({"t": before}) == {"t": bson_datetime(before)}


def test_date_becomes_midnight_utc_and_time_becomes_iso_text() -> None:
    out = convert({"day": dt.date(2024, 2, 29), "at": dt.time(13, 45, 0, 250000)})
    assert out == {"day": dt.datetime(2024, 2, 29, tzinfo=UTC), "at": "13:45:00.250000"}
    assert convert({"at": dt.time(7, 5)}) == {"at": "07:05:00"}
    assert stored({"day": dt.date(2024, 2, 29)}) == {"day": dt.datetime(2024, 2, 29, tzinfo=UTC)}


def test_uuid_is_binary_subtype_4() -> None:
    key = uuid.UUID("0b5f3c3e-8f52-4c8e-9b1f-2b7a3c4d5e6f")
    assert convert({"_id": key}) == {"_id": key}
    raw = bson_types({"_id": key})["_id"]
    assert isinstance(raw, Binary)
    assert (raw.subtype, bytes(raw)) == (4, key.bytes)
    assert stored({"_id": key}) == {"_id": key}


def test_decimals_as_decimal128_or_as_text() -> None:
    doc = {"price": decimal.Decimal("12.50"), "neg": decimal.Decimal("-0.001")}
    assert convert(doc) == {"price": Decimal128("12.50"), "neg": Decimal128("-0.001")}
    assert stored(doc) == {"price": Decimal128("12.50"), "neg": Decimal128("-0.001")}
    assert convert(doc, "string") == {"price": "12.50", "neg": "-0.001"}
    assert stored(doc, "string") == {"price": "12.50", "neg": "-0.001"}


def test_a_decimal_beyond_decimal128_names_the_field_and_the_fix() -> None:
    doc = {"lines": [{"p": decimal.Decimal("1")}, {"p": decimal.Decimal("1." + "1" * 40)}]}
    with pytest.raises(UnstorableValue) as info:
        convert(doc)
    assert str(info.value) == (
        "field lines[1].p: the decimal 1." + "1" * 40 + " does not fit a Decimal128 "
        "(34 significant digits, exponent -6176..6111); set backend.decimals: string to "
        "store it as text"
    )
    assert convert(doc, "string")["lines"][1]["p"] == "1." + "1" * 40


def test_bytes_objectid_and_plain_values() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    doc = {
        "raw": b"\x00\xff",
        "buf": bytearray(b"ab"),
        "view": memoryview(b"cd"),
        "oid": oid,
        "s": "text",
        "i": 2**62,
        "f": 1.25,
        "t": True,
        "n": None,
    }
    out = convert(doc)
    assert out == {
        "raw": b"\x00\xff",
        "buf": b"ab",
        "view": b"cd",
        "oid": oid,
        "s": "text",
        "i": 2**62,
        "f": 1.25,
        "t": True,
        "n": None,
    }
    assert [type(out[k]) for k in ("raw", "buf", "view")] == [bytes, bytes, bytes]
    assert bson_types({"raw": b"\x00"})["raw"] == b"\x00"  # binary subtype 0
    assert stored(doc) == out


def test_special_floats_are_kept() -> None:
    out = convert({"nan": math.nan, "inf": [math.inf, -math.inf], "neg_zero": -0.0})
    assert math.isnan(out["nan"])
    assert out["inf"] == [math.inf, -math.inf]
    assert math.copysign(1.0, out["neg_zero"]) == -1.0
    assert same_value(stored({"nan": math.nan})["nan"], math.nan)


def test_nesting_embedded_objects_arrays_maps_and_links() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    when = dt.datetime(2024, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)
    doc = {
        "_id": oid,
        "customer": 42,  # a link: the target's _id
        "sensors": ["s-1", "s-2"],  # an array of links
        "by_role": {"main": "s-1"},  # a map of links
        "billing_address": {"city": "Bern", "since": dt.date(2020, 5, 1)},
        "lines": [{"unit_price": decimal.Decimal("0.50"), "at": when}],
        "attributes": {"a": {"deep": [uuid.UUID(int=1), (1, 2)]}},
    }
    out = convert(doc, "string")
    assert out == {
        "_id": oid,
        "customer": 42,
        "sensors": ["s-1", "s-2"],
        "by_role": {"main": "s-1"},
        "billing_address": {"city": "Bern", "since": dt.datetime(2020, 5, 1, tzinfo=UTC)},
        "lines": [{"unit_price": "0.50", "at": dt.datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)}],
        "attributes": {"a": {"deep": [uuid.UUID(int=1), [1, 2]]}},
    }
    assert stored(doc, "string") == out
    assert doc["lines"][0]["at"] == when  # the input is not changed


# -- values that cannot be stored --------------------------------------------------------------


def test_an_unknown_type_names_the_field() -> None:
    with pytest.raises(UnstorableValue) as info:
        convert({"a": [{"b": object()}]})
    assert str(info.value) == "field a[0].b: cannot store a value of type object"
    assert (info.value.path, info.value.problem) == (
        "a[0].b",
        "cannot store a value of type object",
    )


def test_a_key_that_is_not_text_names_the_map() -> None:
    with pytest.raises(UnstorableValue, match=r"^field attributes: key 1 is not a string$"):
        convert({"attributes": {1: "x"}})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"a\x00b": 1},
            "not valid BSON: Invalid document: Key names must not contain the NULL byte",
        ),
        ({"big": 2**64}, "not valid BSON: MongoDB can only handle up to 8-byte ints"),
    ],
)
def test_invalid_bson_is_caught_per_document(document: dict[str, Any], message: str) -> None:
    with pytest.raises(UnstorableValue) as info:
        encode(convert(document), MAX)
    assert str(info.value) == message


def test_a_document_over_the_size_limit_is_refused() -> None:
    doc = convert({"blob": b"x" * 100})
    with pytest.raises(UnstorableValue, match=r"^the document is 116 bytes as BSON; "):
        encode(doc, 100)
    assert len(encode(doc, 116).raw) == 116


# -- FerretDB: NaN and Decimal128 are refused before sending -------------------------------------


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"value": math.nan}, "value"),
        ({"lines": [{"x": 1.0}, {"x": math.nan}]}, "lines[1].x"),
        ({"attributes": {"k": {"deep": [0.0, math.nan]}}}, "attributes.k.deep[1]"),
    ],
)
def test_nan_is_refused_for_ferretdb_naming_the_field(document: dict[str, Any], path: str) -> None:
    converter = BsonConverter("string", ferretdb=FERRETDB)
    with pytest.raises(UnstorableValue) as info:
        converter.document(document)
    assert str(info.value) == (
        f"field {path}: NaN cannot be written to FerretDB v1.24.2, which drops the connection "
        "on NaN; send null or a number"
    )
    assert convert(document)  # MongoDB takes it


def test_ferretdb_takes_infinities_and_decimals_as_text() -> None:
    converter = BsonConverter("string", ferretdb=FERRETDB)
    out = converter.document({"inf": math.inf, "d": decimal.Decimal("1.5")})
    assert out == {"inf": math.inf, "d": "1.5"}


def test_decimal128_is_refused_for_ferretdb() -> None:
    for decimals, value in (("decimal128", decimal.Decimal("1.5")), ("string", Decimal128("1.5"))):
        converter = BsonConverter(decimals, ferretdb=FERRETDB)  # type: ignore[arg-type]
        with pytest.raises(UnstorableValue) as info:
            converter.document({"total": value})
        assert str(info.value) == (
            "field total: Decimal128 cannot be written to FerretDB v1.24.2; use decimals: string"
        )


# -- comparison: identical (duplicate) or different (conflict) -----------------------------------


def test_key_order_and_time_zones_do_not_make_a_difference() -> None:
    a = {"_id": 1, "x": {"p": 1, "q": 2}, "at": dt.datetime(2024, 1, 1, 2, tzinfo=PLUS_2)}
    b = {"at": dt.datetime(2024, 1, 1, 0, tzinfo=UTC), "x": {"q": 2, "p": 1}, "_id": 1}
    assert same_value(a, b)
    assert differing_fields(a, b) == []


def test_nan_equals_nan_but_bool_is_not_int() -> None:
    assert same_value({"v": [math.nan]}, {"v": [math.nan]})
    assert not same_value({"v": True}, {"v": 1})
    assert not same_value({"v": 0}, {"v": False})
    assert same_value({"v": 1}, {"v": 1.0})  # Avro fixes the type of a field anyway
    assert not same_value({"v": math.nan}, {"v": 1.0})


def test_containers_differ_from_scalars_and_by_length() -> None:
    assert not same_value({"v": [1]}, {"v": [1, 2]})
    assert not same_value({"v": {"a": 1}}, {"v": {"a": 1, "b": 2}})
    assert not same_value({"v": [1]}, {"v": {"0": 1}})
    assert not same_value({"v": "a"}, {"v": ["a"]})


def test_differing_fields_are_top_level_and_sorted() -> None:
    stored_doc = {"_id": 1, "value": 1.5, "lines": [{"q": 1}], "gone": True, "nan": math.nan}
    incoming = {"_id": 1, "value": 2.0, "lines": [{"q": 2}], "new": 1, "nan": math.nan}
    assert differing_fields(stored_doc, incoming) == ["gone", "lines", "new", "value"]


def test_a_converted_document_compares_equal_to_what_the_server_returns() -> None:
    """The backend compares the converted incoming document with the stored, decoded one."""
    doc = {
        "_id": uuid.UUID(int=9),
        "at": dt.datetime(2024, 2, 29, 23, 30, 15, 123456, tzinfo=PLUS_2),
        "day": dt.date(2024, 2, 29),
        "t": dt.time(1, 2, 3),
        "d": decimal.Decimal("3.50"),
        "b": b"\x01",
        "o": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "nan": math.nan,
        "nested": [{"m": {"k": dt.datetime(2000, 1, 1, 0, 0, 0, 999, tzinfo=UTC)}}],
    }
    for decimals in ("decimal128", "string"):
        assert same_value(stored(doc, decimals), convert(doc, decimals))
    replay = dict(doc, at=doc["at"].replace(microsecond=123999))  # same millisecond
    assert same_value(stored(doc), convert(replay))
    changed = dict(doc, at=doc["at"].replace(microsecond=124000))
    assert differing_fields(stored(doc), convert(changed)) == ["at"]

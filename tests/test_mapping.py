"""Mapping records to objects: ids by field, key or coordinates (R10), record errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.config import parse_config
from connector.errors import Coordinates, RecordError
from connector.mapping import Mapper, coordinates_id
from connector.records import SourceRecord


def mapper(id_mode: str = "field") -> Mapper:
    return Mapper(
        parse_config(
            {
                "kafka": {"bootstrap_servers": "b"},
                "routes": [{"topic": "m", "type": "Measurement", "id": id_mode}],
                "backend": {"type": "sqlite", "path": "x"},
            },
            "t.yaml",
            env={},
        )
    )


def rec(value: bytes | None, key: bytes | None = None, offset: int = 3) -> SourceRecord:
    return SourceRecord("m", 1, offset, key, value)


def test_field_id_is_used() -> None:
    obj = mapper().map(rec(b'{"_id": "abc", "v": 1}'))
    assert (obj.type_name, obj.object_id, obj.document) == (
        "Measurement",
        "abc",
        {"_id": "abc", "v": 1},
    )


def test_missing_id_derives_from_coordinates() -> None:
    obj = mapper().map(rec(b'{"v": 1}'))
    assert obj.object_id == str(
        uuid.uuid5(uuid.UUID("5f1d7a3e-2b7c-5e47-9a51-6f0d1c2b8e90"), "m/1/3")
    )
    assert obj.document["_id"] == obj.object_id


@given(st.text(min_size=1, max_size=20), st.integers(0, 10_000), st.integers(0, 2**62))
def test_coordinates_id_is_deterministic_and_distinct(
    topic: str, partition: int, offset: int
) -> None:
    a = coordinates_id(Coordinates(topic, partition, offset))
    assert a == coordinates_id(Coordinates(topic, partition, offset))
    assert a != coordinates_id(Coordinates(topic, partition, offset + 1))
    assert uuid.UUID(a).version == 5


def test_id_from_key_and_coordinates_modes() -> None:
    assert mapper("key").map(rec(b'{"_id": "ignored"}', key=b"k-1")).object_id == "k-1"
    obj = mapper("coordinates").map(rec(b'{"_id": "ignored"}'))
    assert obj.object_id == coordinates_id(Coordinates("m", 1, 3))


@pytest.mark.parametrize(
    ("mode", "value", "key", "message"),
    [
        (
            "field",
            b'{"_id": 1.5}',
            None,
            "rule-violation error at topic 'm' partition 1 offset 3: field _id is a float; a primary "
            "key must be a string or an integer (R1)",
        ),
        (
            "field",
            b'{"_id": true}',
            None,
            "rule-violation error at topic 'm' partition 1 offset 3: field _id is a bool; a primary "
            "key must be a string or an integer (R1)",
        ),
        (
            "field",
            b"[1, 2]",
            None,
            "decode error at topic 'm' partition 1 offset 3: value is a JSON list, expected a JSON object",
        ),
        (
            "field",
            b"\xff\xfe",
            None,
            "decode error at topic 'm' partition 1 offset 3: value is not UTF-8 text (byte 0); the "
            "json format expects UTF-8 JSON",
        ),
        (
            "key",
            b"{}",
            None,
            "rule-violation error at topic 'm' partition 1 offset 3: the route takes _id from the "
            "record key (id: key) but the key is null",
        ),
        (
            "key",
            b"{}",
            b"\xff",
            "decode error at topic 'm' partition 1 offset 3: the record key is not UTF-8 text, so it "
            "cannot be used as _id (id: key)",
        ),
    ],
)
def test_record_errors(mode: str, value: bytes, key: bytes | None, message: str) -> None:
    with pytest.raises(RecordError) as info:
        mapper(mode).map(rec(value, key))
    assert str(info.value) == message


def test_unrouted_topic_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="no route matches this topic"):
        mapper().map(SourceRecord("other", 0, 0, None, b"{}"))


@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k != "_id"), st.integers() | st.text(), max_size=5
    )
)
def test_json_objects_round_trip(fields: dict[str, Any]) -> None:
    import json

    obj = mapper().map(rec(json.dumps({"_id": "x", **fields}).encode()))
    assert obj.document == {"_id": "x", **fields}

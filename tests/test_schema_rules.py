"""The rules R1-R7 over the failing fixtures in tests/schemas/: every message word for word."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from connector.schemas import check_directory, load_object_types

FIXTURES = Path(__file__).resolve().parent / "schemas"
REPO = Path(__file__).resolve().parent.parent
ID_TYPES = 'string, {"type": "string", "logicalType": "uuid"}, int, long, or a 12-byte fixed named ObjectId'


def lines(case: str, previous: str | None = None) -> list[str]:
    prev = FIXTURES / previous if previous else None
    return [
        str(v).replace(f"{FIXTURES}/{case}/", "").replace(f"{FIXTURES}/", "")
        for v in check_directory(FIXTURES / case, prev)
    ]


def test_the_example_types_are_valid() -> None:
    assert check_directory(REPO / "avro") == []
    types = load_object_types(REPO / "avro")
    assert {(t.name, t.kind, t.id_type, t.collection) for t in types} == {
        ("AppEvent", "asymmetric", "uuid", "AppEvent"),
        ("Customer", "standard", "long", "Customer"),
        ("Invoice", "asymmetric", "ObjectId", "invoices"),
        ("Measurement", "asymmetric", "uuid", "Measurement"),
        ("Sensor", "standard", "string", "Sensor"),
    }


def test_r1_primary_key_missing() -> None:
    assert lines("r1_missing_id") == [
        "Sensor.avsc: Sensor: -: R1: standard type has no primary key field _id; fix: add "
        f'{{"name": "_id", "type": "string"}} (allowed types: {ID_TYPES})'
    ]


def test_r1_primary_key_types() -> None:
    assert lines("r1_bad_id_type") == [
        'Doc.avsc: Doc: _id: R1: primary key has type {"type": "fixed", "name": "ObjectId", '
        f'"size": 16}}; fix: declare it with one of: {ID_TYPES}',
        'Event.avsc: Event: _id: R1: primary key has the union type ["null", "string"]; it must '
        f"never be null; fix: declare it with one of: {ID_TYPES}",
        f'Measurement.avsc: Measurement: _id: R1: primary key has type "double"; fix: declare it with one of: {ID_TYPES}',
    ]


def test_r2_embedded_object_with_primary_key() -> None:
    assert lines("r2_embedded_with_id") == [
        "Invoice.avsc: Invoice: lines[]._id: R2: embedded object Line has a primary key _id; fix: "
        "embedded objects have no identity of their own: rename the field, or make the type a "
        "top-level standard type and link to it"
    ]


def test_r2_embedding_a_standard_type() -> None:
    assert lines("r2_embeds_standard") == [
        "Measurement.avsc: Measurement: sensor: R2: embeds the top-level type Sensor, which has a "
        'primary key; fix: link to it instead: a field of its _id type with "link": "Sensor"'
    ]


def test_r3_embedded_object_shapes() -> None:
    assert lines("r3_embedded_shapes") == [
        'Order.avsc: Order: address: R3: embedded object in the union ["null", "Address", "string"] '
        'with other types; fix: an embedded object is single (optionally ["null", Record]), in an '
        "array or in a map; split the alternatives into separate fields",
        "Order.avsc: Order: part.sub: R3: embedded object Part contains itself; fix: embedded "
        "objects cannot be recursive; store the nested part as a standard type and link to it",
    ]


def test_r4_link_shape() -> None:
    assert lines("r4_link_shape") == [
        'Measurement.avsc: Measurement: sensors: R4: link field has the type {"type": "array", '
        '"items": {"type": "array", "items": "string"}}; fix: a link is to-one (optionally '
        "nullable), an array or a map of the target's _id type"
    ]


def test_r5_nothing_links_to_or_embeds_an_asymmetric_type() -> None:
    assert lines("r5_asymmetric_targets") == [
        "Alert.avsc: Alert: cause: R5: embeds the asymmetric type Measurement; fix: nothing may "
        "embed an asymmetric type; declare a separate embedded record here",
        "Sensor.avsc: Sensor: last: R5: links to the asymmetric type Measurement; fix: nothing may "
        "link to an asymmetric type (it is insert-only and never read back); link to a standard "
        "type or remove the link",
    ]


def test_r6_link_targets_and_types() -> None:
    assert lines("r6_links") == [
        'Measurement.avsc: Measurement: sensor: R6: link to Sensor has the type "long" but '
        'Sensor._id is "string"; fix: declare the link as "string" (to-one; may be nullable), or '
        "an array or map of it",
        'Measurement.avsc: Measurement: backups: R6: link (map) to Sensor has the type "int" but '
        'Sensor._id is "string"; fix: declare the link as "string" (to-one; may be nullable), or '
        "an array or map of it",
        "Measurement.avsc: Measurement: gateway: R6: links to Gateway, which is not a declared "
        "type; fix: link to a declared standard type (Sensor)",
        "Measurement.avsc: Measurement: near: R6: links to the embedded type Place; fix: links "
        "point to top-level standard types only",
    ]


def test_r7_unique_names() -> None:
    assert lines("r7_duplicate_name") == [
        "SensorV2.avsc: Sensor: -: R7: type name Sensor is also declared in Sensor.avsc; fix: "
        "give every object type a unique name"
    ]


def test_r7_every_type_writes_into_its_own_collection() -> None:
    # Gateway's collection "Device" is free: the type Device writes into "devices".
    assert lines("r7_duplicate_collection") == [
        "Alarm.avsc: Alarm: -: R7: collection Measurement is also the collection of Measurement "
        "(Measurement.avsc), its type name; two object types cannot write into one table; fix: "
        'give every object type its own collection: change "collection" here, or remove it to '
        "use the type name Alarm",
        "Receipt.avsc: Receipt: -: R7: collection invoices is also the collection of Invoice "
        "(Invoice.avsc); two object types cannot write into one table; fix: give every object "
        'type its own collection: change "collection" here, or remove it to use the type name '
        "Receipt",
        "Tag.avsc: Tag: -: R7: collection SENSOR is also the collection of Sensor (Sensor.avsc), "
        "its type name, when case is ignored (as SQLite does); two object types cannot write "
        "into one table; fix: give every object type its own collection: change "
        '"collection" here, or remove it to use the type name Tag',
        "ZoneUpper.avsc: ZONE: -: R7: collection ZONE (its type name) is also the collection of "
        "Zone (Zone.avsc), its type name, when case is ignored (as SQLite does); two object "
        "types cannot write into one table; fix: give every object type its own collection: "
        'add "collection": "<a unique name>" here, or rename the type',
    ]


def test_collection_must_be_a_name() -> None:
    fix = 'write "collection": "<table or collection name>", or remove it to use the type name'
    assert lines("collection_not_a_name") == [
        f'Note.avsc: Note: -: schema: "collection" is 5, not a name; fix: {fix}',
        f'Tag.avsc: Tag: -: schema: "collection" is "", not a name; fix: {fix}',
    ]


def test_r7_kind_cannot_change_between_versions() -> None:
    assert lines("r7_kind_changed/current", "r7_kind_changed/previous") == [
        "Sensor.avsc: Sensor: -: R7: kind changed from standard (in r7_kind_changed/previous/"
        "Sensor.avsc) to asymmetric; fix: a type's kind cannot change between schema versions; "
        "declare a new type under a new name instead"
    ]


def test_top_level_record_without_object_type() -> None:
    assert lines("not_an_object_type") == [
        "Address.avsc: Address: -: schema: top-level record has no objectType; fix: add "
        '"objectType": "asymmetric" (insert-only data) or "standard" (reference data)'
    ]


def test_invalid_json() -> None:
    assert lines("invalid_json") == [
        "Broken.avsc: -: -: schema: invalid JSON at line 2 column 14: Expecting value; fix: fix "
        "the JSON syntax"
    ]


@pytest.mark.parametrize(
    ("case", "status", "count"),
    [("r6_links", 1, 4), ("r1_bad_id_type", 1, 3), ("r7_duplicate_collection", 1, 4)],
)
def test_cli_prints_all_violations_and_exits_1(case: str, status: int, count: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "schemas", "check", str(FIXTURES / case)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == status
    assert len(result.stdout.splitlines()) == count
    assert result.stderr.strip() == f"{count} violation(s)"


def test_cli_accepts_the_example_types() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "schemas", "check", str(REPO / "avro")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.endswith(
        "5 object types OK (AppEvent, Customer, Invoice, Measurement, Sensor)\n"
    )

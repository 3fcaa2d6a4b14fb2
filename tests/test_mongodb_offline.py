"""The MongoDB backend without a server: settings, driver errors, time-series copies.

Settings are checked against the object types before connecting (the URI points at a
closed port: each error below is raised before any connection attempt), and by the CLI
when it loads the pipeline file. Driver errors that the test server cannot produce
(FerretDB ignores write concerns and has no replica set) are classified from the exceptions
pymongo raises for them. FerretDB has no time-series collections, so which surplus copy of
an object the backend deletes there is checked here on the documents alone.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)

from connector.backends.mongodb import MongoBackend
from connector.backends.mongodb_errors import translate
from connector.backends.mongodb_timeseries import delete_op, rank, surplus
from connector.cli import main
from connector.config import MongoBackendConfig, parse_config
from connector.errors import ConfigError, FatalBackendError, RetryableError
from connector.schemas import load_object_types
from tests.fakes import AVRO_DIR, TYPES

NOWHERE = "mongodb://127.0.0.1:1/"


def backend_config(**options: Any) -> MongoBackendConfig:
    values: dict[str, Any] = {"type": "mongodb", "uri": NOWHERE, "database": "x"}
    values.update(options)
    return MongoBackendConfig.model_validate(values)


def backend(**options: Any) -> MongoBackend:
    return MongoBackend(backend_config(**options), TYPES)


async def open_error(b: MongoBackend) -> str:
    with pytest.raises(FatalBackendError) as info:
        await b.open()
    await b.close()
    return str(info.value)


async def test_timeseries_of_an_undeclared_type() -> None:
    b = backend(timeseries={"Reading": {"time_field": "at"}})
    assert await open_error(b) == (
        "backend.timeseries.Reading: no object type 'Reading' is declared; declared types: "
        "AppEvent, Customer, Invoice, Measurement, Sensor"
    )


async def test_timeseries_of_a_standard_type() -> None:
    b = backend(timeseries={"Sensor": {"time_field": "installed_on"}})
    assert await open_error(b) == (
        "backend.timeseries.Sensor: Sensor is a standard type; only asymmetric (insert-only) "
        "types can be stored in a time-series collection\n"
        "backend.timeseries.Sensor: time_field 'installed_on' is a union (null, date), not a "
        "timestamp (a non-null long with logicalType timestamp-millis or timestamp-micros); "
        "timestamp fields of Sensor: none"
    )


async def test_timeseries_time_field_must_be_a_top_level_timestamp() -> None:
    b = backend(
        timeseries={
            "Measurement": {"time_field": "ts"},
            "Invoice": {"time_field": "due_on", "meta_field": "nope"},
        }
    )
    assert (await open_error(b)).splitlines() == [
        "backend.timeseries.Measurement: time_field 'ts' is not a top-level field of "
        "Measurement; its timestamp fields: timestamp",
        "backend.timeseries.Invoice: time_field 'due_on' is date, not a timestamp (a non-null "
        "long with logicalType timestamp-millis or timestamp-micros); timestamp fields of "
        "Invoice: issued_at",
        "backend.timeseries.Invoice: meta_field 'nope' is not a top-level field of Invoice; "
        "its fields: _id, number, customer, issued_at, due_on, currency, billing_address, "
        "lines, total, paid",
    ]


def pipeline(**backend: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "b"},
        "schemas": {"dir": str(AVRO_DIR)},
        "routes": [{"topic": "t", "type": "Measurement"}],
        "backend": {"type": "mongodb", "uri": NOWHERE, "database": "x", **backend},
    }


@pytest.mark.parametrize("meta_field", ["occurred_at", "_id"])
def test_meta_field_equal_to_the_time_field_or_id_is_a_config_error(meta_field: str) -> None:
    timeseries = {"AppEvent": {"time_field": "occurred_at", "meta_field": meta_field}}
    with pytest.raises(ConfigError) as info:
        parse_config(pipeline(timeseries=timeseries), "p.yaml", env={})
    assert str(info.value) == (
        f"p.yaml: backend.timeseries.AppEvent: meta_field {meta_field!r} cannot be _id or the "
        "time_field; choose the field that identifies the series, e.g. a link to its sensor"
    )


def test_settings_against_the_types_are_config_errors_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` and `run` report them like any configuration error (exit 2), before
    connecting to anything."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "kafka: {bootstrap_servers: 127.0.0.1:1}\n"
        f"schemas: {{dir: {AVRO_DIR}}}\n"
        "routes: [{topic: t, type: Measurement}]\n"
        f"backend: {{type: mongodb, uri: '{NOWHERE}', database: x, "
        "timeseries: {Reading: {time_field: at}}}\n"
    )
    assert main(["validate", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: backend.timeseries.Reading: no object type 'Reading' is declared; declared "
        "types: AppEvent, Customer, Invoice, Measurement, Sensor\n"
    )


async def test_valid_timeseries_settings_get_as_far_as_connecting() -> None:
    b = backend(
        timeseries={"Measurement": {"time_field": "timestamp", "meta_field": "sensor"}},
        server_selection_timeout_ms=100,
    )
    with pytest.raises(RetryableError, match=r"^MongoDB unavailable while connecting: "):
        await b.open()
    await b.close()


@pytest.mark.parametrize("w", [0, -1])
def test_unacknowledged_write_concern_is_refused(w: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "kafka": {"bootstrap_servers": "b"},
                "schemas": {"dir": "avro"},
                "routes": [{"topic": "t", "type": "Measurement"}],
                "backend": {
                    "type": "mongodb",
                    "uri": NOWHERE,
                    "database": "x",
                    "write_concern": {"w": w},
                },
            },
            "p.yaml",
            env={},
        )
    assert str(info.value) == (
        f"p.yaml: backend.write_concern.w: {w} does not wait for acknowledgement, but offsets "
        "are committed only after durable writes; use majority (or 1 without a replica set)"
    )


async def test_a_standard_type_may_not_declare_the_backends_fields(tmp_path: Path) -> None:
    (tmp_path / "Thing.avsc").write_text(
        '{"type": "record", "name": "Thing", "objectType": "standard", "fields": ['
        '{"name": "_id", "type": "string"}, {"name": "_kafka", "type": "string"}, '
        '{"name": "_deleted", "type": "boolean"}]}'
    )
    types = load_object_types(tmp_path)
    b = MongoBackend(
        MongoBackendConfig(type="mongodb", uri=NOWHERE, database="x"),
        types,
    )
    assert (await open_error(b)).splitlines() == [
        f"{tmp_path / 'Thing.avsc'}: Thing._kafka: the MongoDB backend keeps the Kafka "
        "coordinates of standard objects in _kafka; rename the field",
        f"{tmp_path / 'Thing.avsc'}: Thing._deleted: the MongoDB backend marks deleted "
        "standard objects with _deleted; rename the field",
    ]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mongodb://127.0.0.1:99999/", "Port must be an integer between 0 and 65535"),
        (
            "mongodb://a:b:c@127.0.0.1/",
            "Username and password must be escaped according to RFC 3986, use "
            "urllib.parse.quote_plus",
        ),
    ],
)
async def test_a_bad_uri_is_fatal_and_names_the_key(uri: str, message: str) -> None:
    assert await open_error(backend(uri=uri)) == f"backend.uri: {message}"


# -- driver errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("connection closed"),
        NetworkTimeout("timed out"),
        NotPrimaryError("not primary"),
        ServerSelectionTimeoutError("no servers"),
        WTimeoutError("waiting for replication timed out", 64, {}),
        WriteConcernError("primary stepped down", 189, {}),
        OperationFailure("interrupted at shutdown", 11600),
        OperationFailure("no primary", 10107),
        OperationFailure("anything", 1, {"errorLabels": ["RetryableWriteError"]}),
    ],
)
def test_transient_driver_errors_are_retryable(error: PyMongoError) -> None:
    assert isinstance(
        translate(error, "writing the batch", "MongoDB", backend_config()), RetryableError
    )


def test_write_concern_errors_say_the_batch_is_not_acknowledged() -> None:
    error = translate(
        WTimeoutError("timed out", 64, {}), "writing the batch", "MongoDB", backend_config()
    )
    assert str(error) == (
        "MongoDB: write concern w=majority not satisfied while writing the batch (timed out); "
        "the batch is not acknowledged"
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            WriteConcernError("Not enough data-bearing nodes", 100, {}),
            "backend.write_concern: this deployment cannot satisfy w=3 j=true: Not enough "
            "data-bearing nodes; lower w or fix the replica set",
        ),
        (
            OperationFailure("not authorized on x to execute command { insert: ... }", 13),
            "not authorised on database 'x' while writing the batch: not authorized on x to "
            "execute command { insert: ... }; grant the connector's user the readWrite role on it",
        ),
        (
            OperationFailure("Authentication failed.", 18),
            "backend.uri: authentication failed: Authentication failed.; check the user name, "
            "password and authSource in the URI",
        ),
        (
            OperationFailure("something else", 2),
            "MongoDB refused writing the batch: something else",
        ),
    ],
)
def test_permanent_driver_errors_are_fatal_with_the_fix(error: PyMongoError, message: str) -> None:
    config = backend_config(write_concern={"w": 3})
    translated = translate(error, "writing the batch", "MongoDB", config)
    assert isinstance(translated, FatalBackendError)
    assert str(translated) == message


# -- time-series collections: which copy stays ---------------------------------------------


def copy(offset: int, write: str, partition: int = 0, value: float = 1.0) -> dict[str, Any]:
    return {
        "_id": "m1",
        "value": value,
        "timestamp": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        "_kafka": {
            "topic": "m",
            "partition": partition,
            "offset": offset,
            "write": ObjectId(write),
        },
    }


W1, W2, W3 = "65a1b2c3d4e5f60718293a41", "65a1b2c3d4e5f60718293a42", "65a1b2c3d4e5f60718293a43"


def test_the_copy_with_the_lowest_coordinates_stays_whoever_looks() -> None:
    """Two writers that see the copies in any order delete the same ones, never the kept."""
    a, b, c = copy(5, W2), copy(5, W1), copy(3, W3, value=2.0)  # c: the earlier record
    for seen in ([a, b, c], [c, b, a], [b, a, c]):
        kept, extra = surplus(seen)
        assert kept is c
        assert sorted(rank(x) for x in extra) == sorted([rank(a), rank(b)])
    kept, extra = surplus([a, b])  # the same record written twice: the lower write id stays
    assert (kept, extra) == (b, [a])
    assert delete_op(a) == {"q": {"_id": "m1", "_kafka.write": ObjectId(W2)}, "limit": 0}


def test_an_untagged_copy_is_kept_and_never_deleted() -> None:
    """A copy written without ``_kafka`` (by hand, or before tags) cannot be told apart from
    another such copy, so it is never a delete target: it stays, tagged copies go."""
    plain = {"_id": "m1", "value": 1.0}
    kept, extra = surplus([copy(1, W1), plain, dict(plain)])
    assert kept is plain
    assert extra == [copy(1, W1)]

"""The MongoDB backend without a server: settings, and how driver errors are classified.

Settings are checked against the object types before connecting (the URI points at a
closed port: each error below is raised before any connection attempt). Driver errors that
the test server cannot produce (FerretDB ignores write concerns and has no replica set)
are classified from the exceptions pymongo raises for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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
from connector.config import MongoBackendConfig, parse_config
from connector.errors import ConfigError, FatalBackendError, RetryableError
from connector.schemas import load_object_types
from tests.fakes import TYPES

NOWHERE = "mongodb://127.0.0.1:1/"


def backend(**options: Any) -> MongoBackend:
    values: dict[str, Any] = {"type": "mongodb", "uri": NOWHERE, "database": "x"}
    values.update(options)
    return MongoBackend(MongoBackendConfig.model_validate(values), TYPES)


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
            "AppEvent": {"time_field": "occurred_at", "meta_field": "occurred_at"},
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
        "backend.timeseries.AppEvent: meta_field 'occurred_at' cannot be _id or the "
        "time_field; choose the field that identifies the series, e.g. a link to its sensor",
    ]


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


async def test_a_standard_type_may_not_declare_the_coordinates_field(tmp_path: Path) -> None:
    (tmp_path / "Thing.avsc").write_text(
        '{"type": "record", "name": "Thing", "objectType": "standard", "fields": ['
        '{"name": "_id", "type": "string"}, {"name": "_kafka", "type": "string"}]}'
    )
    types = load_object_types(tmp_path)
    b = MongoBackend(
        MongoBackendConfig(type="mongodb", uri=NOWHERE, database="x"),
        types,
    )
    assert await open_error(b) == (
        f"{tmp_path / 'Thing.avsc'}: Thing._kafka: the MongoDB backend keeps the Kafka "
        "coordinates of standard objects in _kafka; rename the field"
    )


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
    assert isinstance(backend()._translate(error, "writing the batch"), RetryableError)


def test_write_concern_errors_say_the_batch_is_not_acknowledged() -> None:
    error = backend()._translate(WTimeoutError("timed out", 64, {}), "writing the batch")
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
    b = backend(write_concern={"w": 3})
    translated = b._translate(error, "writing the batch")
    assert isinstance(translated, FatalBackendError)
    assert str(translated) == message

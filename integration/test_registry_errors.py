"""Schema Registry failures that no retry can fix, against a real Apicurio with basic auth.

The registry runs with authentication on (HTTP basic auth, users from Quarkus' embedded
realm) and role-based authorization: ``alice`` is a developer (may register and read),
``bob`` has no registry role. A wrong password (401), a user without access (403) and a
URL that is not the Confluent-compatible API (404 without a registry error code) stop the
run at once with one line naming the registry; an unknown schema id stops it at that
record. A run with the right credentials ingests everything, so the setup is real.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connector.schemas import load_object_types
from integration.kafka_broker import create_topic
from integration.schema_registry import DEFAULT_JVM_OPTS, SchemaRegistryServer
from integration.support import (
    AVRO_DIR,
    committed_offsets,
    produce,
    run_connector,
    summary_of,
    unique,
    write_config,
)

ALICE = "alice:alice-Secret-1"
WRONG_PASSWORD = "alice:not-Her-Password-2"
BOB = "bob:bob-Secret-3"
AUTH_OPTS = (
    "-Dquarkus.oidc.tenant-enabled=true",  # Apicurio's switch for authentication
    "-Dquarkus.oidc.auth-server-url=http://127.0.0.1:9/unused",  # never asked: basic auth only
    "-Dquarkus.http.auth.basic=true",
    "-Dquarkus.security.users.embedded.plain-text=true",
    f"-Dquarkus.security.users.embedded.users.alice={ALICE.split(':')[1]}",
    "-Dquarkus.security.users.embedded.roles.alice=sr-developer",
    f"-Dquarkus.security.users.embedded.users.bob={BOB.split(':')[1]}",
    "-Dquarkus.security.users.embedded.roles.bob=guest",
    "-Dapicurio.auth.role-based-authorization=true",
    # Anonymous reads let the harness see the server is up; credentials are still checked.
    "-Dapicurio.auth.anonymous-read-access.enabled=true",
)
TYPES = load_object_types(AVRO_DIR)
RUN_TIMEOUT_S = 120  # a run that retried the registry would only end by being killed


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryServer]:
    """An Apicurio Registry with basic auth and role-based authorization."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("needs java and mvn on PATH")
    with SchemaRegistryServer(jvm_opts=DEFAULT_JVM_OPTS + AUTH_OPTS) as server:
        yield server


def measurement(i: int) -> dict[str, Any]:
    return {
        "_id": uuid.uuid5(uuid.NAMESPACE_URL, f"auth-{i}"),
        "sensor": "sensor-1",
        "value": i / 2,
        "timestamp": 1_700_000_000_000 + i,
    }


def produce_measurements(bootstrap: str, registry: SchemaRegistryServer, count: int) -> str:
    """A new one-partition topic with ``count`` Measurements in the Confluent wire format."""
    topic = unique("auth-measurements")
    create_topic(bootstrap, topic, 1)
    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": ALICE})
    serialize = AvroSerializer(client, json.dumps(TYPES.get("Measurement").schema))
    ctx = SerializationContext(topic, MessageField.VALUE)
    produce(bootstrap, topic, ((0, serialize(measurement(i), ctx)) for i in range(count)))
    return topic


def configure(tmp_path: Path, bootstrap: str, topic: str, group: str, url: str, user: str) -> Path:
    return write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "avro"}],
        {"type": "sqlite", "path": str(tmp_path / "ingest.db")},
        schema_registry={"url": url, "basic_auth_user_info": user},
    )


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "Measurement" not in tables:
            return 0
        return int(conn.execute('SELECT count(*) FROM "Measurement"').fetchone()[0])


@pytest.mark.parametrize(
    ("user", "status", "reason"),
    [(WRONG_PASSWORD, 401, "authentication failed"), (BOB, 403, "access denied")],
)
def test_refused_credentials_stop_the_run_at_once_without_retrying(
    tmp_path: Path,
    kafka_bootstrap: str,
    registry: SchemaRegistryServer,
    user: str,
    status: int,
    reason: str,
) -> None:
    topic = produce_measurements(kafka_bootstrap, registry, 3)
    group = unique("group")
    config = configure(tmp_path, kafka_bootstrap, topic, group, registry.url, user)
    result = run_connector(config, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 1, result.stderr[-3000:]
    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": ALICE})
    schema_id = client.get_latest_version(f"{topic}-value").schema_id
    assert (
        f"error: schema registry {registry.url} answered HTTP {status} ({reason}) when fetching "
        f"schema id {schema_id}; check schema_registry.basic_auth_user_info / the "
        "registry's ACLs"
    ) in result.stderr
    assert "writer schema fetch failed" not in result.stderr  # the pipeline's retry warning
    password = user.split(":")[1]
    assert password not in result.stderr and password not in result.stdout
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}
    assert stored(tmp_path / "ingest.db") == 0


def test_the_right_credentials_ingest_everything(
    tmp_path: Path, kafka_bootstrap: str, registry: SchemaRegistryServer
) -> None:
    topic = produce_measurements(kafka_bootstrap, registry, 3)
    group = unique("group")
    config = configure(tmp_path, kafka_bootstrap, topic, group, registry.url, ALICE)
    result = run_connector(config, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(result.stdout)["ingested"] == "3"
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 3}
    assert stored(tmp_path / "ingest.db") == 3


def test_a_url_that_is_not_the_registry_api_stops_the_run(
    tmp_path: Path, kafka_bootstrap: str, registry: SchemaRegistryServer
) -> None:
    topic = produce_measurements(kafka_bootstrap, registry, 2)
    group = unique("group")
    config = configure(tmp_path, kafka_bootstrap, topic, group, registry.base_url, ALICE)
    result = run_connector(config, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: schema registry {registry.base_url} answered HTTP 404 without a schema " in (
        result.stderr
    )
    assert "check schema_registry.url: it must be the Confluent-compatible API" in result.stderr
    assert "writer schema fetch failed" not in result.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}


def test_an_unknown_schema_id_is_a_decode_error_at_its_record(
    tmp_path: Path, kafka_bootstrap: str, registry: SchemaRegistryServer
) -> None:
    topic = produce_measurements(kafka_bootstrap, registry, 2)
    unknown = 987_654
    produce(kafka_bootstrap, topic, [(0, b"\x00" + unknown.to_bytes(4, "big") + b"\x02")])
    group = unique("group")
    config = configure(tmp_path, kafka_bootstrap, topic, group, registry.url, ALICE)
    result = run_connector(config, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        f"error: decode error at topic '{topic}' partition 0 offset 2: schema id {unknown} is "
        f"not in the schema registry {registry.url}: No content with ID '{unknown}' was found; "
        "was the record written with another registry?"
    ) in result.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 2}
    assert stored(tmp_path / "ingest.db") == 2

"""Session fixtures for the integration tests: one Kafka and one of each server per session.

The logic lives in integration/kafka_broker.py (``kafka_endpoint``); these are thin wrappers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.backends import BackendUnderTest, PostgresUnderTest, SqliteUnderTest
from integration.kafka_broker import KafkaBroker, KafkaEndpoint, kafka_endpoint


@pytest.fixture(scope="session")
def kafka_endpoint_info() -> Iterator[KafkaEndpoint]:
    """The session's Kafka: env KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else local."""
    with kafka_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_endpoint_info: KafkaEndpoint) -> str:
    """Bootstrap servers string ("host:port") of the session's Kafka."""
    return kafka_endpoint_info.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_broker(kafka_endpoint_info: KafkaEndpoint) -> KafkaBroker:
    """The local KafkaBroker (for restart/crash tests); skips when Kafka comes from elsewhere."""
    if kafka_endpoint_info.broker is None:
        hint = (
            "unset KAFKA_BOOTSTRAP_SERVERS"
            if kafka_endpoint_info.source == "env"
            else "set DATA_INGEST_KAFKA=local"
        )
        pytest.skip(
            f"needs the local KafkaBroker to restart it, but Kafka comes from "
            f"{kafka_endpoint_info.source} ({hint})"
        )
    return kafka_endpoint_info.broker


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """A real Confluent-compatible Schema Registry (Apicurio, ccompat API) for the session."""
    from integration.schema_registry import SchemaRegistryServer

    with SchemaRegistryServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (outages restart the same one)."""
    from integration.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[Any]:
    """A MongoDB-wire server (FerretDB over SQLite) for the session."""
    from integration.mongo_server import MongoWireServer

    with MongoWireServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres", "mongodb"])
def backend_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> BackendUnderTest:
    """Each backend in turn, with a namespace of its own for this test."""
    if request.param == "sqlite":
        return SqliteUnderTest(tmp_path)
    if request.param == "postgres":
        return PostgresUnderTest(request.getfixturevalue("postgres_server"))
    from integration.backends import MongoUnderTest

    return MongoUnderTest(request.getfixturevalue("mongo_server"))

"""Session fixtures for the integration tests: one Kafka and one of each server per session.

The logic lives in the harness modules (``kafka_endpoint``, `KafkaCluster`, `sasl_ssl_broker`,
`PostgresServer`...); these are thin wrappers. Every server starts only when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.backends import BackendUnderTest, PostgresUnderTest, SqliteUnderTest
from integration.kafka_broker import (
    TEST_BOOTSTRAP_ENV,
    KafkaBroker,
    KafkaEndpoint,
    SaslSslKafka,
    kafka_endpoint,
    sasl_ssl_broker,
)
from integration.kafka_cluster import KafkaCluster


@pytest.fixture(scope="session")
def kafka_endpoint_info() -> Iterator[KafkaEndpoint]:
    """The session's Kafka: env DATA_INGEST_TEST_KAFKA_BOOTSTRAP, testcontainers, or local."""
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
            f"unset {TEST_BOOTSTRAP_ENV}"
            if kafka_endpoint_info.source == "env"
            else "set DATA_INGEST_KAFKA=local"
        )
        pytest.skip(
            f"needs the local KafkaBroker to restart it, but Kafka comes from "
            f"{kafka_endpoint_info.source} ({hint})"
        )
    return kafka_endpoint_info.broker


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """A local 3-node KRaft cluster (RF 3, min.insync.replicas 2) for fault tests.

    Always local, whatever the session's Kafka is: the tests kill and restart its nodes.
    """
    with KafkaCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslSslKafka]:
    """A local broker with a SASL_SSL listener (SCRAM-SHA-512, TLS with a CA made here).

    Exposes ``bootstrap_servers``, ``username``, ``password``, ``ca_file``, ``client_config()``
    and the ``broker`` itself.
    """
    with sasl_ssl_broker(tmp_path_factory.mktemp("kafka-tls")) as endpoint:
        yield endpoint


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
def postgres_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A throwaway PostgreSQL cluster that accepts TLS only (certificate from a test CA).

    Its ``dsn`` asks for ``sslmode=verify-full`` against ``ca_file``.
    """
    from integration.postgres_server import PostgresServer
    from integration.tls import CertificateAuthority

    directory = tmp_path_factory.mktemp("postgres-tls")
    cert = CertificateAuthority.create(directory, "postgres test CA").issue_server_cert(
        directory, "postgres"
    )
    with PostgresServer(tls=cert) as server:
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

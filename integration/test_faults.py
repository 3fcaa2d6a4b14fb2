"""Broker faults and secured connections, with the real CLI on both Kafka engines.

* The single broker is SIGKILLed mid-stream and comes back ~10 s later on the same data.
* In a 3-node cluster (replication factor 3, min.insync.replicas 2) the leader of a
  partition is SIGKILLed mid-stream.
* A SASL_SSL listener (SCRAM-SHA-512 over TLS with a CA made by the test): both engines
  connect; a wrong password fails within a bound, naming the mechanism and no secret.
* PostgreSQL over TLS with ``verify-full`` against a test CA.

In every fault test the connector stays up throughout and ends with every object exactly
once, carrying the coordinates of its record, and committed == produced.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.backends import BackendUnderTest, PostgresUnderTest
from integration.kafka_broker import KafkaBroker, SaslSslKafka, create_topic
from integration.support import (
    BackgroundProducer,
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    produce,
    run_connector,
    start_connector,
    summary_of,
    unique,
    write_config,
)

ENGINES = pytest.mark.parametrize("engine", ["confluent", "aiokafka"])
PARTITIONS = 3


def wait_for_commits(
    bootstrap: str, group: str, topic: str, sent: dict[int, int], process: Any, timeout: float
) -> None:
    """Until the running connector has committed everything produced."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the connector exited"
        committed = committed_offsets(bootstrap, group, topic, len(sent))
        if committed == sent:
            return
        assert time.monotonic() < deadline, f"committed {committed}, produced {sent}"
        time.sleep(0.5)


def assert_exactly_once(backend: BackendUnderTest, topic: str, sent: dict[int, int]) -> None:
    expected = {
        measurement_id(topic, p, n): (topic, p, n) for p, c in sent.items() for n in range(c)
    }
    stored = backend.ids("Measurement")
    assert len(stored) == len(set(stored)) == len(expected)
    assert set(stored) == set(expected)
    coordinates = backend.coordinates("Measurement")
    if coordinates is not None:
        assert coordinates == expected


def stream_through_fault(
    tmp_path: Path,
    bootstrap: str,
    backend: BackendUnderTest,
    engine: str,
    topic: str,
    fault: Any,
) -> None:
    """Produce and ingest continuously while ``fault()`` runs; then prove exactly once."""
    group = unique("faults")
    config = write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement"}],
        backend.section(),
        engine=engine,
        batching={"max_records": 200, "max_wait_ms": 50},
    )
    log = tmp_path / "connector.log"
    producer = BackgroundProducer(bootstrap, topic, PARTITIONS, rate_per_s=1000).start()
    process = start_connector(config, log=log)
    try:
        time.sleep(3)
        fault()
        time.sleep(3)
        assert process.poll() is None, "the connector exited:\n" + log.read_text()[-3000:]
        sent = producer.stop()
        wait_for_commits(bootstrap, group, topic, sent, process, timeout=120)
    finally:
        kill(process, signal.SIGTERM)
        code = process.wait(45)
    assert code == 0, log.read_text()[-3000:]
    assert_exactly_once(backend, topic, sent)


@ENGINES
@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_broker_sigkill_and_restart_mid_stream(
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    backend_under_test: BackendUnderTest,
    engine: str,
) -> None:
    topic = unique("broker-fault")
    create_topic(kafka_broker.bootstrap_servers, topic, PARTITIONS)
    stream_through_fault(
        tmp_path,
        kafka_broker.bootstrap_servers,
        backend_under_test,
        engine,
        topic,
        lambda: kafka_broker.restart(hard=True, downtime=10),
    )


@ENGINES
@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_cluster_leader_sigkill_mid_stream(
    tmp_path: Path, kafka_cluster: Any, backend_under_test: BackendUnderTest, engine: str
) -> None:
    topic = unique("leader-fault")
    kafka_cluster.create_topic(topic, PARTITIONS)

    def kill_leader() -> None:
        leader = kafka_cluster.leader(topic, 0)
        kafka_cluster.kill(leader)
        kafka_cluster.wait_for_leader(topic, 0, not_on=leader)
        threading.Thread(target=kafka_cluster.start_node, args=(leader,), daemon=True).start()

    stream_through_fault(
        tmp_path, kafka_cluster.bootstrap_servers, backend_under_test, engine, topic, kill_leader
    )


# --- security -----------------------------------------------------------------------------


def sasl_config(
    tmp_path: Path, kafka: SaslSslKafka, topic: str, engine: str, password: str
) -> tuple[str, Path]:
    group = unique("sasl")
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka.bootstrap_servers,
        group,
        [{"topic": topic, "type": "Measurement"}],
        {"type": "sqlite", "path": str(tmp_path / "ingest.db")},
        engine=engine,
    )
    data = yaml.safe_load(config.read_text())
    data["kafka"]["security"] = {
        "protocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": kafka.username,
            "password": "${KAFKA_TEST_PASSWORD}",  # from the environment, as users do
        },
        "tls": {"ca_file": str(kafka.ca_file)},
    }
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return group, config


def run_with_password(
    config: Path, password: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    import os

    from integration.support import run_command

    return subprocess.run(
        run_command(config, "--until-caught-up"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "KAFKA_TEST_PASSWORD": password},
    )


@ENGINES
def test_sasl_ssl_scram_both_engines(
    tmp_path: Path, kafka_sasl_broker: SaslSslKafka, engine: str
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique("sasl")
    admin = AdminClient(kafka_sasl_broker.client_config())
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    from confluent_kafka import Producer

    producer = Producer(kafka_sasl_broker.client_config())
    for n in range(300):
        producer.produce(
            topic, measurement(topic, n % PARTITIONS, n // PARTITIONS), partition=n % PARTITIONS
        )
    assert producer.flush(30) == 0
    _, config = sasl_config(tmp_path, kafka_sasl_broker, topic, engine, kafka_sasl_broker.password)
    result = run_with_password(config, kafka_sasl_broker.password, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(result.stdout)["ingested"] == "300"
    assert kafka_sasl_broker.password not in result.stderr + result.stdout


@ENGINES
def test_sasl_wrong_password_fails_fast_naming_the_mechanism(
    tmp_path: Path, kafka_sasl_broker: SaslSslKafka, engine: str
) -> None:
    wrong = "not-the-password-" + unique("x")
    _, config = sasl_config(tmp_path, kafka_sasl_broker, unique("sasl"), engine, wrong)
    started = time.monotonic()
    result = run_with_password(config, wrong, timeout=90)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s to give up"
    assert "SCRAM-SHA-512" in result.stderr
    assert "authentication failed" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_postgres_over_tls_verify_full(
    tmp_path: Path, kafka_bootstrap: str, postgres_tls_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_tls_server)
    topic, group = unique("pg-tls"), unique("pg-tls")
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [(0, measurement(topic, 0, n)) for n in range(100)])
    section = {
        "type": "postgres",
        "dsn": postgres_tls_server.dsn.split("?")[0],
        "schema": backend.schema,
        "tls": {"mode": "verify-full", "ca_file": str(postgres_tls_server.ca_file)},
    }
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_bootstrap,
        group,
        [{"topic": topic, "type": "Measurement"}],
        section,
    )
    result = run_connector(config, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_exactly_once(backend, topic, {0: 100})

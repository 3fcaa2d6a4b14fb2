"""Tests of the Kafka harness: a real broker stores and serves messages, also across clean and
hard (SIGKILL) restarts, the basis for the connector's fault tests; the SASL_SSL listener
authenticates SCRAM users over verified TLS; and the tests never pick up the user's own cluster.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from integration.kafka_broker import (
    TEST_BOOTSTRAP_ENV,
    KafkaBroker,
    SaslSslKafka,
    create_topic,
    kafka_endpoint,
)
from integration.processes import pid_alive, port_open, wait_until
from integration.tls import CertificateAuthority


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    """Produce ``values`` (key = value) with acks=all and wait until all are acknowledged."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for value in values:
        producer.produce(topic, key=value.encode(), value=value.encode(), on_delivery=on_delivery)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[str]:
    """Read the topic from the beginning with a fresh group until ``expected`` messages arrive."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            values.append(msg.value().decode())
    finally:
        consumer.close()
    return values


def _topic() -> str:
    """A unique topic name, so tests sharing the session broker do not interfere."""
    return f"it-broker-{uuid.uuid4().hex[:12]}"


def test_produce_consume_roundtrip(kafka_bootstrap: str) -> None:
    """10 messages into a 3-partition topic come back complete and unchanged."""
    topic = _topic()
    create_topic(kafka_bootstrap, topic, partitions=3)
    sent = [f"message-{i}" for i in range(10)]
    _produce(kafka_bootstrap, topic, sent)

    received = _consume(kafka_bootstrap, topic, expected=len(sent))

    assert len(received) == 10
    assert sorted(received) == sorted(sent)


def test_messages_survive_broker_restart(kafka_broker: KafkaBroker) -> None:
    """Messages acked before a restart are still there after it, on the same address."""
    topic = _topic()
    kafka_broker.create_topic(topic, partitions=3)
    bootstrap_before = kafka_broker.bootstrap_servers
    before = [f"before-{i}" for i in range(5)]
    _produce(bootstrap_before, topic, before)

    kafka_broker.restart()

    assert kafka_broker.bootstrap_servers == bootstrap_before
    after = [f"after-{i}" for i in range(5)]
    _produce(kafka_broker.bootstrap_servers, topic, after)
    received = _consume(kafka_broker.bootstrap_servers, topic, expected=10)

    assert sorted(received) == sorted(before + after)


def test_hard_restart_kills_and_returns_on_same_data_and_port(kafka_broker: KafkaBroker) -> None:
    """restart(hard=True, downtime=10): SIGKILL, down for 10 s, back on the same data and port.

    Clients made before the crash reconnect by themselves to the same bootstrap address: a
    record produced during the outage is delivered once the broker is back.
    """
    topic = _topic()
    kafka_broker.create_topic(topic, partitions=1)
    bootstrap, port = kafka_broker.bootstrap_servers, kafka_broker.port
    old_pid, data_dir, cluster_id = kafka_broker.pid, kafka_broker.data_dir, kafka_broker.cluster_id
    assert old_pid is not None and port is not None
    errors: list[KafkaError] = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": 120_000,
        }
    )

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    def produce(value: str) -> None:
        producer.produce(topic, value.encode(), on_delivery=on_delivery)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        for i in range(5):
            produce(f"before-{i}")
        assert producer.flush(30) == 0 and not errors, errors
        assert _poll_values(consumer, 5) == [f"before-{i}" for i in range(5)]

        t0 = time.monotonic()
        restarter = threading.Thread(
            target=kafka_broker.restart, kwargs={"hard": True, "downtime": 10}
        )
        restarter.start()
        wait_until(lambda: not pid_alive(old_pid), 5, lambda: f"broker {old_pid} still alive")
        assert not port_open(port)
        produce("during")  # queued by the client until the broker is back
        restarter.join(120)
        downtime = time.monotonic() - t0

        assert not restarter.is_alive()
        assert kafka_broker.last_exit_code == -signal.SIGKILL
        assert kafka_broker.is_running and kafka_broker.pid != old_pid
        assert kafka_broker.bootstrap_servers == bootstrap
        assert (kafka_broker.data_dir, kafka_broker.cluster_id) == (data_dir, cluster_id)
        assert downtime >= 10
        produce("after")
        assert producer.flush(60) == 0 and not errors, errors
        assert _poll_values(consumer, 2) == ["during", "after"]
    finally:
        consumer.close()
    print(f"\nhard restart with 10 s downtime: {downtime:.1f} s")
    expected = [f"before-{i}" for i in range(5)] + ["during", "after"]
    assert _consume(bootstrap, topic, expected=7) == expected


def _poll_values(consumer: Consumer, expected: int, timeout: float = 60.0) -> list[str]:
    """The next ``expected`` values from an assigned consumer (fewer if ``timeout`` passes)."""
    values: list[str] = []
    deadline = time.monotonic() + timeout
    while len(values) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None:
            assert msg.error() is None, msg.error()
            values.append(msg.value().decode())
    return values


def test_tests_never_read_kafka_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_BOOTSTRAP_SERVERS (the user's real cluster) is ignored; only the test variable counts."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "users-real-cluster:9092")
    monkeypatch.setenv(TEST_BOOTSTRAP_ENV, "127.0.0.1:1")
    with kafka_endpoint() as endpoint:
        assert (endpoint.bootstrap_servers, endpoint.source) == ("127.0.0.1:1", "env")

    monkeypatch.delenv(TEST_BOOTSTRAP_ENV)
    monkeypatch.setenv("DATA_INGEST_KAFKA", "local")
    with kafka_endpoint() as endpoint:
        assert endpoint.source == "local" and endpoint.broker is not None
        assert endpoint.bootstrap_servers.startswith("127.0.0.1:")


# -- SASL_SSL ----------------------------------------------------------------------------------


def _first_error(config: dict[str, Any], topic: str, timeout: float = 20.0) -> KafkaError | None:
    """The first client-level error a producer with ``config`` reports within ``timeout`` s."""
    errors: list[KafkaError] = []
    producer = Producer({**config, "error_cb": errors.append, "message.timeout.ms": 5000})
    producer.produce(topic, b"must-not-arrive")
    deadline = time.monotonic() + timeout
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.purge()
    producer.flush(5)
    return errors[0] if errors else None


def test_sasl_ssl_produce_consume(kafka_sasl_broker: SaslSslKafka) -> None:
    """SCRAM-SHA-512 over TLS, the CA verified: produce and consume through the SASL_SSL port."""
    topic = _topic()
    kafka_sasl_broker.broker.create_topic(topic, partitions=1)
    config = kafka_sasl_broker.client_config()
    assert config["bootstrap.servers"] != kafka_sasl_broker.broker.bootstrap_servers
    errors: list[KafkaError] = []
    producer = Producer({**config, "acks": "all", "error_cb": errors.append})
    for i in range(10):
        producer.produce(topic, f"secret-{i}".encode())
    assert producer.flush(30) == 0 and not errors, errors

    consumer = Consumer(
        {
            **config,
            "group.id": f"it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "error_cb": errors.append,
        }
    )
    try:
        consumer.subscribe([topic])
        assert _poll_values(consumer, 10) == [f"secret-{i}" for i in range(10)]
    finally:
        consumer.close()
    assert not errors, errors


def test_sasl_ssl_wrong_password_fails_authentication(kafka_sasl_broker: SaslSslKafka) -> None:
    """A wrong SCRAM password is an authentication error within seconds, not a hang."""
    topic = _topic()
    kafka_sasl_broker.broker.create_topic(topic, partitions=1)
    t0 = time.monotonic()
    error = _first_error(kafka_sasl_broker.client_config(**{"sasl.password": "wrong"}), topic)
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    assert time.monotonic() - t0 < 20
    assert _consume(kafka_sasl_broker.broker.bootstrap_servers, topic, expected=1, timeout=3) == []


def test_sasl_ssl_rejects_a_broker_not_signed_by_the_ca(
    kafka_sasl_broker: SaslSslKafka, tmp_path: Path
) -> None:
    """Trusting another CA, the client refuses the broker's certificate (TLS is verified)."""
    other_ca = CertificateAuthority.create(tmp_path, "other CA")
    config = kafka_sasl_broker.client_config(**{"ssl.ca.location": str(other_ca.cert_file)})
    error = _first_error(config, _topic())
    assert error is not None and error.code() == KafkaError._SSL, error
    assert "certificate verify failed" in error.str()

"""Smoke tests of the Kafka harness: a real broker stores and serves messages, also across
a broker restart (the basis for the connector's fault tests)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer

from integration.kafka_broker import KafkaBroker, create_topic


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

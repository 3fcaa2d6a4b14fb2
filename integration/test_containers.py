"""The session's Kafka in a container started through testcontainers (``make test-containers``).

``make test-containers`` builds the broker image here (integration/build_image.sh kafka),
serves podman's Docker API, sets ``DATA_INGEST_KAFKA=testcontainers`` and runs this file with
the core delivery tests, which then talk to the container. Elsewhere (``make test``) the
session's Kafka is the local broker and this test says so as its skip reason.
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Consumer, Producer

from integration.kafka_broker import KafkaEndpoint, create_topic
from integration.support import unique


def test_the_session_kafka_runs_in_the_container(kafka_endpoint_info: KafkaEndpoint) -> None:
    if os.environ.get("DATA_INGEST_KAFKA") != "testcontainers":
        pytest.skip(
            "runs in make test-containers (DATA_INGEST_KAFKA=testcontainers); the session's "
            f"Kafka here is {kafka_endpoint_info.source}"
        )
    import docker

    assert kafka_endpoint_info.source == "testcontainers"
    image = os.environ["KAFKA_TESTCONTAINERS_IMAGE"]
    client = docker.from_env()
    try:
        ours = [c for c in client.containers.list() if image in c.image.tags]
        assert len(ours) == 1, [c.image.tags for c in client.containers.list()]
        container = ours[0]
        topic = unique("in-container")
        bootstrap = kafka_endpoint_info.bootstrap_servers
        create_topic(bootstrap, topic, 1)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, b"hello")
        assert producer.flush(30) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("g"),
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        message = None
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                break
        consumer.close()
        assert message is not None and message.value() == b"hello"
        # The topic's log lives inside the container: this broker is the container.
        listing = container.exec_run(["ls", "/tmp/kafka/data"]).output.decode()
        assert f"{topic}-0" in listing.split(), listing
    finally:
        client.close()

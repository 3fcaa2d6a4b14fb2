"""Fault tests of the 3-node KRaft cluster harness: a partition leader is SIGKILLed mid-produce.

They check what the connector's broker-failure tests rely on: topics get replication factor 3
and ``min.insync.replicas=2`` by default, a new leader is elected when the leader dies, an
``acks=all`` producer keeps going through it without losing or duplicating a record, and the
killed node comes back on its own data and rejoins the in-sync replicas.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from integration.kafka_cluster import KafkaCluster
from integration.processes import pid_alive, port_open, wait_until


class SteadyProducer:
    """Produces ``r-0``, ``r-1``... to one partition at a steady pace from a thread.

    acks=all with idempotence: every record acked once, in order, whatever the brokers do.
    """

    def __init__(self, bootstrap: str, topic: str, partition: int, per_second: int) -> None:
        self.topic = topic
        self.partition = partition
        self.per_second = per_second
        self.sent: list[str] = []
        self.delivered = 0
        self.errors: list[KafkaError] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(err)

    def _run(self) -> None:
        chunk = max(1, self.per_second // 50)
        while not self._stop.is_set():
            for _ in range(chunk):
                value = f"r-{len(self.sent)}"
                self._producer.produce(
                    self.topic,
                    value.encode(),
                    partition=self.partition,
                    on_delivery=self._on_delivery,
                )
                self.sent.append(value)
            self._producer.poll(0)
            time.sleep(0.02)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop producing, wait for every ack; return the values in the order produced."""
        self._stop.set()
        self._thread.join()
        assert self._producer.flush(120) == 0, "records still unacknowledged after 120 s"
        return self.sent


def _read_partition(bootstrap: str, topic: str, partition: int, expected: int) -> list[str]:
    """All values of one partition from its start, until ``expected`` came (or 60 s passed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    values: list[str] = []
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while len(values) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                values.append(msg.value().decode())
        high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        assert high == len(values), f"partition holds {high} records, read {len(values)}"
    finally:
        consumer.close()
    return values


def test_topics_default_to_rf3_and_min_isr_2(kafka_cluster: KafkaCluster) -> None:
    """A topic created without options is replicated on all 3 nodes and needs 2 in sync."""
    topic = f"it-cluster-{uuid.uuid4().hex[:10]}"
    kafka_cluster.create_topic(topic, partitions=3)

    for p in range(3):
        meta = kafka_cluster.partition(topic, p)
        assert sorted(meta.replicas) == [1, 2, 3]
        assert sorted(meta.isrs) == [1, 2, 3]
    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap_servers})
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["min.insync.replicas"].value == "2"


def test_leader_sigkill_mid_produce_loses_nothing(kafka_cluster: KafkaCluster) -> None:
    """SIGKILL the leader of partition 0 while an acks=all producer writes to it, restart it.

    A new leader is elected, the producer keeps going while the node is down (2 in-sync
    replicas remain), the node returns on the same port and data and rejoins the ISR, and the
    partition holds every record exactly once, in order.
    """
    topic = f"it-cluster-{uuid.uuid4().hex[:10]}"
    kafka_cluster.create_topic(topic, partitions=3)
    old_leader = kafka_cluster.leader(topic, 0)
    victim = kafka_cluster.node(old_leader)
    port, data_dir, old_pid = victim.port, victim.data_dir, victim.pid
    assert old_pid is not None and port is not None

    producer = SteadyProducer(kafka_cluster.bootstrap_servers, topic, 0, per_second=1000).start()
    try:
        wait_until(lambda: producer.delivered >= 1000, 60, lambda: "producer made no progress")
        acked_before_kill = producer.delivered
        t0 = time.monotonic()
        kafka_cluster.kill(old_leader)
        assert victim.last_exit_code == -signal.SIGKILL
        assert not pid_alive(old_pid) and not port_open(port)

        new_leader = kafka_cluster.wait_for_leader(topic, 0, not_on=old_leader)
        elected_after = time.monotonic() - t0
        acked_at_election = producer.delivered
        wait_until(
            lambda: producer.delivered >= acked_at_election + 1000,
            60,
            lambda: f"no acks from the new leader {new_leader} with {old_leader} down",
        )

        t1 = time.monotonic()
        kafka_cluster.start_node(old_leader)
        restarted_after = time.monotonic() - t1
        assert victim.pid != old_pid
        assert (victim.port, victim.data_dir) == (port, data_dir)
        wait_until(
            lambda: sorted(kafka_cluster.partition(topic, 0).isrs) == [1, 2, 3],
            60,
            lambda: (
                f"node {old_leader} did not rejoin the ISR: {kafka_cluster.partition(topic, 0).isrs}"
            ),
            interval=0.5,
        )
    finally:
        sent = producer.stop()
        if not victim.is_running:  # leave a whole cluster to the next test
            kafka_cluster.start_node(old_leader)

    assert not producer.errors, producer.errors[:3]
    assert acked_before_kill < producer.delivered == len(sent)
    print(
        f"\n{len(sent)} records; leader {old_leader} killed after {acked_before_kill} acks, "
        f"node {new_leader} led after {elected_after:.1f} s, restart took {restarted_after:.1f} s"
    )
    assert _read_partition(kafka_cluster.bootstrap_servers, topic, 0, len(sent)) == sent

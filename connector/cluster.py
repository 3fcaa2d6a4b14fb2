"""Workers with one cluster id share their connectors through two compacted Kafka topics.

* The **config topic** (one partition) holds, per connector name, its flat config and target
  state, or a tombstone once deleted. Every worker reads it from the start and applies each
  record, so every worker runs every connector; a REST change is written there and answered
  once this worker has applied it (read-your-writes).
  Restart requests go there too (key ``restart/<name>``), applied by the workers they name
  if made after the worker started.
* The **status topic** holds, per connector and worker, the states of that worker's tasks,
  re-published every ``HEARTBEAT_S``. An entry not refreshed within ``STALE_S`` belongs to a
  worker that is gone (e.g. SIGKILLed) and is no longer listed.

Which partitions each task consumes is decided by the connector's consumer group, as for
any group member. Kafka is the only coordination: no election, no leader.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connector.config import KafkaConfig
from connector.errors import ConnectorError
from connector.sources.confluent import admin_settings
from connector.timeouts import cancel_and_wait, within
from connector.worker import ApiError, ConnectorRecord, HostedConnector, Worker

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
STALE_S = 10.0
APPLY_TIMEOUT_S = 30.0
POLL_S = 0.2
CANCEL_WAIT_S = 1.0  # for a cancelled follower task to end when the worker stops
LEADER_WAIT_S = 30.0
# A topic created a moment ago has no partition leader yet: its metadata answers these
# until the controller has elected one, so reading it is retried for up to LEADER_WAIT_S.
# Config-topic keys of restart requests; a connector name never contains "/".
RESTART_PREFIX = "restart/"
NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


class ClusterError(ConnectorError):
    """The cluster's topics cannot be created or read."""


class KafkaClusterStore:
    """The config and status topics of one cluster, seen from one worker."""

    def __init__(
        self,
        worker: Worker,
        kafka: KafkaConfig,
        cluster_id: str,
        *,
        config_topic: str | None = None,
        status_topic: str | None = None,
        replication_factor: int = 1,
    ) -> None:
        self.worker = worker
        self.kafka = kafka
        self.cluster_id = cluster_id
        self.config_topic = config_topic or f"data-ingest-{cluster_id}-configs"
        self.status_topic = status_topic or f"data-ingest-{cluster_id}-status"
        self.replication_factor = replication_factor
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._applied = -1  # the last config-topic offset applied here
        self._progress = asyncio.Condition()
        self._remote: dict[str, dict[str, dict[str, Any]]] = {}  # name → worker → entry
        self._tasks: list[asyncio.Task[None]] = []
        self._started_ms = time.time() * 1000

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the topics if needed, apply every connector recorded so far, then follow."""
        await asyncio.to_thread(self._create_topics)
        self.worker.store = self
        settings = admin_settings(self.kafka)
        self._producer = Producer({**settings, "acks": "all", "enable.idempotence": True})
        self._consumer = Consumer(
            {
                **settings,
                "group.id": f"data-ingest-{self.cluster_id}-{self.worker.worker_id}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._consumer.assign(
            [
                CkTopicPartition(self.config_topic, 0, OFFSET_BEGINNING),
                CkTopicPartition(self.status_topic, 0, OFFSET_BEGINNING),
            ]
        )
        try:
            end = await asyncio.to_thread(self._config_end)
        except KafkaException as exc:
            raise ClusterError(
                f"cluster {self.cluster_id}: cannot read {self.config_topic!r}: "
                f"{exc.args[0].str()}; check cluster.kafka"
            ) from None
        self._tasks.append(asyncio.create_task(self._follow(), name="cluster follow"))
        if end > 0:
            await self._wait_applied(end - 1)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="cluster heartbeat"))
        log.info(
            "cluster %s: %d connector(s) from %s",
            self.cluster_id,
            len(self.worker.connectors),
            self.config_topic,
        )

    async def stop_following(self) -> None:
        """Apply no more changes (the worker is about to stop its connectors)."""
        for task in self._tasks:
            await cancel_and_wait(task, CANCEL_WAIT_S, task.get_name())

    async def close(self) -> None:
        """Withdraw this worker's statuses (after its connectors stopped) and close."""
        for name in list(self.worker.connectors):
            self.forget_status(name)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)

    def _create_topics(self) -> None:
        admin = AdminClient(admin_settings(self.kafka))
        compacted = {"cleanup.policy": "compact"}
        topics = [
            NewTopic(t, 1, self.replication_factor, config=compacted)
            for t in (self.config_topic, self.status_topic)
        ]
        for topic, future in admin.create_topics(topics, request_timeout=30).items():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ClusterError(
                        f"cluster {self.cluster_id}: cannot create topic {topic!r}: "
                        f"{exc.args[0].str()}; create it (compacted, 1 partition) or grant "
                        "CREATE on the cluster"
                    ) from None

    def _config_end(self) -> int:
        assert self._consumer is not None
        deadline = time.monotonic() + LEADER_WAIT_S
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    CkTopicPartition(self.config_topic, 0), timeout=30
                )
                return int(high)
            except KafkaException as exc:
                if exc.args[0].code() not in NO_LEADER_YET or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # --- following the topics ------------------------------------------------------------

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            msg = await asyncio.to_thread(consumer.poll, POLL_S)
            if msg is None:
                continue
            if msg.error() is not None:
                log.warning("cluster %s: %s", self.cluster_id, msg.error())
                continue
            key = (msg.key() or b"").decode()
            value = msg.value()
            try:
                if msg.topic() == self.config_topic:
                    await self._apply_config(key, value)
                    async with self._progress:
                        self._applied = msg.offset() or 0
                        self._progress.notify_all()
                else:
                    self._apply_status(key, value)
            except Exception:
                log.exception("cluster %s: record %r not applied", self.cluster_id, key)

    async def _apply_config(self, name: str, value: bytes | None) -> None:
        if name.startswith(RESTART_PREFIX):
            await self._apply_restart(name.removeprefix(RESTART_PREFIX), value)
            return
        if value is None:
            await self.worker.apply(name, None)
            return
        data = json.loads(value)
        await self.worker.apply(name, ConnectorRecord(dict(data["config"]), str(data["target"])))

    async def _apply_restart(self, name: str, value: bytes | None) -> None:
        """This worker's part of a restart request made after it started (the topic keeps
        the last request per connector; older ones are history, not orders)."""
        if value is None:
            return
        request = json.loads(value)
        if request["at_ms"] < self._started_ms:
            return
        await self.worker.apply_restart(
            name, request["worker_id"], request["task"], bool(request["only_failed"])
        )

    def _apply_status(self, key: str, value: bytes | None) -> None:
        name, _, worker_id = key.rpartition("/")
        if worker_id == self.worker.worker_id:
            return
        entries = self._remote.setdefault(name, {})
        if value is None:
            entries.pop(worker_id, None)
        else:
            entries[worker_id] = {**json.loads(value), "seen": time.monotonic()}

    async def _wait_applied(self, offset: int) -> None:
        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self._applied >= offset)

        try:
            await within(reached(), APPLY_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(
                500,
                f"the change was written to {self.config_topic!r} but this worker did not "
                f"read it back within {APPLY_TIMEOUT_S:.0f} s; check the broker",
            ) from None

    # --- ClusterStore --------------------------------------------------------------------

    async def put(self, name: str, record: ConnectorRecord | None) -> None:
        value = None
        if record is not None:
            value = json.dumps({"config": record.flat, "target": record.target}).encode()
        offset = await asyncio.to_thread(self._produce, self.config_topic, name, value)
        await self._wait_applied(offset)

    def _produce(self, topic: str, key: str, value: bytes | None) -> int:
        producer = self._producer
        assert producer is not None
        delivered: list[Any] = []
        producer.produce(
            topic,
            key=key.encode(),
            value=value,
            on_delivery=lambda error, msg: delivered.append((error, msg)),
        )
        producer.flush(30)
        if not delivered or delivered[0][0] is not None:
            error = delivered[0][0] if delivered else "no acknowledgement within 30 s"
            raise ApiError(500, f"writing to {topic!r} failed: {error}")
        return int(delivered[0][1].offset())

    def publish_status(self, connector: HostedConnector) -> None:
        if self._producer is None:
            return
        entry = {
            "connector_state": connector.target,
            "worker_id": self.worker.worker_id,
            "tasks": connector.task_states(),
        }
        key = f"{connector.name}/{self.worker.worker_id}".encode()
        self._producer.produce(self.status_topic, key=key, value=json.dumps(entry).encode())
        self._producer.poll(0)

    def forget_status(self, name: str) -> None:
        if self._producer is not None:
            key = f"{name}/{self.worker.worker_id}".encode()
            self._producer.produce(self.status_topic, key=key, value=None)
            self._producer.poll(0)

    def remote_tasks(self, name: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        tasks: list[dict[str, Any]] = []
        for worker_id, entry in sorted(self._remote.get(name, {}).items()):
            if now - entry["seen"] > STALE_S or entry["connector_state"] == "STOPPED":
                continue
            tasks.extend({**task, "worker_id": worker_id} for task in entry["tasks"])
        return tasks

    async def request_restart(
        self, name: str, worker_id: str | None, task_id: int | None, only_failed: bool
    ) -> None:
        request = {
            "worker_id": worker_id,
            "task": task_id,
            "only_failed": only_failed,
            "at_ms": time.time() * 1000,
        }
        key = f"{RESTART_PREFIX}{name}"
        offset = await asyncio.to_thread(
            self._produce, self.config_topic, key, json.dumps(request).encode()
        )
        await self._wait_applied(offset)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for connector in list(self.worker.connectors.values()):
                self.publish_status(connector)

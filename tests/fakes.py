"""Small in-memory fakes for unit tests of pure pipeline logic (no Kafka, no database)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

from connector.backends import DELETED, DUPLICATE, INSERTED, UPSERTED, Backend, ObjectResult
from connector.records import MappedObject, SourceRecord, TopicPartition
from connector.schemas import load_object_types
from connector.sources import RebalanceListener, Source

AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"
TYPES = load_object_types(AVRO_DIR)


def measurement(partition: int, i: int) -> bytes:
    """A valid Measurement (JSON) whose _id is derived from (partition, i)."""
    object_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{partition}-{i}")
    return json.dumps(
        {"_id": str(object_id), "sensor": "s-1", "value": i / 2, "timestamp": 1_700_000_000_000 + i}
    ).encode()


class FakeSource(Source):
    """Serves pre-loaded records of a few partitions, records commits and pauses."""

    def __init__(
        self, records: dict[TopicPartition, list[bytes | None]], timestamp_ms: int | None = None
    ) -> None:
        self.logs = records
        self.timestamp_ms = timestamp_ms  # of every record
        self.positions = {tp: 0 for tp in records}
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self.pause_calls = 0
        self.listener: RebalanceListener | None = None
        self.closed = False
        self.deleted: list[dict[TopicPartition, int]] = []

    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        self.listener = listener
        listener.on_assigned(sorted(self.logs, key=str))

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        for tp, log in self.logs.items():
            if tp in self.paused:
                continue
            while self.positions[tp] < len(log) and len(out) < max_records:
                offset = self.positions[tp]
                epoch = self.listener.epoch(tp) if self.listener else None
                if epoch is None:
                    break
                out.append(
                    SourceRecord(
                        tp.topic, tp.partition, offset, None, log[offset], self.timestamp_ms, epoch
                    )
                )
                self.positions[tp] += 1
        if not out:
            await asyncio.sleep(min(timeout_s, 0.01))
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def pause(self, partitions: list[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused.update(partitions)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    async def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.positions[tp] for tp in partitions}

    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        return {topic: {"cleanup.policy": "delete"} for topic in topics}

    async def delete_records(self, offsets: dict[TopicPartition, int]) -> None:
        self.deleted.append(dict(offsets))

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (0, len(self.logs[tp])) for tp in partitions}

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.last_commit(tp) for tp in partitions}

    async def check(self, timeout_s: float) -> list[str]:
        return sorted({tp.topic for tp in self.logs})

    async def close(self, timeout_s: float) -> None:
        if self.listener is not None and not self.closed:
            offsets = await self.listener.on_revoked(sorted(self.logs, key=str))
            if offsets:
                self.commits.append(offsets)
        self.closed = True

    def last_commit(self, tp: TopicPartition) -> int | None:
        for commit in reversed(self.commits):
            if tp in commit:
                return commit[tp]
        return None


class FakeBackend(Backend):
    """Keeps documents in a dict; ``fail`` can make ingest raise before writing anything."""

    def __init__(self, fail: Callable[[int], Exception | None] | None = None) -> None:
        self.stored: dict[tuple[str, object], dict[str, object]] = {}
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.fail = fail
        self.opened = False
        self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        self.calls += 1
        if self.fail is not None:
            error = self.fail(self.calls)
            if error is not None:
                raise error
        self.batch_sizes.append(len(objects))
        results = []
        for obj in objects:
            key = (obj.object_type.name, str(obj.object_id))
            if obj.tombstone:
                self.stored.pop(key, None)
                results.append(DELETED)
            elif not obj.object_type.asymmetric:
                self.stored[key] = obj.document
                results.append(UPSERTED)
            elif key in self.stored:
                results.append(DUPLICATE)
            else:
                self.stored[key] = obj.document
                results.append(INSERTED)
        return results

    def has(self, value: bytes) -> bool:
        """True when the Measurement encoded in ``value`` is stored."""
        return ("Measurement", json.loads(value)["_id"]) in self.stored

    async def check(self) -> str:
        return "fake"

    async def close(self) -> None:
        self.closed = True

"""Helpers shared by the integration tests: produce, configure, run the CLI, inspect results.

Everything here talks to the real broker and the real SQLite file; nothing is faked.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CkTopicPartition

from integration.processes import LOOPBACK, free_port

DATA_INGEST = str(Path(sys.executable).parent / "data-ingest")
# `make test-hosted`: every `data-ingest run` of the delivery tests also gets --rest-listen,
# so the connector runs the way a worker hosts it (HostedConnector, its task, the REST API).
HOSTED = os.environ.get("DATA_INGEST_TEST_HOSTED") == "1"


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[int, bytes | None]],
    key: Callable[[int], bytes | None] | None = None,
) -> int:
    """Produce (partition, value) pairs synchronously; returns how many were acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    delivered = 0
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failures.append(str(err))

    for i, (partition, value) in enumerate(values):
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key(i) if key else None,
                    partition=partition,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not failures, f"produce failed: {failures[:3]} ({remaining} left)"
    return delivered


AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"
ID_NAMESPACE = uuid.UUID("0c8b1d5e-7a53-4c38-9a33-3a2f6f1f0d44")


def measurement_id(topic: str, partition: int, i: int) -> str:
    """The _id the tests give the i-th Measurement of a partition (a UUID, as declared)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{topic}-{partition}-{i}"))


def measurement(topic: str, partition: int, i: int) -> bytes:
    """A sample Measurement as JSON: _id (uuid), sensor link, value, timestamp."""
    return json.dumps(
        {
            "_id": measurement_id(topic, partition, i),
            "sensor": f"sensor-{i % 17}",
            "value": round(20.0 + (i % 100) / 10, 2),
            "timestamp": 1_700_000_000_000 + i,
        }
    ).encode()


class BackgroundProducer:
    """Keeps producing Measurements round-robin over partitions until stopped, or until
    ``limit`` records are sent (a bound on what a slow backend must ingest afterwards)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        rate_per_s: int,
        value: Callable[[str, int, int], bytes] = measurement,
        limit: int | None = None,
    ) -> None:
        self.topic = topic
        self.limit = limit
        self.value = value
        self.partitions = partitions
        self.rate = rate_per_s
        self.sent: dict[int, int] = dict.fromkeys(range(partitions), 0)
        # Idempotent: a retry across a broker restart neither duplicates nor reorders, so the
        # n-th record of a partition stays at offset n, which the tests rely on.
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "enable.idempotence": True,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []

    def _run(self) -> None:
        i = 0
        chunk = max(1, self.rate // 20)
        while not self._stop.is_set():
            if self.limit is not None and i >= self.limit:
                self._stop.wait(0.05)
                continue
            for _ in range(chunk):
                partition = i % self.partitions
                n = self.sent[partition]
                self._producer.produce(
                    self.topic,
                    value=self.value(self.topic, partition, n),
                    partition=partition,
                    on_delivery=self._delivered,
                )
                self.sent[partition] = n + 1
                i += 1
            self._producer.poll(0)
            time.sleep(0.05)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def stop(self) -> dict[int, int]:
        """Stop, flush, and return how many records were produced per partition."""
        self._stop.set()
        self._thread.join()
        assert self._producer.flush(60) == 0
        assert not self.errors, self.errors[:3]
        return dict(self.sent)


def write_config(
    path: Path,
    bootstrap: str,
    group: str,
    routes: list[dict[str, Any]],
    backend: dict[str, Any],
    *,
    engine: str = "confluent",
    **sections: Any,
) -> Path:
    """A pipeline file with settings suited to tests (fast commits, short sessions)."""
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "engine": engine,
            "group_id": group,
            "properties": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        },
        "schemas": {"dir": str(AVRO_DIR)},
        "routes": routes,
        "backend": backend,
        "batching": {"max_records": 500, "max_wait_ms": 100},
        "commit": {"interval_ms": 200},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_command(config: Path, *args: str) -> list[str]:
    """``data-ingest run -c CONFIG ARGS``; hosted (``HOSTED``) with a REST port of its own."""
    command = [DATA_INGEST, "run", "-c", str(config), *args]
    if HOSTED and "--rest-listen" not in args:
        command += ["--rest-listen", f"{LOOPBACK}:{free_port()}"]
    return command


def start_connector(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """Start ``data-ingest run`` as a child process (its own process group)."""
    return subprocess.Popen(
        run_command(config, *args),
        stdout=subprocess.PIPE,
        stderr=open(log, "a") if log else subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def run_connector(
    config: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``data-ingest run -c CONFIG --until-caught-up`` to completion."""
    result = subprocess.run(
        run_command(config, "--until-caught-up", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if HOSTED and result.returncode == 0:
        assert "connector.rest: REST API on http://" in result.stderr, (
            "DATA_INGEST_TEST_HOSTED=1, but the run served no REST API:\n" + result.stderr[-2000:]
        )
    return result


def summary_of(stdout: str) -> dict[str, str]:
    """The ``key: value`` lines of the run summary."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def kill(process: subprocess.Popen[str], sig: signal.Signals = signal.SIGKILL) -> None:
    os.killpg(process.pid, sig)


COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (0 where nothing is committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                result = consumer.committed(
                    [CkTopicPartition(topic, p) for p in range(partitions)], timeout=30
                )
                return {tp.partition: max(tp.offset, 0) for tp in result}
            except KafkaException as exc:  # e.g. the coordinator is still loading the group
                error = exc.args[0]
                transient = error.retriable() or error.code() in COORDINATOR_MOVING
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, int, int]]:
    """(_id, _partition, _offset) of every stored row."""
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=30) as conn:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
        ).fetchone()
        if not exists:
            return []
        return conn.execute(f'SELECT _id, _partition, _offset FROM "{table}"').fetchall()


def rows_per_partition(rows: list[tuple[Any, int, int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, partition, _ in rows:
        counts[partition] = counts.get(partition, 0) + 1
    return counts

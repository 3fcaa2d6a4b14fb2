"""Source implemented with confluent-kafka (librdkafka).

One daemon thread owns the librdkafka consumer and runs every call on it, one after
another. Written by hand instead of using ``confluent_kafka.aio.AIOConsumer`` because that
wrapper spreads calls over a thread pool and serialises them with a gate: a rebalance
callback running inside ``consume()`` that commits needs a second worker, and when the
periodic commit already holds it, both wait forever (issue 7, defect 1). With one thread,
the commit made from inside a rebalance callback runs on the thread that is already inside
``consume()``, which librdkafka allows, and no call can wait on another. The thread is a
daemon so that a client stuck in ``close()`` (a group in the middle of a rebalance, an
unreachable coordinator) never keeps the process alive past the shutdown timeout.

Rebalance callbacks run on that thread; they hand over to the pipeline's listener on the
event loop and wait for it, bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported for type checkers
from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for type checkers

from connector.config import CONSUMER_DEFAULTS, KafkaConfig
from connector.errors import ConnectorError
from connector.records import SourceRecord, TopicPartition
from connector.sources import RebalanceListener, Source
from connector.sources.security import describe_endpoint, librdkafka_settings
from connector.timeouts import within

log = logging.getLogger(__name__)
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
"""Bound on one metadata, offsets or admin call to the broker."""

LISTENER_GRACE_S = 5.0
"""How long a rebalance callback waits for the pipeline to take an assignment or a loss."""

REVOKE_WAIT_S = 300.0
"""Safety net for the revoke callback: the pipeline bounds its own revoke by
``shutdown.timeout_ms``; this only keeps a stuck event loop from holding the group forever
(it equals librdkafka's default ``max.poll.interval.ms``)."""


def consumer_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings: the user's pass-through properties, then the ones we own."""
    settings: dict[str, Any] = {**CONSUMER_DEFAULTS, **config.properties}
    settings.update(librdkafka_settings(config.security))
    settings.update(
        {
            "bootstrap.servers": config.bootstrap_servers,
            "group.id": config.group_id,
            "auto.offset.reset": config.auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
        }
    )
    return settings


def admin_settings(config: KafkaConfig) -> dict[str, Any]:
    """Settings for the admin client: connection and security, no consumer-only keys."""
    settings = consumer_settings(config)
    for key in (
        "group.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "isolation.level",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "group.instance.id",
    ):
        settings.pop(key, None)
    return settings


def _tp(tp: CkTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _ck(tps: list[TopicPartition]) -> list[CkTopicPartition]:
    return [CkTopicPartition(t.topic, t.partition) for t in tps]


def _ck_offsets(offsets: dict[TopicPartition, int]) -> list[CkTopicPartition]:
    return [CkTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]


def _describe(tps: list[TopicPartition]) -> str:
    return ", ".join(map(str, tps)) or "(none)"


def _describe_offsets(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items(), key=lambda i: str(i[0])))


class _ClientThread:
    """Runs callables on one daemon thread, in order, and awaits them from the loop."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="kafka-consumer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)

    async def run(self, call: Callable[[], T], timeout_s: float | None = None) -> T:
        """``call()`` on the thread; raises TimeoutError past ``timeout_s`` (the call goes on)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        return await within(asyncio.wrap_future(future), timeout_s)

    def stop(self) -> None:
        """Let the thread end once the calls queued so far are done."""
        self._calls.put(None)


class ConfluentSource(Source):
    """A consumer-group member backed by librdkafka."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._consumer: Consumer | None = None
        self._thread: _ClientThread | None = None
        self._admin: AdminClient | None = None
        self._listener: RebalanceListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reassigned: set[TopicPartition] = set()  # assigned during the running consume()
        self._fatal: str | None = None  # set by the error callback; raised by the next call

    # --- client lifecycle --------------------------------------------------------------

    def _open(self) -> tuple[Consumer, _ClientThread]:
        if self._consumer is None or self._thread is None:
            settings = consumer_settings(self._config)
            settings["error_cb"] = self._on_error
            settings["logger"] = LIBRDKAFKA_LOG  # its lines join ours (format, redaction)
            self._loop = asyncio.get_running_loop()
            self._consumer = Consumer(settings)
            self._thread = _ClientThread()
        return self._consumer, self._thread

    def _client(self) -> tuple[Consumer, _ClientThread]:
        if self._consumer is None or self._thread is None:
            raise ConnectorError("the Kafka source is not started")
        return self._consumer, self._thread

    def _on_error(self, error: KafkaError) -> None:
        """Runs on the client thread. librdkafka retries authentication failures forever;
        a wrong password or certificate does not heal, so it stops the run instead."""
        where = describe_endpoint(self._config)
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            what = "authentication" if error.code() == KafkaError._AUTHENTICATION else "TLS"
            self._fatal = (
                f"{what} failed at {where}: {error.str()}; check kafka.security "
                "(sasl mechanism, username and password; tls.ca_file)"
            )
        elif error.fatal():
            self._fatal = f"Kafka client failed at {where}: {error.str()}"
        else:
            log.warning("Kafka client: %s", error)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise ConnectorError(self._fatal)

    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        consumer, thread = self._open()
        self._listener = listener
        await thread.run(
            lambda: consumer.subscribe(
                subscriptions,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            ),
            CALL_TIMEOUT_S,
        )

    async def close(self, timeout_s: float) -> None:
        if self._consumer is None or self._thread is None:
            return
        consumer, thread = self._consumer, self._thread
        self._consumer = self._thread = None
        try:
            await thread.run(consumer.close, max(0.1, timeout_s))
        except TimeoutError:
            log.warning(
                "leaving the consumer group did not finish within %.1f s; abandoning the Kafka "
                "client (the group reassigns its partitions after session.timeout.ms)",
                timeout_s,
            )
        except KafkaException as exc:
            log.warning("closing the Kafka consumer: %s", exc)
        finally:
            thread.stop()

    # --- rebalance callbacks (on the client thread, inside consume() or close()) -------

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T | None:
        """Run ``coro`` on the event loop and wait for it, bounded; None if it could not."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop is shutting down
            coro.close()
            return None
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("the pipeline did not answer a rebalance within %.1f s", timeout_s)
            return None

    def _on_assign(self, _consumer: Consumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.info("assigned: %s", _describe(tps))
        listener = self._listener
        assert listener is not None

        async def assign() -> None:
            listener.on_assigned(tps)

        self._on_loop(assign(), LISTENER_GRACE_S)
        self._reassigned.update(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.info("revoked: %s", _describe(tps))
        assert self._listener is not None
        offsets = self._on_loop(self._listener.on_revoked(tps), REVOKE_WAIT_S)
        if not offsets:
            return
        try:
            # Same thread as the consume() or close() that called us: librdkafka allows it.
            consumer.commit(offsets=_ck_offsets(offsets), asynchronous=False)
            log.info("committed on revoke: %s", _describe_offsets(offsets))
        except KafkaException as exc:
            # The records stay uncommitted and are redelivered to the next owner; the
            # idempotent _id writes make that a duplicate, never a second copy.
            log.warning("commit on revoke failed (%s); records will be redelivered", exc)

    def _on_lost(self, _consumer: Consumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.warning("partitions lost: %s", _describe(tps))
        listener = self._listener
        assert listener is not None

        async def lose() -> None:
            listener.on_lost(tps)

        self._on_loop(lose(), LISTENER_GRACE_S)

    # --- fetching ----------------------------------------------------------------------

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        consumer, thread = self._client()
        return await thread.run(lambda: self._consume(consumer, max_records, timeout_s))

    def _consume(
        self, consumer: Consumer, max_records: int, timeout_s: float
    ) -> list[SourceRecord]:
        """consume() and stamp each record with its epoch, both on the client thread, so no
        rebalance can slip between them."""
        self._raise_fatal()
        self._reassigned.clear()
        messages = consumer.consume(num_messages=max_records, timeout=timeout_s)
        listener = self._listener
        assert listener is not None
        # Keyed by plain tuples: hashing a TopicPartition per record costs a Python call.
        epochs: dict[tuple[str, int], int | None] = {}
        records: list[SourceRecord] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._message_error(error)
                continue
            # A message without an error always has its topic, partition and offset.
            where: tuple[str, int] = (msg.topic(), msg.partition())  # type: ignore[assignment]
            epoch = epochs.get(where, 0)
            if epoch == 0:
                epoch = epochs[where] = listener.epoch(TopicPartition(*where))
            if epoch is None:
                continue  # fetched before its partition was revoked in this very call
            records.append(_record(msg, where, epoch))
        if self._reassigned:
            records = _after_reassignment(records, self._reassigned)
        return records

    @staticmethod
    def _message_error(error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise ConnectorError(f"Kafka consumer failed: {error}")
        log.warning("Kafka consumer: %s", error)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        consumer, thread = self._client()

        def commit_owned() -> list[CkTopicPartition] | None:
            # Runs after any revoke that happened while this call waited for the thread:
            # a partition revoked meanwhile was committed by the revoke itself, and an
            # older offset must not overwrite that.
            owned = {_tp(p) for p in consumer.assignment()}
            mine = {tp: off for tp, off in offsets.items() if tp in owned}
            if not mine:
                return None
            return consumer.commit(offsets=_ck_offsets(mine), asynchronous=False)

        result = await thread.run(commit_owned, CALL_TIMEOUT_S)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

    async def pause(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer, thread = self._client()
            await thread.run(lambda: consumer.pause(_ck(partitions)), CALL_TIMEOUT_S)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer, thread = self._client()
            await thread.run(lambda: consumer.resume(_ck(partitions)), CALL_TIMEOUT_S)

    # --- offsets -----------------------------------------------------------------------

    async def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        consumer, thread = self._client()
        result = await thread.run(lambda: consumer.position(_ck(partitions)), CALL_TIMEOUT_S)
        return {_tp(p): (p.offset if p.offset >= 0 else None) for p in result}

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Low and high watermark per partition, asked with the admin client's ListOffsets
        (two requests for all partitions, read_committed like the consumer). The consumer's
        own query, one partition at a time, waits on its connection behind the fetch the
        broker holds for ``fetch.wait.max.ms``: measured ~1 s per partition at the end of a
        run, 5.7 s for 6 partitions before ``--until-caught-up`` could exit."""
        if not partitions:
            return {}
        admin = self._admin_client()
        cks = {tp: CkTopicPartition(tp.topic, tp.partition) for tp in partitions}

        def ask(spec: OffsetSpec) -> dict[CkTopicPartition, concurrent.futures.Future[Any]]:
            return admin.list_offsets(
                {ck: spec for ck in cks.values()},
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=CALL_TIMEOUT_S,
            )

        async def offset(future: concurrent.futures.Future[Any]) -> int:
            return int((await within(asyncio.wrap_future(future), CALL_TIMEOUT_S)).offset)

        # Both requests are in flight at once.
        lows = ask(OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        highs = ask(OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return {tp: (await offset(lows[ck]), await offset(highs[ck])) for tp, ck in cks.items()}

    async def known_high_watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        consumer, thread = self._client()

        def cached() -> dict[TopicPartition, int]:
            out: dict[TopicPartition, int] = {}
            for tp in partitions:
                found = consumer.get_watermark_offsets(
                    CkTopicPartition(tp.topic, tp.partition), cached=True
                )
                if found is not None and found[1] >= 0:
                    out[tp] = found[1]
            return out

        return await thread.run(cached, CALL_TIMEOUT_S)

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        consumer, thread = self._client()
        result = await thread.run(
            lambda: consumer.committed(_ck(partitions), timeout=10.0), CALL_TIMEOUT_S
        )
        return {_tp(p): (p.offset if p.offset >= 0 else None) for p in result}

    # --- admin -------------------------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            settings: dict[str, Any] = {**admin_settings(self._config), "logger": LIBRDKAFKA_LOG}
            self._admin = AdminClient(settings)
        return self._admin

    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        if not topics:
            return {}
        futures = self._admin_client().describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics],
            request_timeout=CALL_TIMEOUT_S,
        )
        out: dict[str, dict[str, str]] = {}
        for resource, future in futures.items():
            entries = await within(asyncio.wrap_future(future), CALL_TIMEOUT_S)
            out[resource.name] = {name: entry.value for name, entry in entries.items()}
        return out

    async def delete_records(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        futures = self._admin_client().delete_records(
            _ck_offsets(offsets), request_timeout=CALL_TIMEOUT_S
        )
        for future in futures.values():
            await within(asyncio.wrap_future(future), CALL_TIMEOUT_S)

    async def check(self, timeout_s: float) -> list[str]:
        consumer, thread = self._open()
        try:
            metadata = await thread.run(
                lambda: consumer.list_topics(timeout=timeout_s), timeout_s + 5
            )
        except KafkaException as exc:
            self._raise_fatal()
            raise ConnectorError(
                f"cannot list topics at {describe_endpoint(self._config)}: {exc}"
            ) from exc
        return sorted(metadata.topics)


def _record(msg: Message, where: tuple[str, int], epoch: int) -> SourceRecord:
    ts_type, ts = msg.timestamp()
    # Positional: (topic, partition, offset, key, value, timestamp_ms, epoch, headers).
    return SourceRecord(
        *where,
        msg.offset(),  # type: ignore[arg-type]
        msg.key(),
        msg.value(),
        ts if ts_type != 0 else None,
        epoch,
        msg.headers(),  # type: ignore[arg-type]  # a consumer's are (str, bytes) pairs
    )


def _after_reassignment(
    records: list[SourceRecord], reassigned: set[TopicPartition]
) -> list[SourceRecord]:
    """Drop the records of a partition that one consume() call fetched *before* the same
    partition was revoked and assigned again within that call: the new assignment starts
    over at the committed offset, so its records follow the last step back in offsets."""
    start: dict[TopicPartition, int] = {}
    last: dict[TopicPartition, int] = {}
    for i, record in enumerate(records):
        tp = record.topic_partition
        if tp in reassigned:
            if tp in last and record.offset <= last[tp]:
                start[tp] = i
            last[tp] = record.offset
    if not start:
        return records
    return [
        r
        for i, r in enumerate(records)
        if r.topic_partition not in start or i >= start[r.topic_partition]
    ]

"""Source implemented with aiokafka: one asyncio client on our event loop, no threads.

Where aiokafka differs from librdkafka, and how the Source contract still holds:

* Assignment: aiokafka has no cooperative protocol. It runs the eager protocol with its
  ``RoundRobinPartitionAssignor``: each rebalance revokes (and so commits) every partition of
  the member, then assigns partitions anew. Members of one group must share an assignor, so a
  consumer group is served by one engine at a time.
* Lost partitions: aiokafka has no ``on_partitions_lost``. A member that was fenced (session
  timed out, ``max.poll.interval.ms`` exceeded, generation no longer known) resets its
  generation and later gets ``on_partitions_revoked``; those partitions are reported to the
  listener as lost and nothing is committed for them. A commit on revoke that the group
  refuses anyway (it moved on meanwhile) is logged and skipped: the next owner reads the
  records again and the idempotent ``_id`` writes make that a duplicate.
* ``getmany`` waits for a running rebalance without a bound, commits retry while the
  coordinator is unknown, and ``stop`` neither revokes nor has a timeout: each is bounded or
  done here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as AkTopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    IllegalStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)

from connector.config import KafkaConfig
from connector.errors import ConnectorError
from connector.records import SourceRecord, TopicPartition
from connector.sources import RebalanceListener, Source
from connector.sources.security import aiokafka_kwargs, describe_endpoint
from connector.timeouts import within

log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
"""Bound of every broker call (below aiokafka's 40 s request timeout, so ours reports first)."""

FETCH_GRACE_S = 1.0
"""How far ``getmany`` may overrun its own timeout (it waits out a rebalance) before ``fetch``
returns nothing."""

POSITION_WAIT_S = 0.2
"""How long ``position`` waits for a position being looked up before reporting None."""


def _tp(tp: AkTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _ak(tp: TopicPartition) -> AkTopicPartition:
    return AkTopicPartition(tp.topic, tp.partition)


def _describe_tps(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(map(str, tps))) or "(none)"


def subscription_pattern(subscriptions: list[str]) -> str | None:
    """One regular expression for ``subscriptions`` when any is a '^'-regex, else None.

    aiokafka takes either topic names or a single pattern, which it ``match``es against each
    topic name (anchored at the start, open at the end, like librdkafka's '^' subscriptions).
    """
    if not any(s.startswith("^") for s in subscriptions):
        return None
    parts = [s if s.startswith("^") else f"^{re.escape(s)}$" for s in subscriptions]
    return "|".join(f"(?:{part})" for part in parts)


class _Rebalance(ConsumerRebalanceListener):
    """Forwards aiokafka's rebalance callbacks to the source (they run in its coordinator)."""

    def __init__(self, source: AiokafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[AkTopicPartition]) -> None:
        await self._source._revoke(sorted(map(_tp, revoked), key=str))

    async def on_partitions_assigned(self, assigned: set[AkTopicPartition]) -> None:
        self._source._assign(sorted(map(_tp, assigned), key=str))


class AiokafkaSource(Source):
    """A consumer-group member backed by aiokafka (see the module docstring for the protocol)."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._listener: RebalanceListener | None = None
        # Commits run one at a time, and none for a partition revoked and not assigned
        # again: a periodic commit racing a revoke must not land after the revoke's (higher)
        # commit. A revoked partition stays here until a new assignment names it, because
        # aiokafka still reports it assigned between the revoke and the next assignment.
        self._commit_lock = asyncio.Lock()
        self._revoking: set[TopicPartition] = set()

    # --- clients -----------------------------------------------------------------------

    def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise ConnectorError("the Kafka source is not started")
        return self._consumer

    def _require_listener(self) -> RebalanceListener:
        if self._listener is None:
            raise ConnectorError("the Kafka source is not started")
        return self._listener

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._config.bootstrap_servers,
                **aiokafka_kwargs(self._config.security),
            )
            await self._connect(admin.start(), admin.close)
            self._admin = admin
        return self._admin

    async def _connect(
        self, start: Awaitable[None], release: Callable[[], Awaitable[None]]
    ) -> None:
        """Start a client within the bound; on failure release it and explain why."""
        try:
            await within(start, CALL_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            try:
                diagnosis = await within(self._diagnose(), CALL_TIMEOUT_S)
            except TimeoutError:
                diagnosis = None
            reason = diagnosis or (
                f"{_reason(exc)}; check kafka.bootstrap_servers, that the brokers are up, and "
                f"that kafka.security matches their listener"
            )
            try:
                await within(release(), CALL_TIMEOUT_S)
            except (KafkaError, OSError, TimeoutError) as release_exc:
                log.debug("releasing the failed Kafka client: %s", release_exc)
            raise ConnectorError(
                f"cannot connect to {describe_endpoint(self._config)}: {reason}"
            ) from None

    async def _diagnose(self) -> str | None:
        """Why connecting failed, from one direct connection attempt per bootstrap server.

        aiokafka only logs the cause of a failed bootstrap (a refused password, an untrusted
        certificate) and raises "Unable to bootstrap"; the user needs the cause.
        """
        security = self._config.security
        unreachable: list[str] = []
        for host, port, _ in collect_hosts(self._config.bootstrap_servers, randomize=False):
            where = f"{host}:{port}"
            try:
                conn = await create_conn(host, port, **aiokafka_kwargs(security))
            except SaslAuthenticationFailed as exc:
                return (
                    f"authentication failed at {where} ({_reason(exc)}); check "
                    "kafka.security.sasl.username, password and mechanism"
                )
            except UnsupportedSaslMechanismError:
                assert security.sasl is not None
                return (
                    f"{where} does not enable SASL {security.sasl.mechanism}; set "
                    "kafka.security.sasl.mechanism to a mechanism the brokers enable"
                )
            except ssl.SSLCertVerificationError as exc:
                return (
                    f"the TLS certificate of {where} was not accepted ({exc.verify_message}); "
                    "set kafka.security.tls.ca_file to the CA that signed it, or "
                    "check_hostname: false when only the host name differs"
                )
            except ssl.SSLError as exc:
                return (
                    f"TLS with {where} failed ({exc.reason or exc}); check that this listener "
                    f"speaks {security.protocol} (kafka.security.protocol)"
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                unreachable.append(f"{where}: {_reason(exc)}")
            else:
                conn.close()
        if unreachable:
            return (
                f"{'; '.join(unreachable)}; check kafka.bootstrap_servers, that the brokers are "
                f"up, and that their listener speaks {security.protocol} "
                "(kafka.security.protocol)"
            )
        return None

    async def _bounded(self, what: str, call: Awaitable[T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Await a client call within ``timeout_s``; client errors become ConnectorErrors."""
        try:
            return await within(call, timeout_s)
        except TimeoutError:
            raise ConnectorError(
                f"{describe_endpoint(self._config)}: {what} got no answer within "
                f"{timeout_s:g} s; check that the brokers are up and reachable"
            ) from None
        except KafkaError as exc:
            raise ConnectorError(
                f"{describe_endpoint(self._config)}: {what} failed: {_reason(exc)}"
            ) from exc

    # --- group membership ----------------------------------------------------------------

    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        config = self._config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            isolation_level="read_committed",
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
            **config.aiokafka_options(),
            **aiokafka_kwargs(config.security),
        )
        await self._connect(consumer.start(), consumer.stop)
        self._consumer = consumer
        self._listener = listener
        pattern = subscription_pattern(subscriptions)
        if pattern is None:
            consumer.subscribe(topics=subscriptions, listener=_Rebalance(self))
        else:
            consumer.subscribe(pattern=pattern, listener=_Rebalance(self))

    def _assign(self, partitions: list[TopicPartition]) -> None:
        log.info("assigned: %s", _describe_tps(partitions))
        self._revoking.difference_update(partitions)
        self._require_listener().on_assigned(partitions)

    async def _revoke(self, partitions: list[TopicPartition]) -> None:
        """Hand ``partitions`` over: commit what the listener returns, unless they are lost."""
        if not partitions:
            return
        listener = self._require_listener()
        if self._fenced():
            log.warning(
                "partitions lost: %s (this member was fenced from the group, e.g. its session "
                "timed out); nothing is committed for them",
                _describe_tps(partitions),
            )
            listener.on_lost(partitions)
            return
        log.info("revoked: %s", _describe_tps(partitions))
        self._revoking.update(partitions)
        offsets = await listener.on_revoked(partitions)
        if not offsets:
            return
        try:
            async with self._commit_lock:
                await self._commit(offsets)
        except ConnectorError as exc:
            log.warning("commit on revoke skipped (%s); records will be redelivered", exc)
        else:
            log.info("committed on revoke: %s", _describe_offsets(offsets))

    def _fenced(self) -> bool:
        """True when the group no longer knows this member (its generation was reset).

        aiokafka 0.14 keeps the generation on its group coordinator only; -1 means it must
        rejoin as a new member, so its previous partitions belong to others already.
        """
        consumer = self._consumer
        coordinator = getattr(consumer, "_coordinator", None)
        return coordinator is not None and getattr(coordinator, "generation", 0) < 0

    async def close(self, timeout_s: float) -> None:
        try:
            await within(self._shut_down(), timeout_s)
        except TimeoutError:
            log.warning(
                "the Kafka client did not close within %.1f s and was abandoned; the group "
                "hands its partitions over when its session times out",
                timeout_s,
            )
        finally:
            self._consumer = None
            self._admin = None

    async def _shut_down(self) -> None:
        """Revoke (aiokafka's ``stop`` does not), leave the group, release both clients."""
        if self._consumer is not None:
            await self._revoke(sorted(map(_tp, self._consumer.assignment()), key=str))
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    # --- records -----------------------------------------------------------------------

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        consumer = self._client()
        listener = self._require_listener()
        try:
            batches = await within(
                consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records),
                timeout_s + FETCH_GRACE_S,
            )
        except TimeoutError:
            return []  # a rebalance is running; its listener calls tell the pipeline
        except KafkaError as exc:
            raise ConnectorError(
                f"{describe_endpoint(self._config)}: the consumer failed: {_reason(exc)}"
            ) from exc
        # No await from here on: each record gets the epoch its partition has right now.
        records: list[SourceRecord] = []
        for ak_tp, messages in batches.items():
            epoch = listener.epoch(_tp(ak_tp))
            if epoch is None:
                self._refetch_later(ak_tp, messages[0].offset)
                continue
            for msg in messages:
                timestamp = msg.timestamp if msg.timestamp_type is not None else None
                # Positional (keywords cost per record): topic, partition, offset, key,
                # value, timestamp_ms, epoch, headers.
                records.append(
                    SourceRecord(
                        msg.topic,
                        msg.partition,
                        msg.offset,
                        msg.key,
                        msg.value,
                        timestamp if timestamp is None or timestamp >= 0 else None,
                        epoch,
                        list(msg.headers) or None,
                    )
                )
        return records

    def _refetch_later(self, ak_tp: AkTopicPartition, offset: int) -> None:
        """Records of a partition without an epoch are dropped; while the partition is still
        assigned (the listener has not heard of it yet) it is rewound so none is skipped."""
        consumer = self._client()
        if ak_tp in consumer.assignment():
            consumer.seek(ak_tp, offset)
            log.debug("%s has no epoch yet; fetching again from %d", _tp(ak_tp), offset)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the partitions still owned and not being revoked (their revoke commits)."""
        async with self._commit_lock:
            assigned = self._client().assignment()
            owned = {
                tp: offset
                for tp, offset in offsets.items()
                if tp not in self._revoking and _ak(tp) in assigned
            }
            await self._commit(owned)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        await self._bounded(
            f"committing {_describe_offsets(offsets)}",
            self._client().commit({_ak(tp): offset for tp, offset in offsets.items()}),
        )

    async def pause(self, partitions: list[TopicPartition]) -> None:
        consumer = self._client()
        assigned = consumer.assignment()
        consumer.pause(*(p for p in map(_ak, partitions) if p in assigned))

    async def resume(self, partitions: list[TopicPartition]) -> None:
        consumer = self._client()
        assigned = consumer.assignment()
        consumer.resume(*(p for p in map(_ak, partitions) if p in assigned))

    # --- offsets -----------------------------------------------------------------------

    async def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        consumer = self._client()

        async def one(tp: TopicPartition) -> int | None:
            try:
                return int(await within(consumer.position(_ak(tp)), POSITION_WAIT_S))
            except (TimeoutError, IllegalStateError):
                return None  # not assigned, or its position is still being looked up

        positions = await asyncio.gather(*(one(tp) for tp in partitions))
        return dict(zip(partitions, positions, strict=True))

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(low, high) per partition; under read_committed the broker reports the last stable
        offset as high, which is the end a consumer can reach (librdkafka does the same)."""
        if not partitions:
            return {}
        consumer = self._client()
        aks = [_ak(tp) for tp in partitions]
        what = f"reading the watermarks of {_describe_tps(partitions)}"
        lows = await self._bounded(what, consumer.beginning_offsets(aks))
        highs = await self._bounded(what, consumer.end_offsets(aks))
        return {tp: (lows[ak], highs[ak]) for tp, ak in zip(partitions, aks, strict=True)}

    async def known_high_watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        consumer = self._client()
        marks = {tp: consumer.highwater(_ak(tp)) for tp in partitions}
        return {tp: high for tp, high in marks.items() if high is not None}

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        consumer = self._client()
        offsets = await self._bounded(
            f"reading the committed offsets of {_describe_tps(partitions)}",
            asyncio.gather(*(consumer.committed(_ak(tp)) for tp in partitions)),
        )
        return dict(zip(partitions, offsets, strict=True))

    # --- administration ----------------------------------------------------------------

    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        if not topics:
            return {}
        admin = await self._admin_client()
        resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        responses = await self._bounded(
            f"describing the configuration of topics {', '.join(topics)}",
            admin.describe_configs(resources),
        )
        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for error_code, error_message, _type, name, entries, *_ in response.resources:
                if error_code:
                    raise ConnectorError(
                        f"{describe_endpoint(self._config)}: describing topic {name!r} failed: "
                        f"{_reason(for_code(error_code)(error_message))}"
                    )
                configs[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
        return configs

    async def delete_records(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        admin = await self._admin_client()
        await self._bounded(
            f"deleting records below {_describe_offsets(offsets)}",
            admin.delete_records(
                {_ak(tp): RecordsToDelete(offset) for tp, offset in offsets.items()},
                timeout_ms=int(CALL_TIMEOUT_S * 1000),
            ),
        )

    async def check(self, timeout_s: float) -> list[str]:
        async def list_topics() -> list[str]:
            admin = await self._admin_client()
            return sorted(await admin.list_topics())

        return await self._bounded("listing topics", list_topics(), timeout_s)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _describe_offsets(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items(), key=lambda i: str(i[0])))

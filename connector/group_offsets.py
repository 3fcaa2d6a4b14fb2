"""A connector's offsets: its consumer group's committed offsets, read and changed by the
Kafka admin API (KIP-875's ``GET``/``PATCH``/``DELETE /connectors/{name}/offsets``).

Changing them is safe only while no member of the group runs (the connector is STOPPED on
every worker); the broker refuses it otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from connector.config import KafkaConfig
from connector.errors import ConnectorError
from connector.sources.confluent import admin_settings

TIMEOUT_S = 30.0


class OffsetsError(ConnectorError):
    """The broker refused to read or change the group's offsets."""


def _admin(config: KafkaConfig) -> AdminClient:
    return AdminClient(admin_settings(config))


def _result(futures: dict[Any, Any], what: str) -> Any:
    try:
        return next(iter(futures.values())).result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise OffsetsError(f"{what}: {exc.args[0].str()}") from None
    except Exception as exc:
        raise OffsetsError(f"{what}: {exc or type(exc).__name__}") from None


def _committed(config: KafkaConfig) -> dict[tuple[str, int], int]:
    admin = _admin(config)  # referenced until the futures are done: they die with it
    request = [ConsumerGroupTopicPartitions(config.group_id)]
    group = _result(
        admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT_S),
        f"reading the offsets of group {config.group_id!r}",
    )
    return {
        (tp.topic, tp.partition): tp.offset for tp in group.topic_partitions or [] if tp.offset >= 0
    }


def _alter(config: KafkaConfig, offsets: dict[tuple[str, int], int | None]) -> None:
    admin = _admin(config)
    resets = [CkTopicPartition(t, p) for (t, p), o in offsets.items() if o is None]
    start: dict[tuple[str, int], int] = {}
    if resets:  # no offset: where auto_offset_reset starts a new group
        make = OffsetSpec.earliest if config.auto_offset_reset == "earliest" else OffsetSpec.latest
        spec = make()  # type: ignore[no-untyped-call]
        listed = admin.list_offsets({tp: spec for tp in resets}, request_timeout=TIMEOUT_S)
        for tp, future in listed.items():
            try:
                start[(tp.topic, tp.partition)] = future.result(timeout=TIMEOUT_S).offset
            except KafkaException as exc:
                raise OffsetsError(
                    f"listing the offsets of {tp.topic}[{tp.partition}]: {exc.args[0].str()}"
                ) from None
    partitions = [
        CkTopicPartition(t, p, o if o is not None else start[(t, p)])
        for (t, p), o in offsets.items()
    ]
    _result(
        admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(config.group_id, partitions)],
            request_timeout=TIMEOUT_S,
        ),
        f"altering the offsets of group {config.group_id!r}",
    )


def _delete(config: KafkaConfig) -> None:
    admin = _admin(config)
    futures = admin.delete_consumer_groups([config.group_id], request_timeout=TIMEOUT_S)
    try:
        next(iter(futures.values())).result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0]
        if error.name() != "GROUP_ID_NOT_FOUND":  # nothing committed: already reset
            raise OffsetsError(
                f"resetting the offsets of group {config.group_id!r}: {error.str()}"
            ) from None


async def committed(config: KafkaConfig) -> dict[tuple[str, int], int]:
    """(topic, partition) → the group's committed offset."""
    return await asyncio.to_thread(_committed, config)


async def alter(config: KafkaConfig, offsets: dict[tuple[str, int], int | None]) -> None:
    """Set the group's offsets; ``None`` puts a partition back where a new group starts."""
    await asyncio.to_thread(_alter, config, offsets)


async def reset(config: KafkaConfig) -> None:
    """Remove every committed offset of the group (it starts as a new group)."""
    await asyncio.to_thread(_delete, config)

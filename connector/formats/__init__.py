"""The Decode stage: a record value becomes a document of a declared object type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from connector.records import SourceRecord
from connector.schemas import ObjectType, ObjectTypes

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    from connector.config import PipelineConfig, RouteConfig


class Decoder(Protocol):
    """Turns a record's value into (its object type, its document).

    ``prepare`` runs before a fetched batch is decoded and may do I/O (fetching writer
    schemas); ``decode`` is synchronous and raises ``RecordError`` naming the cause;
    ``decode_many`` decodes records of one route at once and raises at the first bad one.
    """

    async def prepare(self, records: list[SourceRecord]) -> None: ...

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]: ...

    def decode_many(
        self, records: list[SourceRecord]
    ) -> list[tuple[ObjectType, dict[str, Any]]]: ...


@dataclass(frozen=True, slots=True)
class FormatContext:
    """What a format plugin gets to build the decoder of one route.

    ``target`` is the route's declared type (None with ``type_from: writer_schema``);
    ``registry()`` is the pipeline's Schema Registry client, shared by its routes.
    """

    route: RouteConfig
    target: ObjectType | None
    types: ObjectTypes
    config: PipelineConfig
    registry: Callable[[], AsyncSchemaRegistryClient]


@dataclass(frozen=True, slots=True)
class FormatPlugin:
    """What an entry point of the group ``data_ingest.formats`` names."""

    create: Callable[[FormatContext], Decoder]

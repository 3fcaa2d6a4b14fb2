"""The Decode stage: a record value becomes a document of a declared object type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from connector.errors import RecordError
from connector.records import SourceRecord
from connector.schemas import ObjectType, ObjectTypes

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    from connector.config import PipelineConfig, RouteConfig


class Decoder(Protocol):
    """Turns a record's value into (its object type, its document).

    ``prepare`` runs before a fetched batch is decoded and may do I/O (fetching writer
    schemas); ``decode`` is synchronous and raises ``RecordError`` naming the cause;
    ``decode_many`` decodes records of one route at once, up to the first bad one: the
    documents before it and its error (None when all decoded), so that a bad record costs
    no second decode of the good ones.
    """

    async def prepare(self, records: list[SourceRecord]) -> None: ...

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]: ...

    def decode_many(
        self, records: list[SourceRecord]
    ) -> tuple[list[tuple[ObjectType, dict[str, Any]]], RecordError | None]: ...


def decode_until_bad(
    decode: Callable[[SourceRecord], tuple[ObjectType, dict[str, Any]]],
    records: list[SourceRecord],
) -> tuple[list[tuple[ObjectType, dict[str, Any]]], RecordError | None]:
    """``decode`` each record up to the first bad one: the documents before it, its error."""
    decoded: list[tuple[ObjectType, dict[str, Any]]] = []
    append = decoded.append
    try:
        for record in records:
            append(decode(record))
    except RecordError as exc:
        return decoded, exc
    return decoded, None


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

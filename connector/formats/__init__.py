"""The Decode stage: a record value becomes a document of a declared object type."""

from __future__ import annotations

from typing import Any, Protocol

from connector.records import SourceRecord
from connector.schemas import ObjectType


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

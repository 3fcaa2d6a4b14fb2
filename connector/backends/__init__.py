"""The Backend stage: durable, idempotent writes with one outcome per object.

Contract (DESIGN.md): ``ingest(batch)`` returns one ``ObjectResult`` per object, in batch
order, and everything it reports is durable when it returns. A transient failure raises
``RetryableError`` and nothing of the batch may be counted as acked. Asymmetric objects are
only inserted (R8): a re-delivery with the same document is a duplicate, a different
document under a stored ``_id`` is a conflict and is never written (R9). Standard objects
are upserted by ``_id`` (the latest offset of a partition wins) and deleted by tombstones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from connector.records import MappedObject

if TYPE_CHECKING:
    from connector.config import BackendConfig
    from connector.schemas import ObjectTypes


class Outcome(StrEnum):
    """What the backend did with one object."""

    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    UPSERTED = "upserted"  # standard objects: written (new or replaced)
    DELETED = "deleted"  # standard objects: a tombstone removed it (or it was absent)


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """The outcome for one object; ``reason`` explains conflicts and rejections."""

    outcome: Outcome
    reason: str | None = None


def conflict(type_name: str, key: object, fields: list[str]) -> ObjectResult:
    """The outcome for a different document under a stored ``_id`` (R9), in one wording."""
    return ObjectResult(
        Outcome.CONFLICT,
        f"a different {type_name} is already stored under _id {str(key)!r} (fields differing: "
        f"{', '.join(fields)}); first write wins, this one was not written",
    )


INSERTED = ObjectResult(Outcome.INSERTED)
DUPLICATE = ObjectResult(Outcome.DUPLICATE)
UPSERTED = ObjectResult(Outcome.UPSERTED)
DELETED = ObjectResult(Outcome.DELETED)


class Backend(ABC):
    """A sync backend that applications and devices read from."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and prepare storage; raises on misconfiguration."""

    @abstractmethod
    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        """Write a batch durably; one result per object in order."""

    @abstractmethod
    async def check(self) -> str:
        """Connectivity check for ``validate``; returns a one-line description."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


def create_backend(config: BackendConfig, types: ObjectTypes) -> Backend:
    """Build the backend named by a backend config section."""
    from connector.config import MongoBackendConfig, PostgresBackendConfig, SqliteBackendConfig

    if isinstance(config, SqliteBackendConfig):
        from connector.backends.sqlite import SqliteBackend

        return SqliteBackend(config)
    if isinstance(config, PostgresBackendConfig):
        from connector.backends.postgres import PostgresBackend

        return PostgresBackend(config, types)
    if isinstance(config, MongoBackendConfig):
        from connector.backends.mongodb import MongoBackend

        return MongoBackend(config, types)
    raise ValueError(f"unsupported backend config {type(config).__name__}")

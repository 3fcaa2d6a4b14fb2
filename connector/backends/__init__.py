"""The Backend stage: durable, idempotent writes with one outcome per object.

Contract (DESIGN.md), the same for every backend:

* ``open()`` connects and prepares storage (tables, views, collections). A server that is
  unreachable (refused, timed out, restarting) raises ``RetryableError`` within a bounded
  time, so the pipeline retries it like a write; ``open()`` may be called again after it
  raised, nothing leaks. Misconfiguration and refused authentication raise
  ``FatalBackendError``.
* ``check()`` (``data-ingest validate``) connects and inspects, read-only: it creates and
  changes nothing, not even a missing file.
* ``ingest(batch)`` returns one ``ObjectResult`` per object, in batch order, and everything
  it reports is durable when it returns. A transient failure raises ``RetryableError``:
  nothing of the batch counts as acked, although part of it may have been written.
  Re-applying the same batch (after a partial write, a crash, or on a redelivery) is
  idempotent: it reaches the same final state as a single application, so retrying is
  always safe. What a re-application reports for an object that an earlier attempt wrote
  is its outcome against that stored state (``duplicate`` for asymmetric objects).

Outcomes:

* ``inserted``: the asymmetric object is stored (R8: insert only).
* ``duplicate``: an identical document is already stored under its ``_id`` (an earlier
  delivery, an earlier attempt of this batch, or an earlier object of the batch); nothing
  was written (R9).
* ``conflict``: a different document is stored under its ``_id``; this one was not written,
  the first write wins (R9).
* ``rejected``: the backend cannot store this object (the reason says why); the rest of the
  batch is written regardless.
* ``upserted``: the standard object's document is stored under its ``_id``, unless the
  stored state (a document or a tombstone marker) comes from a later offset of the same
  topic partition; then nothing changes: the latest offset of a partition wins. Writes from
  another partition are not ordered against it and replace it.
* ``deleted``: a tombstone replaced the standard object by a **tombstone marker**: a
  deleted flag plus the tombstone's topic, partition and offset, under the same rule. The
  marker makes the object gone for readers (the ``<table>_live`` views of the SQL backends;
  the filter ``{"_deleted": {"$ne": true}}`` in MongoDB), and an upsert of the same
  partition with an offset lower than or equal to the marker's (a replay, a stale
  in-flight batch) cannot bring it back; a later upsert does. Markers are kept until an
  operator purges them (README, "Tombstone markers").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel

from connector.records import MappedObject

if TYPE_CHECKING:
    from connector.config import BackendConfig
    from connector.schemas import ObjectTypes

S = TypeVar("S", bound=BaseModel)

#: The name of the reader view that hides tombstone markers (SQL backends): ``Sensor_live``.
LIVE_VIEW_SUFFIX = "_live"


class Outcome(StrEnum):
    """What the backend did with one object."""

    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    UPSERTED = "upserted"  # standard objects: stored, or superseded by a later offset
    DELETED = "deleted"  # standard objects: a tombstone marker replaced it


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


def is_older(obj: MappedObject, than: MappedObject) -> bool:
    """True when ``obj`` is an earlier offset of the same partition as ``than``: of two
    writes of one standard ``_id`` in a batch, the later one wins unless it is that."""
    a, b = obj.record, than.record
    return a.topic == b.topic and a.partition == b.partition and a.offset < b.offset


INSERTED = ObjectResult(Outcome.INSERTED)
DUPLICATE = ObjectResult(Outcome.DUPLICATE)
UPSERTED = ObjectResult(Outcome.UPSERTED)
DELETED = ObjectResult(Outcome.DELETED)


class Backend(ABC):
    """A sync backend that applications and devices read from."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and prepare storage; see the module docstring for the errors."""

    @abstractmethod
    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        """Write a batch durably and idempotently; one result per object in order."""

    @abstractmethod
    async def check(self) -> str:
        """Read-only connectivity check for ``validate``; returns a one-line description."""

    def concurrent_writes(self) -> int:
        """How many ``ingest`` calls this backend serves at once (default: one)."""
        return 1

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class BackendPlugin(Generic[S]):
    """What an entry point of the group ``data_ingest.backends`` names.

    ``settings`` is the pydantic model of the backend's own keys in the ``backend`` section;
    ``create`` builds the backend; ``problems`` (optional) checks the settings against the
    object types without a server, one line per problem.
    """

    settings: type[S]
    create: Callable[[S, ObjectTypes], Backend]
    problems: Callable[[S, ObjectTypes], list[str]] | None = None

    def settings_of(self, section: BaseModel) -> S:
        """The plugin's settings from a ``backend`` section; ``ValidationError`` if invalid."""
        if isinstance(section, self.settings):
            return section
        from connector.config import PluginBackendConfig

        assert isinstance(section, PluginBackendConfig)
        return self.settings.model_validate(section.settings)


def settings_problems(config: BackendConfig, types: ObjectTypes) -> list[str]:
    """What in the backend section contradicts the object types, one line each.

    Needs no server, so the CLI reports these with the other configuration errors, before
    anything is opened or consumed.
    """
    from connector.plugins import backend_plugin

    plugin = backend_plugin(config.type)
    if plugin.problems is None:
        return []
    return plugin.problems(plugin.settings_of(config), types)


def create_backend(config: BackendConfig, types: ObjectTypes) -> Backend:
    """Build the backend named by a backend config section, through its plugin."""
    from connector.plugins import backend_plugin

    plugin = backend_plugin(config.type)
    return plugin.create(plugin.settings_of(config), types)

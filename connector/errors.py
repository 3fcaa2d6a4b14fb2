"""Error types shared by the stages.

Three families, because each one reaches the user differently:

* ``ConfigError``: the pipeline file is wrong; reported before anything is consumed, exit 2.
* ``RecordError``: one Kafka record cannot be turned into an object; the message names the
  record's topic/partition/offset and the cause.
* ``RetryableError``: the backend or the schema registry is temporarily unavailable; the
  pipeline backs off and retries, committing nothing meanwhile.

Any other ``ConnectorError`` stops the run at once (e.g. the registry refuses our
credentials): retrying cannot fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ConnectorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ConnectorError):
    """The pipeline configuration is invalid; each entry of ``problems`` is one line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class RecordErrorKind(StrEnum):
    """Why a record could not be ingested."""

    DECODE = "decode"
    SCHEMA_MISMATCH = "schema-mismatch"
    RULE_VIOLATION = "rule-violation"
    BACKEND_REJECTION = "backend-rejection"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a record lives in Kafka."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"topic {self.topic!r} partition {self.partition} offset {self.offset}"


class RecordError(ConnectorError):
    """One record cannot be ingested. The message is one line naming where and why."""

    def __init__(
        self, kind: RecordErrorKind, where: Coordinates, cause: str, *, in_key: bool = False
    ) -> None:
        self.kind = kind
        self.where = where
        self.cause = cause
        self.in_key = in_key  # the record key, not its value, could not be read
        super().__init__(f"{kind} error at {where}: {cause}")


class RetryableError(ConnectorError):
    """A transient failure (connection lost, server restarting); the operation may be retried."""


class FatalBackendError(ConnectorError):
    """The backend refused in a way a retry cannot fix (permissions, incompatible table)."""

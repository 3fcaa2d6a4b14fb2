"""The Decode stage: bytes of a Kafka record value into a Python value, per route format."""

from __future__ import annotations

from typing import Any, Protocol

from connector.records import SourceRecord


class Decoder(Protocol):
    """Turns a record's value into a document; raises ``RecordError`` naming the cause."""

    def decode(self, record: SourceRecord) -> dict[str, Any]:
        """The decoded object (the value must not be None: tombstones are handled before)."""

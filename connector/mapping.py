"""The Map stage: a decoded record becomes an object of its route's type, with an ``_id``.

Ids follow rule R10: with ``id: field`` the record's own ``_id`` is used and a record
without one gets a deterministic id derived from its Kafka coordinates; ``id: key`` takes
the record key; ``id: coordinates`` always derives the id. A replay therefore maps every
record to the same ``_id``, which is what makes redelivery a harmless duplicate.
"""

from __future__ import annotations

import uuid
from typing import Any

from connector.config import PipelineConfig, RouteConfig
from connector.errors import Coordinates, RecordError, RecordErrorKind
from connector.formats import Decoder
from connector.formats.json_format import JsonDecoder
from connector.records import MappedObject, SourceRecord

# Fixed namespace for ids derived from Kafka coordinates; changing it would change every
# derived id and break idempotent replays, so it is part of the storage format.
COORDINATES_NAMESPACE = uuid.UUID("5f1d7a3e-2b7c-5e47-9a51-6f0d1c2b8e90")


def coordinates_id(where: Coordinates) -> str:
    """The deterministic UUID v5 of a record's topic/partition/offset (R10)."""
    return str(uuid.uuid5(COORDINATES_NAMESPACE, f"{where.topic}/{where.partition}/{where.offset}"))


def _decoder_for(route: RouteConfig) -> Decoder:
    if route.format == "json":
        return JsonDecoder()
    raise ValueError(f"unsupported format {route.format!r}")


class Mapper:
    """Decodes and maps records according to the route of their topic."""

    def __init__(self, config: PipelineConfig) -> None:
        self._config = config
        self._routes: dict[str, tuple[RouteConfig, Decoder]] = {}

    def _route(self, record: SourceRecord) -> tuple[RouteConfig, Decoder]:
        found = self._routes.get(record.topic)
        if found is None:
            route = self._config.route_for(record.topic)
            if route is None:
                raise RecordError(
                    RecordErrorKind.RULE_VIOLATION,
                    record.coordinates,
                    "no route matches this topic; add a route for it to the pipeline file",
                )
            found = (route, _decoder_for(route))
            self._routes[record.topic] = found
        return found

    def map(self, record: SourceRecord) -> MappedObject:
        """Decode ``record`` and give it its ``_id``; raises ``RecordError`` on bad input."""
        route, decoder = self._route(record)
        if record.value is None:
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                f"tombstone (null value) on a route of asymmetric type {route.type}: "
                "asymmetric objects are insert-only and cannot be deleted (R8)",
            )
        document = decoder.decode(record)
        object_id = self._object_id(route, record, document)
        document["_id"] = object_id
        return MappedObject(
            type_name=route.type,
            object_id=object_id,
            document=document,
            record=record,
            size=record.size,
        )

    @staticmethod
    def _object_id(route: RouteConfig, record: SourceRecord, document: dict[str, Any]) -> Any:
        if route.id == "coordinates":
            return coordinates_id(record.coordinates)
        if route.id == "key":
            if record.key is None:
                raise RecordError(
                    RecordErrorKind.RULE_VIOLATION,
                    record.coordinates,
                    "the route takes _id from the record key (id: key) but the key is null",
                )
            try:
                return record.key.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError(
                    RecordErrorKind.DECODE,
                    record.coordinates,
                    "the record key is not UTF-8 text, so it cannot be used as _id (id: key)",
                ) from None
        object_id = document.get("_id")
        if object_id is None:
            return coordinates_id(record.coordinates)
        if isinstance(object_id, bool) or not isinstance(object_id, str | int):
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                f"field _id is a {type(object_id).__name__}; a primary key must be a string or "
                "an integer (R1)",
            )
        return object_id

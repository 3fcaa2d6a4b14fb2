"""The Map stage: a decoded record becomes an object of a declared type, with its ``_id``.

Ids follow rule R10: with ``id: field`` the record's own ``_id`` is used and a record
without one gets a deterministic id derived from its Kafka coordinates; ``id: key`` takes
the record key; ``id: coordinates`` always derives the id. A replay therefore maps every
record to the same ``_id``, which is what makes redelivery a harmless duplicate.

Tombstones (null values) delete standard objects (their ``_id`` is the record key) and are
record errors on asymmetric types (R8).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby, repeat
from operator import attrgetter
from typing import Any

from bson import ObjectId
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connector.backends import settings_problems
from connector.config import PipelineConfig, RouteConfig
from connector.errors import ConfigError, Coordinates, RecordError, RecordErrorKind
from connector.formats import Decoder, FormatContext
from connector.formats.avro_format import RawAvroDecoder, SchemaMismatch
from connector.plugins import format_plugin
from connector.records import MappedObject, SourceRecord
from connector.schemas import ObjectType, ObjectTypes, SchemaViolations, load_object_types

# Fixed namespace for ids derived from Kafka coordinates; changing it would change every
# derived id and break idempotent replays, so it is part of the storage format.
COORDINATES_NAMESPACE = uuid.UUID("5f1d7a3e-2b7c-5e47-9a51-6f0d1c2b8e90")
DERIVABLE_ID_TYPES = ("string", "uuid", "long", "ObjectId")
_value = attrgetter("value")
_topic_of = attrgetter("topic")


def coordinates_uuid(where: Coordinates) -> uuid.UUID:
    """The deterministic UUID v5 of a record's topic/partition/offset (R10)."""
    return uuid.uuid5(COORDINATES_NAMESPACE, f"{where.topic}/{where.partition}/{where.offset}")


def coordinates_id(where: Coordinates, id_type: str = "string") -> Any:
    """The derived ``_id`` in the type's id representation."""
    derived = coordinates_uuid(where)
    if id_type == "uuid":
        return derived
    if id_type == "long":
        return int.from_bytes(derived.bytes[:8], "big") & (2**63 - 1)
    if id_type == "ObjectId":
        return ObjectId(derived.bytes[:12])
    if id_type == "string":
        return str(derived)
    raise ValueError(f"an {id_type} _id cannot hold a derived id")


def id_from_text(text: str, id_type: str) -> Any:
    """Parse a record key (UTF-8 text) as an ``_id`` of ``id_type``; ValueError if it is not."""
    if id_type == "string":
        return text
    if id_type == "uuid":
        return uuid.UUID(text)
    if id_type == "ObjectId":
        if len(text) != 24:
            raise ValueError("an ObjectId is 24 hexadecimal digits")
        return ObjectId(text)
    number = int(text)
    bits = 31 if id_type == "int" else 63
    if not -(2**bits) <= number < 2**bits:
        raise ValueError(f"out of range for {id_type}")
    return number


def objectid_converter(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None] | None:
    """An in-place converter of ObjectId fields (Avro bytes) to ``bson.ObjectId``.

    None when the type has no top-level ObjectId field (``_id`` or links), so that the
    common case costs nothing.
    """
    fields: list[tuple[str, str]] = []  # (name, shape: one | array | map)
    for field in schema["fields"]:
        node = field["type"]
        shape = "one"
        if isinstance(node, list):
            members = [m for m in node if m != "null"]
            node = members[0] if len(members) == 1 else None
        if isinstance(node, dict) and node.get("type") in ("array", "map"):
            shape = node["type"]
            node = node["items" if shape == "array" else "values"]
        if node == "ObjectId" or (isinstance(node, dict) and node.get("name") == "ObjectId"):
            fields.append((field["name"], shape))
    if not fields:
        return None

    def convert(value: Any) -> Any:
        return ObjectId(value) if isinstance(value, bytes) else value

    def apply(document: dict[str, Any]) -> None:
        for name, shape in fields:
            value = document.get(name)
            if value is None:
                continue
            if shape == "one":
                document[name] = convert(value)
            elif shape == "array":
                document[name] = [convert(v) for v in value]
            else:
                document[name] = {k: convert(v) for k, v in value.items()}

    return apply


@dataclass(slots=True)
class _Binding:
    route: RouteConfig
    decoder: Decoder
    target: ObjectType | None  # None: taken from the writer schema
    id_mode: str


def bind_routes(config: PipelineConfig, types: ObjectTypes, source: str) -> None:
    """Check the routes against the declared types; raises ``ConfigError`` (exit 2)."""
    problems: list[str] = []
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        if route.type is None:
            continue
        target = types.get(route.type)
        if target is None:
            problems.append(
                f"{key}.type: {route.type} is not declared in {types.directory} "
                f"(declared: {', '.join(types.names())})"
            )
            continue
        if route.id == "coordinates" and target.id_type not in DERIVABLE_ID_TYPES:
            problems.append(
                f"{key}.id: {target.name}._id is an {target.id_type}, which cannot hold an id "
                "derived from coordinates; use id: field or id: key, or declare _id as string, "
                "uuid, long or ObjectId"
            )
        if route.format == "avro-raw":
            try:
                RawAvroDecoder(target, route.writer_schema)
            except (OSError, ValueError) as exc:
                problems.append(f"{key}.writer_schema: cannot read {route.writer_schema}: {exc}")
            except SchemaMismatch as exc:
                problems.append(f"{key}.writer_schema: {exc}")
    if problems:
        raise ConfigError(source, problems)


class Mapper:
    """Decodes and maps records according to the route of their topic."""

    def __init__(
        self,
        config: PipelineConfig,
        types: ObjectTypes,
        registry: AsyncSchemaRegistryClient | None = None,
    ) -> None:
        self._config = config
        self._types = types
        self._bindings: list[_Binding] = []
        self._by_topic: dict[str, _Binding] = {}
        self._converters: dict[str, Callable[[dict[str, Any]], None] | None] = {
            t.name: objectid_converter(t.schema) for t in types
        }
        shared: list[AsyncSchemaRegistryClient] = [] if registry is None else [registry]

        def shared_registry() -> AsyncSchemaRegistryClient:
            if not shared:
                settings = config.schema_registry
                assert settings is not None  # the config requires it for avro routes
                shared.append(AsyncSchemaRegistryClient(settings.client_settings()))
            return shared[0]

        for route in config.routes:
            target = types.get(route.type) if route.type else None
            context = FormatContext(route, target, types, config, shared_registry)
            decoder = format_plugin(route.format).create(context)
            self._bindings.append(_Binding(route, decoder, target, route.id))

    def _binding(self, record: SourceRecord) -> _Binding:
        found = self._by_topic.get(record.topic)
        if found is None:
            found = next((b for b in self._bindings if b.route.matches(record.topic)), None)
            if found is None:
                raise RecordError(
                    RecordErrorKind.RULE_VIOLATION,
                    record.coordinates,
                    "no route matches this topic; add a route for it to the pipeline file",
                )
            self._by_topic[record.topic] = found
        return found

    def describe(self, record: SourceRecord) -> tuple[str | None, str]:
        """The object type of ``record``'s route (None when it comes from the writer
        schema or no route matches) and the qualified class name of its decoder."""
        try:
            binding = self._binding(record)
        except RecordError:
            return None, f"{Mapper.__module__}.{Mapper.__qualname__}"
        decoder = type(binding.decoder)
        target = binding.target.name if binding.target is not None else None
        return target, f"{decoder.__module__}.{decoder.__qualname__}"

    async def prepare(self, records: list[SourceRecord]) -> None:
        """Let decoders fetch what they need (writer schemas) for ``records``; may retry."""
        pending: dict[int, tuple[_Binding, list[SourceRecord]]] = {}
        for _topic, same_topic in groupby(records, _topic_of):  # a fetch: few long runs
            run = list(same_topic)
            try:
                binding = self._binding(run[0])
            except RecordError:
                continue
            pending.setdefault(id(binding), (binding, []))[1].extend(run)
        for binding, subset in pending.values():
            await binding.decoder.prepare(subset)

    def map(self, record: SourceRecord) -> MappedObject:
        """Decode ``record`` and give it its ``_id``; raises ``RecordError`` on bad input."""
        binding = self._by_topic.get(record.topic) or self._binding(record)
        if record.value is None:
            return self._tombstone(binding, record)
        return self._identified(binding, record, binding.decoder.decode(record))

    def map_many(
        self, records: list[SourceRecord]
    ) -> tuple[list[MappedObject], RecordError | None]:
        """Map records of one topic in order: the objects up to the first bad record, and
        that record's error (None when all mapped)."""
        binding = self._by_topic.get(records[0].topic) or self._binding(records[0])
        objects: list[MappedObject] = []
        if None in map(_value, records):  # tombstones: one at a time
            try:
                objects.extend(map(self.map, records))
            except RecordError as exc:
                return objects, exc
            return objects, None
        decoded, bad = binding.decoder.decode_many(records)
        try:
            objects.extend(map(self._identified, repeat(binding), records, decoded))
        except RecordError as exc:
            return objects, exc
        return objects, bad

    def _identified(
        self, binding: _Binding, record: SourceRecord, decoded: tuple[ObjectType, dict[str, Any]]
    ) -> MappedObject:
        """The object of a decoded record, with its ``_id`` (R10)."""
        target, document = decoded
        converter = self._converters[target.name]
        if converter is not None:
            converter(document)
        mode = binding.id_mode
        if mode == "field":
            object_id = document.get("_id")
            if object_id is None:
                object_id = self._derived(target, record)
                document["_id"] = object_id
        elif mode == "coordinates":
            object_id = self._derived(target, record)
            document["_id"] = object_id
        else:
            object_id = self._from_key(target, record)
            stated = document.get("_id")
            if stated is not None and stated != object_id:
                raise RecordError(
                    RecordErrorKind.RULE_VIOLATION,
                    record.coordinates,
                    f"the record's _id {stated!r} differs from its key {object_id!r} (id: key); "
                    "send the same value in both, or drop _id from the value",
                )
            document["_id"] = object_id
        key, value = record.key, record.value
        assert value is not None
        return MappedObject(target, object_id, document, record, len(value) + len(key or b""))

    def _tombstone(self, binding: _Binding, record: SourceRecord) -> MappedObject:
        target = binding.target
        if target is None:
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                "tombstone (null value) on a route that takes its type from the writer schema: "
                "it has no schema, so its type is unknown; route standard types by name",
            )
        if target.asymmetric:
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                f"tombstone (null value) on a route of asymmetric type {target.name}: asymmetric "
                "objects are insert-only and cannot be deleted (R8)",
            )
        object_id = self._from_key(target, record)
        return MappedObject(target, object_id, {"_id": object_id}, record, record.size, True)

    @staticmethod
    def _derived(target: ObjectType, record: SourceRecord) -> Any:
        try:
            return coordinates_id(record.coordinates, target.id_type)
        except ValueError:
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                f"the record has no _id and {target.name}._id is an {target.id_type}, which "
                "cannot hold an id derived from its coordinates (R10); send _id",
            ) from None

    @staticmethod
    def _from_key(target: ObjectType, record: SourceRecord) -> Any:
        if record.key is None:
            raise RecordError(
                RecordErrorKind.RULE_VIOLATION,
                record.coordinates,
                f"the record key is null, but it must carry the {target.name} _id "
                "(id: key, or a tombstone)",
            )
        try:
            return id_from_text(record.key.decode("utf-8"), target.id_type)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(
                RecordErrorKind.DECODE,
                record.coordinates,
                f"the record key is not a {target.id_type} _id of {target.name} ({exc})",
                in_key=True,
            ) from None


def checked_types(config: PipelineConfig, source: str) -> ObjectTypes:
    """The object types of ``config``, checked against its routes and backend settings;
    ``ConfigError`` naming ``source`` (a file or a connector) lists what does not fit."""
    try:
        types = load_object_types(config.schemas.dir)
    except SchemaViolations as exc:
        raise ConfigError(source, [f"schemas.dir: {v}" for v in exc.violations]) from None
    bind_routes(config, types, source)
    problems = settings_problems(config.backend, types)
    if problems:
        raise ConfigError(source, problems)
    return types

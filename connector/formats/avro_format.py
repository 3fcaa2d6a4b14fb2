"""The ``avro`` (Confluent wire format + Schema Registry) and ``avro-raw`` formats.

Writer schemas are resolved onto the declared reader type following the Avro
specification: fastavro does the resolution while reading (defaults, promotions, aliases);
Apache Avro's ``ReaderWriterCompatibilityChecker`` tells, once per writer schema and before
any record of it is read, whether resolution can succeed and which field breaks it. When
writer and reader are the same schema, fastavro reads without resolution (faster).

Fetching a writer schema fails in three ways: the registry refuses our credentials (HTTP
401/403) or is not a Schema Registry API at all (a 404 without a registry error code),
which stops the run since no retry can fix it; the schema id is unknown (a record error of
the records that carry it); anything else (5xx, refused connections, timeouts) is
retryable.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit, urlunsplit

import avro.schema
import fastavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, SchemaRegistryError

from connector.errors import ConnectorError, RecordError, RecordErrorKind, RetryableError
from connector.formats import decode_until_bad
from connector.records import SourceRecord
from connector.schemas import ObjectType, ObjectTypes

MAGIC_BYTE = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")  # magic byte, schema id
_SIGNIFICANT = ("type", "name", "namespace", "fields", "items", "values", "symbols", "size")
_LOGICAL = ("logicalType", "precision", "scale")
_ACCESS_DENIED = {401: "authentication failed", 403: "access denied"}


@dataclass(frozen=True, slots=True)
class Resolved:
    """How to read records written with one writer schema."""

    type: ObjectType
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None: writer and reader are the same schema


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why records written with one writer schema id cannot be read."""

    kind: RecordErrorKind
    cause: str


class SchemaMismatch(Exception):
    """A writer schema cannot be read as the declared type (message names both)."""


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    """fastavro's parsed form of a record schema (always a dict for a record)."""
    return cast(dict[str, Any], fastavro.parse_schema(schema, named_schemas={}))


def public_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) without any user:password part."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        host = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit(split._replace(netloc=host)))
    return ",".join(parts)


def significant(node: Any) -> Any:
    """The parts of a schema that change how its binary encoding is read."""
    if isinstance(node, list):
        return [significant(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: significant(node[k]) for k in _SIGNIFICANT if k in node}
    out.update({k: node[k] for k in _LOGICAL if k in node})
    if "fields" in out:
        out["fields"] = [
            {"name": f["name"], "type": significant(f["type"])} for f in node["fields"]
        ]
    return out


def _field_path(schema: dict[str, Any], pointer: str) -> str:
    """Turn a JSON pointer into the reader schema (/fields/2/type/items/...) into a.b[].c."""
    node: Any = schema
    path = ""
    parts = [p for p in pointer.split("/") if p]
    for i, part in enumerate(parts):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            break
        if i > 0 and parts[i - 1] == "fields" and isinstance(node, dict):
            path = f"{path}.{node['name']}" if path else str(node["name"])
        elif part == "items":
            path += "[]"
        elif part == "values":
            path += "{}"
    return path


def _field_names(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for f in node.get("fields", []):
            out.add(f["name"])
            _field_names(f["type"], out)
        for key in ("items", "values", "type"):
            if isinstance(node.get(key), dict | list):
                _field_names(node[key], out)
    elif isinstance(node, list):
        for member in node:
            _field_names(member, out)
    return out


def _explain(reader_json: dict[str, Any], messages: set[str], locations: set[str]) -> str:
    """One sentence from Apache Avro's (unpaired) incompatibility messages and locations."""
    names = _field_names(reader_json, set())
    missing = {m for m in messages if m in names}
    paths = {_field_path(reader_json, loc) for loc in locations} - {""}
    missing_paths = sorted(p for p in paths if p.rsplit(".", 1)[-1] in missing)
    other_paths = sorted(p for p in paths if p not in missing_paths)
    parts = []
    others = sorted(messages - missing)
    if others:
        parts.append(f"{'; '.join(others)} at field {', '.join(other_paths) or '(record)'}")
    if missing:
        parts.append(
            f"field {', '.join(missing_paths or sorted(missing))} is missing in the writer "
            "and has no default in the reader"
        )
    return "; ".join(parts)


def resolve(writer_json: dict[str, Any], label: str, target: ObjectType) -> Resolved:
    """Check that ``writer_json`` can be read as ``target``; raises ``SchemaMismatch``."""
    writer_name = str(writer_json.get("name", "?"))
    if writer_json.get("namespace") and "." not in writer_name:
        writer_name = f"{writer_json['namespace']}.{writer_name}"
    where = f"writer schema {writer_name} ({label})"
    if writer_json.get("type") != "record":
        raise SchemaMismatch(f"{where} is not a record; object type {target.name} needs one")
    reader_json = target.schema
    id_field = next(f for f in reader_json["fields"] if f["name"] == "_id")
    id_names = {"_id", *id_field.get("aliases", [])}
    derive_id = not any(f.get("name") in id_names for f in writer_json.get("fields", []))
    if derive_id:
        reader_json = {
            **reader_json,
            "fields": [f for f in reader_json["fields"] if f["name"] != "_id"],
        }
    try:
        writer = _parse(writer_json)
    except Exception as exc:
        raise SchemaMismatch(f"{where} is not valid Avro: {exc}") from None
    try:
        checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(
            avro.schema.parse(json.dumps(reader_json)), avro.schema.parse(json.dumps(writer_json))
        )
    except Exception as exc:
        raise SchemaMismatch(f"{where} cannot be checked against {target.name}: {exc}") from None
    if result.compatibility is not SchemaCompatibilityType.compatible:
        raise SchemaMismatch(
            f"{where} cannot be resolved onto object type {target.name} ({target.file}): "
            + _explain(reader_json, result.messages, result.locations)
        )
    if significant(writer_json) == significant(reader_json):
        return Resolved(target, writer, None)
    return Resolved(target, writer, _parse(reader_json))


# A record schema always reads as a dict; typed once here, not cast per record.
_read = cast(
    Callable[[IO[bytes], dict[str, Any], dict[str, Any] | None], dict[str, Any]],
    fastavro.schemaless_reader,
)


def _body_error(resolved: Resolved, record: SourceRecord, exc: Exception) -> RecordError:
    return RecordError(
        RecordErrorKind.DECODE,
        record.coordinates,
        f"the Avro body does not match writer schema {resolved.writer.get('name')}: "
        f"{type(exc).__name__}: {exc}",
    )


class RawAvroDecoder:
    """``avro-raw``: unframed Avro binary; the writer schema comes from a file."""

    def __init__(self, target: ObjectType, writer_schema_file: str | None) -> None:
        if writer_schema_file is None:
            writer_json, label = target.schema, target.file
        else:
            label = writer_schema_file
            writer_json = json.loads(Path(writer_schema_file).read_text(encoding="utf-8"))
        self.resolved = resolve(writer_json, label, target)

    async def prepare(self, records: list[SourceRecord]) -> None:
        """Nothing to fetch: the writer schema was read at start-up."""

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]:
        assert record.value is not None
        resolved = self.resolved
        try:
            return resolved.type, _read(io.BytesIO(record.value), resolved.writer, resolved.reader)
        except Exception as exc:
            raise _body_error(resolved, record, exc) from None

    def decode_many(
        self, records: list[SourceRecord]
    ) -> tuple[list[tuple[ObjectType, dict[str, Any]]], RecordError | None]:
        return decode_until_bad(self.decode, records)


class ConfluentAvroDecoder:
    """``avro``: magic byte 0, a 4-byte schema id, then the Avro body (Confluent framing).

    Writer schemas are fetched from the Schema Registry at ``registry_url`` once per id
    (``prepare``, async, before records are decoded) and resolved onto the route's type, or
    onto the declared type whose name the writer schema carries (``type_from:
    writer_schema``).
    """

    def __init__(
        self,
        types: ObjectTypes,
        target: ObjectType | None,
        registry: AsyncSchemaRegistryClient,
        registry_url: str,
    ) -> None:
        self._types = types
        self._target = target
        self._registry = registry
        self._registry_url = public_url(registry_url)
        self._resolved: dict[int, Resolved | Unreadable] = {}

    @staticmethod
    def schema_id(record: SourceRecord) -> int:
        """The writer schema id in the record's framing; a decode ``RecordError`` if none."""
        value = record.value
        assert value is not None
        try:
            magic, schema_id = _HEADER.unpack_from(value)
        except struct.error:
            magic = schema_id = -1
        if magic != MAGIC_BYTE:
            first = f"0x{value[0]:02x}" if value else "nothing (empty value)"
            raise RecordError(
                RecordErrorKind.DECODE,
                record.coordinates,
                f"not in the Confluent Avro wire format (magic byte 0x00 and a 4-byte schema "
                f"id); the value starts with {first}; is the route's format right?",
            )
        return int(schema_id)

    async def prepare(self, records: list[SourceRecord]) -> None:
        """Fetch and resolve the writer schemas of ``records`` that are not known yet.

        Raises ``RetryableError`` while the registry is unavailable, and a plain
        ``ConnectorError`` when it refuses access or is not a Schema Registry API.
        """
        for record in records:
            if record.value is None:
                continue
            try:
                schema_id = self.schema_id(record)
            except RecordError:
                continue  # reported when the record is decoded
            if schema_id not in self._resolved:
                self._resolved[schema_id] = await self._load(schema_id)

    async def _load(self, schema_id: int) -> Resolved | Unreadable:
        try:
            schema = await self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            return self._registry_error(schema_id, exc)
        except Exception as exc:  # connection refused, timeout, TLS
            raise RetryableError(
                f"schema registry {self._registry_url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        mismatch = RecordErrorKind.SCHEMA_MISMATCH
        if (schema.schema_type or "AVRO") != "AVRO":
            return Unreadable(
                mismatch, f"schema id {schema_id} is a {schema.schema_type} schema, not Avro"
            )
        if schema.references:
            return Unreadable(
                mismatch,
                f"schema id {schema_id} uses schema references, which are not supported yet",
            )
        try:
            writer_json = json.loads(schema.schema_str or "")
        except json.JSONDecodeError as exc:
            return Unreadable(mismatch, f"schema id {schema_id} is not valid JSON: {exc}")
        if not isinstance(writer_json, dict):
            return Unreadable(mismatch, f"schema id {schema_id} is not an Avro record schema")
        target = self._target or self._type_of(writer_json)
        if isinstance(target, str):
            return Unreadable(mismatch, f"schema id {schema_id}: {target}")
        try:
            return resolve(writer_json, f"schema id {schema_id}", target)
        except SchemaMismatch as exc:
            return Unreadable(mismatch, str(exc))

    def _registry_error(self, schema_id: int, exc: SchemaRegistryError) -> Unreadable:
        """An unknown schema id is a record error; raises when the fetch must stop or retry."""
        status = exc.http_status_code
        # The registry's own error body ({"error_code": 40403, "message": ...}), if it sent one.
        code = exc.error_code if isinstance(exc.error_code, int) and exc.error_code > 0 else None
        detail = f": {exc.error_message.rstrip('.')}" if code and exc.error_message else ""
        where = f"schema registry {self._registry_url}"
        if status in _ACCESS_DENIED:
            raise ConnectorError(
                f"{where} answered HTTP {status} ({_ACCESS_DENIED[status]}) when fetching "
                f"schema id {schema_id}{detail}; check schema_registry.basic_auth_user_info / "
                "the registry's ACLs"
            ) from None
        if status in (404, 422) and code is not None and code // 100 == status:
            return Unreadable(  # 40403 schema not found, 422xx invalid schema id
                RecordErrorKind.DECODE,
                f"schema id {schema_id} is not in the {where}{detail}; was the record "
                "written with another registry?",
            )
        if status == 404:
            raise ConnectorError(
                f"{where} answered HTTP 404 without a schema registry error code when fetching "
                f"schema id {schema_id}; check schema_registry.url: it must be the "
                "Confluent-compatible API (for Apicurio Registry it ends in /apis/ccompat/v7)"
            ) from None
        raise RetryableError(f"{where} failed to serve schema id {schema_id}: {exc}") from exc

    def _type_of(self, writer_json: dict[str, Any]) -> ObjectType | str:
        name = str(writer_json.get("name", ""))
        namespace = writer_json.get("namespace")
        full = f"{namespace}.{name}" if namespace and "." not in name else name
        found = self._types.get(full) or self._types.get(full.rsplit(".", 1)[-1])
        if found is None:
            return (
                f"writer schema {full} is not a declared object type "
                f"(declared: {', '.join(self._types.names())})"
            )
        return found

    def decode(self, record: SourceRecord) -> tuple[ObjectType, dict[str, Any]]:
        """The record's object type and document; raises ``RecordError`` naming the cause."""
        # The hot path of the avro format: kept flat, since it runs once per record.
        resolved = self._resolved.get(self.schema_id(record))
        if type(resolved) is not Resolved:
            if resolved is None:
                raise RetryableError(f"writer schema id {self.schema_id(record)} was not prepared")
            assert isinstance(resolved, Unreadable)
            raise RecordError(resolved.kind, record.coordinates, resolved.cause)
        assert record.value is not None
        try:
            document = _read(
                io.BytesIO(record.value[HEADER_SIZE:]), resolved.writer, resolved.reader
            )
        except Exception as exc:
            raise _body_error(resolved, record, exc) from None
        return resolved.type, document

    def decode_many(
        self, records: list[SourceRecord]
    ) -> tuple[list[tuple[ObjectType, dict[str, Any]]], RecordError | None]:
        return decode_until_bad(self.decode, records)

"""MongoDB backend settings checked against the object types, before any connection.

``backend.timeseries`` must name declared asymmetric types and their top-level timestamp
fields, and no type may declare the fields the backend keeps in its documents (``_kafka``,
``_deleted``). Called by the CLI when it loads the pipeline file, and by ``open()``.
"""

from __future__ import annotations

from typing import Any

from connector.backends.bson_documents import DELETED_FIELD, KAFKA_FIELD
from connector.config import MongoBackendConfig
from connector.schemas import ObjectType, ObjectTypes

TIMESTAMP_TYPES = ("timestamp-millis", "timestamp-micros", "timestamp-nanos")


def settings_problems(config: MongoBackendConfig, types: ObjectTypes) -> list[str]:
    """What contradicts the object types or the backend's own fields, one line each."""
    problems: list[str] = []
    timeseries = set(config.timeseries)
    for object_type in types:
        fields = {f["name"] for f in object_type.schema["fields"]}
        where = f"{object_type.file}: {object_type.name}"
        if (not object_type.asymmetric or object_type.name in timeseries) and KAFKA_FIELD in fields:
            kind = "standard objects" if not object_type.asymmetric else "time-series documents"
            problems.append(
                f"{where}.{KAFKA_FIELD}: the MongoDB backend keeps the Kafka coordinates of "
                f"{kind} in {KAFKA_FIELD}; rename the field"
            )
        if not object_type.asymmetric and DELETED_FIELD in fields:
            problems.append(
                f"{where}.{DELETED_FIELD}: the MongoDB backend marks deleted standard objects "
                f"with {DELETED_FIELD}; rename the field"
            )
    for type_name, options in config.timeseries.items():
        where = f"backend.timeseries.{type_name}"
        found = types.get(type_name)
        if found is None:
            problems.append(
                f"{where}: no object type {type_name!r} is declared; declared types: "
                + ", ".join(types.names())
            )
            continue
        if not found.asymmetric:
            problems.append(
                f"{where}: {found.name} is a standard type; only asymmetric "
                "(insert-only) types can be stored in a time-series collection"
            )
        problems += _field_problems(where, found, options.time_field, options.meta_field)
    return problems


def _field_problems(
    where: str, object_type: ObjectType, time_field: str, meta_field: str | None
) -> list[str]:
    fields = {f["name"]: f["type"] for f in object_type.schema["fields"]}
    timestamps = [
        name
        for name, node in fields.items()
        if isinstance(node, dict) and node.get("logicalType") in TIMESTAMP_TYPES
    ]
    listed = ", ".join(timestamps) or "none"
    problems: list[str] = []
    if time_field not in fields:
        problems.append(
            f"{where}: time_field {time_field!r} is not a top-level field of "
            f"{object_type.name}; its timestamp fields: {listed}"
        )
    elif time_field not in timestamps:
        problems.append(
            f"{where}: time_field {time_field!r} is {_describe_type(fields[time_field])}, "
            f"not a timestamp (a non-null long with logicalType timestamp-millis or "
            f"timestamp-micros); timestamp fields of {object_type.name}: {listed}"
        )
    if meta_field is not None and meta_field not in fields:
        problems.append(
            f"{where}: meta_field {meta_field!r} is not a top-level field of "
            f"{object_type.name}; its fields: {', '.join(fields)}"
        )
    return problems


def _describe_type(node: Any) -> str:
    if isinstance(node, dict):
        return str(node.get("logicalType") or node.get("type"))
    if isinstance(node, list):
        return "a union (" + ", ".join(_describe_type(n) for n in node) + ")"
    return str(node)

"""Hypothesis strategies that generate objects of an Avro object type.

Values are in the form fastavro returns when it reads Avro binary (tz-aware UTC datetimes,
``date``, ``UUID``, ``Decimal``, ``bytes``), with ObjectId fields as ``bson.ObjectId``: the
form of the backend document.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from bson import ObjectId
from hypothesis import strategies as st

UTC = dt.UTC
# Years 1..9999 with a margin, so that any timezone shift stays representable.
MIN_TS = dt.datetime(1, 1, 2, tzinfo=UTC)
MAX_TS = dt.datetime(9999, 12, 30, tzinfo=UTC)


def _timestamp(millis: bool) -> st.SearchStrategy[dt.datetime]:
    base = st.datetimes(
        min_value=MIN_TS.replace(tzinfo=None), max_value=MAX_TS.replace(tzinfo=None)
    ).map(lambda d: d.replace(tzinfo=UTC))
    if millis:
        return base.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    return base


def _decimal(precision: int, scale: int) -> st.SearchStrategy[decimal.Decimal]:
    bound = 10**precision - 1
    return st.integers(-bound, bound).map(lambda n: decimal.Decimal(n).scaleb(-scale))


def objects(schema: Any, names: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """A strategy for values of the Avro type ``schema``."""
    names = {} if names is None else names
    if isinstance(schema, str):
        if schema in names:
            return objects(names[schema], names)
        return _primitive(schema, {})
    if isinstance(schema, list):
        return st.one_of([objects(member, names) for member in schema])
    kind = schema["type"]
    if kind == "record":
        names[schema["name"]] = schema
        return st.fixed_dictionaries(
            {f["name"]: objects(f["type"], names) for f in schema["fields"]}
        )
    if kind == "enum":
        names[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        names[schema["name"]] = schema
        if schema["name"] == "ObjectId":
            return st.binary(min_size=12, max_size=12).map(ObjectId)
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(objects(schema["items"], names), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=6), objects(schema["values"], names), max_size=4)
    return _primitive(kind, schema)


def _primitive(kind: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    logical = schema.get("logicalType")
    if logical == "uuid":
        return st.uuids()
    if logical == "timestamp-millis":
        return _timestamp(millis=True)
    if logical == "timestamp-micros":
        return _timestamp(millis=False)
    if logical == "date":
        return st.dates()
    if logical == "decimal":
        return _decimal(schema["precision"], schema.get("scale", 0))
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "bytes": st.binary(max_size=16),
        "string": st.text(max_size=12),
    }[kind]


def to_avro(value: Any) -> Any:
    """The value as fastavro's writer wants it (ObjectId as its 12 bytes)."""
    if isinstance(value, ObjectId):
        return value.binary
    if isinstance(value, dict):
        return {k: to_avro(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_avro(v) for v in value]
    return value

"""Coercion of plain JSON values into a declared Avro type.

JSON producers do not write Avro's JSON encoding: timestamps arrive as ISO-8601 strings or
epoch numbers, bytes as base64, decimals as strings or numbers, unions unwrapped. This
module compiles an object type's schema once into a tree of small functions that turn such
a value into exactly what fastavro would return for the same datum read from Avro binary
(tz-aware UTC datetimes, ``date``, ``UUID``, ``Decimal``, ``bytes``), so that the JSON and
Avro formats produce identical documents. Written by hand: fastavro and the Avro libraries
validate Avro's own JSON encoding, not these lenient, real-world JSON shapes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from bson import ObjectId

Coerce = Callable[[Any, str], Any]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EPOCH_NAIVE = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = 3.4028234663852886e38
SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class CoercionError(ValueError):
    """A JSON value does not fit the declared type; ``path`` names the field."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"field {path or '(root)'}: {problem}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {text!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _mismatch(path: str, expected: str, value: Any) -> CoercionError:
    return CoercionError(path, f"expected {expected}, got {_describe(value)}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Field(NamedTuple):
    """A compiled field of a record: its Avro type, coercion and (coerced) default."""

    name: str
    node: Any
    coerce: Coerce
    has_default: bool
    default: Any


class Compiler:
    """Compiles Avro schema nodes into coercion functions.

    ``for_defaults`` compiles the variant used for schema default values, which follow the
    Avro specification's JSON form (bytes and fixed as ISO-8859-1 strings).
    """

    def __init__(self, *, unknown_fields: str = "reject", for_defaults: bool = False) -> None:
        self.unknown_fields = unknown_fields
        self.for_defaults = for_defaults
        self.names: dict[str, Any] = {}
        self.compiled: dict[str, Coerce] = {}

    def compile(self, node: Any, namespace: str | None = None) -> Coerce:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return self.primitive(node, {})
            key = f"{namespace}.{node}" if namespace and "." not in node else node
            if key not in self.compiled:
                key = node
            if key not in self.compiled:
                raise ValueError(f"unknown type name {node}")
            # Late binding keeps recursive types working.
            return lambda value, path: self.compiled[key](value, path)
        if isinstance(node, list):
            return self.union([self.compile(m, namespace) for m in node], node)
        kind = node["type"]
        if kind == "record":
            return self.record(node, namespace)
        if kind == "enum":
            return self.register(node, namespace, self.enum(node))
        if kind == "fixed":
            return self.register(node, namespace, self.fixed(node))
        if kind == "array":
            return self.array(self.compile(node["items"], namespace))
        if kind == "map":
            return self.map(self.compile(node["values"], namespace))
        if isinstance(kind, str) and kind in PRIMITIVES:
            return self.primitive(kind, node)
        return self.compile(kind, namespace)

    def register(self, node: dict[str, Any], namespace: str | None, fn: Coerce) -> Coerce:
        name = node["name"]
        ns = node.get("namespace", namespace)
        for key in {name, f"{ns}.{name}" if ns and "." not in name else name}:
            self.compiled[key] = fn
        return fn

    # --- primitives and logical types ------------------------------------------------------

    def primitive(self, kind: str, node: dict[str, Any]) -> Coerce:
        logical = node.get("logicalType")
        if kind == "string" and logical == "uuid":
            return _uuid
        if kind == "int" and logical == "date":
            return _date
        if kind == "int" and logical == "time-millis":
            return _time(1000)
        if kind == "long" and logical == "time-micros":
            return _time(1)
        if kind == "long" and logical in _TIMESTAMPS:
            unit, aware = _TIMESTAMPS[logical]
            return _timestamp(unit, aware, logical)
        if kind == "bytes" and logical == "decimal":
            return _decimal(node, self.for_defaults)
        return {
            "null": _null,
            "boolean": _boolean,
            "int": _integer("int", INT32),
            "long": _integer("long", INT64),
            "float": _floating("float", FLOAT32_MAX),
            "double": _floating("double", math.inf),
            "bytes": _latin1 if self.for_defaults else _base64,
            "string": _string,
        }[kind]

    def enum(self, node: dict[str, Any]) -> Coerce:
        symbols = list(node["symbols"])
        allowed = set(symbols)
        name = node["name"]

        def coerce(value: Any, path: str) -> Any:
            if isinstance(value, str) and value in allowed:
                return value
            if isinstance(value, str):
                raise CoercionError(
                    path, f"{value!r} is not a symbol of enum {name} ({', '.join(symbols)})"
                )
            raise _mismatch(path, f"a symbol of enum {name}", value)

        return coerce

    def fixed(self, node: dict[str, Any]) -> Coerce:
        size = int(node["size"])
        name = node["name"]
        if node.get("logicalType") == "decimal":
            return _decimal(node, self.for_defaults)
        to_bytes = _latin1 if self.for_defaults else _base64
        if name == "ObjectId" and size == 12:

            def object_id(value: Any, path: str) -> Any:
                if isinstance(value, str) and len(value) == 24:
                    try:
                        return ObjectId(value)
                    except Exception:
                        raise CoercionError(path, f"{value!r} is not a valid ObjectId") from None
                raw = to_bytes(value, path)
                if len(raw) != 12:
                    raise CoercionError(
                        path, "an ObjectId is 24 hexadecimal digits or 12 bytes in base64"
                    )
                return ObjectId(raw)

            return object_id

        def coerce(value: Any, path: str) -> Any:
            raw = to_bytes(value, path)
            if len(raw) != size:
                raise CoercionError(path, f"fixed {name} needs {size} bytes, got {len(raw)}")
            return raw

        return coerce

    # --- complex types ------------------------------------------------------------------

    def array(self, item: Coerce) -> Coerce:
        def coerce(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise _mismatch(path, "an array", value)
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return coerce

    def map(self, values: Coerce) -> Coerce:
        def coerce(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(path, "an object (map)", value)
            return {k: values(v, f"{path}.{k}") for k, v in value.items()}

        return coerce

    def union(self, branches: list[Coerce], node: list[Any]) -> Coerce:
        nullable = "null" in node
        others = [b for b, n in zip(branches, node, strict=True) if n != "null"]
        names = " or ".join(
            n if isinstance(n, str) else str(n.get("name") or n.get("type")) for n in node
        )

        def coerce(value: Any, path: str) -> Any:
            if value is None:
                if nullable:
                    return None
                raise _mismatch(path, names, value)
            first: CoercionError | None = None
            for branch in others:
                try:
                    return branch(value, path)
                except CoercionError as exc:
                    first = first or exc
            if len(others) == 1 and first is not None:
                raise first
            raise _mismatch(path, names, value)

        return coerce

    def record(
        self, node: dict[str, Any], namespace: str | None, optional: frozenset[str] = frozenset()
    ) -> Coerce:
        """``optional`` fields may be absent without a default (the top-level ``_id``)."""
        return self.record_fields(node, namespace, optional)[0]

    def record_fields(
        self, node: dict[str, Any], namespace: str | None, optional: frozenset[str] = frozenset()
    ) -> tuple[Coerce, list[Field]]:
        """The record's coercion function and its compiled fields."""
        name = node["name"]
        ns = node.get("namespace", namespace)
        if "." in name:
            ns = name.rsplit(".", 1)[0]
        fields: list[Field] = []
        late: list[Coerce] = []

        def coerce(value: Any, path: str) -> Any:
            return late[0](value, path)

        self.register(node, namespace, coerce)
        defaults = Compiler(for_defaults=True)
        defaults.compiled = dict(self.compiled)
        for f in node["fields"]:
            fn = self.compile(f["type"], ns)
            if "default" in f:
                try:
                    default = defaults.compile(f["type"], ns)(f["default"], f["name"])
                except CoercionError as exc:
                    raise ValueError(
                        f"record {name}: the default of field {f['name']} is invalid: {exc.problem}"
                    ) from None
                fields.append(Field(f["name"], f["type"], fn, True, default))
            else:
                fields.append(Field(f["name"], f["type"], fn, False, None))
        declared = {f.name for f in fields}
        reject = self.unknown_fields == "reject"

        def record_fn(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(path, f"an object ({name})", value)
            out: dict[str, Any] = {}
            for field_name, _, fn, has_default, default in fields:
                if field_name in value:
                    out[field_name] = fn(value[field_name], _join(path, field_name))
                elif has_default:
                    out[field_name] = copy_default(default)
                elif field_name in optional:
                    continue
                else:
                    raise CoercionError(
                        _join(path, field_name), "missing, and the field has no default"
                    )
            if reject and len(value) > len(declared & value.keys()):
                unknown = sorted(k for k in value if k not in declared)
                if unknown:
                    raise CoercionError(
                        _join(path, unknown[0]),
                        f"not declared in {name} (unknown_fields: reject); remove it from the "
                        "record, declare it, or set unknown_fields: ignore on the route",
                    )
            return out

        late.append(record_fn)
        return record_fn, fields


def copy_default(default: Any) -> Any:
    """A field's default as a value of its own (containers are copied)."""
    return copy.deepcopy(default) if isinstance(default, dict | list) else default


_TIMESTAMPS = {
    "timestamp-millis": (1000, True),
    "timestamp-micros": (1, True),
    "local-timestamp-millis": (1000, False),
    "local-timestamp-micros": (1, False),
}


def _null(value: Any, path: str) -> Any:
    if value is not None:
        raise _mismatch(path, "null", value)
    return None


def _boolean(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise _mismatch(path, "boolean", value)
    return value


def _string(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise _mismatch(path, "string", value)
    return value


def _whole(value: Any, path: str, expected: str) -> int:
    """An integral JSON number (5 or 5.0), never a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _mismatch(path, expected, value)
    if isinstance(value, float):
        if not value.is_integer():
            raise CoercionError(path, f"expected {expected}, got the fraction {value!r}")
        return int(value)
    return value


def _integer(kind: str, bounds: tuple[int, int]) -> Coerce:
    low, high = bounds

    def coerce(value: Any, path: str) -> Any:
        number = _whole(value, path, kind)
        if not low <= number <= high:
            raise CoercionError(path, f"{number} is out of range for {kind} ({low} to {high})")
        return number

    return coerce


def _floating(kind: str, limit: float) -> Coerce:
    def coerce(value: Any, path: str) -> Any:
        if isinstance(value, str) and value in SPECIAL_FLOATS:
            return SPECIAL_FLOATS[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _mismatch(path, kind, value)
        number = float(value)
        if math.isfinite(number) and abs(number) > limit:
            raise CoercionError(path, f"{value!r} is out of range for {kind}")
        return number

    return coerce


def _base64(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise _mismatch(path, "base64 text (bytes)", value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CoercionError(path, f"{_describe(value)} is not valid base64") from None


def _latin1(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise _mismatch(path, "a string of ISO-8859-1 code points (Avro bytes default)", value)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise CoercionError(
            path, "a bytes default may only hold code points up to U+00FF"
        ) from None


def _uuid(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise _mismatch(path, "a UUID string", value)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CoercionError(path, f"{_describe(value)} is not a valid UUID") from None


def _date(value: Any, path: str) -> Any:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise CoercionError(
                path, f"{_describe(value)} is not an ISO-8601 date (YYYY-MM-DD)"
            ) from None
    days = _whole(value, path, "an ISO-8601 date or days since 1970-01-01")
    try:
        return EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        raise CoercionError(path, f"{days} days since 1970-01-01 is out of range") from None


def _time(unit_us: int) -> Coerce:
    def coerce(value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                parsed = dt.time.fromisoformat(value)
            except ValueError:
                raise CoercionError(path, f"{_describe(value)} is not an ISO-8601 time") from None
            if parsed.tzinfo is not None:
                raise CoercionError(path, "a time of day has no timezone")
            if unit_us == 1000:
                parsed = parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
            return parsed
        count = _whole(value, path, "an ISO-8601 time or a count since midnight")
        micros = count * unit_us
        if not 0 <= micros < 86_400_000_000:
            raise CoercionError(path, f"{count} is not within one day")
        return (dt.datetime.min + dt.timedelta(microseconds=micros)).time()

    return coerce


def _timestamp(unit_us: int, aware: bool, logical: str) -> Coerce:
    unit = "milliseconds" if unit_us == 1000 else "microseconds"
    epoch = EPOCH if aware else EPOCH_NAIVE

    # An epoch count as one positional timedelta argument: exact, and the common case of
    # JSON producers (keyword arguments and the checks below cost a few µs per record).
    micros = unit_us == 1

    def coerce(value: Any, path: str) -> Any:
        if type(value) is int:
            try:
                span = dt.timedelta(0, 0, value) if micros else dt.timedelta(0, 0, 0, value)
                return epoch + span
            except OverflowError:
                raise CoercionError(path, f"{value} epoch {unit} is out of range") from None
        if isinstance(value, str):
            text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                raise CoercionError(
                    path, f"{_describe(value)} is not an ISO-8601 timestamp ({logical})"
                ) from None
            if aware:
                if parsed.tzinfo is None:
                    raise CoercionError(
                        path,
                        f"{_describe(value)} has no timezone; write it with Z or an offset such "
                        "as +01:00 (or send epoch " + unit + ")",
                    )
                try:
                    parsed = parsed.astimezone(dt.UTC)
                except OverflowError:
                    raise CoercionError(path, f"{_describe(value)} is out of range") from None
            elif parsed.tzinfo is not None:
                raise CoercionError(
                    path, f"{_describe(value)} has a timezone; {logical} is local time"
                )
        else:
            count = _whole(value, path, f"an ISO-8601 timestamp or epoch {unit}")
            try:
                parsed = epoch + dt.timedelta(microseconds=count * unit_us)
            except OverflowError:
                raise CoercionError(path, f"{count} epoch {unit} is out of range") from None
        if unit_us == 1000 and parsed.microsecond % 1000:
            parsed = parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
        return parsed

    return coerce


def _decimal(node: dict[str, Any], for_defaults: bool) -> Coerce:
    precision = int(node["precision"])
    scale = int(node.get("scale", 0))
    quantum = decimal.Decimal(1).scaleb(-scale)

    def coerce(value: Any, path: str) -> Any:
        if for_defaults and isinstance(value, str):
            unscaled = int.from_bytes(value.encode("latin-1"), "big", signed=True)
            return decimal.Decimal(unscaled).scaleb(-scale)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _mismatch(path, "a decimal number or numeric string", value)
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise CoercionError(path, f"{_describe(value)} is not a decimal number") from None
        if not number.is_finite():
            raise CoercionError(
                path, f"{_describe(value)} is not allowed: a decimal must be finite"
            )
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            raise CoercionError(
                path, f"{value} has more than {scale} decimal places (decimal({precision},{scale}))"
            )
        number = number.quantize(quantum)
        if len(number.as_tuple().digits) > precision:
            raise CoercionError(
                path, f"{value} has more than {precision} digits (decimal({precision},{scale}))"
            )
        return number

    return coerce


def compile_schema(
    schema: dict[str, Any], unknown_fields: str = "reject", optional_id: bool = False
) -> Coerce:
    """The coercion function of a top-level record schema.

    With ``optional_id`` a record may lack ``_id``: the mapping then derives one (R10).
    """
    return compile_record(schema, unknown_fields, optional_id)[0]


def compile_record(
    schema: dict[str, Any], unknown_fields: str = "reject", optional_id: bool = False
) -> tuple[Coerce, list[Field]]:
    """Like ``compile_schema``, also returning the compiled top-level fields."""
    optional = frozenset({"_id"}) if optional_id else frozenset()
    return Compiler(unknown_fields=unknown_fields).record_fields(schema, None, optional)

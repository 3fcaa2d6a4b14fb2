"""PostgreSQL tables derived from object types, and how an existing table may evolve.

One table per object type: scalars as typed columns (timestamps as timestamptz, dates,
uuids, decimals as numeric), embedded objects, maps and unions as jsonb, arrays of scalars
as arrays, links as a column of the target's key type with an index. Three bookkeeping
columns record the Kafka coordinates of the write (``_topic``, ``_partition``,
``_offset``), which also decide "latest offset wins" for standard objects.

Tables of standard types have a fourth, ``_deleted``: a tombstone replaces the row by a
marker (``_deleted`` true, every field NULL, the tombstone's coordinates), so their field
columns are nullable. The view ``<table>_live`` shows the live rows only; readers query it.

Type names are written in ``format_type()`` spelling so that a derived table compares
directly with the catalog of an existing one. Written by hand: no library maps Avro
schemas onto PostgreSQL DDL with these rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.backends import LIVE_VIEW_SUFFIX
from connector.documents import canonical_json
from connector.schemas import ObjectType, ObjectTypes

MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names silently
COORDINATES = (("_topic", "text"), ("_partition", "integer"), ("_offset", "bigint"))
#: The tombstone marker flag of standard tables.
DELETED_COLUMN = "_deleted"
ADD_DELETED = f'ADD COLUMN "{DELETED_COLUMN}" boolean NOT NULL DEFAULT false'

_PRIMITIVE = {
    "boolean": "boolean",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "string": "text",
    "bytes": "bytea",
}
_LOGICAL = {
    "uuid": "uuid",
    "date": "date",
    "time-millis": "time without time zone",
    "time-micros": "time without time zone",
    "timestamp-millis": "timestamp with time zone",
    "timestamp-micros": "timestamp with time zone",
    "local-timestamp-millis": "timestamp without time zone",
    "local-timestamp-micros": "timestamp without time zone",
}


def quote(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _jsonb(value: Any) -> Any:
    return None if value is None else canonical_json(value)


def _text(value: Any) -> Any:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its SQL type, whether NULL is allowed, how a value is converted."""

    name: str
    sql_type: str
    nullable: bool
    has_default: bool
    index: str | None  # "btree" | "gin" for link columns
    convert: Callable[[Any], Any] | None  # None: the mapped value is passed as is

    def definition(self, not_null: bool) -> str:
        return f"{quote(self.name)} {self.sql_type}{' NOT NULL' if not_null else ''}"


@dataclass(frozen=True, slots=True)
class Table:
    """The table of one object type."""

    schema: str
    name: str
    object_type: ObjectType
    columns: list[Column]  # _id first, then the fields; without the coordinates

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    @property
    def id_column(self) -> Column:
        return self.columns[0]

    @property
    def standard(self) -> bool:
        """Standard types keep tombstone markers in their table."""
        return not self.object_type.asymmetric

    def not_null(self, column: Column) -> bool:
        """NOT NULL in the table: a marker row of a standard type has only its ``_id``."""
        return not column.nullable and (column is self.id_column or not self.standard)

    def create_statements(self) -> list[str]:
        parts = [c.definition(self.not_null(c)) for c in self.columns]
        parts += [f"{quote(name)} {sql} NOT NULL" for name, sql in COORDINATES]
        if self.standard:
            parts.append(ADD_DELETED.removeprefix("ADD COLUMN "))
        parts.append("PRIMARY KEY (_id)")
        statements = [f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(parts)})"]
        statements += self.index_statements()
        return statements + ([self.view_statement()] if self.standard else [])

    @property
    def view(self) -> str:
        """The name of the reader view of a standard table."""
        return self.name + LIVE_VIEW_SUFFIX

    def view_statement(self) -> str:
        """The view without tombstone markers. ``CREATE OR REPLACE`` keeps its grants, and
        ``*`` picks up columns added later (they come last, as the view requires)."""
        return (
            f"CREATE OR REPLACE VIEW {quote(self.schema)}.{quote(self.view)} AS "
            f"SELECT * FROM {self.qualified} WHERE NOT {quote(DELETED_COLUMN)}"
        )

    def index_statements(self) -> list[str]:
        out = []
        for c in self.columns:
            if c.index is not None:
                index = quote(f"{self.name}_{c.name}_idx"[:MAX_IDENTIFIER])
                out.append(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {self.qualified} "
                    f"USING {c.index} ({quote(c.name)})"
                )
        return out


class _Deriver:
    def __init__(self, object_type: ObjectType) -> None:
        self.names: dict[str, Any] = {}
        self.object_type = object_type

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node not in _PRIMITIVE and node != "null":
            return self.names.get(node, node)
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            self.names[node["name"]] = node
            if isinstance(node.get("fields"), list):
                for f in node["fields"]:
                    self.resolve(f["type"])
        if isinstance(node, dict) and node.get("type") in ("array", "map"):
            self.resolve(node.get("items") or node.get("values"))
        if isinstance(node, list):
            for member in node:
                self.resolve(member)
        return node

    def scalar(self, node: Any) -> tuple[str, Callable[[Any], Any] | None] | None:
        """The SQL type of a scalar Avro type, or None when it is not a scalar."""
        node = self.resolve(node)
        if isinstance(node, str):
            return (_PRIMITIVE[node], None) if node in _PRIMITIVE else None
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        logical = node.get("logicalType")
        if logical == "decimal":
            return f"numeric({node['precision']},{node.get('scale', 0)})", None
        if logical in _LOGICAL:
            return _LOGICAL[logical], None
        if kind == "enum":
            return "text", None
        if kind == "fixed":
            if node.get("name") == "ObjectId" and node.get("size") == 12:
                return "text", _text
            return "bytea", None
        if isinstance(kind, str) and kind in _PRIMITIVE:
            return _PRIMITIVE[kind], None
        return None

    def column(self, field: dict[str, Any]) -> Column:
        node = self.resolve(field["type"])
        nullable = False
        if isinstance(node, list):
            members = [m for m in node if m != "null"]
            nullable = len(members) < len(node)
            node = members[0] if len(members) == 1 else node
        link = "link" in field
        scalar = None if isinstance(node, list) else self.scalar(node)
        if scalar is not None:
            sql, convert = scalar
            return Column(
                field["name"], sql, nullable, "default" in field, "btree" if link else None, convert
            )
        kind = node.get("type") if isinstance(node, dict) else None
        if kind == "array":
            items = self.scalar(node["items"])
            if items is not None and not isinstance(self.resolve(node["items"]), list):
                sql, convert = items
                array_convert = None
                if convert is not None:

                    def array_convert(value: Any, convert: Callable[[Any], Any] = convert) -> Any:
                        return None if value is None else [convert(v) for v in value]

                return Column(
                    field["name"],
                    f"{sql}[]",
                    nullable,
                    "default" in field,
                    "gin" if link else None,
                    array_convert,
                )
        return Column(field["name"], "jsonb", nullable, "default" in field, None, _jsonb)


def derive_table(object_type: ObjectType, schema: str) -> Table:
    """The table of ``object_type`` in ``schema``; ValueError when a name is too long or a
    field takes the name of a bookkeeping column."""
    deriver = _Deriver(object_type)
    fields = object_type.schema["fields"]
    columns = [deriver.column(f) for f in fields if f["name"] == "_id"]
    columns += [deriver.column(f) for f in fields if f["name"] != "_id"]
    table = Table(schema, object_type.collection, object_type, columns)
    names = [table.name, *(c.name for c in columns)] + ([table.view] if table.standard else [])
    for name in names:
        if len(name.encode()) > MAX_IDENTIFIER:
            raise ValueError(
                f"{object_type.name}: name {name!r} is longer than {MAX_IDENTIFIER} bytes"
            )
    reserved = [name for name, _ in COORDINATES] + ([DELETED_COLUMN] if table.standard else [])
    for column in columns:
        if column.name in reserved:
            raise ValueError(
                f"{object_type.file}: {object_type.name}.{column.name}: the PostgreSQL backend "
                f"keeps its own column {column.name} in this table; rename the field"
            )
    return table


def table_problems(types: ObjectTypes, schema: str) -> list[str]:
    """Why some object types cannot have a table, one line each (no server needed)."""
    problems = []
    for object_type in types:
        try:
            derive_table(object_type, schema)
        except ValueError as exc:
            problems.append(f"backend: {exc}")
    return problems


@dataclass(frozen=True, slots=True)
class ExistingColumn:
    """A column as the catalog describes it."""

    sql_type: str  # format_type() spelling
    nullable: bool


def plan_changes(
    table: Table, existing: dict[str, ExistingColumn], has_view: bool = True
) -> tuple[list[str], list[str]]:
    """Statements that bring an existing table up to ``table``, and incompatibilities.

    Additive changes (a new nullable or defaulted field) become ``ADD COLUMN``; a standard
    table from before tombstone markers gets ``_deleted`` and nullable field columns; the
    view of a standard table is (re)created after any change or when it is missing
    (``has_view``). Anything else is a problem with its fix, and nothing is changed.
    """
    statements: list[str] = []
    problems: list[str] = []
    where = f"table {table.schema}.{table.name} ({table.object_type.name})"
    expected = {c.name: c for c in table.columns}
    expected_coordinates = dict(COORDINATES)
    for name, sql in COORDINATES:
        found = existing.get(name)
        if found is None or found.sql_type != sql:
            problems.append(
                f"{where}: bookkeeping column {name} ({sql}) is missing or of another type; "
                "this table was not created by data-ingest: point backend.schema elsewhere"
            )
    for column in table.columns:
        found = existing.get(column.name)
        if found is None:
            if column.nullable or column.has_default:
                add = f"ADD COLUMN {quote(column.name)} {column.sql_type}"
                statements.append(f"ALTER TABLE {table.qualified} {add}")
            else:
                problems.append(
                    f"{where}: field {column.name} is new, required and has no default, so the "
                    "rows already stored have no value for it; give it a default or make it "
                    'nullable (["null", ...])'
                )
        elif found.sql_type != column.sql_type:
            problems.append(
                f"{where}: column {column.name} is {found.sql_type} but field {column.name} "
                f"needs {column.sql_type}; migrate it (ALTER TABLE {table.qualified} ALTER "
                f"COLUMN {quote(column.name)} TYPE {column.sql_type}) or rename the field"
            )
    if table.standard:
        found = existing.get(DELETED_COLUMN)
        if found is None:
            statements.append(f"ALTER TABLE {table.qualified} {ADD_DELETED}")
        elif found.sql_type != "boolean":
            problems.append(
                f"{where}: bookkeeping column {DELETED_COLUMN} is {found.sql_type}, not boolean; "
                "this table was not created by data-ingest: point backend.schema elsewhere"
            )
    for name, found in existing.items():
        if name in expected_coordinates or name == DELETED_COLUMN or found.nullable:
            continue
        if table.standard and name != table.id_column.name:
            statements.append(
                f"ALTER TABLE {table.qualified} ALTER COLUMN {quote(name)} DROP NOT NULL"
            )
        elif name not in expected:
            problems.append(
                f"{where}: column {name} is NOT NULL but the type has no field {name} any more, "
                f"so inserts would fail; run ALTER TABLE {table.qualified} ALTER COLUMN "
                f"{quote(name)} DROP NOT NULL"
            )
    if problems:
        return [], problems
    changed = bool(statements)
    statements += table.index_statements()
    if table.standard and (changed or not has_view):
        statements.append(table.view_statement())
    return statements, problems

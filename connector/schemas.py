"""Object types: the ``.avsc`` files of a directory, checked against the rules and parsed.

Each file holds one top-level record carrying ``"objectType"``; nested records are embedded
objects. The set is refused as a whole, with one line per violation, when any rule is
broken (see ``schema_rules``); a valid set becomes ``ObjectTypes``, the registry that the
formats and the mapping work from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, UnknownType

from connector.errors import ConnectorError
from connector.schema_rules import (
    ASYMMETRIC,
    ID_TYPES,
    PRIMARY_KEY,
    DeclaredType,
    Violation,
    check_types,
    normalise,
)


class SchemaViolations(ConnectorError):
    """The object types break rules; ``violations`` holds one entry per problem."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("\n".join(str(v) for v in violations))


@dataclass(frozen=True, slots=True)
class ObjectType:
    """A declared, valid object type."""

    name: str
    fullname: str
    kind: str  # asymmetric | standard
    file: str
    collection: str  # table / collection name in the backend
    id_type: str  # string | uuid | int | long | ObjectId
    schema: dict[str, Any]  # the schema as written
    parsed: dict[str, Any]  # fastavro's parsed form, used as the reader schema

    @property
    def asymmetric(self) -> bool:
        return self.kind == ASYMMETRIC


class ObjectTypes:
    """The declared object types, found by simple or full name."""

    def __init__(self, types: list[ObjectType], directory: str) -> None:
        self.directory = directory
        self._types = types
        self._by_name: dict[str, ObjectType] = {}
        for t in types:
            self._by_name[t.name] = t
            self._by_name[t.fullname] = t

    def __iter__(self) -> Iterator[ObjectType]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> ObjectType | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(t.name for t in self._types)


def _file_problem(path: Path, problem: str, fix: str) -> Violation:
    return Violation(str(path), "-", "", "schema", problem, fix)


def read_declared(directory: str | Path) -> tuple[list[DeclaredType], list[Violation]]:
    """The top-level schemas of every ``*.avsc`` in ``directory``, and file-level problems."""
    root = Path(directory)
    violations: list[Violation] = []
    declared: list[DeclaredType] = []
    if not root.is_dir():
        return declared, [
            _file_problem(root, "not a directory", "point it at the folder of .avsc files")
        ]
    files = sorted(root.glob("*.avsc"))
    if not files:
        violations.append(
            _file_problem(root, "no .avsc files", "declare object types as .avsc files")
        )
    for path in files:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            violations.append(
                _file_problem(
                    path,
                    f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                    "fix the JSON syntax",
                )
            )
            continue
        except (OSError, UnicodeDecodeError) as exc:
            violations.append(_file_problem(path, f"cannot read: {exc}", "fix the file"))
            continue
        if (
            not isinstance(schema, dict)
            or schema.get("type") != "record"
            or not isinstance(schema.get("name"), str)
        ):
            violations.append(
                _file_problem(
                    path,
                    "the top level is not a named Avro record",
                    'declare {"type": "record", "name": ..., "objectType": ..., "fields": [...]}',
                )
            )
            continue
        name = schema["name"]
        namespace = schema.get("namespace")
        if "." in name:
            namespace, name = name.rsplit(".", 1)
        declared.append(DeclaredType(str(path), schema, name, namespace, schema.get("objectType")))
    return declared, violations


def _check(
    directory: str | Path, previous: str | Path | None
) -> tuple[list[tuple[DeclaredType, dict[str, Any]]], list[Violation]]:
    """The declared types with their fastavro-parsed schemas, and every violation."""
    declared, violations = read_declared(directory)
    before = read_declared(previous)[0] if previous is not None else None
    violations += check_types(declared, before)
    if violations:
        return [], violations
    parsed: list[tuple[DeclaredType, dict[str, Any]]] = []
    for t in declared:
        try:
            schema = fastavro.parse_schema(t.schema)
            assert isinstance(schema, dict)  # a record parses to a dict
            parsed.append((t, schema))
        except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
            violations.append(
                Violation(t.file, t.name, "", "schema", f"not valid Avro: {exc}", "fix the schema")
            )
    return parsed, violations


def check_directory(directory: str | Path, previous: str | Path | None = None) -> list[Violation]:
    """All violations of the schema set in ``directory`` (optionally against ``previous``)."""
    return _check(directory, previous)[1]


def load_object_types(directory: str | Path) -> ObjectTypes:
    """Check and parse the object types of ``directory``; raises ``SchemaViolations``."""
    checked, violations = _check(directory, None)
    if violations:
        raise SchemaViolations(violations)
    types: list[ObjectType] = []
    for d, parsed in checked:
        pk = next(f["type"] for f in d.schema["fields"] if f.get("name") == PRIMARY_KEY)
        types.append(
            ObjectType(
                name=d.name,
                fullname=d.fullname,
                kind=str(d.kind),
                file=d.file,
                collection=str(d.schema.get("collection", d.name)),
                id_type=ID_TYPES[normalise(pk, {})],
                schema=d.schema,
                parsed=parsed,
            )
        )
    return ObjectTypes(types, str(directory))

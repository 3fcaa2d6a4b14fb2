"""The rules of asymmetric data (R1-R7) checked over a set of object-type schemas.

Checked on the schemas' JSON before anything is consumed, so that a wrong declaration is
reported as one precise line per problem (file, type, field path, rule, fix) instead of
surfacing as a strange record error hours later. Written by hand: Avro libraries validate
Avro, not these Data Ingest rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ASYMMETRIC = "asymmetric"
STANDARD = "standard"
KINDS = (ASYMMETRIC, STANDARD)
PRIMARY_KEY = "_id"

# Normalised forms of the allowed primary-key types (R1).
ID_TYPES: dict[tuple[Any, ...], str] = {
    ("string",): "string",
    ("string", "uuid"): "uuid",
    ("int",): "int",
    ("long",): "long",
    ("fixed", "ObjectId", 12): "ObjectId",
}
ID_TYPES_TEXT = (
    'string, {"type": "string", "logicalType": "uuid"}, int, long, or a 12-byte fixed named '
    "ObjectId"
)
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, printed as one line."""

    file: str
    type_name: str
    path: str
    rule: str
    problem: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.type_name}: {self.path or '-'}"
        return f"{where}: {self.rule}: {self.problem}; fix: {self.fix}"


@dataclass(slots=True)
class DeclaredType:
    """A top-level schema from one file, before its rules are checked."""

    file: str
    schema: dict[str, Any]
    name: str
    namespace: str | None
    kind: str | None

    @property
    def fullname(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


def fullname_of(name: str, namespace: str | None) -> str:
    """Avro full name of ``name`` declared in ``namespace``."""
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def normalise(node: Any, names: dict[str, Any]) -> tuple[Any, ...]:
    """A comparable form of a type: base type plus the attributes that make it distinct."""
    if isinstance(node, str):
        if node in PRIMITIVES:
            return (node,)
        target = names.get(node)
        if target is None:
            return ("unknown", node)
        return normalise(target, names)
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "fixed":
            return ("fixed", node.get("name"), node.get("size"))
        if kind in PRIMITIVES:
            logical = node.get("logicalType")
            return (kind, logical) if logical else (kind,)
        if kind == "array":
            return ("array", normalise(node.get("items"), names))
        if kind == "map":
            return ("map", normalise(node.get("values"), names))
        return (str(kind), node.get("name"))
    if isinstance(node, list):
        return ("union", *(normalise(m, names) for m in node))
    return ("invalid",)


def _abbreviate(node: Any) -> Any:
    if isinstance(node, dict) and node.get("type") == "record" and "name" in node:
        return node["name"]
    if isinstance(node, dict):
        return {k: _abbreviate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_abbreviate(v) for v in node]
    return node


def show(node: Any) -> str:
    """A short Avro-JSON rendering of a type for messages (inline records by name)."""
    return json.dumps(_abbreviate(node), separators=(", ", ": "))


@dataclass
class _Checker:
    types: list[DeclaredType]
    violations: list[Violation] = field(default_factory=list)
    by_name: dict[str, DeclaredType] = field(default_factory=dict)

    def report(self, t: DeclaredType, path: str, rule: str, problem: str, fix: str) -> None:
        self.violations.append(Violation(t.file, t.name, path, rule, problem, fix))

    def lookup(self, name: str, namespace: str | None) -> DeclaredType | None:
        return self.by_name.get(fullname_of(name, namespace)) or self.by_name.get(name)

    def run(self) -> list[Violation]:
        seen: dict[str, DeclaredType] = {}
        unique: list[DeclaredType] = []  # the types whose name no earlier type has
        for t in self.types:
            other = next((seen[k] for k in (t.fullname, t.name) if k in seen), None)
            if other is None:
                unique.append(t)
            else:
                key = t.fullname if other.fullname == t.fullname else t.name
                self.report(
                    t,
                    "",
                    "R7",
                    f"type name {key} is also declared in {other.file}",
                    "give every object type a unique name",
                )
            seen.setdefault(t.fullname, t)
            seen.setdefault(t.name, t)
        self.by_name = seen
        self.check_collections(unique)
        for t in self.types:
            self.check_type(t)
        return self.violations

    def check_collections(self, types: list[DeclaredType]) -> None:
        """R7: every object type writes into a table or collection of its own.

        Names are compared without case, as SQLite compares table names. The violation goes
        to the type that declares ``collection`` (where the fix belongs), else the later one.
        """
        claimed: dict[str, tuple[DeclaredType, str]] = {}
        for t in types:
            if t.kind not in KINDS:
                continue  # reported as a missing objectType
            collection = self.collection_of(t)
            if collection is None:
                continue
            first = claimed.setdefault(collection.casefold(), (t, collection))
            if first[0] is t:
                continue
            if "collection" not in t.schema and "collection" in first[0].schema:
                self.report_shared_collection(first, (t, collection))
            else:
                self.report_shared_collection((t, collection), first)

    def report_shared_collection(
        self, culprit: tuple[DeclaredType, str], other: tuple[DeclaredType, str]
    ) -> None:
        """Report that ``culprit`` writes into the collection of ``other`` (type, collection)."""
        t, collection = culprit
        o, taken = other
        explicit = "collection" in t.schema
        mine = "" if explicit else " (its type name)"
        theirs = "" if "collection" in o.schema else ", its type name"
        case = "" if collection == taken else ", when case is ignored (as SQLite does)"
        fix = (
            f'change "collection" here, or remove it to use the type name {t.name}'
            if explicit
            else 'add "collection": "<a unique name>" here, or rename the type'
        )
        self.report(
            t,
            "",
            "R7",
            f"collection {collection}{mine} is also the collection of {o.name} ({o.file})"
            f"{theirs}{case}; two object types cannot write into one table",
            f"give every object type its own collection: {fix}",
        )

    def collection_of(self, t: DeclaredType) -> str | None:
        """The table or collection ``t`` writes into; None (reported) if it is not a name."""
        collection = t.schema.get("collection", t.name)
        if isinstance(collection, str) and collection:
            return collection
        self.report(
            t,
            "",
            "schema",
            f'"collection" is {show(collection)}, not a name',
            'write "collection": "<table or collection name>", or remove it to use the type name',
        )
        return None

    def check_type(self, t: DeclaredType) -> None:
        if t.kind not in KINDS:
            got = "no objectType" if t.kind is None else f"objectType {t.kind!r}"
            self.report(
                t,
                "",
                "schema",
                f"top-level record has {got}",
                'add "objectType": "asymmetric" (insert-only data) or "standard" (reference data)',
            )
            return
        names: dict[str, Any] = {t.name: t.schema, t.fullname: t.schema}
        fields = t.schema.get("fields")
        if not isinstance(fields, list):
            self.report(t, "", "schema", "record has no fields list", 'add "fields": [...]')
            return
        self.check_primary_key(t, fields, names)
        self.walk_fields(t, fields, "", t.namespace, names, [t.fullname])

    def check_primary_key(self, t: DeclaredType, fields: list[Any], names: dict[str, Any]) -> None:
        pk = next((f for f in fields if isinstance(f, dict) and f.get("name") == PRIMARY_KEY), None)
        if pk is None:
            self.report(
                t,
                "",
                "R1",
                f"{t.kind} type has no primary key field {PRIMARY_KEY}",
                f'add {{"name": "_id", "type": "string"}} (allowed types: {ID_TYPES_TEXT})',
            )
            return
        node = pk.get("type")
        if isinstance(node, list):
            self.report(
                t,
                PRIMARY_KEY,
                "R1",
                f"primary key has the union type {show(node)}; it must never be null",
                f"declare it with one of: {ID_TYPES_TEXT}",
            )
            return
        if isinstance(node, dict) and node.get("type") == "fixed":
            names.setdefault(str(node.get("name")), node)
        if normalise(node, names) not in ID_TYPES:
            self.report(
                t,
                PRIMARY_KEY,
                "R1",
                f"primary key has type {show(node)}",
                f"declare it with one of: {ID_TYPES_TEXT}",
            )

    def walk_fields(
        self,
        t: DeclaredType,
        fields: list[Any],
        path: str,
        namespace: str | None,
        names: dict[str, Any],
        stack: list[str],
    ) -> None:
        for f in fields:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                self.report(
                    t,
                    path,
                    "schema",
                    f"invalid field {show(f)}",
                    "give every field a name and a type",
                )
                continue
            field_path = f"{path}.{f['name']}" if path else f["name"]
            if "link" in f:
                self.check_link(t, field_path, f, namespace, names)
            else:
                self.walk(t, f.get("type"), field_path, namespace, names, stack)

    def walk(
        self,
        t: DeclaredType,
        node: Any,
        path: str,
        namespace: str | None,
        names: dict[str, Any],
        stack: list[str],
    ) -> None:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return
            full = fullname_of(node, namespace)
            if full in stack or node in stack:
                self.report(
                    t,
                    path,
                    "R3",
                    f"embedded object {node} contains itself",
                    "embedded objects cannot be recursive; store the nested part as a standard "
                    "type and link to it",
                )
                return
            if node in names or full in names:
                return  # a named type defined earlier in this file
            target = self.lookup(node, namespace)
            if target is not None:
                self.report_embedded_top_level(t, path, target)
                return
            self.report(
                t, path, "schema", f"unknown type name {node}", "define the type before using it"
            )
            return
        if isinstance(node, list):
            records = [m for m in node if self.is_record(m, names, namespace)]
            others = [m for m in node if m != "null"]
            if records and len(others) > 1:
                self.report(
                    t,
                    path,
                    "R3",
                    f"embedded object in the union {show(node)} with other types",
                    'an embedded object is single (optionally ["null", Record]), in an array or '
                    "in a map; split the alternatives into separate fields",
                )
            for member in node:
                self.walk(t, member, path, namespace, names, stack)
            return
        if not isinstance(node, dict):
            self.report(t, path, "schema", f"invalid type {show(node)}", "use an Avro type")
            return
        kind = node.get("type")
        if kind == "record":
            self.walk_embedded(t, node, path, namespace, names, stack)
        elif kind == "array":
            self.walk(t, node.get("items"), f"{path}[]", namespace, names, stack)
        elif kind == "map":
            self.walk(t, node.get("values"), f"{path}{{}}", namespace, names, stack)
        elif kind in ("enum", "fixed"):
            name = str(node.get("name"))
            names[name] = node
            names[fullname_of(name, node.get("namespace") or namespace)] = node
        elif isinstance(kind, dict | list) or kind not in PRIMITIVES:
            self.walk(t, kind, path, namespace, names, stack)

    def is_record(self, node: Any, names: dict[str, Any], namespace: str | None) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "record"
        if isinstance(node, str) and node not in PRIMITIVES:
            target = names.get(node) or names.get(fullname_of(node, namespace))
            if isinstance(target, dict):
                return target.get("type") == "record"
            return self.lookup(node, namespace) is not None
        return False

    def walk_embedded(
        self,
        t: DeclaredType,
        node: dict[str, Any],
        path: str,
        namespace: str | None,
        names: dict[str, Any],
        stack: list[str],
    ) -> None:
        name = str(node.get("name"))
        inner_ns = node.get("namespace") or namespace
        full = fullname_of(name, inner_ns)
        top = self.lookup(name, inner_ns)
        if top is not None and top.schema is not node:
            self.report(
                t,
                path,
                "R7",
                f"embedded type {name} has the name of the top-level type in {top.file}",
                "rename the embedded type",
            )
        if "objectType" in node:
            self.report(
                t,
                path,
                "R2",
                f"nested record {name} declares objectType {node['objectType']!r}",
                "a nested record is an embedded object: remove objectType, or move the type into "
                "its own file and link to it",
            )
        fields = node.get("fields")
        if not isinstance(fields, list):
            self.report(
                t, path, "schema", f"record {name} has no fields list", 'add "fields": [...]'
            )
            return
        if any(isinstance(f, dict) and f.get("name") == PRIMARY_KEY for f in fields):
            self.report(
                t,
                f"{path}.{PRIMARY_KEY}",
                "R2",
                f"embedded object {name} has a primary key {PRIMARY_KEY}",
                "embedded objects have no identity of their own: rename the field, or make the "
                "type a top-level standard type and link to it",
            )
        names[name] = node
        names[full] = node
        self.walk_fields(t, fields, path, inner_ns, names, [*stack, full])

    def report_embedded_top_level(self, t: DeclaredType, path: str, target: DeclaredType) -> None:
        if target.kind == ASYMMETRIC:
            self.report(
                t,
                path,
                "R5",
                f"embeds the asymmetric type {target.name}",
                "nothing may embed an asymmetric type; declare a separate embedded record here",
            )
        else:
            self.report(
                t,
                path,
                "R2",
                f"embeds the top-level type {target.name}, which has a primary key",
                f'link to it instead: a field of its _id type with "link": "{target.name}"',
            )

    def check_link(
        self,
        t: DeclaredType,
        path: str,
        f: dict[str, Any],
        namespace: str | None,
        names: dict[str, Any],
    ) -> None:
        target_name = f.get("link")
        if not isinstance(target_name, str):
            self.report(
                t,
                path,
                "R6",
                f"link {show(target_name)} is not a type name",
                'write "link": "<TypeName>"',
            )
            return
        target = self.lookup(target_name, namespace)
        if target is None:
            if target_name in names:
                self.report(
                    t,
                    path,
                    "R6",
                    f"links to the embedded type {target_name}",
                    "links point to top-level standard types only",
                )
            else:
                declared = ", ".join(sorted({d.name for d in self.types if d.kind == STANDARD}))
                self.report(
                    t,
                    path,
                    "R6",
                    f"links to {target_name}, which is not a declared type",
                    f"link to a declared standard type ({declared or 'none declared'})",
                )
            return
        if target.kind == ASYMMETRIC:
            self.report(
                t,
                path,
                "R5",
                f"links to the asymmetric type {target.name}",
                "nothing may link to an asymmetric type (it is insert-only and never read back); "
                "link to a standard type or remove the link",
            )
            return
        if target.kind != STANDARD:
            return  # the target's own missing objectType is reported on the target
        node = f.get("type")
        element, shape = self.link_element(node)
        if element is None:
            self.report(
                t,
                path,
                "R4",
                f"link field has the type {show(node)}",
                "a link is to-one (optionally nullable), an array or a map of the target's "
                "_id type",
            )
            return
        target_names: dict[str, Any] = {}
        target_pk = next(
            (
                x.get("type")
                for x in target.schema.get("fields", [])
                if isinstance(x, dict) and x.get("name") == PRIMARY_KEY
            ),
            None,
        )
        if target_pk is None:
            return  # reported as R1 on the target
        if isinstance(target_pk, dict) and target_pk.get("type") == "fixed":
            target_names[str(target_pk.get("name"))] = target_pk
        local = {**names}
        if isinstance(element, dict) and element.get("type") == "fixed":
            local[str(element.get("name"))] = element
        if normalise(element, local) != normalise(target_pk, target_names):
            self.report(
                t,
                path,
                "R6",
                f"link{shape} to {target.name} has the type {show(element)} but {target.name}._id "
                f"is {show(target_pk)}",
                f"declare the link as {show(target_pk)} (to-one; may be nullable), or an array or "
                "map of it",
            )

    @staticmethod
    def link_element(node: Any) -> tuple[Any, str]:
        """The id type inside a link field and a word for its shape; (None, "") if invalid."""

        def single(x: Any) -> bool:
            return not isinstance(x, list) and not (
                isinstance(x, dict) and x.get("type") in ("array", "map", "record")
            )

        if isinstance(node, list):
            members = [m for m in node if m != "null"]
            if len(members) == 1 and single(members[0]):
                return members[0], ""
            return None, ""
        if isinstance(node, dict) and node.get("type") in ("array", "map"):
            kind = node["type"]
            inner = node.get("items" if kind == "array" else "values")
            return (inner, f" ({kind})") if single(inner) else (None, "")
        return (node, "") if single(node) else (None, "")


def check_types(
    types: list[DeclaredType], previous: list[DeclaredType] | None = None
) -> list[Violation]:
    """Every violation of R1-R7 in a set of declared types (and against an earlier set)."""
    violations = _Checker(types).run()
    if previous:
        before = {p.fullname: p for p in previous if p.kind in KINDS}
        for t in types:
            old = before.get(t.fullname)
            if old is not None and t.kind in KINDS and old.kind != t.kind:
                violations.append(
                    Violation(
                        t.file,
                        t.name,
                        "",
                        "R7",
                        f"kind changed from {old.kind} (in {old.file}) to {t.kind}",
                        "a type's kind cannot change between schema versions; declare a new type "
                        "under a new name instead",
                    )
                )
    return violations

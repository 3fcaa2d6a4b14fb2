"""The configuration reference, generated from the pydantic models of the pipeline file.

``pipeline_schema()`` is the JSON Schema that ``data-ingest config schema`` prints (and
that YAML editors can validate against); ``render_markdown()`` turns it into
docs/configuration.md, one table per section: every key, its type, default and
description.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from connector.config import PipelineConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "data-ingest config reference > docs/configuration.md"
REGENERATE_SCHEMA = "data-ingest config schema > docs/pipeline.schema.json"

_CONSTRAINTS = (
    ("minimum", ">= {}"),
    ("maximum", "<= {}"),
    ("minLength", "min length {}"),
    ("minItems", "at least {} entry"),
    ("pattern", "matches `{}`"),
)


def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline file."""
    schema = PipelineConfig.model_json_schema(by_alias=True)
    return {
        "$schema": SCHEMA_DIALECT,
        **schema,
        "title": "data-ingest pipeline file",
    }


def schema_text() -> str:
    """``pipeline_schema()`` as the text ``data-ingest config schema`` prints."""
    return json.dumps(pipeline_schema(), indent=2) + "\n"


@dataclass
class _Section:
    heading: str
    description: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def _text(value: Any) -> str:
    """One line of text for a table cell."""
    return re.sub(r"\s+", " ", str(value)).strip().replace("|", "\\|")


class _Renderer:
    def __init__(self, schema: dict[str, Any]) -> None:
        self._defs: dict[str, Any] = schema.get("$defs", {})
        self.sections: list[_Section] = []

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        return {
            **self._defs[ref.rsplit("/", 1)[-1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }

    def model(self, path: str, node: dict[str, Any], heading: str) -> None:
        """A section for an object with properties, then sections for its nested objects."""
        section = _Section(heading or path or "Top level", node.get("description", ""))
        self.sections.append(section)
        required = set(node.get("required", []))
        nested: list[tuple[str, dict[str, Any], str]] = []
        for key, raw in node.get("properties", {}).items():
            prop = self.resolve(raw)
            kind, children = self.kind(f"{path}.{key}" if path else key, prop)
            nested.extend(children)
            if key in required:
                default = "required"
            elif "default" in prop:
                default = f"`{json.dumps(prop['default'])}`"
            elif "properties" in prop:
                default = "its defaults"
            else:
                default = "empty"
            section.rows.append((key, kind, default, _text(prop.get("description", ""))))
        for child_path, child, child_heading in nested:
            self.model(child_path, child, child_heading)

    def kind(
        self, path: str, prop: dict[str, Any]
    ) -> tuple[str, list[tuple[str, dict[str, Any], str]]]:
        """The type column of a property, and the nested sections it needs."""
        if "properties" in prop:
            return f"section [{path}](#{_anchor(path)})", [(path, prop, "")]
        if "oneOf" in prop:
            members = [self.resolve(m) for m in prop["oneOf"]]
            names = []
            children = []
            for member in members:
                tag = member["properties"]["type"].get("const")
                heading = f"{path} (type: {tag or 'a plugin name'})"
                names.append(f"[{tag or 'plugin'}](#{_anchor(heading)})")
                children.append((path, member, heading))
            return "one of " + ", ".join(names), children
        if "anyOf" in prop:
            options = [self.resolve(o) for o in prop["anyOf"] if o.get("type") != "null"]
            nullable = len(options) < len(prop["anyOf"])
            kinds, children = [], []
            for option in options:
                text, more = self.kind(path, option)
                kinds.append(text)
                children.extend(more)
            text = " or ".join(kinds)
            return (f"{text} or null" if nullable else text), children
        if prop.get("type") == "array":
            text, children = self.kind(f"{path}[]", self.resolve(prop["items"]))
            return f"list of {text}", children
        if prop.get("type") == "object":
            values = self.resolve(prop.get("additionalProperties", {}))
            text, children = self.kind(f"{path}.NAME", values)
            return f"map of name to {text}", children
        return self.scalar(prop), []

    @staticmethod
    def scalar(prop: dict[str, Any]) -> str:
        if "const" in prop:
            return f"`{prop['const']}`"
        if "enum" in prop:
            return " \\| ".join(f"`{v}`" for v in prop["enum"])
        text = str(prop.get("type", "any"))
        if prop.get("format") == "password":
            text += " (secret)"
        limits = [template.format(prop[key]) for key, template in _CONSTRAINTS if key in prop]
        if limits:
            text += ", " + ", ".join(limits)
        return _text(text)


def _anchor(path: str) -> str:
    """GitHub's anchor of a heading with the text ``path``."""
    return re.sub(r"[^a-z0-9 _-]", "", path.lower()).replace(" ", "-")


def render_markdown(schema: dict[str, Any] | None = None) -> str:
    """docs/configuration.md: one table per section of the pipeline file."""
    schema = schema or pipeline_schema()
    renderer = _Renderer(schema)
    renderer.model("", schema, "")
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the pydantic models in connector/config.py; do not edit. -->",
        f"<!-- Regenerate: {REGENERATE} -->",
        "",
        "Every key of the pipeline file, its type, default and meaning. `${VAR}` and",
        "`${VAR:-default}` are replaced from the environment in every value. Unknown keys are",
        "errors. The same information as a JSON Schema: `data-ingest config schema`, committed",
        "as [pipeline.schema.json](pipeline.schema.json); to let a YAML editor (any editor",
        "using the YAML language server) complete and check a pipeline file, put this first",
        "line in it, with the path from the file to the schema:",
        "",
        "```yaml",
        "# yaml-language-server: $schema=docs/pipeline.schema.json",
        "```",
        "",
    ]
    for section in renderer.sections:
        lines += [f"## {section.heading}", ""]
        if section.description:
            lines += [_text(section.description), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [
            f"| `{key}` | {kind} | {default} | {text} |"
            for key, kind, default, text in section.rows
        ]
        lines.append("")
    return "\n".join(lines)

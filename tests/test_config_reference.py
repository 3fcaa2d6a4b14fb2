"""The configuration reference and the JSON Schema are generated from the models and
committed; these tests fail when the committed files drift from the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connector.config import substitute_env
from connector.config_reference import (
    REGENERATE,
    REGENERATE_SCHEMA,
    pipeline_schema,
    render_markdown,
    schema_text,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_reference_matches_the_models() -> None:
    committed = (DOCS / "configuration.md").read_text()
    assert committed == render_markdown(), (
        f"docs/configuration.md is out of date with connector/config.py; run: {REGENERATE}"
    )


def test_committed_schema_matches_the_models() -> None:
    committed = (DOCS / "pipeline.schema.json").read_text()
    assert committed == schema_text(), (
        f"docs/pipeline.schema.json is out of date with connector/config.py; run: {REGENERATE_SCHEMA}"
    )


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"(top level).{k}", v) for k, v in schema["properties"].items()]
    for name, model in schema["$defs"].items():
        found += [(f"{name}.{k}", v) for k, v in model.get("properties", {}).items()]
    return found


def test_every_key_has_a_description() -> None:
    properties = _properties(pipeline_schema())
    assert len(properties) > 60
    undocumented = [name for name, prop in properties if not prop.get("description")]
    assert undocumented == [], "add a docstring under these fields in connector/config.py"


def test_every_key_is_in_the_reference() -> None:
    reference = render_markdown()
    for name, _ in _properties(pipeline_schema()):
        key = name.split(".", 1)[1]
        assert f"| `{key}` |" in reference, name


def test_reference_shows_type_default_and_description() -> None:
    reference = render_markdown()
    assert (
        "| `poll_timeout_ms` | integer, >= 1, <= 10000 | `200` | How long one fetch waits for records. |"
        in reference
    )
    assert "| `password` | string (secret) | required |" in reference
    assert "## backend (type: postgres)" in reference


MINIMAL = {
    "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
    "schemas": {"dir": "avro"},
    "routes": [{"topic": "measurements", "type": "Measurement"}],
    "backend": {"type": "sqlite", "path": "a.db"},
}


def test_editors_accept_a_valid_file() -> None:
    jsonschema.validate(MINIMAL, pipeline_schema())


def test_editors_accept_a_plugin_backend_with_its_settings() -> None:
    document = {**MINIMAL, "backend": {"type": "jsonl", "path": "out", "fsync": True}}
    jsonschema.validate(document, pipeline_schema())


@pytest.mark.parametrize(
    "change",
    [
        {"kafka": {"bootstrap_servers": "b", "grup": "x"}},
        {"backend": {"type": "sqlite", "path": "a.db", "synchronus": "FULL"}},
        {"backend": {"type": "postgres", "dsn": "mysql://x"}},
        {"routes": []},
    ],
)
def test_editors_flag_a_wrong_file(change: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**MINIMAL, **change}, pipeline_schema())


def test_schema_is_json_schema_2020_12() -> None:
    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_quickstart_file_points_editors_at_the_schema() -> None:
    quickstart = DOCS.parent / "integration" / "quickstart.yaml"
    first = quickstart.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    schema = json.loads((quickstart.parent / first.removeprefix(prefix)).read_text())
    document = substitute_env(yaml.safe_load(quickstart.read_text()), {})
    jsonschema.validate(document, schema)

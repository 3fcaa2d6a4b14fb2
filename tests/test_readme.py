"""The README's example pipeline file is a valid pipeline file, key for key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from connector.config import parse_config
from connector.config_reference import pipeline_schema

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    example = re.search(r"```yaml\n(kafka:.*?)```", README.read_text(), re.S)
    assert example is not None, "README has no example pipeline file"
    return example.group(1)


def _env(text: str) -> dict[str, str]:
    return {name: "value" for name in re.findall(r"\$\{([A-Z_]+)", text)}


def _alternative_backends(text: str) -> list[dict[str, Any]]:
    """The commented-out ``# backend:`` sections of the example, parsed."""
    blocks = re.findall(r"^# backend:\n((?:#   .*\n)+)", text, re.M)
    return [yaml.safe_load("\n".join(line[4:] for line in b.splitlines())) for b in blocks]


def test_readme_example_pipeline_is_valid() -> None:
    text = _example()
    config = parse_config(yaml.safe_load(text), "README.md", env=_env(text))
    assert config.kafka.security.protocol == "SASL_SSL"
    assert config.routes[-1].release == "delete"


def test_readme_example_keys_are_in_the_schema() -> None:
    """Validating against the JSON Schema refuses any key the schema does not have."""
    jsonschema.validate(yaml.safe_load(_example()), pipeline_schema())


def test_readme_alternative_backends_are_valid() -> None:
    text = _example()
    alternatives = _alternative_backends(text)
    assert [b["type"] for b in alternatives] == ["postgres", "mongodb"]
    for backend in alternatives:
        data = {**yaml.safe_load(text), "backend": backend}
        jsonschema.validate(data, pipeline_schema())
        config = parse_config(data, "README.md", env=_env(text))
        assert config.backend.type == backend["type"]

"""The README's example pipeline file is a valid pipeline file, key for key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from connector.config import parse_config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_pipeline_is_valid() -> None:
    example = re.search(r"```yaml\n(kafka:.*?)```", README.read_text(), re.S)
    assert example is not None, "README has no example pipeline file"
    env = {name: "value" for name in re.findall(r"\$\{([A-Z_]+)", example.group(1))}
    config = parse_config(yaml.safe_load(example.group(1)), "README.md", env=env)
    assert config.kafka.security.protocol == "SASL_SSL"
    assert config.routes[-1].release == "delete"

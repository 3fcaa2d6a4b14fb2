"""Plugin discovery through entry points, with packages laid out on sys.path by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.backends import create_backend
from connector.backends.sqlite import SqliteBackend
from connector.config import SqliteBackendConfig, parse_config
from connector.errors import ConfigError
from connector.plugins import backend_plugin, format_plugin, list_plugins
from connector.schemas import load_object_types

AVRO = Path(__file__).resolve().parent.parent / "avro"


def install(site: Path, name: str, version: str, entry_points: str, module: str) -> None:
    """A distribution as pip lays it out: a module and its .dist-info with entry points."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    (site / f"{name.replace('-', '_')}.py").write_text(module)


def test_builtins_are_listed_with_the_connectors_version() -> None:
    listed = {(p.kind, p.name): p for p in list_plugins()}
    assert set(listed) >= {
        ("backend", "sqlite"),
        ("backend", "postgres"),
        ("backend", "mongodb"),
        ("format", "json"),
        ("format", "avro"),
        ("format", "avro-raw"),
    }
    sqlite = listed["backend", "sqlite"]
    assert sqlite.package == "data-ingest-connector"
    assert sqlite.target == "connector.backends.builtin:SQLITE"
    assert sqlite.connect() == {"class": "sqlite", "type": "sink", "version": sqlite.version}
    assert listed["format", "json"].connect()["type"] == "converter"


def test_create_backend_goes_through_the_entry_point(tmp_path: Path) -> None:
    config = SqliteBackendConfig(type="sqlite", path=str(tmp_path / "x.db"))
    assert isinstance(create_backend(config, load_object_types(AVRO)), SqliteBackend)


def test_an_entry_point_that_is_not_a_plugin_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        tmp_path,
        "bad-plugin",
        "0.1",
        "[data_ingest.formats]\nbad = bad_plugin:NOT_A_PLUGIN\n",
        "NOT_A_PLUGIN = 42\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        format_plugin("bad")
    assert caught.value.problems == [
        "entry point 'bad' of package bad-plugin names bad_plugin:NOT_A_PLUGIN, which is not a "
        "FormatPlugin; fix that package's entry point"
    ]


def test_a_plugin_cannot_shadow_a_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        tmp_path,
        "shadow",
        "9.9",
        "[data_ingest.backends]\nsqlite = shadow:PLUGIN\n",
        "PLUGIN = None\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert backend_plugin("sqlite").settings is SqliteBackendConfig
    sqlite = [p for p in list_plugins() if p.name == "sqlite"]
    assert [p.package for p in sqlite] == ["data-ingest-connector"]


PLUGIN_MODULE = """
from pydantic import BaseModel, ConfigDict, SecretStr
from connector.backends import BackendPlugin


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    token: SecretStr
    batch: int = 10


PLUGIN = BackendPlugin(Settings, lambda settings, types: settings)
"""


def pipeline(backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "b:9092"},
        "schemas": {"dir": str(AVRO)},
        "routes": [{"topic": "t", "type": "Measurement"}],
        "backend": backend,
    }


def test_plugin_settings_are_validated_by_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, "acme", "2.0", "[data_ingest.backends]\nacme = acme:PLUGIN\n", PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_config(
        pipeline({"type": "acme", "url": "x", "token": "s3cret"}), "p.yaml", env={}
    )
    created: Any = create_backend(config.backend, load_object_types(AVRO))
    assert (created.url, created.token.get_secret_value(), created.batch) == ("x", "s3cret", 10)

    with pytest.raises(ConfigError) as caught:
        parse_config(pipeline({"type": "acme", "url": "x", "batch": "many"}), "p.yaml", env={})
    assert caught.value.problems == [
        "backend.token: missing value; this key is required",
        "backend.batch: Input should be a valid integer, unable to parse string as an integer",
    ]

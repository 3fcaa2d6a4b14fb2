"""Plugins: backends and formats found through Python entry points.

A package adds a backend by naming a ``BackendPlugin`` in the entry point group
``data_ingest.backends``, and a format by naming a ``FormatPlugin`` in
``data_ingest.formats``; the entry point's name is what a pipeline file writes
(``backend: {type: NAME, ...}``, ``format: NAME``). The built-in ones are registered the
same way in this project's pyproject.toml.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from connector.backends import BackendPlugin
from connector.errors import ConfigError
from connector.formats import FormatPlugin

if TYPE_CHECKING:
    from connector.config import PipelineConfig

BACKENDS_GROUP = "data_ingest.backends"
FORMATS_GROUP = "data_ingest.formats"
OWN_DISTRIBUTION = "data-ingest-connector"

P = TypeVar("P", BackendPlugin[Any], FormatPlugin)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin, as ``data-ingest plugins`` lists it."""

    kind: str  # backend | format
    name: str
    target: str  # module:attribute the entry point names
    package: str
    version: str

    def connect(self) -> dict[str, str]:
        """The shape of Kafka Connect's ``GET /connector-plugins`` entries."""
        kind = "sink" if self.kind == "backend" else "converter"
        return {"class": self.name, "type": kind, "version": self.version}


def _entry_points(group: str) -> dict[str, EntryPoint]:
    """The group's entry points by name; for a name registered twice the connector's own
    registration wins over a third party's, so that a plugin cannot shadow a built-in."""
    return _scan(group, tuple(sys.path))


@functools.cache
def _scan(group: str, _path: tuple[str, ...]) -> dict[str, EntryPoint]:
    """Scanning the installed distributions takes a while; it is redone when sys.path changes."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        earlier = found.get(point.name)
        if earlier is None or _package(earlier) != OWN_DISTRIBUTION:
            found[point.name] = point
    return found


def _package(point: EntryPoint) -> str:
    return point.dist.name if point.dist is not None else "?"


def _load(group: str, name: str, kind: type[P]) -> P:
    point = _entry_points(group).get(name)
    if point is None:
        installed = ", ".join(sorted(_entry_points(group))) or "none"
        raise ConfigError(
            group,
            [
                f"no plugin named {name!r} is installed (installed: {installed}); install the "
                "package that provides it, or reinstall data-ingest-connector"
            ],
        )
    plugin = point.load()
    if not isinstance(plugin, kind):
        raise ConfigError(
            group,
            [
                f"entry point {name!r} of package {_package(point)} names {point.value}, which is "
                f"not a {kind.__name__}; fix that package's entry point"
            ],
        )
    return plugin


def backend_plugin(name: str) -> BackendPlugin[Any]:
    """The backend plugin registered as ``name``; ``ConfigError`` if there is none."""
    return _load(BACKENDS_GROUP, name, BackendPlugin)


def format_plugin(name: str) -> FormatPlugin:
    """The format plugin registered as ``name``; ``ConfigError`` if there is none."""
    return _load(FORMATS_GROUP, name, FormatPlugin)


def list_plugins() -> list[PluginInfo]:
    """Every installed backend and format, with the package and version providing it."""
    found: list[PluginInfo] = []
    for kind, group in (("backend", BACKENDS_GROUP), ("format", FORMATS_GROUP)):
        for name, point in sorted(_entry_points(group).items()):
            version = point.dist.version if point.dist is not None else "?"
            found.append(PluginInfo(kind, name, point.value, _package(point), version))
    return found


def plugin_problems(config: PipelineConfig) -> list[str]:
    """Backend and format names no plugin provides, and invalid plugin settings: one line
    each, as ``key.path: problem``."""
    from connector.config import PluginBackendConfig

    problems: list[str] = []
    formats = _entry_points(FORMATS_GROUP)
    for i, route in enumerate(config.routes):
        if route.format not in formats:
            problems.append(
                f"routes[{i}].format: unknown format {route.format!r}; use one of "
                f"{', '.join(map(repr, sorted(formats)))} or install a format plugin "
                "(`data-ingest plugins` lists the installed ones)"
            )
    section = config.backend
    if not isinstance(section, PluginBackendConfig):
        return problems
    backends = _entry_points(BACKENDS_GROUP)
    if section.type not in backends:
        problems.append(
            f"backend.type: unknown type {section.type!r}; use one of "
            f"{', '.join(map(repr, sorted(backends)))} or install a backend plugin "
            "(`data-ingest plugins` lists the installed ones)"
        )
        return problems
    try:
        backend_plugin(section.type).settings_of(section)
    except ConfigError as exc:
        problems.extend(f"backend.type: {p}" for p in exc.problems)
    except ValidationError as exc:
        problems.extend(_setting_problem(error) for error in exc.errors())
    return problems


def _setting_problem(error: Any) -> str:
    path = ".".join(["backend", *map(str, error["loc"])])
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key of this backend plugin"
    if error["type"] == "missing":
        return f"{path}: missing value; this key is required"
    return f"{path}: {str(error['msg']).removeprefix('Value error, ')}"

"""Connector configs in Kafka Connect's shape: a flat map of strings.

The pipeline file is nested YAML; Connect's REST API carries ``{"key": "value"}`` with
string values. ``kafka.group_id``, ``routes.0.topic`` and ``backend.type`` are the flat keys
of the nested ones; the keys below ``kafka.properties.`` and ``schema_registry.properties.``
are client properties and keep their dots. ``name`` and ``connector.class`` are Connect's
own keys; ``tasks.max`` is Connect's name and a top-level key of the pipeline file too.
Secrets are redacted whenever a config leaves the worker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.config import PipelineConfig, parse_config, relative_to
from connector.errors import ConfigError
from connector.metrics import package_version

PLUGIN_CLASS = "io.dataingest.connect.DataIngestSinkConnector"
PLUGIN_ALIASES = {PLUGIN_CLASS, "DataIngestSinkConnector", "DataIngestSink"}
CONNECT_KEYS = ("name", "connector.class")
FREEFORM = ("kafka.properties", "schema_registry.properties")
WHOLE_KEYS = ("tasks.max",)  # a top-level key of the pipeline file with a dot in its name
HIDDEN = "[hidden]"
SECRET_MASK = "**********"  # how pydantic dumps a SecretStr

# Keys whose value is a secret, by their last part; and secrets inside URLs and DSNs.
_SECRET_KEY = re.compile(
    r"(^|\.)(password|key_password|passwd|secret|token|basic_auth_user_info|"
    r"sasl\.password|ssl\.key\.password|ssl\.key\.pem|ssl\.keystore\.password|"
    r"sasl\.oauthbearer\.client\.secret|sasl\.jaas\.config|basic\.auth\.user\.info)$",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@/?#\s]+)(?=@)")


def plugin_info() -> dict[str, str]:
    return {"class": PLUGIN_CLASS, "type": "sink", "version": package_version()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"kafka": {"group_id": "g"}}`` → ``{"kafka.group_id": "g"}``; lists by index."""
    out: dict[str, str] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        elif node is not None:
            out[key] = _text(node)

    walk(tree, prefix)
    return out


def unflatten(flat: Mapping[str, str]) -> dict[str, Any]:
    """The nested tree of a flat map; maps whose keys are all indices become lists."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        parts = [key] if key in WHOLE_KEYS else key.split(".")
        for free in FREEFORM:
            if key.startswith(free + "."):
                parts = [*free.split("."), key[len(free) + 1 :]]
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError("config", [f"{key}: {part!r} has a value and keys below it"])
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError("config", [f"{key}: has a value and keys below it"])
        node[parts[-1]] = value
    return _lists(tree)  # type: ignore[no-any-return]


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        indices = sorted(items, key=int)
        if [int(i) for i in indices] != list(range(len(indices))):
            return items  # left to validation, which names the key
        return [items[i] for i in indices]
    return items


def normalize(config: Mapping[str, Any]) -> dict[str, str]:
    """A request's config as a flat map of strings (nested JSON values are flattened)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping | list):
            flat.update(flatten({key: value}))
        elif value is not None:
            flat[key] = _text(value)
    return flat


def pipeline_of(
    name: str, flat: Mapping[str, str], base: Path, env: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Validate a flat config into a PipelineConfig; problems name the flat keys."""
    problems = connect_problems(name, flat)
    if problems:
        raise ConfigError(name, problems)
    body = {k: v for k, v in flat.items() if k not in CONNECT_KEYS}
    try:
        config = parse_config(unflatten(body), name, env)
    except ConfigError as exc:
        raise ConfigError(name, [flat_key_problem(p) for p in exc.problems]) from None
    return relative_to(config, base)


def connect_problems(name: str, flat: Mapping[str, str]) -> list[str]:
    problems = []
    cls = flat.get("connector.class")
    if cls is not None and cls not in PLUGIN_ALIASES:
        problems.append(
            f"connector.class: {cls!r} is not a plugin of this worker; use {PLUGIN_CLASS!r} "
            "(or leave it out)"
        )
    tasks = flat.get("tasks.max")
    if tasks is not None and not (tasks.isdigit() and int(tasks) >= 1):
        problems.append(f"tasks.max: {tasks!r} is not a positive integer")
    given = flat.get("name")
    if given is not None and given != name:
        problems.append(f"name: {given!r} differs from the connector's name {name!r}")
    return problems


def flat_key_problem(problem: str) -> str:
    """``routes[0].topic: ...`` → ``routes.0.topic: ...`` (the keys of the flat config)."""
    key, sep, rest = problem.partition(": ")
    return re.sub(r"\[(\d+)\]", r".\1", key) + sep + rest


def with_connect_keys(name: str, flat: Mapping[str, str]) -> dict[str, str]:
    return {"connector.class": PLUGIN_CLASS, "tasks.max": "1", **flat, "name": name}


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(flat: Mapping[str, str]) -> dict[str, str]:
    """The config as it may be shown: secret values and passwords inside URLs hidden."""
    return {
        k: HIDDEN if is_secret_key(k) else _URL_PASSWORD.sub(rf"\g<head>{HIDDEN}", v)
        for k, v in flat.items()
    }


def secret_values(flat: Mapping[str, str]) -> set[str]:
    """The secret values written in a flat config (secret keys, passwords inside URLs)."""
    found = {v for k, v in flat.items() if is_secret_key(k) and v}
    found.update(m.group("secret") for v in flat.values() for m in _URL_PASSWORD.finditer(v))
    return {s for s in found if len(s) >= 4}


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``[hidden]``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def secrets_of(config: PipelineConfig) -> set[str]:
    """The secret values of a parsed config (after ``${VAR}`` substitution), for log redaction."""
    found: set[str] = set()
    for key, value in flatten(config.model_dump(mode="json", by_alias=True)).items():
        if is_secret_key(key) and value != SECRET_MASK:
            found.update((value, value.partition(":")[2]))
        found.update(m.group("secret") for m in _URL_PASSWORD.finditer(value))
    security = config.kafka.security
    if security.sasl is not None:
        found.add(security.sasl.password.get_secret_value())
    if security.tls is not None and security.tls.key_password is not None:
        found.add(security.tls.key_password.get_secret_value())
    return {s for s in found if len(s) >= 4}


_FORMATTER = logging.Formatter()


class SecretFilter(logging.Filter):
    """Replaces every known secret in a log record by ``[hidden]`` (install on handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            hidden = scrub(message, self.secrets)
            if hidden != message:
                record.msg, record.args = hidden, None
            if record.exc_info and not record.exc_text:  # formatters reuse exc_text
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = scrub(record.exc_text, self.secrets)
        return True

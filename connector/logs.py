"""Logging: text or JSON lines on stderr, with the pipeline file's secrets redacted.

JSON lines carry ``time``, ``level``, ``logger``, ``message`` and ``connector`` (the
consumer group: a connector's identity), plus ``topic``, ``partition`` and ``offset`` when a
line is about one record. Every line, of any logger, passes the redaction: the secrets of
the pipeline file (SASL and TLS key passwords, passwords in the database URLs, the Schema
Registry's credentials, any ``SecretStr``) and the password of any ``scheme://user:pw@``
URL are replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, SecretStr

from connector.errors import Coordinates

LogFormat = Literal["text", "json"]
MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RECORD_FIELDS = ("topic", "partition", "offset")

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@\s/]+(?=@)")
_SECRET_KEY = re.compile(r"password|secret|token|credential|user.info|private|jaas", re.I)


def coordinates(where: Coordinates) -> dict[str, Any]:
    """``extra=`` for a log line about one record."""
    return {"topic": where.topic, "partition": where.partition, "offset": where.offset}


class Redactor:
    """Replaces known secrets and URL passwords in text."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, secrets: Iterable[str]) -> None:
        """Remember secrets to mask; longer ones first, so a secret's part never survives."""
        known = {*self._secrets, *(s for s in secrets if s)}
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)


_CONTEXT: dict[str, str] = {}

REDACT = Redactor()
"""The process's redactor; ``data-ingest`` adds the pipeline file's secrets to it."""


def secrets_of(value: Any, key: str = "") -> Iterator[str]:
    """Every secret in a loaded configuration: ``SecretStr`` values, values under keys that
    name a secret (``password``, ``token``, ``basic_auth_user_info``...), and the passwords
    of URLs such as the PostgreSQL DSN."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            yield from secrets_of(getattr(value, name), field.alias or name)
        for name, extra in (value.model_extra or {}).items():
            yield from secrets_of(extra, name)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from secrets_of(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secrets_of(item, key)
    elif isinstance(value, str):
        if _SECRET_KEY.search(key):
            yield value
            _, colon, password = value.partition(":")  # user:password
            if colon and password:
                yield password
        for match in _URL_PASSWORD.finditer(value):
            password = value[match.end("head") : match.end()]
            yield from (password, unquote(password))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return REDACT(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": REDACT(record.getMessage()),
        }
        line.update(_CONTEXT)
        for name in RECORD_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = REDACT(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = REDACT(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class _CurrentStderr:
    """sys.stderr as it is at each write, so that a live progress display that redirects
    stderr gets the log lines and prints them above itself."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_SETTINGS: dict[str, Any] = {"level": "INFO", "format": "text"}


def logging_settings() -> tuple[str, LogFormat]:
    """The level and format given to ``setup_logging`` (a child task logs the same way)."""
    return _SETTINGS["level"], _SETTINGS["format"]


def setup_logging(level: str, log_format: LogFormat, task: int | None = None) -> None:
    """Send every logger's lines to stderr in ``log_format``, secrets redacted; ``task``
    names the connector task of a task process in every line (``task`` in JSON lines)."""
    _SETTINGS.update(level=level, format=log_format)
    text_format = TEXT_FORMAT
    if task is not None:
        _CONTEXT["task"] = str(task)
        text_format = TEXT_FORMAT.replace("%(name)s:", f"%(name)s [task {task}]:")
    handler = logging.StreamHandler(_CurrentStderr())
    formatter = _JsonFormatter() if log_format == "json" else _TextFormatter(text_format)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def set_connector(name: str) -> None:
    """Name the connector (its consumer group) in every JSON line from now on."""
    _CONTEXT["connector"] = name

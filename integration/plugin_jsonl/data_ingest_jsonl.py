"""Example backend plugin: asymmetric objects as JSON lines, one file per object type.

It keeps the backend contract: writes are idempotent by ``_id`` (an identical document is a
duplicate, a different one a conflict, R9) and durable when ``ingest`` returns (flushed
and fsynced).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector.backends import (
    DUPLICATE,
    INSERTED,
    Backend,
    BackendPlugin,
    ObjectResult,
    Outcome,
    conflict,
)
from connector.records import MappedObject
from connector.schemas import ObjectTypes


class JsonlSettings(BaseModel):
    """The keys of ``backend: {type: jsonl, ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: str = Field(min_length=1)
    fsync: bool = True


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)


class JsonlBackend(Backend):
    def __init__(self, settings: JsonlSettings) -> None:
        self._settings = settings
        self._stored: dict[str, dict[str, str]] = {}  # type -> _id -> document text

    async def open(self) -> None:
        directory = Path(self._settings.directory)
        directory.mkdir(parents=True, exist_ok=True)
        for path in directory.glob("*.jsonl"):
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a line torn by a crash mid-write: never acknowledged
                os.truncate(path, end)
            stored = self._stored.setdefault(path.stem, {})
            for line in data[:end].decode().splitlines():
                entry = json.loads(line)
                stored.setdefault(entry["_id"], entry["doc"])

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        results: list[ObjectResult] = []
        written: dict[str, dict[str, str]] = {}  # stored only once the files are synced
        lines: dict[str, list[str]] = {}
        for obj in objects:
            name = obj.object_type.name
            if not obj.object_type.asymmetric:
                results.append(ObjectResult(Outcome.REJECTED, "jsonl stores asymmetric types only"))
                continue
            key, document = str(obj.object_id), _text(obj.document)
            new = written.setdefault(name, {})
            earlier = self._stored.get(name, {}).get(key, new.get(key))
            if earlier is None:
                new[key] = document
                record = obj.record
                entry = {
                    "_id": key,
                    "doc": document,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                }
                lines.setdefault(name, []).append(json.dumps(entry) + "\n")
                results.append(INSERTED)
            elif earlier == document:
                results.append(DUPLICATE)
            else:
                results.append(conflict(name, key, ["doc"]))
        for name, new_lines in lines.items():
            with open(Path(self._settings.directory) / f"{name}.jsonl", "a") as file:
                file.writelines(new_lines)
                file.flush()
                if self._settings.fsync:
                    os.fsync(file.fileno())
        for name, new in written.items():
            self._stored.setdefault(name, {}).update(new)
        return results

    async def check(self) -> str:
        return f"jsonl files in {self._settings.directory}"

    async def close(self) -> None:
        self._stored.clear()


def _create(settings: JsonlSettings, _types: ObjectTypes) -> Backend:
    return JsonlBackend(settings)


PLUGIN = BackendPlugin(JsonlSettings, _create)

"""Benthos peers: ``benthos-postgres`` (sql_insert) and ``benthos-mongodb`` (mongodb output).

Benthos 4.27.0 (Go module ``github.com/benthosdev/benthos/v4``, MIT: the last release before
the project was relicensed as Redpanda Connect) is built from ``bench/peers/benthos/``
(go.mod + main.go importing only ``kafka``, ``mongodb``, ``pure``, ``sql/base`` and the
``lib/pq`` driver) with ``go build`` into ``<cache>/peers/benthos-4.27.0/benthos``; Go's
module and build caches are ``<cache>/peers/go/{mod,build}`` so later builds reuse them.

Settings, from the 4.27.0 component specs (``internal/impl/kafka/input_kafka_franz.go``,
``internal/impl/sql/output_sql_insert.go``, ``internal/impl/mongodb/output.go``):

* ``kafka_franz`` input: ``consumer_group`` = the run's group, ``start_from_oldest``,
  ``checkpoint_limit`` = the batch size (in-flight records per partition; its default 1024
  would cap an output batch), commits every ``commit_period`` (default 5 s).
* output ``batching``: ``count`` = the batch size, ``period`` 1 s; ``max_in_flight`` 64
  (the default: up to 64 batches written concurrently).
* ``sql_insert``: ``driver: postgres``, ``suffix: ON CONFLICT (_id) DO NOTHING``, one
  multi-row INSERT per batch. It does not create tables: we create the table before the
  run (not timed) with ``_id TEXT PRIMARY KEY`` and one column per field of the first
  record of the topic.
* ``mongodb``: ``operation: replace-one``, ``upsert: true``, ``filter_map: root._id =
  this._id``, ``document_map: root = this``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench.peers import RunContext, RunResult, Target
from bench.peers._common import first_record, peers_dir, run_measured
from integration.artifacts import ArtifactError, find_executable, install_once

BENTHOS_VERSION = "4.27.0"
SOURCE = Path(__file__).resolve().parent / "benthos"
BATCH_PERIOD = "1s"


def _source_stamp() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    return f"{BENTHOS_VERSION}-{digest.hexdigest()[:12]}"


def go_env(cache: Path) -> dict[str, str]:
    go = peers_dir(cache) / "go"
    return {
        "GOPATH": str(go),
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOFLAGS": "-modcacherw -buildvcs=false",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }


def install(cache: Path) -> Path:
    """Build the binary once per source stamp; return its path."""

    def build(staging: Path) -> list[str]:
        cmd = [find_executable("go", "GO"), "build", "-trimpath", "-o", str(staging / "benthos")]
        proc = subprocess.run(
            [*cmd, "."],
            cwd=SOURCE,
            env={**os.environ, **go_env(cache)},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ArtifactError(f"{' '.join(cmd)} . failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return ["benthos"]

    target = peers_dir(cache) / f"benthos-{BENTHOS_VERSION}"
    return install_once(target, _source_stamp(), build) / "benthos"


_PG_TYPES = {str: "TEXT", bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE PRECISION"}


def _columns(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) for each field of a sample record; _id first."""
    cols = [("_id", "TEXT")]
    for key, value in sample.items():
        if key != "_id":
            cols.append((key, _PG_TYPES.get(type(value), "JSONB")))
    return cols


def _create_table(ctx: RunContext, cols: list[tuple[str, str]]) -> None:
    import asyncpg

    parts = [f'"{c}" {t}' + (" PRIMARY KEY" if c == "_id" else "") for c, t in cols]
    ddl = f'CREATE TABLE IF NOT EXISTS "{ctx.postgres_table}" ({", ".join(parts)})'

    async def create() -> None:
        conn = await asyncpg.connect(ctx.postgres_dsn)
        try:
            await conn.execute(ddl)
        finally:
            await conn.close()

    asyncio.run(create())


def _libpq_dsn(dsn: str) -> str:
    # lib/pq defaults to sslmode=require; the benchmark's server is plain loopback.
    return dsn if "sslmode=" in dsn else dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"


class BenthosPeer:
    """A Benthos stream: kafka_franz -> sql_insert (PostgreSQL) or mongodb."""

    version = BENTHOS_VERSION

    def __init__(self, target: Target) -> None:
        self.target: Target = target
        self.name = f"benthos-{target}"

    def install(self, cache: Path) -> None:
        install(cache)

    def settings(self) -> dict[str, object]:
        common: dict[str, object] = {
            "version": f"benthos {BENTHOS_VERSION} (github.com/benthosdev/benthos/v4, MIT)",
            "input": "kafka_franz, checkpoint_limit = batch size, commit_period 5s",
            "batch": f"output batching count = batch size, period {BATCH_PERIOD}",
            "max_in_flight": 64,
            "processes": 1,
        }
        if self.target == "postgres":
            return {
                **common,
                "output": "sql_insert, driver postgres (lib/pq)",
                "idempotence": "suffix: ON CONFLICT (_id) DO NOTHING",
                "table": "created before the run: _id TEXT PRIMARY KEY + one column per field",
            }
        return {
            **common,
            "output": "mongodb",
            "idempotence": "operation replace-one, upsert true, filter_map root._id = this._id",
        }

    def config(self, ctx: RunContext, cols: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        batching = {"count": ctx.batch_size, "period": BATCH_PERIOD}
        output: dict[str, Any]
        if self.target == "postgres":
            cols = cols or [("_id", "TEXT")]
            args = ", ".join(
                f"this.{c}.format_json()" if t == "JSONB" else f'this.get("{c}")' for c, t in cols
            )
            output = {
                "sql_insert": {
                    "driver": "postgres",
                    "dsn": _libpq_dsn(ctx.postgres_dsn),
                    "table": f'"{ctx.postgres_table}"',
                    "columns": [f'"{c}"' for c, _ in cols],
                    "args_mapping": f"root = [ {args} ]",
                    "suffix": "ON CONFLICT (_id) DO NOTHING",
                    "max_in_flight": 64,
                    "batching": batching,
                }
            }
        else:
            output = {
                "mongodb": {
                    "url": ctx.mongo_uri,
                    "database": ctx.mongo_database,
                    "collection": ctx.mongo_collection,
                    "operation": "replace-one",
                    "upsert": True,
                    "filter_map": "root._id = this._id",
                    "document_map": "root = this",
                    "max_in_flight": 64,
                    "batching": batching,
                }
            }
        return {
            "http": {"enabled": False},
            "logger": {"level": "WARN", "format": "logfmt"},
            "metrics": {"none": {}},
            "input": {
                "kafka_franz": {
                    "seed_brokers": [ctx.bootstrap],
                    "topics": [ctx.topic],
                    "consumer_group": ctx.group,
                    "start_from_oldest": True,
                    "checkpoint_limit": ctx.batch_size,
                    "commit_period": "5s",
                }
            },
            "output": output,
        }

    def run(self, ctx: RunContext, *, kill_after_s: float | None = None) -> RunResult:
        binary = install(ctx.cache)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        cols = None
        if self.target == "postgres":
            cols = _columns(first_record(ctx))
            _create_table(ctx, cols)
        cfg_path = ctx.workdir / f"{self.name}.yaml"
        # JSON is YAML: Benthos reads it as its config file.
        cfg_path.write_text(json.dumps(self.config(ctx, cols), indent=2) + "\n")
        return run_measured(
            ctx,
            [str(binary), "-c", str(cfg_path)],
            log=ctx.workdir / f"{self.name}.log",
            kill_after_s=kill_after_s,
        )

"""Quix Streams peers: ``quix-postgres`` (PostgreSQLSink) and ``quix-mongodb`` (MongoDBSink).

Installed into its own virtualenv, ``<cache>/peers/quixstreams-<version>``, with
``python -m venv`` and ``pip install quixstreams[postgresql,mongodb]==<version>`` (by name,
through pip's configured index). Our application is ``bench/peers/quix_app.py``; see its
docstring for the sink settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.peers import RunContext, RunResult, Target
from bench.peers._common import mongo_host_port, peers_dir, postgres_params, run_measured
from integration.artifacts import ArtifactError, install_once

QUIX_VERSION = "3.28.1"
APP = Path(__file__).resolve().parent / "quix_app.py"
COMMIT_INTERVAL_S = 5.0  # Quix Streams' default checkpoint interval


def venv_dir(cache: Path) -> Path:
    return peers_dir(cache) / f"quixstreams-{QUIX_VERSION}"


def install(cache: Path) -> Path:
    """The virtualenv with Quix Streams and its PostgreSQL and MongoDB extras (once)."""

    def build(staging: Path) -> list[str]:
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True)
        cmd = [
            str(staging / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"quixstreams[postgresql,mongodb]=={QUIX_VERSION}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ArtifactError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return ["bin/python", "pyvenv.cfg"]

    return install_once(venv_dir(cache), QUIX_VERSION, build)


class QuixPeer:
    """Quix Streams ``Application`` consuming ``ctx.topic`` into one of its sinks."""

    version = QUIX_VERSION

    def __init__(self, target: Target, *, commit_every: int | None = None) -> None:
        self.target: Target = target
        self.name = f"quix-{target}"
        # None: the run's batch size (a checkpoint, i.e. a sink write, every N records).
        self._commit_every = commit_every

    def install(self, cache: Path) -> None:
        install(cache)

    def settings(self) -> dict[str, object]:
        common: dict[str, object] = {
            "version": f"quixstreams {QUIX_VERSION}",
            "batch": (
                "one sink write per checkpoint: every commit_every records (the run's batch "
                f"size) or every commit_interval={COMMIT_INTERVAL_S} s"
            ),
            "processing_guarantee": "at-least-once",
            "auto_offset_reset": "earliest",
            "processes": 1,
        }
        if self.target == "postgres":
            return {
                **common,
                "sink": "quixstreams.sinks.community.postgresql.PostgreSQLSink",
                "idempotence": "primary_key_columns=_id, on_conflict_do_nothing=True "
                "(INSERT ... ON CONFLICT DO NOTHING)",
                "table": "created by the sink (schema_auto_update), _id TEXT PRIMARY KEY",
                "include_metadata": False,
            }
        return {
            **common,
            "sink": "quixstreams.sinks.community.mongodb.MongoDBSink",
            "idempotence": "update_method=ReplaceOne, upsert=True, matched on the value's _id",
        }

    def config(self, ctx: RunContext) -> dict[str, object]:
        host, port = mongo_host_port(ctx.mongo_uri)
        pg = postgres_params(ctx.postgres_dsn)
        return {
            "bootstrap": ctx.bootstrap,
            "topic": ctx.topic,
            "group": ctx.group,
            "target": self.target,
            "commit_interval": COMMIT_INTERVAL_S,
            "commit_every": self._commit_every or ctx.batch_size,
            "table": ctx.postgres_table,
            "postgres": {
                "host": pg.host,
                "port": pg.port,
                "user": pg.user,
                "password": pg.password,
                "database": pg.database,
            },
            "mongo": {
                "host": host,
                "port": port,
                "database": ctx.mongo_database,
                "collection": ctx.mongo_collection,
            },
        }

    def run(self, ctx: RunContext, *, kill_after_s: float | None = None) -> RunResult:
        python = install(ctx.cache) / "bin" / "python"
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = ctx.workdir / f"{self.name}.json"
        cfg_path.write_text(json.dumps(self.config(ctx), indent=2) + "\n")
        return run_measured(
            ctx,
            [str(python), str(APP), str(cfg_path)],
            log=ctx.workdir / f"{self.name}.log",
            env={"PYTHONUNBUFFERED": "1"},
            kill_after_s=kill_after_s,
        )

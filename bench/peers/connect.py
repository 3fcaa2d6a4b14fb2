"""Kafka Connect peers: ``mongo-kafka-sink`` and ``debezium-jdbc`` in a standalone worker.

The worker (Apache Kafka ``connect-runtime`` + ``connect-json`` 4.1.1) and the two plugins
(``org.mongodb.kafka:mongo-kafka-connect:2.0.1:all`` and
``io.debezium:debezium-connector-jdbc:3.5.0.Final`` with its runtime dependencies) are
resolved with Maven from ``bench/peers/connect/pom.xml``, one profile per directory, into
``<cache>/peers/kafka-connect-4.1.1/{worker,plugins/<name>/<plugin>}``; Maven's
download cache is the project's ``<cache>/m2`` (``integration.artifacts.run_maven``).

A run writes ``worker.properties`` and ``<connector>.properties`` into ``ctx.workdir`` and
starts ``org.apache.kafka.connect.cli.ConnectStandalone`` (-Xmx512m). The sink task's
consumer group is the run's group (``consumer.override.group.id``, allowed by
``connector.client.config.override.policy=All``), so a restart after SIGKILL resumes from
the group's committed offsets; the worker commits them every ``offset.flush.interval.ms``.
``consumer.max.poll.records`` = the batch size: a sink task's ``put()`` gets one poll.

* MongoDB sink: schemaless JSON (``JsonConverter``, ``schemas.enable=false``),
  ``document.id.strategy=ProvidedInValueStrategy`` (the value's ``_id``),
  ``writemodel.strategy=ReplaceOneDefaultStrategy`` (replaceOne with upsert on ``_id``:
  idempotent), ``max.batch.size`` = the batch size.
* Debezium JDBC sink: reads ``ctx.envelope_topic`` (JSON schema+payload envelope,
  ``JsonConverter`` with ``schemas.enable=true``), ``insert.mode=upsert``,
  ``primary.key.mode=record_value``, ``primary.key.fields=_id``, ``schema.evolution=basic``
  (it creates the table), ``batch.size`` = the batch size,
  ``dialect.postgres.unnest.insert.enabled=true`` (its documented PostgreSQL throughput
  option: one ``INSERT ... SELECT FROM UNNEST(...)`` per batch).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.peers import RunContext, RunResult, Target
from bench.peers._common import peers_dir, postgres_params, run_measured
from integration.artifacts import ArtifactError, install_once, java_executable, run_maven
from integration.processes import free_port

KAFKA_CONNECT_VERSION = "4.1.1"
MONGO_CONNECTOR_VERSION = "2.0.1"
DEBEZIUM_VERSION = "3.5.0.Final"
POM = Path(__file__).resolve().parent / "connect" / "pom.xml"
HEAP = "-Xmx512m"
# The JVM options of Kafka's bin/connect-standalone.sh (kafka-run-class.sh), with a small heap.
JVM_OPTS = (
    "-Xms256m",
    HEAP,
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# target -> (Maven profile, plugin dir). plugin.path names the dir *above* a plugin's dir:
# a jar directly on plugin.path is a plugin of its own, cut off from its dependencies.
PLUGINS = {
    "mongodb": ("mongo", "plugins/mongo/mongo-kafka-connect"),
    "postgres": ("debezium", "plugins/debezium/debezium-connector-jdbc"),
}
OFFSET_FLUSH_MS = 10_000  # the worker's default offset.flush.interval.ms

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
    <Logger name="org.apache.kafka.connect.runtime.Worker" level="INFO"/>
  </Loggers>
</Configuration>
"""


def install_dir(cache: Path) -> Path:
    return peers_dir(cache) / f"kafka-connect-{KAFKA_CONNECT_VERSION}"


def install(cache: Path) -> Path:
    """Resolve the worker and both plugins once; return the install dir."""

    def resolve(staging: Path) -> list[str]:
        files: list[str] = []
        for profile, sub in (("worker", "worker"), *PLUGINS.values()):
            out = staging / sub
            run_maven(
                POM,
                f"-P{profile}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={out}",
                cache=cache,
                what=f"resolving the Kafka Connect peer ({profile})",
            )
            jars = sorted(p.name for p in out.glob("*.jar"))
            if not jars:
                raise ArtifactError(f"resolving {profile}: no jars in {out}")
            files += [f"{sub}/{j}" for j in jars]
        must = (
            f"worker/connect-runtime-{KAFKA_CONNECT_VERSION}.jar",
            f"{PLUGINS['mongodb'][1]}/mongo-kafka-connect-{MONGO_CONNECTOR_VERSION}-all.jar",
            f"{PLUGINS['postgres'][1]}/debezium-connector-jdbc-{DEBEZIUM_VERSION}.jar",
        )
        missing = [m for m in must if m not in files]
        if missing:
            raise ArtifactError(f"resolving the Kafka Connect peer: missing {missing}")
        return files

    stamp = f"{KAFKA_CONNECT_VERSION}/{MONGO_CONNECTOR_VERSION}/{DEBEZIUM_VERSION}/layout-3"
    return install_once(install_dir(cache), stamp, resolve)


def _properties(values: dict[str, object]) -> str:
    def esc(v: object) -> str:
        s = str(v).lower() if isinstance(v, bool) else str(v)
        return s.replace("\\", "\\\\").replace("\n", "\\n")

    return "".join(f"{k}={esc(v)}\n" for k, v in values.items())


class ConnectPeer:
    """One sink connector (one task) in a Kafka Connect standalone worker."""

    def __init__(self, name: str, target: Target, *, tasks: int = 1) -> None:
        self.name = name
        self.target: Target = target
        self.tasks = tasks
        self.version = f"kafka-connect {KAFKA_CONNECT_VERSION} + " + (
            f"mongo-kafka-connect {MONGO_CONNECTOR_VERSION}"
            if target == "mongodb"
            else f"debezium-connector-jdbc {DEBEZIUM_VERSION}"
        )

    def install(self, cache: Path) -> None:
        install(cache)

    def settings(self) -> dict[str, object]:
        common: dict[str, object] = {
            "version": self.version,
            "worker": f"ConnectStandalone, offset.flush.interval.ms={OFFSET_FLUSH_MS}",
            "jvm": " ".join(JVM_OPTS),
            "tasks.max": self.tasks,
            "batch": "consumer.max.poll.records = batch size",
        }
        if self.target == "mongodb":
            return {
                **common,
                "connector": "com.mongodb.kafka.connect.MongoSinkConnector",
                "converter": "JsonConverter, schemas.enable=false (plain JSON topic)",
                "idempotence": "ProvidedInValueStrategy (_id from the value) + "
                "ReplaceOneDefaultStrategy (replaceOne, upsert)",
                "max.batch.size": "batch size",
            }
        return {
            **common,
            "connector": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "converter": "JsonConverter, schemas.enable=true (schema+payload envelope topic)",
            "idempotence": "insert.mode=upsert, primary.key.mode=record_value, "
            "primary.key.fields=_id (INSERT ... ON CONFLICT (_id) DO UPDATE)",
            "batch.size": "batch size",
            "dialect.postgres.unnest.insert.enabled": True,
            "schema.evolution": "basic (creates the table)",
        }

    def worker_properties(self, ctx: RunContext, install: Path, port: int) -> dict[str, object]:
        schemas = self.target == "postgres"
        # Only this peer's plugin: the worker scans every jar on plugin.path at start-up
        # (the MongoDB connector's jar has no ServiceLoader manifest, so plugin.discovery
        # keeps its default, hybrid_warn, which scans).
        plugin_path = (install / PLUGINS[self.target][1]).parent
        return {
            "bootstrap.servers": ctx.bootstrap,
            "listeners": f"http://127.0.0.1:{port}",
            "plugin.path": plugin_path,
            "offset.storage.file.filename": ctx.workdir / f"{self.name}.offsets",
            "offset.flush.interval.ms": OFFSET_FLUSH_MS,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": schemas,
            # Debezium's jars all have ServiceLoader manifests (the worker itself suggests
            # service_load, which skips the reflective scan); the MongoDB "all" jar has none.
            "plugin.discovery": "service_load" if self.target == "postgres" else "hybrid_warn",
            "connector.client.config.override.policy": "All",
            "consumer.max.poll.records": ctx.batch_size,
            "consumer.auto.offset.reset": "earliest",
        }

    def connector_properties(self, ctx: RunContext) -> dict[str, object]:
        common: dict[str, object] = {
            "name": f"bench-{self.name}",
            "tasks.max": self.tasks,
            "consumer.override.group.id": ctx.group,
            "consumer.override.max.poll.records": ctx.batch_size,
        }
        if self.target == "mongodb":
            return {
                **common,
                "connector.class": "com.mongodb.kafka.connect.MongoSinkConnector",
                "topics": ctx.topic,
                "connection.uri": ctx.mongo_uri,
                "database": ctx.mongo_database,
                "collection": ctx.mongo_collection,
                "document.id.strategy": (
                    "com.mongodb.kafka.connect.sink.processor.id.strategy.ProvidedInValueStrategy"
                ),
                "writemodel.strategy": (
                    "com.mongodb.kafka.connect.sink.writemodel.strategy.ReplaceOneDefaultStrategy"
                ),
                "max.batch.size": ctx.batch_size,
            }
        pg = postgres_params(ctx.postgres_dsn)
        return {
            **common,
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "topics": ctx.envelope_topic,
            "connection.url": f"jdbc:postgresql://{pg.host}:{pg.port}/{pg.database}",
            "connection.username": pg.user,
            "connection.password": pg.password,
            "insert.mode": "upsert",
            "primary.key.mode": "record_value",
            "primary.key.fields": "_id",
            "delete.enabled": False,
            "schema.evolution": "basic",
            "quote.identifiers": True,
            "collection.name.format": ctx.postgres_table,
            "batch.size": ctx.batch_size,
            "dialect.postgres.unnest.insert.enabled": True,
        }

    def run(self, ctx: RunContext, *, kill_after_s: float | None = None) -> RunResult:
        root = install(ctx.cache)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        worker = ctx.workdir / f"{self.name}-worker.properties"
        connector = ctx.workdir / f"{self.name}.properties"
        log4j = ctx.workdir / f"{self.name}-log4j2.xml"
        worker.write_text(_properties(self.worker_properties(ctx, root, free_port())))
        connector.write_text(_properties(self.connector_properties(ctx)))
        log4j.write_text(LOG4J2)
        cmd = [
            java_executable(),
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{root / 'worker'}{os.sep}*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(worker),
            str(connector),
        ]
        return run_measured(
            ctx, cmd, log=ctx.workdir / f"{self.name}.log", kill_after_s=kill_after_s
        )

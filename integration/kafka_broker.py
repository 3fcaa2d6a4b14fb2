"""A real Apache Kafka 4.x broker (KRaft combined mode) for integration tests.

Why: the connector's delivery guarantees (offsets committed only after the backend acks,
redelivery after a crash or a broker restart) can only be checked against a real broker, and
the development/CI machines have no Docker engine. The broker runs from the official jars on
Maven Central, resolved by ``integration/kafka/pom.xml`` into the project cache directory
(see integration/artifacts.py), with no network access at run time once the cache is warm.
`KafkaBroker` is one node; integration/kafka_cluster.py runs three of them as one cluster.
A broker may also serve a SASL_SSL listener (SCRAM-SHA-512 over TLS), see `sasl_ssl_broker`.

Library use::

    with KafkaBroker() as broker:
        broker.create_topic("events", partitions=3)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})

CLI, from the repository root::

    python -m integration.kafka_broker fetch                       # only resolve the jars
    python -m integration.kafka_broker start --state-file F        # detached; prints bootstrap
    python -m integration.kafka_broker stop --state-file F         # stop it and clean up
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from integration.artifacts import (
    ArtifactError,
    cache_dir,
    install_once,
    java_executable,
    run_maven,
)
from integration.processes import (
    KILL_TIMEOUT_S,
    LOOPBACK,
    ManagedServer,
    ProcessWatchdog,
    free_ports,
    pid_alive,
    port_open,
    read_log,
    register_live,
    spawn,
    terminate,
    unregister_live,
    wait_for_startup,
    wait_until,
)

KAFKA_VERSION = "4.1.1"
"""Pinned broker version; must resolve as org.apache.kafka:kafka_2.13 on Maven Central."""

POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"

TEST_BOOTSTRAP_ENV = "DATA_INGEST_TEST_KAFKA_BOOTSTRAP"
"""Env var naming an existing Kafka for the tests. Deliberately not ``KAFKA_BOOTSTRAP_SERVERS``,
which users export for their real cluster: the tests create and fill topics."""

SCRAM_MECHANISM = "SCRAM-SHA-512"
"""The SASL mechanism of the SASL_SSL listener."""

DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    # C1 only: ready in ~2 s instead of ~4 s on 2 cores (no C2 compile threads competing);
    # lower peak throughput, which tests do not need. Drop it for benchmarks.
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
"""JVM flags for the broker; pass ``jvm_opts`` to KafkaBroker to replace them."""

STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by integration/kafka_broker.py: broker logs at WARN to stdout (-> broker.log). -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
    <!-- One INFO line per start/stop ("Kafka Server started") helps reading restart logs. -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
"""


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------


def ensure_artifacts(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    """Resolve the broker's runtime jars with Maven once; return the ``libs`` directory.

    The jars land in ``<cache>/kafka/<version>/libs`` and Maven's download cache in
    ``<cache>/m2``; see `integration.artifacts.install_once` for the once-only rules.
    """
    cache = cache or cache_dir()

    def copy_dependencies(staging: Path) -> list[str]:
        run_maven(
            POM_PATH,
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            f"-Dkafka.version={version}",
            cache=cache,
            what=f"resolving Kafka {version}",
        )
        jars = [p.name for p in staging.glob("*.jar")]
        if f"kafka_2.13-{version}.jar" not in jars:
            raise ArtifactError(f"resolving Kafka {version}: no kafka_2.13 jar in {jars}")
        return jars

    return install_once(cache / "kafka" / version / "libs", version, copy_dependencies)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A random cluster id: 22 chars of URL-safe base64, like ``kafka-storage random-uuid``."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _admin(bootstrap_servers: str) -> Any:
    """A confluent_kafka AdminClient (imported lazily: the CLI 'fetch' does not need it)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap_servers})


class TopicOptions(TypedDict, total=False):
    """Keyword options of `create_topic` (also taken by `KafkaBroker.create_topic`)."""

    replication_factor: int
    config: Mapping[str, str] | None
    timeout: float


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 3,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create a topic and wait until every partition has a leader.

    Works against any broker (local, container or env-provided), since the test brokers have
    ``auto.create.topics.enable=false``.
    """
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap_servers)
    topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(config or {}),
    )
    futures = admin.create_topics([topic], operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_for_topic(bootstrap_servers, name, partitions, timeout=timeout)


def wait_for_topic(
    bootstrap_servers: str, name: str, partitions: int, *, timeout: float = 30.0
) -> None:
    """Wait until the broker(s) answering at ``bootstrap_servers`` know a leader per partition."""
    admin = _admin(bootstrap_servers)
    deadline = time.monotonic() + timeout

    def every_partition_led() -> bool:
        md = admin.list_topics(topic=name, timeout=max(1.0, deadline - time.monotonic()))
        tmd = md.topics.get(name)
        return (
            tmd is not None
            and tmd.error is None
            and len(tmd.partitions) == partitions
            and all(p.leader >= 0 for p in tmd.partitions.values())
        )

    wait_until(
        every_partition_led,
        timeout,
        lambda: f"topic {name!r} has no leader for every partition after {timeout}s",
    )


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaslSslListener:
    """A client listener speaking SASL_SSL: SCRAM-SHA-512 users over TLS.

    ``cert_file``/``key_file``: the server certificate and its unencrypted PKCS#8 key (PEM).
    ``users``: name -> password, created at storage format time (KRaft needs SCRAM
    credentials before the first start). No authorizer: every user may do everything.
    """

    cert_file: Path
    key_file: Path
    users: Mapping[str, str]


class KafkaBroker(ManagedServer):
    """One Kafka broker+controller JVM (KRaft combined mode) on free loopback ports.

    The ports are picked once and kept for the object's life, so ``restart()`` brings the
    broker back on the same address with the same data. Alone it is its own single-voter
    quorum; `KafkaCluster` makes several share one quorum (``node_id``, ports, ``quorum_voters``
    and ``cluster_id`` given).
    """

    def __init__(
        self,
        *,
        version: str = KAFKA_VERSION,
        data_dir: str | Path | None = None,
        keep_data: bool = False,
        detached: bool = False,
        jvm_opts: Sequence[str] | None = None,
        extra_properties: Mapping[str, str | int | bool] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        cache: Path | None = None,
        node_id: int = 1,
        port: int | None = None,
        controller_port: int | None = None,
        quorum_voters: str | None = None,
        cluster_id: str | None = None,
        sasl_ssl: SaslSslListener | None = None,
    ) -> None:
        """Configure (not start) a broker.

        ``data_dir``: use this directory (kept on stop) instead of a fresh temp dir.
        ``keep_data``: keep the temp dir on ``stop()`` (to read logs after a failure).
        ``detached``: the JVM may outlive this Python process (no atexit kill, no watchdog);
        used by the CLI ``start``.
        ``extra_properties``: added to / overriding the generated ``server.properties``.
        ``port``/``controller_port``: fixed listener ports (default: free ones at first start).
        ``quorum_voters``: ``controller.quorum.voters`` (default: this node alone).
        ``cluster_id``: the id to format the storage with (default: a new random one).
        ``sasl_ssl``: also serve a SASL_SSL listener (`sasl_ssl_bootstrap_servers`).
        """
        self.version = version
        self.keep_data = keep_data
        self.detached = detached
        self.jvm_opts: tuple[str, ...] = tuple(DEFAULT_JVM_OPTS if jvm_opts is None else jvm_opts)
        self.extra_properties: dict[str, str | int | bool] = dict(extra_properties or {})
        self.startup_timeout = startup_timeout
        self.node_id = node_id
        self.sasl_ssl = sasl_ssl
        self._cache = cache
        self._quorum_voters = quorum_voters
        self._owns_data_dir = data_dir is None
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self._port = port
        self._controller_port = controller_port
        self._sasl_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._exit_code: int | None = None
        self._log_offset = 0
        self._cluster_id = cluster_id
        self._ready_once = False
        self._watchdog: ProcessWatchdog | None = None

    # -- properties ----------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the PLAINTEXT listener (valid once started)."""
        if self._port is None:
            raise RuntimeError("broker not started")
        return f"{LOOPBACK}:{self._port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the SASL_SSL listener (only with ``sasl_ssl``, once started)."""
        if self._sasl_port is None:
            raise RuntimeError("broker not started, or started without a SASL_SSL listener")
        return f"{LOOPBACK}:{self._sasl_port}"

    @property
    def port(self) -> int | None:
        """Client (PLAINTEXT) listener port, or None before the first start."""
        return self._port

    @property
    def controller_port(self) -> int | None:
        """KRaft controller listener port, or None before the first start."""
        return self._controller_port

    @property
    def data_dir(self) -> Path | None:
        """Directory holding server.properties, log4j2.xml, broker.log and the Kafka logs."""
        return self._data_dir

    @property
    def log_path(self) -> Path | None:
        """The JVM's stdout/stderr (broker logs at WARN), appended across restarts."""
        return self._data_dir / "broker.log" if self._data_dir else None

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM while it runs."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def last_exit_code(self) -> int | None:
        """How the previous JVM run ended (negative: killed by that signal), None before any."""
        return self._exit_code

    @property
    def cluster_id(self) -> str | None:
        """The KRaft cluster id written by the storage format (None before the first start)."""
        return self._cluster_id

    @property
    def is_running(self) -> bool:
        """True while the broker JVM process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> KafkaBroker:
        """`launch` the JVM, then `wait_ready`; on the first start also format the storage.

        Raises RuntimeError (with the tail of the broker log) if the JVM exits early or the
        broker does not serve metadata within ``startup_timeout`` seconds.
        """
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Resolve jars, write config, format storage on first start, spawn the JVM; no wait.

        Separate from `wait_ready` because the nodes of a cluster must all be launched before
        any can be ready: a quorum of three voters needs two of them up.
        """
        if self.is_running:
            raise RuntimeError(f"broker already running (pid {self.pid})")
        try:
            libs = ensure_artifacts(self.version, self._cache)
            if self._data_dir is None:
                self._data_dir = Path(tempfile.mkdtemp(prefix="kafka-broker-")).resolve()
            self._launch_in_data_dir(libs)
        except BaseException:
            self._abort_start()
            raise

    def wait_ready(self) -> None:
        """Wait until the launched broker serves metadata listing itself; kill it if it does not.

        The cluster id must match ours: otherwise a foreign broker on a reused port (or a
        JVM of ours that failed to bind) would look ready.
        """
        from confluent_kafka import KafkaException

        assert self._proc is not None and self._port is not None and self.log_path is not None
        port, sasl_port = self._port, self._sasl_port
        admin: Any = None

        def serves_metadata() -> bool:
            nonlocal admin
            if not port_open(port) or (sasl_port is not None and not port_open(sasl_port)):
                return False
            admin = admin or _admin(self.bootstrap_servers)
            md = admin.list_topics(timeout=2.0)
            return bool(md.cluster_id == self._cluster_id and self.node_id in md.brokers)

        try:
            wait_for_startup(
                self._proc,
                serves_metadata,
                what=f"Kafka broker {self.node_id}",
                timeout=self.startup_timeout,
                log_path=self.log_path,
                log_offset=self._log_offset,
                interval=0.2,
                retry_on=(KafkaException,),
                timeout_error=RuntimeError,
            )
        except BaseException:
            self._abort_start()
            raise
        self._ready_once = True

    def stop(self, *, graceful: bool = True, remove_data: bool | None = None) -> None:
        """Stop the JVM (SIGTERM, up to 30 s, then SIGKILL); remove an owned temp dir.

        ``graceful=False`` sends SIGKILL at once (a crash). ``remove_data`` overrides the
        default, which removes the data dir only if this object created it and ``keep_data``
        is false.
        """
        self._terminate(graceful=graceful)
        unregister_live(self)
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if remove_data is None:
            remove_data = self._owns_data_dir and not self.keep_data
        if remove_data and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._port = self._controller_port = self._sasl_port = None

    def kill(self) -> None:
        """SIGKILL the JVM (a crash) and keep its data dir and ports: `start()` brings it back."""
        self._terminate(graceful=False)

    def restart(self, *, hard: bool = False, downtime: float = 0.0) -> None:
        """Stop and start again on the same ports and data dir, without reformatting.

        ``hard=True`` kills the JVM with SIGKILL (broker crash) instead of a clean shutdown;
        ``downtime`` seconds pass between stop and start (clients see the broker gone).
        """
        self._terminate(graceful=not hard)
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    # -- helpers for tests -----------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 3, **options: Unpack[TopicOptions]) -> None:
        """Create a topic on this broker and wait until all partitions have a leader."""
        create_topic(self.bootstrap_servers, name, partitions, **options)

    def log_tail(self, lines: int = 60, *, since_last_start: bool = True) -> str:
        """Last ``lines`` lines of broker.log (by default only of the current/last start)."""
        path = self.log_path
        if path is None or not path.exists():
            return "<no broker log>"
        return read_log(path, self._log_offset if since_last_start else 0, lines)

    def state(self) -> dict[str, Any]:
        """JSON-able description (what the CLI writes to its state file)."""
        return {
            "pid": self.pid,
            "bootstrap_servers": self.bootstrap_servers,
            "port": self._port,
            "controller_port": self._controller_port,
            "data_dir": str(self._data_dir),
            "log": str(self.log_path),
            "version": self.version,
            "remove_data": self._owns_data_dir and not self.keep_data,
        }

    # -- internals -------------------------------------------------------------------------

    def _launch_in_data_dir(self, libs: Path) -> None:
        """The part of `launch` after the data dir exists: config, format, spawn."""
        assert self._data_dir is not None
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._pick_ports()
        props_path = self._write_config()
        java = java_executable()
        classpath = f"{libs}/*"
        log4j = f"-Dlog4j2.configurationFile={self._data_dir / 'log4j2.xml'}"
        if not (self._data_dir / "kraft" / "meta.properties").exists():
            self._format(java, classpath, log4j, props_path)
        self._cluster_id = self._read_cluster_id()
        self._spawn([java, *self.jvm_opts, log4j, "-cp", classpath, "kafka.Kafka", str(props_path)])

    def _pick_ports(self) -> None:
        """Choose free loopback ports for the listeners that have none yet (first start)."""
        wanted = [self._port, self._controller_port]
        if self.sasl_ssl is not None:
            wanted.append(self._sasl_port)
        fresh = iter(free_ports(wanted.count(None)))
        self._port = self._port or next(fresh)
        self._controller_port = self._controller_port or next(fresh)
        if self.sasl_ssl is not None:
            self._sasl_port = self._sasl_port or next(fresh)

    def _properties(self) -> dict[str, str | int | bool]:
        """The broker's server.properties as a dict (defaults tuned for fast, small tests)."""
        assert self._data_dir is not None
        port, cport = self._port, self._controller_port
        listeners = [f"PLAINTEXT://{LOOPBACK}:{port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.sasl_ssl is not None:
            listeners.append(f"SASL_SSL://{LOOPBACK}:{self._sasl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
        props: dict[str, str | int | bool] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            # Static quorum: no --standalone / dynamic-quorum bootstrap needed.
            "controller.quorum.voters": self._quorum_voters or f"{self.node_id}@{LOOPBACK}:{cport}",
            "listeners": ",".join([*listeners, f"CONTROLLER://{LOOPBACK}:{cport}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self._data_dir / "kraft"),
            "num.partitions": 3,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "auto.create.topics.enable": False,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 3,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # After a SIGKILL the restarted controller refuses the new broker incarnation until
            # the old session expires: 9 s by default, 4 s here (hard-restart ~5.5 s, not 11 s).
            "broker.session.timeout.ms": 4000,
            "broker.heartbeat.interval.ms": 1000,
            # The default 128 MiB compaction buffer is a quarter of the heap; tests need little.
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        }
        if self.sasl_ssl is not None:
            props.update(_sasl_ssl_properties(self.sasl_ssl))
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> Path:
        """Write server.properties and log4j2.xml into the data dir; return the former."""
        assert self._data_dir is not None
        lines = ["# Written by integration/kafka_broker.py"]
        for key, value in self._properties().items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"{key}={_escape_property(text)}")
        props_path = self._data_dir / "server.properties"
        props_path.write_text("\n".join(lines) + "\n")
        props_path.chmod(0o600)  # it may hold a private key
        (self._data_dir / "log4j2.xml").write_text(_LOG4J2_XML)
        return props_path

    def _format(self, java: str, classpath: str, log4j: str, props_path: Path) -> None:
        """``kafka-storage format`` equivalent (with the SCRAM users); only on the first start."""
        scram: list[str] = []
        for name, password in (self.sasl_ssl.users if self.sasl_ssl else {}).items():
            scram += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        cmd = [
            java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            log4j,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self._cluster_id or new_cluster_id(),
            "--config",
            str(props_path),
            "--ignore-formatted",
            *scram,
        ]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"kafka storage format failed (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-4000:]}"
            )

    def _read_cluster_id(self) -> str:
        """Cluster id from the formatted log dir's meta.properties."""
        assert self._data_dir is not None
        meta = self._data_dir / "kraft" / "meta.properties"
        for line in meta.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "cluster.id":
                return value.strip()
        raise RuntimeError(f"no cluster.id in {meta}")

    def _spawn(self, cmd: list[str]) -> None:
        """Spawn the JVM in its own session, stdout/stderr appended to broker.log.

        Unless detached, it is stopped at exit, and a watchdog stops it and removes an owned
        temp dir if this Python process is killed.
        """
        assert self._data_dir is not None and self.log_path is not None
        if not self.detached and self._watchdog is None:
            owned = self._owns_data_dir and not self.keep_data
            self._watchdog = ProcessWatchdog(
                self._pidfile, self._data_dir if owned else None, "TERM"
            )
        self._proc, self._log_offset = spawn(
            cmd,
            self.log_path,
            cwd=self._data_dir,
            banner=f"\n===== broker start {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n",
        )
        if not self.detached:
            self._pidfile.write_text(str(self._proc.pid))
            register_live(self)

    @property
    def _pidfile(self) -> Path:
        """Where the watchdog reads the pid to stop (empty while the broker is down)."""
        assert self._data_dir is not None
        return self._data_dir / "broker.pid"

    def _abort_start(self) -> None:
        """Kill a JVM that failed to start; a failed first start leaves nothing behind."""
        self._terminate(graceful=False)
        if not self._ready_once and self._owns_data_dir and not self.keep_data:
            self.stop(remove_data=True)

    def _terminate(self, *, graceful: bool) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after STOP_TIMEOUT_S; or SIGKILL at once) and reap it."""
        if self._proc is None:
            return
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        terminate(self._proc, sig, STOP_TIMEOUT_S if graceful else KILL_TIMEOUT_S)
        self._exit_code = self._proc.returncode
        if self._watchdog is not None:
            # The watchdog must not signal a pid that may be reused while the broker is down.
            self._pidfile.write_text("")


def _escape_property(value: str) -> str:
    """A java.util.Properties value: backslashes doubled, newlines as ``\\n`` (PEM spans lines)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _sasl_ssl_properties(listener: SaslSslListener) -> dict[str, str | int | bool]:
    """server.properties of the SASL_SSL listener: SCRAM-SHA-512, PEM key store given inline."""
    prefix = "listener.name.sasl_ssl."
    return {
        f"{prefix}sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"{prefix}{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.certificate.chain": listener.cert_file.read_text(),
        f"{prefix}ssl.keystore.key": listener.key_file.read_text(),
        f"{prefix}ssl.client.auth": "none",
    }


def stop_detached(state_file: str | Path, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop a broker started by ``start --state-file`` (another process); clean up.

    Returns True if a running broker was found and stopped.
    """
    path = Path(state_file)
    state = json.loads(path.read_text())
    pid = int(state["pid"])
    data_dir = str(state["data_dir"])
    was_running = False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        cmdline = ""
    # Only signal the pid if it is still our JVM (the pid may have been reused).
    if pid_alive(pid) and data_dir in cmdline:
        was_running = True
        terminate(pid, signal.SIGTERM, timeout)
    if state.get("remove_data"):
        shutil.rmtree(data_dir, ignore_errors=True)
    path.unlink(missing_ok=True)
    return was_running


# --------------------------------------------------------------------------------------------
# Choosing a broker for the test session (used by integration/conftest.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaEndpoint:
    """The Kafka the tests talk to, and where it came from (env / testcontainers / local)."""

    bootstrap_servers: str
    source: str
    broker: KafkaBroker | None = None


@contextlib.contextmanager
def kafka_endpoint() -> Iterator[KafkaEndpoint]:
    """Yield a Kafka for the tests and stop what was started here.

    Order: env ``DATA_INGEST_TEST_KAFKA_BOOTSTRAP`` -> a Kafka container started through
    testcontainers when ``DATA_INGEST_KAFKA=testcontainers`` (``make test-containers``) -> a
    local ``KafkaBroker`` (the default, and ``DATA_INGEST_KAFKA=local``: the restart and
    crash tests need it). ``KAFKA_BOOTSTRAP_SERVERS`` is never read: users export it for
    their real cluster, which the tests must not write to.
    """
    env = os.environ.get(TEST_BOOTSTRAP_ENV)
    if env:
        yield KafkaEndpoint(env, "env")
        return
    if os.environ.get("DATA_INGEST_KAFKA", "local") == "testcontainers":
        with kafka_container() as bootstrap:
            yield KafkaEndpoint(bootstrap, "testcontainers")
        return
    with KafkaBroker() as broker:
        yield KafkaEndpoint(broker.bootstrap_servers, "local", broker)


CONTAINER_IMAGE = f"localhost/data-ingest-kafka:{KAFKA_VERSION}"


@contextlib.contextmanager
def kafka_container(timeout: float = 120.0) -> Iterator[str]:
    """A broker in a container started through testcontainers; yields its bootstrap servers.

    The image (``$KAFKA_TESTCONTAINERS_IMAGE``, default ``CONTAINER_IMAGE``) is built here
    from Kafka's Maven jars (``integration/build_image.sh kafka``). It runs with the host's
    network on two free loopback ports, so the address clients are given is the one they
    reach, as with the local broker.
    """
    from testcontainers.core.container import DockerContainer

    image = os.environ.get("KAFKA_TESTCONTAINERS_IMAGE", CONTAINER_IMAGE)
    port, controller_port = free_ports(2)
    container = (
        DockerContainer(image)
        .with_env("KAFKA_PORT", str(port))
        .with_env("KAFKA_CONTROLLER_PORT", str(controller_port))
        .with_kwargs(network_mode="host")
    )
    container.start()
    bootstrap = f"{LOOPBACK}:{port}"
    try:
        _wait_for_broker(bootstrap, timeout, lambda: _container_logs(container))
        yield bootstrap
    finally:
        container.stop()


def _container_logs(container: Any) -> str:
    out, err = container.get_logs()
    return (out + err).decode(errors="replace")[-4000:]


def _wait_for_broker(bootstrap: str, timeout: float, logs: Callable[[], str]) -> None:
    """Until the broker at ``bootstrap`` answers a metadata request; its logs if it does not."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=2)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Kafka container at {bootstrap} did not answer within {timeout:.0f} s:"
                    f"\n{logs()}"
                ) from None
            time.sleep(0.5)


@dataclass(frozen=True)
class SaslSslKafka:
    """A broker's SASL_SSL listener as a client sees it: address, SCRAM user, CA to trust."""

    bootstrap_servers: str
    username: str
    password: str
    ca_file: Path
    broker: KafkaBroker

    def client_config(self, **overrides: str) -> dict[str, str]:
        """confluent-kafka settings for this listener (verifying the broker's certificate)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": SCRAM_MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": str(self.ca_file),
            "ssl.endpoint.identification.algorithm": "https",
            **overrides,
        }


@contextlib.contextmanager
def sasl_ssl_broker(directory: Path, username: str = "alice") -> Iterator[SaslSslKafka]:
    """A local broker with a SASL_SSL listener: a new CA in ``directory``, a server certificate
    for 127.0.0.1/localhost signed by it, and one SCRAM-SHA-512 user with a random password."""
    from integration.tls import CertificateAuthority

    ca = CertificateAuthority.create(directory, "kafka test CA")
    cert = ca.issue_server_cert(directory, "kafka-broker")
    password = secrets.token_urlsafe(18)
    listener = SaslSslListener(cert.cert_file, cert.key_file, {username: password})
    with KafkaBroker(sasl_ssl=listener) as broker:
        yield SaslSslKafka(
            broker.sasl_ssl_bootstrap_servers, username, password, ca.cert_file, broker
        )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m integration.kafka_broker {fetch,start,stop}``; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m integration.kafka_broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kafka-version", default=KAFKA_VERSION, help="Kafka version to use")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="only resolve the broker jars into the cache")
    p_start = sub.add_parser("start", help="start a detached broker, print its bootstrap servers")
    p_start.add_argument("--state-file", required=True, type=Path)
    p_start.add_argument("--data-dir", type=Path, help="use (and keep) this data dir")
    p_stop = sub.add_parser("stop", help="stop the broker recorded in the state file")
    p_stop.add_argument("--state-file", required=True, type=Path)
    args = parser.parse_args(argv)

    if args.command == "fetch":
        print(ensure_artifacts(args.kafka_version))
        return 0
    if args.command == "start":
        if args.state_file.exists():
            parser.error(f"{args.state_file} exists: stop that broker first")
        broker = KafkaBroker(version=args.kafka_version, data_dir=args.data_dir, detached=True)
        broker.start()
        args.state_file.parent.mkdir(parents=True, exist_ok=True)
        args.state_file.write_text(json.dumps(broker.state(), indent=2) + "\n")
        print(broker.bootstrap_servers)
        return 0
    if not args.state_file.exists():
        print(f"{args.state_file}: no state file, nothing to stop", file=sys.stderr)
        return 0
    stopped = stop_detached(args.state_file)
    print("stopped" if stopped else "broker was not running", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real, Confluent-compatible Schema Registry for integration tests.

The server is Apicurio Registry (Quarkus app, in-memory H2 storage), fetched from the Maven
registry by ``integration/schema-registry/pom.xml`` and unpacked into the cache directory
(``$DATA_INGEST_CACHE`` or ``<repo>/.cache``). Its Confluent-compatible API lives under
``/apis/ccompat/v7``; :attr:`SchemaRegistryServer.url` points there, so it can be handed to
``confluent_kafka.schema_registry.SchemaRegistryClient({"url": server.url})`` as is.

Usage::

    with SchemaRegistryServer() as sr:
        client = SchemaRegistryClient({"url": sr.url})
"""

from __future__ import annotations

import signal
import subprocess
import tarfile
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Self

from integration.artifacts import (
    ArtifactError,
    cache_dir,
    install_once,
    java_executable,
    run_maven,
)
from integration.processes import (
    LOOPBACK,
    ManagedServer,
    PortInUseError,
    free_ports,
    register_live,
    retry_on_port_clash,
    spawn,
    terminate,
    unregister_live,
    wait_for_startup,
)

POM_PATH = Path(__file__).resolve().parent / "schema-registry" / "pom.xml"
CCOMPAT_PATH = "/apis/ccompat/v7"
DEFAULT_JVM_OPTS: tuple[str, ...] = ("-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_PORT_IN_USE_MARKERS = (
    "Address already in use",
    "Port already bound",
    "BindException",
    "seems to be in use",  # what Apicurio 3.0.9 (Quarkus) prints
)


class SchemaRegistryError(RuntimeError):
    """The schema registry could not be installed or started."""


def pinned_version(pom: Path = POM_PATH) -> str:
    """Read the Apicurio Registry version pinned in the fetch POM."""
    node = ET.parse(pom).getroot().find("m:properties/m:apicurio-registry.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise SchemaRegistryError(f"no apicurio-registry.version property in {pom}")
    return (node.text or "").strip()


def _find_launcher(install_dir: Path) -> Path:
    """Find the Quarkus launcher jar (legacy ``*-runner.jar`` or fast-jar ``quarkus-run.jar``)."""
    fast_jar = install_dir / "quarkus-run.jar"
    if fast_jar.is_file():
        return fast_jar
    runners = sorted(install_dir.glob("*-runner.jar"))
    if not runners:
        raise SchemaRegistryError(f"no launcher jar in {install_dir}")
    return runners[0]


def ensure_installed(version: str | None = None, cache: Path | None = None) -> Path:
    """Fetch (via Maven) and unpack the pinned server into the cache once; return its launcher.

    The ``tar.gz:all`` archive lands in Maven's repository ``<cache>/m2``, the unpacked server
    in ``<cache>/apicurio-registry-<version>``.
    """
    version = version or pinned_version()
    cache = cache or cache_dir()
    archive = (
        cache
        / "m2"
        / "io"
        / "apicurio"
        / "apicurio-registry-app"
        / version
        / f"apicurio-registry-app-{version}-all.tar.gz"
    )

    def unpack(staging: Path) -> list[str]:
        if not archive.is_file():
            run_maven(
                POM_PATH,
                f"-Dapicurio-registry.version={version}",
                "dependency:get@fetch",
                cache=cache,
                what=f"fetching apicurio-registry-app {version}",
            )
            if not archive.is_file():
                raise ArtifactError(f"mvn ran but left no {archive}")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        return [str(_find_launcher(staging).relative_to(staging))]

    return _find_launcher(install_once(cache / f"apicurio-registry-{version}", version, unpack))


class SchemaRegistryServer(ManagedServer):
    """A local Apicurio Registry process speaking the Confluent Schema Registry REST API."""

    def __init__(
        self,
        version: str | None = None,
        startup_timeout: float = 180.0,
        jvm_opts: tuple[str, ...] = DEFAULT_JVM_OPTS,
    ) -> None:
        """Configure (but do not start) a server; ``version`` defaults to the POM's pin."""
        self.version: str = version or pinned_version()
        self.startup_timeout: float = startup_timeout
        self.jvm_opts: tuple[str, ...] = jvm_opts
        self.port: int | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise SchemaRegistryError("schema registry is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """Confluent-compatible API URL to pass to ``SchemaRegistryClient``."""
        return self.base_url + CCOMPAT_PATH

    @property
    def pid(self) -> int | None:
        """Process id of the running server, if any."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Fetch if needed, start on a free loopback port, wait until ``GET /subjects`` answers."""
        if self._proc is not None:
            return self
        launcher = ensure_installed(self.version)
        try:
            retry_on_port_clash(lambda: self._launch(launcher))
        except PortInUseError as exc:
            raise SchemaRegistryError(str(exc)) from exc
        return self

    def _launch(self, launcher: Path) -> None:
        """Spawn the JVM with loopback-only listeners on fresh free ports; wait until ready."""
        self.port, management_port = free_ports(2)
        log_dir = cache_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"schema-registry-{self.port}.log"
        self.log_path.unlink(missing_ok=True)  # one log per run, as the port is in its name
        cmd = [
            java_executable(),
            *self.jvm_opts,
            f"-Dquarkus.http.host={LOOPBACK}",
            f"-Dquarkus.http.port={self.port}",
            # Only used by versions built with the management interface on (3.1+).
            f"-Dquarkus.management.host={LOOPBACK}",
            f"-Dquarkus.management.port={management_port}",
            "-Dquarkus.otel.sdk.disabled=true",
            "-jar",
            str(launcher),
        ]
        # parent_death_signal: the JVM goes too if this process is SIGKILLed (no atexit).
        self._proc, log_offset = spawn(
            cmd, self.log_path, cwd=launcher.parent, parent_death_signal=True
        )
        register_live(self)
        try:
            wait_for_startup(
                self._proc,
                self._answers,
                what="schema registry",
                timeout=self.startup_timeout,
                log_path=self.log_path,
                log_offset=log_offset,
                port_clash=_PORT_IN_USE_MARKERS,
                retry_on=(OSError,),  # urllib's errors, connection refused or reset
                error=SchemaRegistryError,
                timeout_error=SchemaRegistryError,
            )
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        """Whether ``GET /subjects`` returns 200."""
        with urllib.request.urlopen(self.url + "/subjects", timeout=2) as resp:
            return bool(resp.status == 200)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM), then kill it if it does not exit within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, signal.SIGTERM, timeout)
        unregister_live(self)

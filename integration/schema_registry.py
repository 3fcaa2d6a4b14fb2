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

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
POM_PATH = Path(__file__).resolve().parent / "schema-registry" / "pom.xml"
CCOMPAT_PATH = "/apis/ccompat/v7"
DEFAULT_JVM_OPTS: tuple[str, ...] = ("-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_PORT_IN_USE_MARKERS = ("Address already in use", "Port already bound", "BindException")


class SchemaRegistryError(RuntimeError):
    """The schema registry could not be fetched or started."""


def cache_dir() -> Path:
    """Return the cache directory: ``$DATA_INGEST_CACHE`` or ``<repo>/.cache``."""
    env = os.environ.get("DATA_INGEST_CACHE")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache"


def pinned_version(pom: Path = POM_PATH) -> str:
    """Read the Apicurio Registry version pinned in the fetch POM."""
    node = ET.parse(pom).getroot().find("m:properties/m:apicurio-registry.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise SchemaRegistryError(f"no apicurio-registry.version property in {pom}")
    return (node.text or "").strip()


def free_loopback_port() -> int:
    """Ask the kernel for a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def java_executable() -> str:
    """Return ``$JAVA_HOME/bin/java`` if set, else ``java`` from ``PATH``."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise SchemaRegistryError("no java executable found (set JAVA_HOME or put java on PATH)")
    return found


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
    """Fetch (via Maven) and unpack the pinned server into the cache; return its launcher jar."""
    version = version or pinned_version()
    cache = cache or cache_dir()
    install_dir = cache / f"apicurio-registry-{version}"
    if (install_dir / ".complete").is_file():
        return _find_launcher(install_dir)

    m2 = cache / "m2"
    archive = (
        m2
        / "io"
        / "apicurio"
        / "apicurio-registry-app"
        / version
        / f"apicurio-registry-app-{version}-all.tar.gz"
    )
    if not archive.is_file():
        mvn = shutil.which("mvn")
        if not mvn:
            raise SchemaRegistryError("Maven (mvn) is needed to fetch the schema registry")
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_PATH),
            f"-Dmaven.repo.local={m2}",
            f"-Dapicurio-registry.version={version}",
            "dependency:get@fetch",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not archive.is_file():
            raise SchemaRegistryError(
                f"fetching apicurio-registry-app {version} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
            )

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".apicurio-registry-{version}-", dir=cache))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        staging.chmod(0o755)  # mkdtemp makes it 0700
        (staging / ".complete").write_text(version + "\n")
        if install_dir.exists():  # a half-finished earlier attempt
            shutil.rmtree(install_dir)
        try:
            staging.rename(install_dir)
        except OSError:
            if not (install_dir / ".complete").is_file():  # lost a race to someone else: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _find_launcher(install_dir)


class SchemaRegistryServer:
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
        self._log: IO[bytes] | None = None
        self._atexit_registered: bool = False

    @property
    def base_url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise SchemaRegistryError("schema registry is not started")
        return f"http://127.0.0.1:{self.port}"

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
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        last_error: SchemaRegistryError | None = None
        for _ in range(3):  # retry only when a picked port was taken before we bound it
            try:
                self._launch(launcher)
                self._wait_ready()
                return self
            except SchemaRegistryError as exc:
                log_text = self._log_tail()
                self.stop()
                last_error = exc
                if not any(marker in log_text for marker in _PORT_IN_USE_MARKERS):
                    raise
        assert last_error is not None
        raise last_error

    def _launch(self, launcher: Path) -> None:
        """Spawn the JVM with loopback-only listeners on fresh free ports."""
        self.port = free_loopback_port()
        management_port = free_loopback_port()
        log_dir = cache_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"schema-registry-{self.port}.log"
        self._log = self.log_path.open("wb")
        cmd = [
            java_executable(),
            *self.jvm_opts,
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            # Only used by versions built with the management interface on (3.1+).
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={management_port}",
            "-Dquarkus.otel.sdk.disabled=true",
            "-jar",
            str(launcher),
        ]
        self._proc = subprocess.Popen(
            cmd,
            cwd=launcher.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        """Poll ``GET /subjects`` until it returns 200, the process dies or time runs out."""
        deadline = time.monotonic() + self.startup_timeout
        probe = self.url + "/subjects"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise SchemaRegistryError(
                    f"schema registry exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(probe, timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise SchemaRegistryError(
            f"schema registry not ready after {self.startup_timeout}s:\n{self._log_tail()}"
        )

    def _log_tail(self, chars: int = 4000) -> str:
        """Last ``chars`` characters of the server log (for error messages)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM), then kill it if it does not exit within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

"""A throwaway MongoDB-wire-compatible server (FerretDB) for integration tests.

MongoDB itself is not in Debian, but FerretDB is a Go module: `integration/install_services.sh
ferretdb` builds it (v1.24.2) into the project cache. FerretDB v1.x has an embedded SQLite
backend, so `MongoWireServer` needs no other server: it runs FerretDB on 127.0.0.1 on a free
port with its SQLite files in a temp dir (``synchronous(full)``: every commit is fsynced).
Optionally it can use FerretDB's PostgreSQL backend instead (``postgresql_url=``).

Like `PostgresServer` it can stop and restart the same server on the same port with its data
kept (outage tests), and no process or temp dir outlives the session (atexit + watchdog).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

from integration.postgres_server import INSTALL_SCRIPT, ProcessWatchdog, free_port

#: How `stop_server` stops FerretDB: ``term`` is a clean shutdown (SIGTERM), ``kill`` is
#: SIGKILL (a crash; SQLite's WAL is recovered on restart).
MongoStopMode = Literal["term", "kill"]

_binary_lock = threading.Lock()
_binary_path: Path | None = None


def ferretdb_binary() -> Path:
    """Path of the FerretDB binary, built by install_services.sh on first use.

    Env ``FERRETDB_BIN`` overrides it (an existing binary to use as is).
    """
    global _binary_path
    if env := os.environ.get("FERRETDB_BIN"):
        return Path(env)
    with _binary_lock:
        if _binary_path is None:
            result = subprocess.run(
                ["bash", str(INSTALL_SCRIPT), "ferretdb"],
                check=False,
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith("FERRETDB_BIN=")]
            if result.returncode != 0 or not lines:
                raise RuntimeError(
                    f"building FerretDB failed ({result.returncode}):\n{result.stderr[-4000:]}"
                )
            _binary_path = Path(lines[-1].split("=", 1)[1])
        return _binary_path


class MongoWireServer:
    """A private FerretDB on 127.0.0.1 speaking the MongoDB wire protocol.

    Use as a context manager, or call `start()` and `stop()`. `stop_server()` and
    `start_server()` take the server down and bring it back on the same port, same data.
    """

    def __init__(
        self,
        *,
        postgresql_url: str | None = None,
        binary: Path | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "warn",
    ) -> None:
        """Configure; nothing runs before `start()`.

        Without ``postgresql_url`` the embedded SQLite backend is used (data in the temp
        dir); with it, FerretDB stores its data in that (existing) PostgreSQL database.
        """
        self._postgresql_url = postgresql_url
        self._binary = binary
        self._base_dir = base_dir
        self._startup_timeout = startup_timeout
        self._log_level = log_level
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._watchdog: ProcessWatchdog | None = None
        self._build_info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.start_seconds: float | None = None
        """Wall time of the last `start()` (binary lookup + start + first ping)."""

    # -- public API ---------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """FerretDB's handler: ``sqlite`` or ``postgresql``."""
        return "postgresql" if self._postgresql_url else "sqlite"

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (fixed for the life of the server)."""
        if self._port is None:
            raise RuntimeError("MongoWireServer not started")
        return self._port

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return "127.0.0.1"

    @property
    def uri(self) -> str:
        """MongoDB connection string, e.g. ``mongodb://127.0.0.1:PORT/``."""
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def version(self) -> str:
        """``buildInfo.version``: the MongoDB version FerretDB claims to be (e.g. '7.0.42')."""
        return str(self._require_build_info()["version"])

    @property
    def ferretdb_version(self) -> str:
        """``buildInfo.ferretdbVersion``, e.g. 'v1.24.2'."""
        return str(self._require_build_info()["ferretdbVersion"])

    @property
    def build_info(self) -> dict[str, Any]:
        """The whole ``buildInfo`` reply from the last start."""
        return dict(self._require_build_info())

    @property
    def data_dir(self) -> Path:
        """Directory of the SQLite files (one per database)."""
        return self._require_tmpdir() / "data"

    @property
    def log_path(self) -> Path:
        """FerretDB's log (stdout and stderr of every run, appended)."""
        return self._require_tmpdir() / "ferretdb.log"

    @property
    def is_running(self) -> bool:
        """Whether the FerretDB process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Build FerretDB if needed, start it on a free port, wait until ``ping`` succeeds."""
        with self._lock:
            if self._tmpdir is not None:
                raise RuntimeError("MongoWireServer already started")
            t0 = time.monotonic()
            if self._binary is None:
                self._binary = ferretdb_binary()
            self._tmpdir = Path(tempfile.mkdtemp(prefix="ingest-ferretdb-", dir=self._base_dir))
            _LIVE.add(self)
            try:
                self._watchdog = ProcessWatchdog(self._tmpdir / "server.pid", self._tmpdir, "TERM")
                (self._tmpdir / "data").mkdir()
                for attempt in range(3):
                    self._port = free_port()
                    try:
                        self._launch()
                        break
                    except _PortInUseError:
                        if attempt == 2:
                            raise
            except BaseException:
                self._stop_locked()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def stop_server(self, mode: MongoStopMode = "term", timeout: float = 15.0) -> None:
        """Stop FerretDB but keep its data and port, for `start_server()` later.

        A clean shutdown that does not finish within ``timeout`` seconds becomes SIGKILL.
        """
        with self._lock:
            self._stop_process(mode, timeout)

    def start_server(self) -> None:
        """Start FerretDB again on the same port and data; wait until ``ping`` succeeds."""
        with self._lock:
            if self._tmpdir is None or self._port is None:
                raise RuntimeError("MongoWireServer not started")
            if self.is_running:
                raise RuntimeError("FerretDB is already running")
            self._launch()

    @contextlib.contextmanager
    def outage(self, mode: MongoStopMode = "term") -> Iterator[None]:
        """Context manager: the server is down inside the ``with`` block, back up after it."""
        self.stop_server(mode)
        try:
            yield
        finally:
            self.start_server()

    def stop(self) -> None:
        """Stop FerretDB (SIGTERM, then SIGKILL) and delete its data. Idempotent."""
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"MongoWireServer(backend={self.backend}, port={self._port}, "
            f"running={self.is_running}, dir={self._tmpdir})"
        )

    # -- internals ----------------------------------------------------------------------------

    def _require_tmpdir(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("MongoWireServer not started")
        return self._tmpdir

    def _require_build_info(self) -> dict[str, Any]:
        if self._build_info is None:
            raise RuntimeError("MongoWireServer not started")
        return self._build_info

    def _args(self) -> list[str]:
        tmp = self._require_tmpdir()
        args = [
            str(self._binary),
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",  # no metrics/pprof HTTP listener
            "--telemetry=disable",
            f"--state-dir={tmp}",
            f"--log-level={self._log_level}",
            "--log-format=text",
        ]
        if self._postgresql_url:
            args += ["--handler=postgresql", f"--postgresql-url={self._postgresql_url}"]
        else:
            # FerretDB adds busy_timeout, journal_mode(wal); make the fsync-per-commit explicit.
            args += [
                "--handler=sqlite",
                f"--sqlite-url=file:{tmp / 'data'}/?_pragma=synchronous(full)",
            ]
        return args

    def _launch(self) -> None:
        tmp = self._require_tmpdir()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the server runs
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
        env["DO_NOT_TRACK"] = "1"
        self._proc = subprocess.Popen(
            self._args(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,  # Ctrl-C in the terminal is for the tests, not the server
        )
        (tmp / "server.pid").write_text(str(self._proc.pid))
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self._stop_process("kill", 10.0)
            raise

    def _wait_ready(self, log_offset: int) -> None:
        import pymongo  # the connector's MongoDB client; imported late so PG-only runs skip it

        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = self._read_log(log_offset)
                if "address already in use" in log.lower():
                    raise _PortInUseError(log)
                raise RuntimeError(f"ferretdb exited with {self._proc.returncode}:\n{log}")
            if not _port_accepts(self.port):
                # Probe the socket first: a pymongo client that found the port closed waits
                # for its next heartbeat (>= 0.5 s) before trying again.
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ferretdb not listening after {self._startup_timeout} s:\n"
                        f"{self._read_log(log_offset)}"
                    )
                time.sleep(0.02)
                continue
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                self.uri,
                serverSelectionTimeoutMS=500,
                connectTimeoutMS=500,
                directConnection=True,
            )
            try:
                client.admin.command("ping")
                self._build_info = dict(client.admin.command("buildInfo"))
                return
            except Exception as exc:  # not up yet
                last_error = exc
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ferretdb not ready after {self._startup_timeout} s ({last_error}):\n"
                    f"{self._read_log(log_offset)}"
                )
            time.sleep(0.05)

    def _read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _stop_process(self, mode: MongoStopMode, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._proc = None
        if self._tmpdir is not None:
            # The watchdog must not signal a pid that may be reused while the server is down.
            (self._tmpdir / "server.pid").write_text("")
        if self._log is not None:
            self._log.close()
            self._log = None

    def _stop_locked(self) -> None:
        if self._tmpdir is None:
            return
        try:
            self._stop_process("term", 15.0)
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm()
                self._watchdog = None
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            _LIVE.discard(self)


def _port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _PortInUseError(RuntimeError):
    """The chosen port was taken between picking it and FerretDB binding it."""


_LIVE: set[MongoWireServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()

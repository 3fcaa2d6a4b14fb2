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

import os
import signal
import subprocess
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from integration.postgres_server import INSTALL_SCRIPT
from integration.processes import LOOPBACK, TempDirServer, port_open

#: How `stop_server` stops FerretDB: ``term`` is a clean shutdown (SIGTERM), ``kill`` is
#: SIGKILL (a crash; SQLite's WAL is recovered on restart).
MongoStopMode = Literal["term", "kill"]

_SIGNALS: dict[str, signal.Signals] = {"term": signal.SIGTERM, "kill": signal.SIGKILL}

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


class MongoWireServer(TempDirServer):
    """A private FerretDB on 127.0.0.1 speaking the MongoDB wire protocol.

    Use as a context manager, or call `start()` and `stop()`. `stop_server()` and
    `start_server()` take the server down and bring it back on the same port, same data.
    """

    _what = "FerretDB"
    _tmp_prefix = "ingest-ferretdb-"
    _log_name = "ferretdb.log"
    _stop_signals = _SIGNALS
    _clean_stop = ("term", 15.0)
    _port_clash = ("address already in use",)
    _ready_interval = 0.02
    _probe_errors = (Exception,)  # any client error: not up yet

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
        super().__init__(base_dir=base_dir, startup_timeout=startup_timeout)
        self._postgresql_url = postgresql_url
        self._binary = binary
        self._log_level = log_level
        self._build_info: dict[str, Any] | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """FerretDB's handler: ``sqlite`` or ``postgresql``."""
        return "postgresql" if self._postgresql_url else "sqlite"

    @property
    def uri(self) -> str:
        """MongoDB connection string, e.g. ``mongodb://127.0.0.1:PORT/``."""
        return f"mongodb://{LOOPBACK}:{self.port}/"

    @property
    def version(self) -> str:
        """``buildInfo.version``: the MongoDB version FerretDB claims to be (e.g. '7.0.42')."""
        return str(self._started(self._build_info)["version"])

    @property
    def ferretdb_version(self) -> str:
        """``buildInfo.ferretdbVersion``, e.g. 'v1.24.2'."""
        return str(self._started(self._build_info)["ferretdbVersion"])

    @property
    def build_info(self) -> dict[str, Any]:
        """The whole ``buildInfo`` reply from the last start."""
        return dict(self._started(self._build_info))

    def stop_server(self, mode: MongoStopMode = "term", timeout: float = 15.0) -> None:
        """Stop FerretDB but keep its data and port, for `start_server()` later.

        A clean shutdown that does not finish within ``timeout`` seconds becomes SIGKILL.
        """
        self._stop_server(mode, timeout)

    def outage(self, mode: MongoStopMode = "term") -> AbstractContextManager[None]:
        """Context manager: the server is down inside the ``with`` block, back up after it."""
        return self._outage(mode)

    def __repr__(self) -> str:
        return (
            f"MongoWireServer(backend={self.backend}, port={self._port}, "
            f"running={self.is_running}, dir={self._tmpdir})"
        )

    # -- TempDirServer hooks --------------------------------------------------------------------

    def _prepare(self, tmpdir: Path) -> None:
        """Build FerretDB if needed; make the SQLite data dir."""
        if self._binary is None:
            self._binary = ferretdb_binary()
        (tmpdir / "data").mkdir()

    def _command(self) -> list[str]:
        """FerretDB on 127.0.0.1:port, no debug listener or telemetry, fsync per commit."""
        tmpdir = self._started(self._tmpdir)
        args = [
            str(self._binary),
            f"--listen-addr={LOOPBACK}:{self.port}",
            "--debug-addr=-",  # no metrics/pprof HTTP listener
            "--telemetry=disable",
            f"--state-dir={tmpdir}",
            f"--log-level={self._log_level}",
            "--log-format=text",
        ]
        if self._postgresql_url:
            args += ["--handler=postgresql", f"--postgresql-url={self._postgresql_url}"]
        else:
            # FerretDB adds busy_timeout, journal_mode(wal); make the fsync-per-commit explicit.
            args += [
                "--handler=sqlite",
                f"--sqlite-url=file:{tmpdir / 'data'}/?_pragma=synchronous(full)",
            ]
        return args

    def _spawn_options(self) -> dict[str, Any]:
        """Our environment without FERRETDB_* (they would override flags), telemetry off."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
        env["DO_NOT_TRACK"] = "1"
        return {"env": env}

    def _ready(self) -> bool:
        """FerretDB listens and answers ``ping``; keeps its ``buildInfo``."""
        import pymongo  # the connector's MongoDB client; imported late so PG-only runs skip it

        if not port_open(self.port):
            # Probe the socket first: a pymongo client that found the port closed waits for
            # its next heartbeat (>= 0.5 s) before trying again.
            return False
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri,
            serverSelectionTimeoutMS=500,
            connectTimeoutMS=500,
            directConnection=True,
        )
        try:
            client.admin.command("ping")
            self._build_info = dict(client.admin.command("buildInfo"))
            return True
        finally:
            client.close()

    def _first_started(self) -> None:
        """Nothing to set up: FerretDB creates databases on first use."""

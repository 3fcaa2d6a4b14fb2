"""A throwaway PostgreSQL server for integration tests.

`PostgresServer` runs its own cluster (initdb into a temp dir, bound to 127.0.0.1 on a free
port, trust auth on loopback, fsync on) so tests never touch a system PostgreSQL. It can stop
and restart the *same* cluster on the *same* port with its data kept, to test database outages.

PostgreSQL refuses to run as root. When this process is root, every server-side command
(initdb, postgres) is run as the ``postgres`` system user (created by Debian's package) and
the temp dir is chowned to it; client tools (pg_isready, createdb) connect over TCP and run as
the calling user.

No server outlives the test session: `stop()` is registered with `atexit`, and a tiny shell
watchdog, which holds the read end of a pipe whose write end only this process has, kills the
server and removes its temp dir if this process dies without running `atexit` (SIGKILL, crash).

With ``tls=`` (a `ServerCert` from integration/tls.py) the server runs with ``ssl=on`` and
accepts only TLS connections (``hostssl`` in its pg_hba.conf); `dsn` then asks for
``sslmode=verify-full`` against the test CA, the way users connect to a managed server.

The binaries come from Debian's packages (/usr/lib/postgresql/<newest>/bin); if absent,
`integration/install_services.sh postgres` installs them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

# ProcessWatchdog and free_port were defined here first; they stay importable from here.
from integration.processes import LOOPBACK, TempDirServer
from integration.processes import ProcessWatchdog as ProcessWatchdog
from integration.processes import free_port as free_port

if TYPE_CHECKING:
    from integration.tls import ServerCert

INSTALL_SCRIPT = Path(__file__).resolve().parent / "install_services.sh"

#: How `stop_server` stops the server: ``fast`` is a clean shutdown (SIGINT), ``immediate``
#: aborts without a checkpoint (SIGQUIT; crash recovery on restart), ``kill`` SIGKILLs the
#: postmaster and all its children at once (a power cut, as far as the server can tell).
StopMode = Literal["fast", "immediate", "kill"]

_SIGNALS: dict[str, signal.Signals] = {
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
    "kill": signal.SIGKILL,
}


def find_postgres_bindir(install: bool = True) -> Path:
    """Return the newest /usr/lib/postgresql/<version>/bin, installing PostgreSQL if absent."""

    def newest() -> Path | None:
        found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
        if not found:
            return None
        found.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
        return Path(found[-1]).parent

    bindir = newest()
    if bindir is None and install:
        subprocess.run(
            ["bash", str(INSTALL_SCRIPT), "postgres"], check=True, stdout=subprocess.DEVNULL
        )
        bindir = newest()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return bindir


class PostgresServer(TempDirServer):
    """A private PostgreSQL cluster on 127.0.0.1 with a database ``ingest``.

    Use as a context manager, or call `start()` and `stop()`. `stop_server()` and
    `start_server()` take the server down and bring the same cluster back on the same port.
    """

    #: The superuser created by initdb; tests connect as it (trust auth on loopback).
    user = "postgres"
    database = "ingest"

    _what = "PostgreSQL server"
    _tmp_prefix = "ingest-pg-"
    _log_name = "postgres.log"
    _stop_signals = _SIGNALS
    _clean_stop = ("fast", 30.0)  # SIGINT is PostgreSQL's fast shutdown.
    _port_clash = ("could not bind", "Address already in use")

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        extra_settings: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
        tls: ServerCert | None = None,
    ) -> None:
        """Configure; nothing runs before `start()`.

        ``base_dir`` is where the temp dir is made (default: the system temp dir); when root,
        the ``postgres`` user must be able to traverse it. ``extra_settings`` are passed as
        ``-c name=value`` to the server. ``tls``: serve TLS only, with this certificate.
        """
        super().__init__(base_dir=base_dir, startup_timeout=startup_timeout)
        self._bindir = bindir
        self._extra_settings = dict(extra_settings or {})
        self._run_as: pwd.struct_passwd | None = None
        self.tls = tls

    # -- public API ---------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL of the ``ingest`` database."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """libpq/asyncpg URL of another database on this server (verify-full with ``tls``)."""
        url = f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"
        if self.tls is not None:
            url += f"?sslmode=verify-full&sslrootcert={self.tls.ca_file}"
        return url

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate (PEM) that signed the server's certificate; None without TLS."""
        return None if self.tls is None else self.tls.ca_file

    @property
    def version(self) -> str:
        """``postgres --version`` of the binaries used, e.g. 'postgres (PostgreSQL) 15.8'."""
        out = subprocess.run(
            [str(self._binary("postgres")), "--version"], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def stop_server(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server but keep the cluster and port, for `start_server()` later.

        ``mode``: see `StopMode`. A shutdown that does not finish within ``timeout`` seconds
        is escalated to SIGKILL of the postmaster and its children.
        """
        self._stop_server(mode, timeout)

    def outage(self, mode: StopMode = "fast") -> AbstractContextManager[None]:
        """Context manager: the server is down inside the ``with`` block, back up after it."""
        return self._outage(mode)

    # -- TempDirServer hooks --------------------------------------------------------------------

    def _prepare(self, tmpdir: Path) -> None:
        """Find the binaries, make PGDATA and the socket dir (owned by the server user), initdb."""
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        self._run_as = _postgres_user() if os.geteuid() == 0 else None
        (tmpdir / "data").mkdir(mode=0o700)
        (tmpdir / "sock").mkdir(mode=0o700)
        owned = [tmpdir, tmpdir / "data", tmpdir / "sock"]
        if self.tls is not None:
            # The server refuses a key file that others can read, or that it does not own.
            shutil.copyfile(self.tls.cert_file, tmpdir / "server.crt")
            shutil.copyfile(self.tls.key_file, tmpdir / "server.key")
            (tmpdir / "server.key").chmod(0o600)
            (tmpdir / "pg_hba.conf").write_text(
                "# Written by integration/postgres_server.py: TLS only, on loopback.\n"
                "local all all trust\n"
                f"hostssl all all {LOOPBACK}/32 trust\n"
            )
            owned += [tmpdir / "server.crt", tmpdir / "server.key", tmpdir / "pg_hba.conf"]
        if self._run_as is not None:
            for path in owned:
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        self._initdb(tmpdir)

    def _command(self) -> list[str]:
        """``postgres`` on 127.0.0.1:port with every durability setting on, explicitly."""
        tmpdir = self._started(self._tmpdir)
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": str(tmpdir / "sock"),
            # Durability is under test: keep every safety on, explicitly.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **self._tls_settings(tmpdir),
            **self._extra_settings,
        }
        args = [str(self._binary("postgres")), "-D", str(tmpdir / "data")]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _spawn_options(self) -> dict[str, Any]:
        """The server's environment, and the ``postgres`` user when this process is root."""
        return {"env": self._server_env(), **self._as_server_user()}

    def _ready(self) -> bool:
        """``pg_isready`` succeeds."""
        isready = str(self._binary("pg_isready"))
        args = [isready, "-q", *self._client_args(), "-d", "postgres", "-t", "2"]
        return subprocess.run(args, check=False).returncode == 0

    def _first_started(self) -> None:
        """Create the ``ingest`` database."""
        result = subprocess.run(
            [str(self._binary("createdb")), *self._client_args(), self.database],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed: {result.stderr}")

    # -- internals ----------------------------------------------------------------------------

    def _tls_settings(self, tmpdir: Path) -> dict[str, str]:
        """``ssl=on`` with the copied certificate and the TLS-only pg_hba.conf (if ``tls``)."""
        if self.tls is None:
            return {}
        return {
            "ssl": "on",
            "ssl_cert_file": str(tmpdir / "server.crt"),
            "ssl_key_file": str(tmpdir / "server.key"),
            "hba_file": str(tmpdir / "pg_hba.conf"),
        }

    def _binary(self, name: str) -> Path:
        """Path of a PostgreSQL program in the bindir (found on first use)."""
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return self._bindir / name

    def _client_args(self) -> list[str]:
        """Connection options of the client tools: TCP to this server, as the superuser."""
        return ["-h", LOOPBACK, "-p", str(self.port), "-U", self.user]

    def _server_env(self) -> dict[str, str]:
        """A minimal, fixed environment for initdb and the server (UTF-8, UTC)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        }
        if self._run_as is not None:
            env.update(HOME=self._run_as.pw_dir, USER=self._run_as.pw_name)
        else:
            env["HOME"] = os.environ.get("HOME", "/")
        return env

    def _as_server_user(self) -> dict[str, Any]:
        """Popen keyword arguments that drop root to the ``postgres`` user (if needed)."""
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _initdb(self, tmpdir: Path) -> None:
        """Create the cluster in ``tmpdir/data``: trust auth, UTF8, C locale."""
        result = subprocess.run(
            [
                str(self._binary("initdb")),
                "--pgdata",
                str(tmpdir / "data"),
                "--username",
                self.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                # initdb's own fsync of the fresh cluster files only matters for a machine
                # crash right after initdb; the server itself runs with fsync=on.
                "--no-sync",
                "--no-instructions",
            ],
            env=self._server_env(),
            cwd=tmpdir,
            capture_output=True,
            text=True,
            check=False,
            **self._as_server_user(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )


def _postgres_user() -> pwd.struct_passwd:
    """The ``postgres`` system user, to run the server as when this process is root."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError(
            "running as root, but there is no 'postgres' user to run the server as "
            "(PostgreSQL refuses to run as root); install Debian's postgresql package"
        ) from exc

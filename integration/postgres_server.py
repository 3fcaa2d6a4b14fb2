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

The binaries come from Debian's packages (/usr/lib/postgresql/<newest>/bin); if absent,
`integration/install_services.sh postgres` installs them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
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

# Shell run by the watchdog: wait for EOF on stdin (the parent died), then stop the process
# whose pid is in file $1 with signal $3 (SIGKILL after 10 s) and remove directory $2.
_WATCHDOG_SH = r"""
read -r _ignored
if [ -s "$1" ]; then
  pid=$(cat "$1")
  kill -"$3" "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
[ -n "$2" ] && rm -rf -- "$2"
exit 0
"""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class ProcessWatchdog:
    """Stops a server and removes its dir if this Python process dies without cleaning up.

    A ``/bin/sh`` child blocks reading a pipe whose write end only this process holds; the
    kernel closes it however this process ends, even on SIGKILL. The watchdog then sends
    ``stop_signal`` to the pid currently written in ``pidfile`` (rewritten at each restart),
    SIGKILL after 10 s, and deletes ``remove_dir``. `disarm()` ends it on a normal stop.
    """

    def __init__(self, pidfile: Path, remove_dir: Path, stop_signal: str = "INT") -> None:
        self._read_fd, self._write_fd = os.pipe()
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG_SH, "watchdog", str(pidfile), str(remove_dir), stop_signal],
            stdin=self._read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal must not reach it
        )
        os.close(self._read_fd)

    def disarm(self) -> None:
        """End the watchdog without letting it touch anything (normal shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._write_fd)


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 with a database ``ingest``.

    Use as a context manager, or call `start()` and `stop()`. `stop_server()` and
    `start_server()` take the server down and bring the same cluster back on the same port.
    """

    #: The superuser created by initdb; tests connect as it (trust auth on loopback).
    user = "postgres"
    database = "ingest"

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        extra_settings: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        """Configure; nothing runs before `start()`.

        ``base_dir`` is where the temp dir is made (default: the system temp dir); when root,
        the ``postgres`` user must be able to traverse it. ``extra_settings`` are passed as
        ``-c name=value`` to the server.
        """
        self._bindir = bindir
        self._base_dir = base_dir
        self._extra_settings = dict(extra_settings or {})
        self._startup_timeout = startup_timeout
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._watchdog: ProcessWatchdog | None = None
        self._lock = threading.Lock()
        self._run_as: pwd.struct_passwd | None = None
        self.start_seconds: float | None = None
        """Wall time of the last `start()` (initdb + first start + createdb)."""

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (fixed for the life of the cluster)."""
        if self._port is None:
            raise RuntimeError("PostgresServer not started")
        return self._port

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return "127.0.0.1"

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL of the ``ingest`` database."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def dsn_for(self, database: str) -> str:
        """libpq/asyncpg URL of another database on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        """PGDATA of the cluster."""
        return self._require_tmpdir() / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr of every run, appended)."""
        return self._require_tmpdir() / "postgres.log"

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> str:
        """``postgres --version`` of the binaries used, e.g. 'postgres (PostgreSQL) 15.8'."""
        out = subprocess.run(
            [str(self._binary("postgres")), "--version"], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def start(self) -> Self:
        """Create the cluster, start it, wait until it accepts connections, create ``ingest``."""
        with self._lock:
            if self._tmpdir is not None:
                raise RuntimeError("PostgresServer already started")
            t0 = time.monotonic()
            if self._bindir is None:
                self._bindir = find_postgres_bindir()
            self._run_as = _postgres_user() if os.geteuid() == 0 else None
            self._tmpdir = Path(tempfile.mkdtemp(prefix="ingest-pg-", dir=self._base_dir))
            _LIVE.add(self)
            try:
                # SIGINT is PostgreSQL's fast shutdown.
                self._watchdog = ProcessWatchdog(self._tmpdir / "server.pid", self._tmpdir, "INT")
                (self._tmpdir / "data").mkdir(mode=0o700)
                (self._tmpdir / "sock").mkdir(mode=0o700)
                if self._run_as is not None:
                    for path in (self._tmpdir, self._tmpdir / "data", self._tmpdir / "sock"):
                        os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
                self._initdb()
                # A free port can be taken by someone else before the server binds it: retry.
                for attempt in range(3):
                    self._port = free_port()
                    try:
                        self._launch()
                        break
                    except _PortInUseError:
                        if attempt == 2:
                            raise
                self._createdb()
            except BaseException:
                self._stop_locked()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def stop_server(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server but keep the cluster and port, for `start_server()` later.

        ``mode``: see `StopMode`. A shutdown that does not finish within ``timeout`` seconds
        is escalated to SIGKILL of the postmaster and its children.
        """
        with self._lock:
            self._stop_process(mode, timeout)

    def start_server(self) -> None:
        """Start the same cluster again on the same port; wait until it accepts connections."""
        with self._lock:
            if self._tmpdir is None or self._port is None:
                raise RuntimeError("PostgresServer not started")
            if self.is_running:
                raise RuntimeError("PostgreSQL server is already running")
            self._launch()

    @contextlib.contextmanager
    def outage(self, mode: StopMode = "fast") -> Iterator[None]:
        """Context manager: the server is down inside the ``with`` block, back up after it."""
        self.stop_server(mode)
        try:
            yield
        finally:
            self.start_server()

    def stop(self) -> None:
        """Stop the server (fast shutdown, then kill) and delete the cluster. Idempotent."""
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
        return f"PostgresServer(port={self._port}, running={self.is_running}, dir={self._tmpdir})"

    # -- internals ----------------------------------------------------------------------------

    def _require_tmpdir(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("PostgresServer not started")
        return self._tmpdir

    def _binary(self, name: str) -> Path:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return self._bindir / name

    def _server_env(self) -> dict[str, str]:
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

    def _initdb(self) -> None:
        tmp = self._require_tmpdir()
        result = subprocess.run(
            [
                str(self._binary("initdb")),
                "--pgdata",
                str(tmp / "data"),
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
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
            **self._as_server_user(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _launch(self) -> None:
        tmp = self._require_tmpdir()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(tmp / "sock"),
            # Durability is under test: keep every safety on, explicitly.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **self._extra_settings,
        }
        args = [str(self._binary("postgres")), "-D", str(tmp / "data")]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the server runs
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._server_env(),
            cwd=tmp,
            start_new_session=True,  # Ctrl-C in the terminal is for the tests, not the server
            **self._as_server_user(),
        )
        (tmp / "server.pid").write_text(str(self._proc.pid))
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self._stop_process("kill", 10.0)
            raise

    def _wait_ready(self, log_offset: int) -> None:
        deadline = time.monotonic() + self._startup_timeout
        isready = [
            str(self._binary("pg_isready")),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = self._read_log(log_offset)
                if "could not bind" in log or "Address already in use" in log:
                    raise _PortInUseError(log)
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{log}")
            rc = subprocess.run(isready, check=False).returncode
            if rc == 0:
                return
            if time.monotonic() > deadline:
                log = self._read_log(log_offset)
                raise TimeoutError(f"postgres not ready after {self._startup_timeout} s:\n{log}")
            time.sleep(0.05)

    def _createdb(self) -> None:
        result = subprocess.run(
            [
                str(self._binary("createdb")),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                self.database,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed: {result.stderr}")

    def _read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _stop_process(self, mode: StopMode, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # Each backend is its own process group (postgres calls setsid), so a hard kill
            # has to name every process: collect the postmaster's children first.
            if mode == "kill":
                _kill_tree(proc.pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(_SIGNALS[mode])
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
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
            self._stop_process("fast", 30.0)
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm()
                self._watchdog = None
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            _LIVE.discard(self)


class _PortInUseError(RuntimeError):
    """The chosen port was taken between picking it and the server binding it."""


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError(
            "running as root, but there is no 'postgres' user to run the server as "
            "(PostgreSQL refuses to run as root); install Debian's postgresql package"
        ) from exc


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _kill_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and its direct children, then wait until none is alive.

    Zombies count as gone: in a container whose init does not reap, orphans stay zombies.
    """
    pids = [pid]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                pids.append(int(entry.name))
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for p in pids:
        while (stat := _proc_stat(p)) is not None and stat[0] != "Z":
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {p} survived SIGKILL")
            time.sleep(0.02)


_LIVE: set[PostgresServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()

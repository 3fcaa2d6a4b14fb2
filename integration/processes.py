"""Process lifecycle shared by the integration-test servers (Kafka, PostgreSQL, FerretDB, ...).

Why one module: every harness runs a real server as a child process on 127.0.0.1 and must
start it on a free port, tell when it is ready (or why it is not, from its log), stop it with
a clean signal and then SIGKILL, and make sure it never outlives the test session. Doing that
once here keeps the cleanup guarantees the same for all of them.

- ports: `free_ports`, `free_port`, `port_open`, `retry_on_port_clash` / `PortInUseError`;
- processes: `spawn`, `wait_for_startup`, `terminate`, `kill_tree`, `pid_alive`,
  `signal_group`;
- logs and polling: `read_log`, `wait_until`;
- no leftovers: `register_live` / `unregister_live` (stopped at exit), `ProcessWatchdog`
  (stops a server even if this process is SIGKILLed);
- `TempDirServer`: the whole lifecycle of a server whose files live in a private temp dir and
  that tests take down and bring back on the same port.
"""

from __future__ import annotations

import abc
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

LOOPBACK = "127.0.0.1"
"""The only address the test servers listen on."""

KILL_TIMEOUT_S = 10.0
"""How long a SIGKILLed process may take to disappear before that counts as an error."""

LOG_TAIL_LINES = 60
"""How many log lines error messages quote."""

_T = TypeVar("_T")

# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


class PortInUseError(RuntimeError):
    """A server could not bind its port: someone took it between picking and binding."""


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports on 127.0.0.1 that are free right now (the kernel picks them).

    All sockets stay open while picking, so the ports differ from each other.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def retry_on_port_clash(launch: Callable[[], _T], attempts: int = 3) -> _T:
    """Call ``launch`` (which picks its own free ports) again while it raises PortInUseError.

    A free port can be taken by someone else before the server binds it; a retry with new
    ports fixes that. The last attempt's PortInUseError propagates.
    """
    for _ in range(attempts - 1):
        with contextlib.suppress(PortInUseError):
            return launch()
    return launch()


# --------------------------------------------------------------------------------------------
# Polling and logs
# --------------------------------------------------------------------------------------------


def _poll_until(predicate: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll ``predicate`` every ``interval`` s; False if it is still false after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    failure: Callable[[], str],
    *,
    interval: float = 0.1,
    error: type[Exception] = TimeoutError,
) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` s raise ``error(failure())``.

    ``failure`` is called only then, so its message can quote the log as it is at that moment.
    The predicate may raise to give up early (e.g. when the server process has exited).
    """
    if not _poll_until(predicate, timeout, interval):
        raise error(failure())


def read_log(path: Path, offset: int = 0, lines: int | None = None) -> str:
    """A server log from byte ``offset`` on (one run's part), only its last ``lines`` if given.

    Returns "" when the log cannot be read (not written yet, or already removed).
    """
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while any thread of process ``pid`` is not a zombie.

    The thread-group leader of a JVM can already be a zombie while its other threads still run
    the shutdown, so the leader's state alone does not tell whether the JVM is gone. Zombies
    count as gone: in a container whose init does not reap, orphans stay zombies.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                # Field 3 is the state; the command name (field 2) may contain spaces or ')'.
                if fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except (OSError, IndexError):
            continue
    return False


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (servers run in their own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_tree(pid: int, timeout: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL the process group led by ``pid`` and pid's direct children; wait until all are gone.

    The children are named one by one because a server may put them in sessions of their own
    (every PostgreSQL backend calls setsid), out of reach of the group signal.
    """
    pids = [pid, *_children(pid)]
    signal_group(pid, signal.SIGKILL)
    for each in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)
    wait_until(
        lambda: not any(pid_alive(p) for p in pids),
        timeout,
        lambda: f"process {pid} or a child of it survived SIGKILL",
        interval=0.02,
        error=RuntimeError,
    )


def terminate(target: subprocess.Popen[bytes] | int, sig: signal.Signals, timeout: float) -> None:
    """Stop a server: ``sig`` to its process group, then SIGKILL if it is not gone in ``timeout`` s.

    ``target`` is a child of this process (reaped here) or the pid of a server that another
    process started (the Kafka CLI's detached broker). ``sig=SIGKILL`` kills at once: a crash.
    Raises RuntimeError if the process survives SIGKILL for KILL_TIMEOUT_S.
    """
    if isinstance(target, int):
        pid = target

        def gone() -> bool:
            return not pid_alive(pid)

    else:
        pid = target.pid

        def gone() -> bool:
            return target.poll() is not None

    if gone():
        return
    if sig == signal.SIGKILL:
        kill_tree(pid)
    else:
        signal_group(pid, sig)
    if not _poll_until(gone, timeout, interval=0.05):
        kill_tree(pid)
        wait_until(
            gone, KILL_TIMEOUT_S, lambda: f"process {pid} survived SIGKILL", error=RuntimeError
        )


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    banner: str = "",
    parent_death_signal: bool = False,
    **popen_kwargs: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server in its own session, stdin closed, stdout and stderr appended to ``log_path``.

    Its own session, so that a Ctrl-C in the terminal is for the tests, not the server, and
    `terminate` can signal the whole group. ``banner`` is written to the log first. Returns the
    process and the log offset where this run's output starts, for `read_log`.

    ``parent_death_signal``: the server gets SIGTERM even if this Python process is SIGKILLed
    (atexit would not run), via ``setpriv --pdeathsig`` where it exists. Only from the main
    thread, because Linux sends it when the *thread* that forked exits.
    ``popen_kwargs`` go to `subprocess.Popen` as is (e.g. ``user``/``group`` to drop root).
    """
    args = list(cmd)
    setpriv = shutil.which("setpriv")
    if parent_death_signal and setpriv and threading.current_thread() is threading.main_thread():
        args = [setpriv, "--pdeathsig", "TERM", "--", *args]
    with log_path.open("ab") as log:
        log.write(banner.encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **popen_kwargs,
        )
    return proc, offset


def wait_for_startup(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    log_path: Path,
    log_offset: int,
    interval: float = 0.1,
    port_clash: Sequence[str] = (),
    retry_on: tuple[type[Exception], ...] = (),
    error: type[Exception] = RuntimeError,
    timeout_error: type[Exception] = TimeoutError,
) -> None:
    """Poll ``ready()`` until it is true, with the server's log in every failure.

    Raises PortInUseError if ``proc`` exits and its log since ``log_offset`` contains one of the
    ``port_clash`` markers (case-insensitive), ``error`` if it exits otherwise, and
    ``timeout_error`` after ``timeout`` s. Exceptions of the ``retry_on`` types from ``ready()``
    mean "not yet"; the last one is quoted in the timeout message.
    """
    last_error: Exception | None = None

    def log_excerpt() -> str:
        return f"(log: {log_path}):\n{read_log(log_path, log_offset, LOG_TAIL_LINES)}"

    def started() -> bool:
        nonlocal last_error
        code = proc.poll()
        if code is not None:
            log = read_log(log_path, log_offset).lower()
            if any(marker.lower() in log for marker in port_clash):
                raise PortInUseError(f"{what} could not bind its port {log_excerpt()}")
            raise error(f"{what} exited with code {code} during startup {log_excerpt()}")
        try:
            return ready()
        except retry_on as exc:
            last_error = exc
            return False

    def timed_out() -> str:
        probe = f" (last probe error: {last_error})" if last_error else ""
        return f"{what} not ready after {timeout} s{probe} {log_excerpt()}"

    wait_until(started, timeout, timed_out, interval=interval, error=timeout_error)


# --------------------------------------------------------------------------------------------
# No leftovers
# --------------------------------------------------------------------------------------------


class ManagedServer(abc.ABC):
    """A test server with `start()` and `stop()`, also usable as ``with Server() as server:``."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server and wait until it is ready; return it."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and clean up; idempotent (`register_live` may call it at exit)."""

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


_live: dict[ManagedServer, None] = {}
_live_lock = threading.Lock()


def register_live(server: ManagedServer) -> None:
    """Stop ``server`` when this Python process exits, unless `unregister_live` comes first."""
    with _live_lock:
        _live[server] = None


def unregister_live(server: ManagedServer) -> None:
    """Forget ``server`` (it was stopped); no-op if it is not registered."""
    with _live_lock:
        _live.pop(server, None)


@atexit.register
def _stop_live_servers() -> None:
    """atexit hook: never leave a test server behind when the Python process ends.

    Newest first, so that a server started on top of another (FerretDB on PostgreSQL) stops
    before the one it uses.
    """
    with _live_lock:
        servers = list(reversed(_live))
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


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


class ProcessWatchdog:
    """Stops a server and removes its dir if this Python process dies without cleaning up.

    A ``/bin/sh`` child blocks reading a pipe whose write end only this process holds; the
    kernel closes it however this process ends, even on SIGKILL. The watchdog then sends
    ``stop_signal`` to the pid currently written in ``pidfile`` (rewritten at each restart),
    SIGKILL after 10 s, and deletes ``remove_dir`` (unless None). `disarm()` ends it on a
    normal stop.
    """

    def __init__(self, pidfile: Path, remove_dir: Path | None, stop_signal: str = "INT") -> None:
        """Start the watchdog shell; ``stop_signal`` is a name for ``kill -SIG`` (no prefix)."""
        self._read_fd, self._write_fd = os.pipe()
        remove = "" if remove_dir is None else str(remove_dir)
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG_SH, "watchdog", str(pidfile), remove, stop_signal],
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


# --------------------------------------------------------------------------------------------
# A restartable server in a temp dir
# --------------------------------------------------------------------------------------------


class TempDirServer(ManagedServer):
    """A server on 127.0.0.1 with its files in a private temp dir, restartable on its port.

    Subclasses say how to prepare the dir (`_prepare`), what to run (`_command`,
    `_spawn_options`) and when it is ready (`_ready`); this class does the rest: a free port
    (new ones on a clash), start and wait with the log in errors, `stop_server`/`start_server`
    with the same port and data, and cleanup that cannot be skipped (atexit, and a watchdog
    that stops the server and removes the dir if this process is killed).
    """

    _what: ClassVar[str]
    """The server's name in messages, e.g. "PostgreSQL server"."""
    _tmp_prefix: ClassVar[str]
    _log_name: ClassVar[str]
    _stop_signals: ClassVar[Mapping[str, signal.Signals]]
    """Signal per stop mode; must have "kill" (SIGKILL), used when a start fails."""
    _clean_stop: ClassVar[tuple[str, float]]
    """Mode and timeout of the stop in `stop()`; the watchdog sends that mode's signal too."""
    _port_clash: ClassVar[tuple[str, ...]]
    """Log text (case-insensitive) that means the port was taken."""
    _ready_interval: ClassVar[float] = 0.05
    _probe_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Exceptions of `_ready` that mean "not yet"."""

    def __init__(self, *, base_dir: Path | None, startup_timeout: float) -> None:
        """Configure; nothing runs before `start()`. The temp dir is made in ``base_dir``."""
        self._base_dir = base_dir
        self._startup_timeout = startup_timeout
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: ProcessWatchdog | None = None
        self._lock = threading.Lock()
        self.start_seconds: float | None = None
        """Wall time of the last `start()` (preparation, start and first successful probe)."""

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (fixed for the life of the server)."""
        return self._started(self._port)

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return LOOPBACK

    @property
    def data_dir(self) -> Path:
        """The server's data directory inside the temp dir."""
        return self._started(self._tmpdir) / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr of every run, appended)."""
        return self._started(self._tmpdir) / self._log_name

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Make the temp dir, prepare it, start on a free port, wait until the server is ready."""
        with self._lock:
            if self._tmpdir is not None:
                raise RuntimeError(f"{type(self).__name__} already started")
            t0 = time.monotonic()
            self._tmpdir = Path(tempfile.mkdtemp(prefix=self._tmp_prefix, dir=self._base_dir))
            register_live(self)
            try:
                clean_signal = self._stop_signals[self._clean_stop[0]]
                self._watchdog = ProcessWatchdog(
                    self._pidfile, self._tmpdir, clean_signal.name.removeprefix("SIG")
                )
                self._prepare(self._tmpdir)
                retry_on_port_clash(self._launch_on_free_port)
                self._first_started()
            except BaseException:
                self._stop_locked()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def start_server(self) -> None:
        """Start the server again on the same port and data; wait until it is ready."""
        with self._lock:
            self._started(self._tmpdir)  # the port is set whenever the temp dir is
            if self.is_running:
                raise RuntimeError(f"{self._what} is already running")
            self._launch()

    def stop(self) -> None:
        """Stop the server (clean stop, then SIGKILL) and delete the temp dir. Idempotent."""
        with self._lock:
            self._stop_locked()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(port={self._port}, running={self.is_running}, "
            f"dir={self._tmpdir})"
        )

    # -- for subclasses -----------------------------------------------------------------------

    @abc.abstractmethod
    def _prepare(self, tmpdir: Path) -> None:
        """Find the binaries and fill the fresh temp dir (data dir, config) before the start."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line for `self.port`."""

    @abc.abstractmethod
    def _spawn_options(self) -> dict[str, Any]:
        """Extra keyword arguments for `spawn` (``env``, ``user``...)."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the server accepts requests (called until it does)."""

    @abc.abstractmethod
    def _first_started(self) -> None:
        """Finish the setup after the first successful start (e.g. create a database)."""

    def _stop_server(self, mode: str, timeout: float) -> None:
        """Stop the process but keep the temp dir and port (`stop_server` of subclasses)."""
        with self._lock:
            self._stop_process(mode, timeout)

    @contextlib.contextmanager
    def _outage(self, mode: str) -> Iterator[None]:
        """The server is down inside the ``with`` block, back up after it (`outage`)."""
        self._stop_server(mode, self._clean_stop[1])
        try:
            yield
        finally:
            self.start_server()

    def _started(self, value: _T | None) -> _T:
        """``value`` (set by `start()`), or RuntimeError if it is not set yet."""
        if value is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return value

    # -- internals ----------------------------------------------------------------------------

    @property
    def _pidfile(self) -> Path:
        """Where the watchdog reads the pid to stop (empty while the server is down)."""
        return self._started(self._tmpdir) / "server.pid"

    def _launch_on_free_port(self) -> None:
        """Pick a new free port and `_launch` on it."""
        self._port = free_port()
        self._launch()

    def _launch(self) -> None:
        """Start the process on `self._port` and wait until it is ready; kill it if not."""
        tmpdir = self._started(self._tmpdir)
        self._proc, log_offset = spawn(
            self._command(), self.log_path, cwd=tmpdir, **self._spawn_options()
        )
        self._pidfile.write_text(str(self._proc.pid))
        try:
            wait_for_startup(
                self._proc,
                self._ready,
                what=self._what,
                timeout=self._startup_timeout,
                log_path=self.log_path,
                log_offset=log_offset,
                interval=self._ready_interval,
                port_clash=self._port_clash,
                retry_on=self._probe_errors,
            )
        except BaseException:
            self._stop_process("kill", KILL_TIMEOUT_S)
            raise

    def _stop_process(self, mode: str, timeout: float) -> None:
        """Stop the process with the mode's signal (SIGKILL after ``timeout`` s); keep the dir."""
        if self._proc is not None:
            terminate(self._proc, self._stop_signals[mode], timeout)
        self._proc = None
        if self._tmpdir is not None:
            # The watchdog must not signal a pid that may be reused while the server is down.
            self._pidfile.write_text("")

    def _stop_locked(self) -> None:
        """`stop()` with the lock held: stop the process, end the watchdog, remove the dir."""
        if self._tmpdir is None:
            return
        try:
            self._stop_process(*self._clean_stop)
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm()
                self._watchdog = None
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            unregister_live(self)

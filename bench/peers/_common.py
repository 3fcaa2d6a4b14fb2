"""What every peer shares: where it is installed, its target's row count, and one measured run.

A run starts the peer's process in its own process group, polls the target until it holds
``ctx.records`` rows/documents, then stops the peer (SIGTERM, SIGKILL after a grace period).
CPU seconds and peak RSS come from ``os.wait4`` on the peer's process (the JVM, the Go
binary, the Python interpreter: each peer is one process). With ``kill_after_s`` the group is
SIGKILLed once, that long after the start or when a third is stored if sooner, and the
same command is started again on the same consumer group / offset storage; wall time then
includes the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.peers import RunContext, RunResult, Target

PEERS_DIR = "peers"
STOP_GRACE_S = 30.0
MAX_POLL_S = 5.0
STALL_TIMEOUT_S = 180.0  # no progress for this long (after a start): the run is given up
ERROR_LINE = re.compile(r"\b(ERROR|FATAL|Traceback|level=error|panic:)\b")
MAX_ERRORS = 20


def peers_dir(cache: Path) -> Path:
    """``<cache>/peers``: every peer's virtualenv, Maven folder or Go build lives below it."""
    return cache / PEERS_DIR


def dir_size_mb(path: Path) -> float:
    """Disk use of an install, for the report."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return round(total / 1e6, 1)


# ------------------------------------------------------------------------------------------
# The target: how many rows / documents are stored
# ------------------------------------------------------------------------------------------


@dataclass
class PostgresParams:
    host: str
    port: int
    user: str
    password: str
    database: str


def postgres_params(dsn: str) -> PostgresParams:
    """Split ``postgresql://user[:pw]@host:port/db`` into what JDBC / psycopg2 want."""
    url = urlsplit(dsn)
    return PostgresParams(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=unquote(url.username or "postgres"),
        password=unquote(url.password or ""),
        database=url.path.lstrip("/") or "postgres",
    )


def mongo_host_port(uri: str) -> tuple[str, int]:
    """Host and port of a single-host ``mongodb://host:port/`` URI."""
    url = urlsplit(uri)
    return url.hostname or "127.0.0.1", url.port or 27017


class TargetCounter:
    """Counts what a peer stored in ``ctx``'s table or collection (0 while it does not exist)."""

    def __init__(self, ctx: RunContext) -> None:
        self.target: Target = ctx.target
        self._ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pg: Any = None
        self._mongo: Any = None
        self._last = 0

    def count(self) -> int:
        if self.target == "postgres":
            return self._count_postgres()
        from pymongo.errors import PyMongoError

        # A server saturated by the peer may not answer in time: the last count stands, so
        # the runner's budget and stall checks still run.
        with contextlib.suppress(PyMongoError):
            self._last = self._count_mongo()
        return self._last

    def _count_postgres(self) -> int:
        import asyncpg

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        if self._pg is None:
            self._pg = loop.run_until_complete(asyncpg.connect(self._ctx.postgres_dsn))
        query = f'SELECT count(*) FROM "{self._ctx.postgres_table}"'
        try:
            return int(loop.run_until_complete(self._pg.fetchval(query)))
        except asyncpg.UndefinedTableError:
            return 0

    def _count_mongo(self) -> int:
        if self._mongo is None:
            from pymongo import MongoClient

            self._mongo = MongoClient(
                self._ctx.mongo_uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=10_000
            )
        coll = self._mongo[self._ctx.mongo_database][self._ctx.mongo_collection]
        return int(coll.estimated_document_count())

    def close(self) -> None:
        if self._pg is not None and self._loop is not None:
            self._loop.run_until_complete(self._pg.close())
        if self._loop is not None:
            self._loop.close()
        if self._mongo is not None:
            self._mongo.close()
        self._pg = self._loop = self._mongo = None


def first_record(ctx: RunContext, topic: str | None = None) -> dict[str, Any]:
    """The first JSON record of ``ctx.topic`` (to derive a table's columns before a run)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": ctx.bootstrap,
            "group.id": f"{ctx.group}-peek",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        name = topic or ctx.topic
        meta = consumer.list_topics(name, timeout=30).topics[name]
        consumer.assign([TopicPartition(name, p, 0) for p in sorted(meta.partitions)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.value() is None:
                continue
            value = json.loads(msg.value())
            if isinstance(value, dict):
                return value
        raise RuntimeError(f"no JSON record found in topic {name!r}")
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------
# One measured run
# ------------------------------------------------------------------------------------------


@dataclass
class _Totals:
    cpu_s: float = 0.0
    peak_rss_kb: int = 0
    exits: list[str] = field(default_factory=list)


# Popen objects stay referenced here: a collected Popen whose child still runs is put on
# subprocess's cleanup list, and a later Popen() could then reap it before our os.wait4.
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(cmd: Sequence[str], env: dict[str, str] | None, log: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    _RUNNING[proc.pid] = proc
    return proc.pid


def _sample_rss(pid: int, totals: _Totals) -> None:
    """Fold the process's VmHWM (peak RSS since its exec) into ``totals``.

    Not ``ru_maxrss`` from wait4: Linux carries the forking parent's high-water mark over the
    exec into it, so a peer started from a big bench process would report the bench's RSS.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    totals.peak_rss_kb = max(totals.peak_rss_kb, int(line.split()[1]))
                    return
    except (OSError, ValueError):
        pass


def _reap(pid: int, totals: _Totals, *, block: bool) -> bool:
    """Collect the exit of ``pid`` and its rusage; True when it has exited."""
    waited, status, usage = os.wait4(pid, 0 if block else os.WNOHANG)
    if waited == 0:
        return False
    totals.cpu_s += usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    totals.exits.append(str(code))
    proc = _RUNNING.pop(pid, None)
    if proc is not None:
        proc.returncode = code
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _stop(pid: int, totals: _Totals, sig: signal.Signals, grace_s: float) -> None:
    _sample_rss(pid, totals)
    _signal_group(pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if _reap(pid, totals, block=False):
            _signal_group(pid, signal.SIGKILL)  # leftovers of the group, if any
            return
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    _reap(pid, totals, block=True)


def log_errors(log: Path, limit: int = MAX_ERRORS) -> list[str]:
    """The peer's own error lines (first ``limit``), for ``RunResult.errors``."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = [line.strip()[:400] for line in lines if ERROR_LINE.search(line)]
    return found[:limit]


def run_measured(
    ctx: RunContext,
    cmd: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    kill_after_s: float | None = None,
    counter: TargetCounter | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    on_restart: Callable[[], None] | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> RunResult:
    """Run ``cmd`` until the target holds ``ctx.records``; see the module docstring."""
    counter = counter or TargetCounter(ctx)
    totals = _Totals()
    errors: list[str] = []
    killed = False
    budget_spent = False
    first_record_s: float | None = None
    wall_s: float | None = None
    start = time.monotonic()
    pid = _spawn(cmd, env, log, ctx.workdir)
    last_count, last_progress = 0, start
    poll_s = 0.1
    try:
        while True:
            t0 = time.monotonic()
            stored = counter.count()
            took = time.monotonic() - t0
            now = time.monotonic()
            if stored > 0 and first_record_s is None:
                first_record_s = now - start
            if stored != last_count:
                last_count, last_progress = stored, now
            if stored >= ctx.records:
                wall_s = now - start
                break
            _sample_rss(pid, totals)
            # The kill lands at the estimated time or once a third is stored, whichever is
            # first, so that a peer quicker than its estimate is still killed mid-run.
            if (
                kill_after_s is not None
                and not killed
                and (now - start >= kill_after_s or 3 * stored >= ctx.records)
            ):
                _signal_group(pid, signal.SIGKILL)
                _reap(pid, totals, block=True)
                killed = True
                if on_restart is not None:
                    on_restart()
                pid = _spawn(cmd, env, log, ctx.workdir)
                last_progress = time.monotonic()
                continue
            if _reap(pid, totals, block=False):
                errors.append(
                    f"the peer exited on its own (exit {totals.exits[-1]}) with "
                    f"{stored} of {ctx.records} stored"
                )
                pid = 0
                break
            if ctx.budget_s is not None and now - start > ctx.budget_s:
                wall_s, budget_spent = now - start, True
                break
            if now - last_progress > stall_timeout_s:
                errors.append(
                    f"no progress for {stall_timeout_s:.0f} s: {stored} of {ctx.records} stored"
                )
                break
            # Poll fast until the first record, then at most ~10% of the time spent counting,
            # but never sleep past the budget nor longer than MAX_POLL_S (a count that timed
            # out on a saturated server must not stall the runner for minutes).
            poll_s = 0.1 if first_record_s is None else min(MAX_POLL_S, max(0.25, 10 * took))
            if ctx.budget_s is not None:
                poll_s = max(0.0, min(poll_s, ctx.budget_s - (now - start)))
            time.sleep(poll_s)
    finally:
        if pid:
            _stop(pid, totals, stop_signal, STOP_GRACE_S)
        counter.close()
    errors += log_errors(log)
    return RunResult(
        wall_s=round(wall_s if wall_s is not None else time.monotonic() - start, 3),
        first_record_s=None if first_record_s is None else round(first_record_s, 3),
        cpu_s=round(totals.cpu_s, 3),
        peak_rss_mb=round(totals.peak_rss_kb / 1024, 1),
        killed=killed,
        errors=errors,
        budget_spent=budget_spent,
        stored=last_count,
    )

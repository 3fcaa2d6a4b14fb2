"""Tasks 1..N-1 of a connector with ``tasks.max`` > 1, each in a child process of the worker.

One Python process decodes, maps and stores about one core's worth of records (the GIL);
more tasks of a connector in its consumer group use more cores the Kafka way (DESIGN: the
fleet model). Task 0 runs in the worker's own process; ``TaskProcess`` starts every other
task as ``python -m connector.task_process`` and talks to it in JSON lines over pipes:

* stdin, worker -> task: first the task's settings (the connector's flat config, its
  folder, the task id, the logging settings), then orders: ``{"hold": bool}`` and
  ``{"stop": bool}`` (``true``: abandon the in-flight batch). The config travels over the
  pipe, never in argv or the environment, so its secrets are not visible in ``ps``. When
  stdin closes (the worker is gone, even after a SIGKILL), the task stops as on SIGTERM:
  it commits what the backend acknowledged and leaves the group.
* stdout, task -> worker: the pipeline's observer events as tallies (per batch, never per
  record), its status (backend open, paused partitions, lag) every ``STATUS_INTERVAL_S``,
  and last its summary. Log lines go to stderr, which the task shares with the worker.

Written here rather than with ``multiprocessing``: its queues need a feeder thread per
process and a blocking reader, while asyncio reads a child's pipe on the event loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import msgspec

from connector.backends import Outcome, create_backend
from connector.connect_config import pipeline_of
from connector.dlq import DeadLetter, DeadLetterProducer
from connector.errors import ConfigError
from connector.gc_tuning import tune_gc
from connector.logs import REDACT, logging_settings, secrets_of, set_connector, setup_logging
from connector.mapping import checked_types
from connector.metrics import ConnectorMetrics, dead_letter_tally, latency_buckets, record_tally
from connector.observer import PipelineObserver
from connector.pipeline import Pipeline, RunSummary
from connector.records import MappedObject, TopicPartition
from connector.sources import create_source

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0
STOP_MARGIN_S = 5.0
LINE_LIMIT = 16 * 1024 * 1024  # a status line lists the lag of every assigned partition

_encode = msgspec.json.Encoder().encode
_timestamp = attrgetter("record.timestamp_ms")


# --- the worker's side ---------------------------------------------------------------------


class TaskProcess:
    """The worker's handle on one task of a connector running in a child process."""

    def __init__(
        self,
        task_id: int,
        settings: dict[str, Any],
        metrics: ConnectorMetrics,
        on_end: Callable[[TaskProcess], None],
    ) -> None:
        """``settings``: name, flat, base_dir, until_caught_up, assignment_timeout_s."""
        self.id = task_id
        self._settings = settings
        self._name = str(settings["name"])
        self._metrics = metrics
        self._on_end = on_end
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._held = False
        self._killed = False
        self.summary: RunSummary | None = None
        self.failed = False
        self.trace: str | None = None
        self.started = False
        self.ready = asyncio.Event()  # the process reported (its pipeline runs) or ended
        self.paused_partitions = 0
        self.last_lag: dict[TopicPartition, int] = {}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, held: bool) -> None:
        self.summary, self.failed, self.trace, self.started = None, False, None, False
        self._held, self._killed = held, False
        self.ready.clear()
        self._task = asyncio.create_task(self._run(), name=f"connector {self._name} task {self.id}")

    def hold(self, held: bool) -> None:
        self._held = held
        self._send({"hold": held})

    def request_stop(self, abandon: bool) -> None:
        """Stop (commit, leave the group); with ``abandon`` give up the in-flight batch."""
        self._send({"stop": abandon})

    async def lag(self) -> dict[TopicPartition, int]:
        """The lag the task reported last (it samples its own partitions)."""
        return self.last_lag

    async def stop(self, timeout_s: float) -> None:
        """Ask for a graceful stop; abandon the in-flight batch after ``timeout_s``; kill the
        process if even that does not end it."""
        task = self._task
        if task is None or task.done():
            return
        self._send({"stop": False})
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            self._send({"stop": True})
            done, _ = await asyncio.wait({task}, timeout=STOP_MARGIN_S)
        if not done and self._proc is not None:
            log.warning("connector %s task %d: killed, it did not stop", self._name, self.id)
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await asyncio.wait({task}, timeout=STOP_MARGIN_S)

    def _send(self, order: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(_encode(order) + b"\n")

    async def _run(self) -> None:
        level, log_format = logging_settings()
        code: int | None = None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
            self._send(
                {
                    **self._settings,
                    "task": self.id,
                    "held": self._held,
                    "log_level": level,
                    "log_format": log_format,
                }
            )
            assert self._proc.stdout is not None
            async for line in self._proc.stdout:
                self._handle(json.loads(line))
            code = await self._proc.wait()
        except OSError as exc:
            self.summary = RunSummary(error=f"cannot start the task process: {exc}")
        finally:
            if self._proc is not None and self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()  # the worker itself is stopping this task's reader
                await self._proc.wait()
            self._proc = None
            self._task = None  # not running from here on, though this coroutine still returns
            self._ended(code)

    def _ended(self, code: int | None) -> None:
        self.ready.set()
        self.started, self.paused_partitions, self.last_lag = False, 0, {}
        if self.summary is None and not self._killed:
            self.summary = RunSummary(
                error=f"the task process exited with code {code} before reporting its summary"
            )
        if self.summary is not None and self.summary.error is not None:
            self.failed = True
            self.trace = self.trace or self.summary.error
        self._on_end(self)

    def _handle(self, event: dict[str, Any]) -> None:
        kind, m = event["event"], self._metrics
        if kind == "ack":
            m.count_records((tuple(key), n) for key, n in event["records"])
            if "latency" in event:
                m.add_latencies(*event["latency"])
        elif kind == "dead":
            m.count_dead_letters((tuple(key), n) for key, n in event["letters"])
        elif kind == "batch":
            m.batch_written(event["size"], event["seconds"])
        elif kind == "retry":
            m.retried(event["operation"])
        elif kind == "commit":
            m.committed(event["seconds"], event["ok"])
        elif kind == "status":
            self.ready.set()
            self.started, self.paused_partitions = event["started"], event["paused"]
            if "lag" in event:
                self.last_lag = {TopicPartition(t, p): n for t, p, n in event["lag"]}
        elif kind == "summary":
            self.summary, self.trace = RunSummary(**event["summary"]), event["trace"]


# --- the task's side -----------------------------------------------------------------------


class _Channel:
    """JSON lines to the worker; silent once the worker is gone."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._out.write(_encode(event) + b"\n")
            self._out.flush()
        except OSError:  # the worker is gone; the task stops when stdin closes
            pass


class _Forwarder(PipelineObserver):
    """The pipeline's observer in a task process: each event, tallied, to the worker."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def acknowledged(self, objects: Sequence[MappedObject], outcomes: Sequence[Outcome]) -> None:
        event: dict[str, Any] = {
            "event": "ack",
            "records": list(record_tally(objects, outcomes).items()),
        }
        latency = latency_buckets(map(_timestamp, objects), time.time() * 1000)
        if latency is not None:
            event["latency"] = latency
        self._channel.send(event)

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        self._channel.send({"event": "dead", "letters": list(dead_letter_tally(letters).items())})

    def batch_written(self, size: int, seconds: float) -> None:
        self._channel.send({"event": "batch", "size": size, "seconds": seconds})

    def retried(self, operation: str) -> None:
        self._channel.send({"event": "retry", "operation": operation})

    def committed(self, seconds: float, ok: bool) -> None:
        self._channel.send({"event": "commit", "seconds": seconds, "ok": ok})


async def _follow(reader: asyncio.StreamReader, pipeline: Pipeline) -> None:
    """Apply the worker's orders; stop when the worker closes the pipe (or dies)."""
    while line := await reader.readline():
        order = json.loads(line)
        if "hold" in order:
            pipeline.hold(order["hold"])
        if "stop" in order:
            pipeline.request_stop(abandon=order["stop"])
    pipeline.request_stop()


async def _report(pipeline: Pipeline, channel: _Channel) -> None:
    """The task's status every STATUS_INTERVAL_S (every 0.2 s until the backend is open)."""
    while True:
        status: dict[str, Any] = {
            "event": "status",
            "started": pipeline.started,
            "paused": pipeline.paused_partitions,
        }
        if pipeline.started:
            try:
                lag = await pipeline.lag()
            except Exception as exc:  # the broker is away: the worker keeps the last values
                log.debug("lag not sampled: %s", exc)
            else:
                status["lag"] = [[tp.topic, tp.partition, n] for tp, n in lag.items()]
        channel.send(status)
        await asyncio.sleep(STATUS_INTERVAL_S if pipeline.started else 0.2)


async def serve(channel: _Channel) -> int:
    """Run the task the worker describes on stdin; 0 when it ended without an error."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:
        return 1  # the worker went away before describing the task
    task = json.loads(line)
    name, task_id = task["name"], task["task"]
    setup_logging(task["log_level"], task["log_format"], task_id)
    try:
        config = pipeline_of(name, task["flat"], Path(task["base_dir"]))
        types = checked_types(config, name)
    except ConfigError as exc:
        failed = RunSummary(error=str(exc))
        channel.send({"event": "summary", "summary": asdict(failed), "trace": None})
        return 2
    REDACT.add(secrets_of(config))
    set_connector(config.kafka.group_id)
    dlq = config.errors.dead_letter_queue
    pipeline = Pipeline(
        config,
        types,
        create_source(config.kafka),
        create_backend(config.backend, types),
        until_caught_up=task["until_caught_up"],
        assignment_timeout_s=task["assignment_timeout_s"],
        observer=_Forwarder(channel),
        dead_letters=(
            DeadLetterProducer(config.kafka, dlq, config.kafka.group_id, task_id) if dlq else None
        ),
    )
    pipeline.hold(task["held"])
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, pipeline.request_stop)
    helpers = [
        asyncio.create_task(_follow(reader, pipeline)),
        asyncio.create_task(_report(pipeline, channel)),
    ]
    tune_gc()
    trace = None
    try:
        summary = await pipeline.run()
    except Exception as exc:
        log.exception("connector %s task %d failed", name, task_id)
        summary = RunSummary(error=f"{type(exc).__name__}: {exc}")
        trace = traceback.format_exc()
    finally:
        for helper in helpers:
            helper.cancel()
    channel.send({"event": "summary", "summary": asdict(summary), "trace": trace})
    return 0 if summary.error is None else 1


def main() -> int:
    channel = _Channel(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # a stray print goes to stderr, never into the channel
    return asyncio.run(serve(channel))


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline: Source → Decode/Map → Batch → Backend → Ack → Release, on one event loop.

Three tasks cooperate:

* fetch: pulls records from the Source, maps them, closes batches. When batches wait for
  the backend it *pauses* the assigned partitions and keeps polling (so the consumer stays
  in its group), instead of buffering without limit.
* ingest: hands batches to the Backend one at a time (``batching.max_concurrent_writes``
  at a time where the backend can), retrying transient failures with exponential backoff
  and jitter, then acks every object's offset in the tracker.
* commit: periodically commits the highest contiguous acked offset per partition.

Nothing is committed that the backend has not durably acknowledged, together with every
earlier record of the same partition. Commits also happen on revoke and on shutdown.
A revoked partition is fenced: its objects not yet in the backend are dropped, and the
batches in the backend are waited for (bounded) before the commit on revoke. A failing
record stops the run there: nothing queued behind it is written (with concurrent writes,
batches already in the backend finish; nothing past the failing record is committed).
Every shutdown step is bounded, so the whole shutdown ends within ``shutdown.timeout_ms``
whatever the group is doing.

With ``errors.tolerance: all`` a failing record goes to the dead-letter topic instead (a
fourth task, dead-letter, produces it); its offset is acked only when the broker has
acknowledged its dead-letter record, so the contiguous-ack rule keeps every later offset
uncommitted until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from itertools import groupby, islice
from operator import attrgetter
from typing import TypeVar

from connector.backends import Backend, ObjectResult, Outcome
from connector.batching import Batch, Batcher
from connector.circuit_breaker import CircuitBreaker
from connector.config import PipelineConfig
from connector.dlq import DeadLetter, DeadLetterProducer
from connector.dlq_replay import restore
from connector.errors import ConnectorError, RecordError, RecordErrorKind, RetryableError
from connector.logs import coordinates
from connector.mapping import Mapper
from connector.observer import PipelineObserver
from connector.offsets import OffsetTracker
from connector.progress import LogProgress, Progress, ProgressSink
from connector.records import MappedObject, SourceRecord, TopicPartition
from connector.release import Releaser
from connector.schemas import ObjectTypes
from connector.sources import Source
from connector.timeouts import cancel_and_wait, within

log = logging.getLogger(__name__)

CAUGHT_UP_CHECK_INTERVAL_S = 0.25
LAG_REFRESH_S = 5.0
PAUSE_AFTER_S = 5.0
FETCH_SLICE = 500
CLOSE_RESERVE_S = 5.0  # of the shutdown timeout, kept for the final commit and leaving the group
CANCEL_WAIT_S = 1.0  # for a cancelled loop task to end during shutdown
CLOSE_MIN_S = 1.0


T = TypeVar("T")

_run_key = attrgetter("topic", "partition", "epoch")  # records of one partition and epoch
_offset = attrgetter("offset")
_record = attrgetter("record")
_outcome = attrgetter("outcome")
_MAPPER_CLASS = f"{Mapper.__module__}.{Mapper.__qualname__}"


class _Interrupted(Exception):
    """A retry loop was told to give up (shutdown)."""


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


COUNTS = (
    "records",
    "inserted",
    "duplicates",
    "conflicts",
    "rejected",
    "upserted",
    "deleted",
    "dead_lettered",
)


@dataclass(slots=True)
class RunSummary:
    """Counts of one run, printed by the CLI."""

    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    upserted: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    elapsed_s: float = 0.0
    startup_s: float | None = None  # until the first record arrived (joining the group, ...)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def combined(cls, summaries: list[RunSummary]) -> RunSummary:
        """The summary of tasks that ran side by side: counts added, the longest elapsed
        time, the first start-up, the first error."""
        total = cls()
        for s in summaries:
            for name in COUNTS:
                setattr(total, name, getattr(total, name) + getattr(s, name))
        total.elapsed_s = max((s.elapsed_s for s in summaries), default=0.0)
        startups = [s.startup_s for s in summaries if s.startup_s is not None]
        total.startup_s = min(startups) if startups else None
        total.error = next((s.error for s in summaries if s.error is not None), None)
        return total

    def as_dict(self) -> dict[str, object]:
        """The summary as one JSON object (``--log-format json``)."""
        return {**asdict(self), "rate": round(self.rate, 1)}

    def lines(self) -> list[str]:
        return [
            f"records:    {self.records}",
            f"ingested:   {self.inserted}",
            f"duplicates: {self.duplicates}",
            f"conflicts:  {self.conflicts}",
            f"rejected:   {self.rejected}",
            f"upserted:   {self.upserted}",
            f"deleted:    {self.deleted}",
            f"dead-lettered: {self.dead_lettered}",
            f"elapsed:    {self.elapsed_s:.2f} s",
            "startup:    "
            + (
                "-"
                if self.startup_s is None
                else f"{self.startup_s:.2f} s (until the first record)"
            ),
            f"rate:       {self.rate:.0f} records/s",
        ]


class Pipeline:
    """One consumer-group member moving records from a Source into a Backend."""

    def __init__(
        self,
        config: PipelineConfig,
        types: ObjectTypes,
        source: Source,
        backend: Backend,
        *,
        until_caught_up: bool = False,
        assignment_timeout_s: float = 60.0,
        pause_after_s: float = PAUSE_AFTER_S,
        observer: PipelineObserver | None = None,
        dead_letters: DeadLetterProducer | None = None,
        replay: bool = False,
        progress: ProgressSink | None = None,
    ) -> None:
        self._config = config
        self._source = source
        self._backend = backend
        self._mapper = Mapper(config, types)
        self._until_caught_up = until_caught_up
        self._assignment_timeout_s = assignment_timeout_s
        self._pause_after_s = pause_after_s
        self._progress = progress or LogProgress()
        self._caught_up_at_end = False
        self._shutdown_s = config.shutdown.timeout_ms / 1000
        self._tracker = OffsetTracker()
        self._releaser = Releaser(config, source)
        self._batcher = Batcher(config.batching)
        self._max_ready = config.batching.max_in_flight_batches
        self._ready: deque[Batch] = deque()  # closed batches waiting for the ingest task
        self._writing: list[Batch] = []  # the batches inside the backend right now
        self._writers = min(config.batching.max_concurrent_writes, backend.concurrent_writes())
        self._work = asyncio.Event()  # set when a batch is ready or the run ends
        self._room = asyncio.Event()  # set whenever the ingest task takes a batch
        self._written = asyncio.Event()  # set whenever the ingest task finishes a batch
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._stop = asyncio.Event()
        self._abandon = asyncio.Event()
        self._summary = RunSummary()
        self._error: ConnectorError | None = None
        self._discard = False  # after a backend-side failure: write nothing more
        self._closing = False  # set by the drain: the ingest task ends once nothing is ready
        self._started = time.monotonic()
        self._observer = observer or PipelineObserver()
        self._held = False  # paused by the operator (REST): every partition stays paused
        self.started = False  # the backend is open and the consumer subscribed
        self._replay = replay  # the Source serves dead letters, each replayed as its original
        errors = config.errors
        self._tolerate = errors.tolerance == "all"
        self._dead_outcomes = {Outcome.REJECTED} if self._tolerate else set()
        if errors.conflict == "dlq":
            self._dead_outcomes.add(Outcome.CONFLICT)
        self._stopping_outcomes = set()
        if not self._tolerate:
            self._stopping_outcomes.add(Outcome.REJECTED)
        if errors.conflict == "stop":
            self._stopping_outcomes.add(Outcome.CONFLICT)
        if dead_letters is None and errors.dead_letter_queue is not None:
            dead_letters = DeadLetterProducer(
                config.kafka, errors.dead_letter_queue, config.kafka.group_id, 0
            )
        self._dlq = dead_letters
        self._letters: deque[DeadLetter] = deque()  # waiting for the dead-letter task
        self._sending: list[DeadLetter] = []  # being produced right now
        self._max_letters = config.batching.max_records * self._max_ready
        self._letter_ready = asyncio.Event()
        self._letters_closing = False
        self._breaker = CircuitBreaker(errors.max_failure_ratio, errors.failure_window)

    # --- rebalance listener ------------------------------------------------------------

    def epoch(self, tp: TopicPartition) -> int | None:
        return self._tracker.epoch(tp)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._tracker.assign(tp)
            self._assigned.add(tp)
            self._paused.discard(tp)

    async def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Fence the revoked partitions: nothing of theirs is written after this returns.

        Their batched and queued objects are dropped (the next owner reads them again), and
        the batch inside the backend is waited for, bounded by ``shutdown.timeout_ms``, so
        that its acks count before the commit. Past the bound its acks are ignored; its
        writes are idempotent by ``_id``, so the next owner's copy becomes a duplicate.
        """
        revoked = set(partitions)
        self._drop(revoked)
        writing = [
            batch
            for batch in self._writing
            if any(o.tracked.topic_partition in revoked for o in batch.objects)
        ]
        if writing:
            deadline = time.monotonic() + self._shutdown_s
            while self._still_writing(writing) and time.monotonic() < deadline:
                self._written.clear()
                with contextlib.suppress(TimeoutError):
                    await within(self._written.wait(), deadline - time.monotonic())
            if self._still_writing(writing):
                log.warning(
                    "revoke: a batch in the backend did not finish within %.1f s; its "
                    "records of %s are not committed and the next owner reads them again",
                    self._shutdown_s,
                    ", ".join(sorted(map(str, revoked))),
                )
        offsets: dict[TopicPartition, int] = {}
        for tp in partitions:
            offset = self._tracker.revoke(tp)
            if offset is not None:
                offsets[tp] = offset
            self._assigned.discard(tp)
            self._paused.discard(tp)
        return offsets

    def _still_writing(self, batches: list[Batch]) -> bool:
        """Any of ``batches`` still inside the backend (by identity: batches are unique)."""
        return any(b is w for b in batches for w in self._writing)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        self._drop(set(partitions))
        for tp in partitions:
            self._tracker.revoke(tp)
            self._assigned.discard(tp)
            self._paused.discard(tp)

    def _drop(self, partitions: set[TopicPartition]) -> None:
        """Remove the objects of ``partitions`` from every batch not yet in the backend."""
        self._batcher.drop(partitions)
        kept: deque[Batch] = deque()
        for batch in self._ready:
            batch.drop(partitions)
            if batch.objects:
                kept.append(batch)
        self._ready = kept
        self._letters = deque(
            letter for letter in self._letters if letter.tracked.topic_partition not in partitions
        )
        self._room.set()

    # --- control -----------------------------------------------------------------------

    def request_stop(self, abandon: bool = False) -> None:
        """Stop fetching; with ``abandon`` also give up the in-flight batch at once."""
        self._stop.set()
        self._room.set()
        self._work.set()
        if abandon:
            self._abandon.set()

    def hold(self, held: bool) -> None:
        """Pause (``True``) or resume every assigned partition, staying in the group."""
        self._held = held
        self._room.set()

    @property
    def paused_partitions(self) -> int:
        return len(self._paused)

    async def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: the high watermark minus the group's committed offset.

        Sampled every few seconds while records flow, so it asks the broker only for what
        the client does not know: the high watermark comes from the last fetch (except for
        paused partitions) and the committed offset from this member's own commits. A round
        trip per partition on the consumer's thread would hold up fetching (measured: +10-40%
        wall time at 40k/s)."""
        assigned = sorted(self._assigned, key=str)
        if not assigned:
            return {}
        highs = await self._source.known_high_watermarks(assigned)
        ours = self._tracker.committed_offsets()
        committed: dict[TopicPartition, int | None] = {
            tp: ours[tp] for tp in assigned if tp in ours
        }
        unknown = [tp for tp in assigned if tp not in committed]
        committed.update(await self._source.committed(unknown))
        # A paused partition is not fetched, so its cached high watermark stands still.
        asked = [
            tp
            for tp in assigned
            if tp not in highs or tp in self._paused or committed.get(tp) is None
        ]
        marks = await self._source.watermarks(asked) if asked else {}
        earliest = self._config.kafka.auto_offset_reset == "earliest"
        lag = {}
        for tp in assigned:
            if tp in marks:
                low, high = marks[tp]
            elif tp in highs:
                low, high = 0, highs[tp]
            else:
                continue
            stored = committed.get(tp)
            start = stored if stored is not None else (low if earliest else high)
            lag[tp] = max(0, high - start)
        return lag

    def _fail(self, error: ConnectorError, *, discard: bool = False) -> None:
        """Stop at ``error``. With ``discard`` (the error came from the backend, so whatever
        is queued may lie past the failing record) nothing queued is written any more;
        otherwise the objects batched before it are still written and committed."""
        if self._error is None:
            self._error = error
            where = coordinates(error.where) if isinstance(error, RecordError) else None
            log.error("%s", error, extra=where)
        if discard:
            self._discard = True
            self._ready.clear()
            self._letters.clear()
        self.request_stop()

    # --- run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run until stopped, caught up (if asked) or failed; always commits what is acked."""
        started = self._started = time.monotonic()
        try:
            await self._retrying(self._backend.open, "backend connection", self._stop)
            if self._dlq is not None:
                await self._retrying(self._dlq.ensure_topic, "dead-letter topic check", self._stop)
            await self._releaser.check()
        except (_Interrupted, ConnectorError) as exc:
            if isinstance(exc, ConnectorError):
                self._fail(exc)
                self._summary.error = str(exc)
            await self._source.close(CLOSE_MIN_S)
            await self._bounded(self._backend.close(), CLOSE_MIN_S, "closing the backend")
            self._summary.elapsed_s = time.monotonic() - started
            return self._summary
        subscriptions = [route.subscription for route in self._config.routes]
        if self._replay and self._dlq is not None:
            subscriptions = [self._dlq.topic]
        await self._source.start(subscriptions, self)
        self.started = True
        ingest_task = asyncio.create_task(self._ingest_loops(), name="ingest")
        commit_task = asyncio.create_task(self._commit_loop(), name="commit")
        progress_task = asyncio.create_task(self._progress_loop(), name="progress")
        letter_task = asyncio.create_task(self._dead_letter_loop(), name="dead-letter")
        try:
            await self._fetch_until_stopped()
        except ConnectorError as exc:
            self._fail(exc)
        finally:
            deadline = time.monotonic() + self._shutdown_s
            await self._drain(ingest_task, letter_task, deadline)
            await cancel_and_wait(commit_task, CANCEL_WAIT_S, "the commit loop")
            await cancel_and_wait(progress_task, CANCEL_WAIT_S, "the progress loop")
            finished = self._caught_up_at_end and self._error is None
            self._progress.close(self._snapshot(0 if finished else None), finished)
            await self._bounded(self._commit_now(final=True), _left(deadline), "the final commit")
            await self._source.close(max(_left(deadline), CLOSE_MIN_S))
            await self._bounded(self._backend.close(), CLOSE_MIN_S, "closing the backend")
            if self._dlq is not None:
                await self._bounded(
                    self._dlq.close(CLOSE_MIN_S), CLOSE_MIN_S, "closing the dead-letter producer"
                )
            self._summary.elapsed_s = time.monotonic() - started
        if self._error is not None:
            self._summary.error = str(self._error)
        return self._summary

    async def _fetch_until_stopped(self) -> None:
        """The fetch loop, bounded once a stop is requested: it has the poll timeout and a
        second to return by itself, then it is cancelled where it waits (a fetch can wait
        inside the client, e.g. for a rebalance). What the loop fetched and did not batch
        was never acknowledged: nothing of it is committed, the next owner reads it again.
        """
        fetching = asyncio.create_task(self._fetch_loop(), name="fetch")
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
            grace = self._config.kafka.poll_timeout_ms / 1000 + 1.0
            done, _ = await asyncio.wait({fetching}, timeout=grace)
            if not done:
                where = io.StringIO()
                fetching.print_stack(file=where)
                log.warning(
                    "shutdown: the fetch loop did not return within %.1f s of the stop; "
                    "cancelling it where it waits:\n%s",
                    grace,
                    where.getvalue(),
                )
                await cancel_and_wait(fetching, CANCEL_WAIT_S, "the fetch loop")
                return
            with contextlib.suppress(asyncio.CancelledError):
                await fetching
        finally:
            stopping.cancel()

    async def _drain(
        self, ingest_task: asyncio.Task[None], letter_task: asyncio.Task[None], deadline: float
    ) -> None:
        """Let the ingest task write what is batched, then the dead-letter task produce what
        the writes and the mapping dead-lettered, within the shutdown timeout.

        After a failure nothing more is written; on abandon the in-flight work is given up.
        Part of the timeout is kept for the commit and for leaving the group.
        """
        if not self._discard and not self._abandon.is_set():
            last = self._batcher.take()
            if last is not None:
                self._ready.append(last)
        self._closing = True
        self._work.set()
        end = deadline - min(CLOSE_RESERVE_S, self._shutdown_s / 3)
        await self._finish(ingest_task, end, "the batches in flight")
        self._letters_closing = True
        self._letter_ready.set()
        await self._finish(letter_task, end, "the dead-letter records not yet acknowledged")

    async def _finish(self, task: asyncio.Task[None], end: float, what: str) -> None:
        """Wait for ``task`` until ``end`` (monotonic) or an abandon; past that, cancel it."""
        budget = max(0.0, end - time.monotonic())
        abandon = asyncio.create_task(self._abandon.wait())
        done, _ = await asyncio.wait(
            {task, abandon}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
        )
        abandon.cancel()
        if task not in done:
            log.warning(
                "shutdown: abandoning %s after %.1f s; those records are not committed and "
                "will be read again on the next start",
                what,
                budget,
            )
            await cancel_and_wait(task, CANCEL_WAIT_S, what)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @staticmethod
    async def _bounded(call: Awaitable[None], timeout_s: float, what: str) -> None:
        """Await ``call`` for at most ``timeout_s`` (shutdown steps must not hang)."""
        try:
            await within(call, max(timeout_s, 0.1))
        except TimeoutError:
            log.warning("shutdown: %s did not finish within %.1f s", what, timeout_s)
        except Exception as exc:
            log.warning("shutdown: %s failed: %s", what, exc)

    # --- fetch -------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        poll_s = self._config.kafka.poll_timeout_ms / 1000
        # Decoding runs on the event loop; fetching in slices keeps it yielding often enough
        # for the backend's round trips to proceed in parallel with decoding.
        max_records = min(self._config.batching.max_records, FETCH_SLICE)
        last_check = 0.0
        waiting_since = time.monotonic()
        while not self._stop.is_set():
            await self._apply_backpressure()
            if self._stop.is_set():
                return
            left = self._batcher.time_left()
            timeout = poll_s if left is None else min(poll_s, left)
            records = await self._source.fetch(max_records, timeout)
            if self._stop.is_set() and self._error is not None:
                return
            if records and self._summary.startup_s is None:
                self._summary.startup_s = time.monotonic() - self._started
            if records and not await self._prepare(records):
                return
            tracker, batcher, ready = self._tracker, self._batcher, self._ready
            # One run per partition and epoch: the epoch was stamped at fetch, so records of
            # an earlier assignment are dropped even if their partition was assigned again.
            for (topic, partition, epoch), group in groupby(records, _run_key):
                run = list(group)
                count, error = tracker.fetched_many(
                    TopicPartition(topic, partition), epoch, list(map(_offset, run))
                )
                if not count and error is None:
                    continue
                if count and not self._map_run(run[:count]):
                    return
                if error is not None:  # the partition went backwards after the mapped records
                    self._fail(error)
                    return
            if batcher.due():
                batch = batcher.take()
                if batch is not None:
                    ready.append(batch)
            if ready:
                self._work.set()
            if not self._until_caught_up or records:
                continue
            now = time.monotonic()
            if not self._assigned:
                if now - waiting_since > self._assignment_timeout_s:
                    topics = ", ".join(r.topic or r.topic_regex or "" for r in self._config.routes)
                    self._fail(
                        ConnectorError(
                            f"no partition was assigned within {self._assignment_timeout_s:.0f} s; "
                            f"check that the topics exist and the broker is reachable: {topics}"
                        )
                    )
                continue
            waiting_since = now
            if now - last_check >= CAUGHT_UP_CHECK_INTERVAL_S:
                last_check = now
                if await self._caught_up():
                    log.info("caught up: no lag on %d partition(s)", len(self._assigned))
                    self._caught_up_at_end = True
                    return

    def _map_run(self, run: list[SourceRecord]) -> bool:
        """Map a run of one partition into batches. A bad record stops the run, or with
        ``errors.tolerance: all`` is dead-lettered and the rest of the run is mapped.
        False when the run stops."""
        if self._replay:
            return all(map(self._map_replayed, run))
        mapper, batcher, ready = self._mapper, self._batcher, self._ready
        while True:
            try:
                objects, bad = mapper.map_many(run)
            except ConnectorError as exc:
                self._fail(exc)
                return False
            ready.extend(batcher.add_many(objects))
            self._breaker.count(len(objects))
            if bad is None:
                return True
            index = len(objects)  # one object per record, up to the bad one
            if not self._record_failed(run[index], bad):
                return False
            run = run[index + 1 :]
            if not run:
                return True

    def _map_replayed(self, fetched: SourceRecord) -> bool:
        """Map a dead letter as its original record (original coordinates, for derived ids
        and "latest offset wins"); its offset in the dead-letter topic is what is acked."""
        try:
            original = restore(fetched)
        except RecordError as unreadable:
            return self._record_failed(fetched, unreadable)
        try:
            objects, bad = self._mapper.map_many([original])
        except ConnectorError as exc:
            self._fail(exc)
            return False
        for obj in objects:
            obj.fetched = fetched
        self._ready.extend(self._batcher.add_many(objects))
        self._breaker.count(len(objects))
        return bad is None or self._record_failed(original, bad, fetched)

    def _record_failed(
        self, record: SourceRecord, bad: RecordError, fetched: SourceRecord | None = None
    ) -> bool:
        """Stop the run at ``bad`` (``errors.tolerance: none``), or dead-letter its record;
        False when the run stops."""
        if not self._tolerate:
            self._fail(bad)
            return False
        object_type, decoder_class = self._mapper.describe(record)
        value_read = bad.kind in (RecordErrorKind.DECODE, RecordErrorKind.SCHEMA_MISMATCH)
        executing = decoder_class if value_read and not bad.in_key else _MAPPER_CLASS
        self._dead_letter([DeadLetter(record, bad, object_type, executing, fetched)])
        return not self._tripped(bad)

    def _dead_letter(self, letters: list[DeadLetter]) -> None:
        """Queue ``letters`` for the dead-letter task; their offsets stay un-acked until the
        broker acknowledged their dead-letter records."""
        self._letters.extend(letters)
        self._letter_ready.set()

    def _tripped(self, last: RecordError, records: int = 1) -> bool:
        """Count one failure (of a record not counted yet: ``records`` 1, or of one counted
        when it was mapped: 0); stop the run when the circuit breaker trips."""
        self._breaker.count(records, 1)
        if not self._breaker.tripped():
            return False
        self._fail(
            ConnectorError(
                f"circuit breaker: {self._breaker.describe()}; the last one: {last}. Fix the "
                "producer or the schema, then restart; nothing past the last handled record "
                "is committed"
            ),
            discard=True,
        )
        return True

    async def _prepare(self, records: list[SourceRecord]) -> bool:
        """Let the decoders fetch writer schemas, retrying while the registry is down."""
        try:
            await self._retrying(
                lambda: self._mapper.prepare(records), "writer schema fetch", self._stop
            )
        except _Interrupted:
            return False
        except ConnectorError as exc:
            self._fail(exc)
            return False
        return True

    async def _apply_backpressure(self) -> None:
        """Wait for the ingest task while closed batches queue up; pause if that takes long.

        While we wait, librdkafka keeps prefetching within its own bounded queue, so a short
        wait costs nothing. Pausing discards that prefetched data, so it is kept for long
        stalls (a backend outage), where we must keep polling to stay in the group.
        """
        if self._congested() and not self._paused and not self._held:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._room.wait(), self._pause_after_s)
        if self._held or self._congested():
            newly = sorted(self._assigned - self._paused, key=str)
            if newly:
                await self._source.pause(newly)
                self._paused.update(newly)
        elif self._paused:
            paused = sorted(self._paused & self._assigned, key=str)
            self._paused.clear()
            await self._source.resume(paused)

    def _congested(self) -> bool:
        """Too many closed batches or dead letters wait for their task."""
        return (
            len(self._ready) >= self._max_ready
            or len(self._letters) + len(self._sending) >= self._max_letters
        )

    async def _caught_up(self) -> bool:
        """True when every assigned partition is ingested up to its end.

        The consumer's position is compared with the high watermark: unlike "last fetched
        offset + 1" it moves past transaction markers, which are never delivered.
        """
        if (
            self._ready
            or len(self._batcher)
            or self._writing
            or self._letters
            or self._sending
            or self._tracker.in_flight()
        ):
            return False
        return await self._unfetched() == 0

    async def _unfetched(self) -> int:
        """How many records of the assigned partitions lie past the consumer's position."""
        assigned = sorted(self._assigned, key=str)
        marks = await self._source.watermarks(assigned)
        positions = await self._source.position(assigned)
        unknown = [tp for tp in assigned if positions.get(tp) is None]
        committed = await self._source.committed(unknown)
        earliest = self._config.kafka.auto_offset_reset == "earliest"
        left = 0
        for tp in assigned:
            low, high = marks[tp]
            position = positions.get(tp)
            if position is None:
                stored = committed.get(tp)
                position = stored if stored is not None else (low if earliest else high)
            left += max(0, high - position)
        return left

    # --- ingest ------------------------------------------------------------------------

    async def _ingest_loops(self) -> None:
        """One ingest loop per concurrent write; cancelling this cancels them all."""
        await asyncio.gather(*(self._ingest_loop() for _ in range(self._writers)))

    async def _ingest_loop(self) -> None:
        """Write ready batches one at a time until the run ends and nothing is left."""
        while True:
            if not self._ready:
                if self._closing:
                    return
                self._work.clear()
                await self._work.wait()
                continue
            batch = self._ready.popleft()
            self._room.set()
            self._writing.append(batch)
            try:
                results = await self._ingest_with_retry(batch)
                if not self._acknowledge(batch, results):
                    return
            except ConnectorError as exc:
                self._fail(exc, discard=True)
                return
            except Exception as exc:  # a bug: stop, rather than leave the fetch loop waiting
                log.exception("the ingest task failed")
                self._fail(ConnectorError(f"the ingest task failed: {exc!r}"), discard=True)
                return
            finally:
                self._writing = [w for w in self._writing if w is not batch]
                self._written.set()

    def _acknowledge(self, batch: Batch, results: list[ObjectResult]) -> bool:
        """Count the outcomes and ack each handled offset, stopping at the first record that
        stops the run (a rejection, or a conflict with ``errors.conflict: stop``)."""
        if len(results) != len(batch.objects):
            self._fail(
                ConnectorError(
                    f"backend returned {len(results)} outcomes for {len(batch.objects)} objects"
                ),
                discard=True,
            )
            return False
        objects, summary = batch.objects, self._summary
        outcomes = list(map(_outcome, results))
        stopping = self._stopping_outcomes
        # Every object before the first one that stops the run counts and is acked.
        end = min((outcomes.index(o) for o in stopping if o in outcomes), default=len(outcomes))
        counts = Counter(islice(outcomes, end))
        seen = min(end + 1, len(objects))  # with the object that stops the run, if any
        self._observer.acknowledged(objects[:seen], outcomes[:seen])
        failed = sum(counts[o] for o in self._dead_outcomes)
        summary.records += end - failed  # dead letters count once their produce is acked
        summary.inserted += counts[Outcome.INSERTED]
        summary.duplicates += counts[Outcome.DUPLICATE]
        summary.conflicts += counts[Outcome.CONFLICT]
        summary.rejected += counts[Outcome.REJECTED]
        summary.upserted += counts[Outcome.UPSERTED]
        summary.deleted += counts[Outcome.DELETED]
        if counts[Outcome.CONFLICT] and Outcome.CONFLICT not in self._dead_outcomes:
            for obj, result in zip(objects[:end], results, strict=False):
                if result.outcome is Outcome.CONFLICT:
                    error = self._failure(obj, result)
                    log.warning("%s", error, extra=coordinates(error.where))
        if failed:
            letters, handled = self._backend_letters(objects[:end], results)
            self._dead_letter(letters)
        elif self._replay:
            handled = [o.tracked for o in islice(objects, end)]
        else:
            handled = list(map(_record, islice(objects, end)))
        for (topic, partition, epoch), run in groupby(handled, _run_key):
            self._tracker.ack_many(TopicPartition(topic, partition), epoch, list(map(_offset, run)))
        if failed:  # records counted as mapped: now counted as failed as well
            self._breaker.count(0, failed - 1)
            if self._tripped(letters[-1].error, records=0):
                return False
        if end == len(objects):
            return True
        obj, result = objects[end], results[end]
        if result.outcome is Outcome.REJECTED:
            summary.rejected += 1
        else:
            summary.conflicts += 1
        self._fail(self._failure(obj, result), discard=True)
        return False

    def _backend_letters(
        self, objects: list[MappedObject], results: list[ObjectResult]
    ) -> tuple[list[DeadLetter], list[SourceRecord]]:
        """The dead letters of a write, and the records of the other (handled) objects."""
        letters: list[DeadLetter] = []
        handled: list[SourceRecord] = []
        backend = type(self._backend)
        executing = f"{backend.__module__}.{backend.__qualname__}"
        for obj, result in zip(objects, results, strict=False):
            if result.outcome in self._dead_outcomes:
                error = self._failure(obj, result)
                letters.append(
                    DeadLetter(obj.record, error, obj.object_type.name, executing, obj.fetched)
                )
            else:
                handled.append(obj.tracked)
        return letters, handled

    @staticmethod
    def _failure(obj: MappedObject, result: ObjectResult) -> RecordError:
        """The record error of a rejected or conflicting object."""
        if result.outcome is Outcome.REJECTED:
            return RecordError(
                RecordErrorKind.BACKEND_REJECTION,
                obj.record.coordinates,
                f"the backend rejected {obj.object_type.name} _id {obj.object_id}: {result.reason}",
            )
        return RecordError(RecordErrorKind.CONFLICT, obj.record.coordinates, str(result.reason))

    # --- dead letters ------------------------------------------------------------------

    async def _dead_letter_loop(self) -> None:
        """Produce queued dead letters; ack each offset once the broker acknowledged it.

        A dead-letter topic that is unavailable is retried like a backend outage: the
        offsets stay un-acked, so nothing past them is committed, and nothing is dropped.
        """
        if self._dlq is None:
            return
        dlq = self._dlq
        while True:
            if not self._letters:
                if self._letters_closing:
                    return
                self._letter_ready.clear()
                await self._letter_ready.wait()
                continue
            self._sending = list(self._letters)
            self._letters.clear()
            try:
                await self._retrying(
                    lambda: self._send_letters(dlq), "dead-letter produce", self._abandon
                )
            except _Interrupted:
                return
            finally:
                self._sending = []
                self._room.set()

    async def _send_letters(self, dlq: DeadLetterProducer) -> None:
        """Send what is in ``_sending``; keep there what the broker did not acknowledge."""
        letters = self._sending
        reports = await dlq.send(letters)
        delivered = [letter for letter, report in zip(letters, reports, strict=True) if not report]
        records = [letter.tracked for letter in delivered]
        for (topic, partition, epoch), run in groupby(records, _run_key):
            self._tracker.ack_many(TopicPartition(topic, partition), epoch, list(map(_offset, run)))
        self._summary.records += len(delivered)
        self._summary.dead_lettered += len(delivered)
        self._observer.dead_lettered(delivered)
        for letter in delivered:
            log.warning("dead-lettered to %r: %s", dlq.topic, letter.error)
        # A letter of a partition revoked meanwhile is not sent again: the next owner reads
        # the record again and dead-letters it itself.
        self._sending = [
            letter
            for letter, report in zip(letters, reports, strict=True)
            if report
            and self._tracker.epoch(letter.tracked.topic_partition) == letter.tracked.epoch
        ]
        if self._sending:
            first = next(report for report in reports if report)
            raise RetryableError(
                f"the dead-letter topic {dlq.topic!r} did not acknowledge "
                f"{len(self._sending)} record(s): {first}"
            )

    async def _ingest_with_retry(self, batch: Batch) -> list[ObjectResult]:
        try:
            return await self._retrying(lambda: self._write(batch), "backend write", self._abandon)
        except _Interrupted:
            raise ConnectorError(
                "shutdown while the backend was unavailable; the batch was abandoned "
                "and will be read again on the next start"
            ) from None

    async def _write(self, batch: Batch) -> list[ObjectResult]:
        started = time.monotonic()
        results = await self._backend.ingest(batch.objects)
        self._observer.batch_written(len(batch.objects), time.monotonic() - started)
        return results

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], what: str, interrupt: asyncio.Event
    ) -> T:
        """``call()`` until it succeeds, with exponential backoff and jitter on
        ``RetryableError``; raises ``_Interrupted`` once ``interrupt`` is set."""
        retry = self._config.retry
        delay = retry.initial_backoff_ms / 1000
        attempt = 0
        while True:
            try:
                return await call()
            except RetryableError as exc:
                attempt += 1
                self._observer.retried(what)
                wait = random.uniform(delay / 2, delay)  # jitter spreads out reconnecting replicas
                log.warning(
                    "%s failed (attempt %d): %s; retrying in %.1f s, "
                    "nothing is committed meanwhile",
                    what,
                    attempt,
                    exc,
                    wait,
                )
                with contextlib.suppress(TimeoutError):
                    await within(interrupt.wait(), wait)
                if interrupt.is_set():
                    raise _Interrupted from exc
                delay = min(retry.max_backoff_ms / 1000, delay * retry.multiplier)

    # --- commit ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self._config.commit.interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit_now()

    async def _commit_now(self, *, final: bool = False) -> None:
        """Commit what is acked; then release it from the topic where routes ask for it."""
        offsets = self._tracker.committable()
        if offsets:
            started = time.monotonic()
            try:
                await self._source.commit(offsets)
            except Exception as exc:  # the next interval retries; uncommitted = redelivered
                self._observer.committed(time.monotonic() - started, False)
                log.warning("offset commit failed, will retry: %s", exc)
                return
            self._observer.committed(time.monotonic() - started, True)
            self._tracker.mark_committed(offsets)
            log.debug("committed %s", offsets)
        if self._releaser.enabled:
            await self._releaser.committed(offsets, force=final)

    async def _progress_loop(self) -> None:
        """Report progress every interval. A run until caught up also reports its lag: asked
        from the broker at most every ``LAG_REFRESH_S`` (a round trip per partition on the
        consumer's thread) and counted down by the records done in between. An endless run
        does not ask, so that a broker outage cannot hold up its consumer thread for this."""
        measured: tuple[float, int, int] | None = None  # when, lag then, records then
        while True:
            await asyncio.sleep(self._progress.interval_s)
            now, done = time.monotonic(), self._summary.records
            if not self._assigned or not self._until_caught_up:
                measured = None
            elif measured is None or now - measured[0] >= LAG_REFRESH_S:
                try:
                    measured = (now, await self._unfetched() + self._tracker.in_flight(), done)
                except Exception as exc:  # a rebalance or a broker hiccup: shown as unknown
                    log.debug("lag not known: %s", exc)
                    measured = None
            lag = None if measured is None else max(0, measured[1] - (done - measured[2]))
            self._progress.update(self._snapshot(lag))

    def _snapshot(self, lag: int | None) -> Progress:
        s = self._summary
        elapsed = time.monotonic() - self._started
        return Progress(s.records, s.inserted, s.duplicates, s.conflicts, lag, elapsed)

"""The pipeline: Source → Decode/Map → Batch → Backend → Ack → Release, on one event loop.

Three tasks cooperate:

* fetch: pulls records from the Source, maps them, closes batches. When batches wait for
  the backend it *pauses* the assigned partitions and keeps polling (so the consumer stays
  in its group), instead of buffering without limit.
* ingest: hands batches to the Backend one at a time, retrying transient failures with
  exponential backoff and jitter, then acks every object's offset in the tracker.
* commit: periodically commits the highest contiguous acked offset per partition.

Nothing is committed that the backend has not durably acknowledged, together with every
earlier record of the same partition. Commits also happen on revoke and on shutdown.
A revoked partition is fenced: its objects not yet in the backend are dropped, and the
batch in the backend is waited for (bounded) before the commit on revoke. A failing record
stops the run there: nothing queued behind it is written. Every shutdown step is bounded,
so the whole shutdown ends within ``shutdown.timeout_ms`` whatever the group is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from connector.config import PipelineConfig
from connector.errors import ConnectorError, RecordError, RecordErrorKind, RetryableError
from connector.logs import coordinates
from connector.mapping import Mapper
from connector.offsets import OffsetTracker
from connector.progress import LogProgress, Progress, ProgressSink
from connector.records import MappedObject, SourceRecord, TopicPartition
from connector.release import Releaser
from connector.schemas import ObjectTypes
from connector.sources import Source

log = logging.getLogger(__name__)

CAUGHT_UP_CHECK_INTERVAL_S = 0.25
LAG_REFRESH_S = 5.0
PAUSE_AFTER_S = 5.0
FETCH_SLICE = 500
CLOSE_RESERVE_S = 5.0  # of the shutdown timeout, kept for the final commit and leaving the group
CLOSE_MIN_S = 1.0


T = TypeVar("T")

_run_key = attrgetter("topic", "partition", "epoch")  # records of one partition and epoch
_offset = attrgetter("offset")
_record = attrgetter("record")
_outcome = attrgetter("outcome")


class _Interrupted(Exception):
    """A retry loop was told to give up (shutdown)."""


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


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
    elapsed_s: float = 0.0
    startup_s: float | None = None  # until the first record arrived (joining the group, ...)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

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
        self._writing: Batch | None = None  # the batch inside the backend right now
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
        writing = self._writing
        if writing is not None and any(
            o.record.topic_partition in revoked for o in writing.objects
        ):
            deadline = time.monotonic() + self._shutdown_s
            while self._writing is writing and time.monotonic() < deadline:
                self._written.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._written.wait(), deadline - time.monotonic())
            if self._writing is writing:
                log.warning(
                    "revoke: the batch in the backend did not finish within %.1f s; its "
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
        self._room.set()

    # --- control -----------------------------------------------------------------------

    def request_stop(self, abandon: bool = False) -> None:
        """Stop fetching; with ``abandon`` also give up the in-flight batch at once."""
        self._stop.set()
        self._room.set()
        self._work.set()
        if abandon:
            self._abandon.set()

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
        self.request_stop()

    # --- run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run until stopped, caught up (if asked) or failed; always commits what is acked."""
        started = self._started = time.monotonic()
        try:
            await self._retrying(self._backend.open, "backend connection", self._stop)
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
        await self._source.start(subscriptions, self)
        ingest_task = asyncio.create_task(self._ingest_loop(), name="ingest")
        commit_task = asyncio.create_task(self._commit_loop(), name="commit")
        progress_task = asyncio.create_task(self._progress_loop(), name="progress")
        try:
            await self._fetch_loop()
        except ConnectorError as exc:
            self._fail(exc)
        finally:
            deadline = time.monotonic() + self._shutdown_s
            await self._drain(ingest_task, deadline)
            for task in (commit_task, progress_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finished = self._caught_up_at_end and self._error is None
            self._progress.close(self._snapshot(0 if finished else None), finished)
            await self._bounded(self._commit_now(final=True), _left(deadline), "the final commit")
            await self._source.close(max(_left(deadline), CLOSE_MIN_S))
            await self._bounded(self._backend.close(), CLOSE_MIN_S, "closing the backend")
            self._summary.elapsed_s = time.monotonic() - started
        if self._error is not None:
            self._summary.error = str(self._error)
        return self._summary

    async def _drain(self, ingest_task: asyncio.Task[None], deadline: float) -> None:
        """Let the ingest task write what is batched, within the shutdown timeout.

        After a failure nothing more is written; on abandon the in-flight batch is given up.
        Part of the timeout is kept for the commit and for leaving the group.
        """
        if not self._discard and not self._abandon.is_set():
            last = self._batcher.take()
            if last is not None:
                self._ready.append(last)
        self._closing = True
        self._work.set()
        budget = max(0.0, deadline - time.monotonic() - min(CLOSE_RESERVE_S, self._shutdown_s / 3))
        abandon = asyncio.create_task(self._abandon.wait())
        done, _ = await asyncio.wait(
            {ingest_task, abandon}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
        )
        abandon.cancel()
        if ingest_task not in done:
            log.warning(
                "shutdown: abandoning the in-flight batch after %.1f s; its records are not "
                "committed and will be read again on the next start",
                budget,
            )
            ingest_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest_task

    @staticmethod
    async def _bounded(call: Awaitable[None], timeout_s: float, what: str) -> None:
        """Await ``call`` for at most ``timeout_s`` (shutdown steps must not hang)."""
        try:
            await asyncio.wait_for(call, max(timeout_s, 0.1))
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
                try:
                    objects, bad = self._mapper.map_many(run[:count]) if count else ([], None)
                except ConnectorError as exc:
                    self._fail(exc)
                    return
                ready.extend(batcher.add_many(objects))
                # A record error, or the partition going backwards after the mapped records.
                failure = bad or error
                if failure is not None:
                    self._fail(failure)
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
        if len(self._ready) >= self._max_ready and not self._paused:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), self._pause_after_s)
        if len(self._ready) >= self._max_ready:
            newly = sorted(self._assigned - self._paused, key=str)
            if newly:
                await self._source.pause(newly)
                self._paused.update(newly)
        elif self._paused:
            paused = sorted(self._paused & self._assigned, key=str)
            self._paused.clear()
            await self._source.resume(paused)

    async def _caught_up(self) -> bool:
        """True when every assigned partition is ingested up to its end.

        The consumer's position is compared with the high watermark: unlike "last fetched
        offset + 1" it moves past transaction markers, which are never delivered.
        """
        if self._ready or len(self._batcher) or self._writing or self._tracker.in_flight():
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
            self._writing = batch
            try:
                results = await self._ingest_with_retry(batch)
                if not self._acknowledge(batch, results):
                    return
            except ConnectorError as exc:
                self._fail(exc, discard=True)
                return
            finally:
                self._writing = None
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
        stopping = [Outcome.REJECTED]
        if self._config.errors.conflict == "stop":
            stopping.append(Outcome.CONFLICT)
        # Every object before the first one that stops the run counts and is acked.
        end = min((outcomes.index(o) for o in stopping if o in outcomes), default=len(outcomes))
        counts = Counter(islice(outcomes, end))
        summary.records += end
        summary.inserted += counts[Outcome.INSERTED]
        summary.duplicates += counts[Outcome.DUPLICATE]
        summary.conflicts += counts[Outcome.CONFLICT]
        summary.upserted += counts[Outcome.UPSERTED]
        summary.deleted += counts[Outcome.DELETED]
        if counts[Outcome.CONFLICT]:
            for obj, result in zip(objects[:end], results, strict=False):
                if result.outcome is Outcome.CONFLICT:
                    error = self._conflict(obj, result)
                    log.warning("%s", error, extra=coordinates(error.where))
        acked = list(map(_record, islice(objects, end)))
        for (topic, partition, epoch), run in groupby(acked, _run_key):
            self._tracker.ack_many(TopicPartition(topic, partition), epoch, list(map(_offset, run)))
        if end == len(objects):
            return True
        obj, result = objects[end], results[end]
        if result.outcome is Outcome.REJECTED:
            summary.rejected += 1
            self._fail(
                RecordError(
                    RecordErrorKind.RULE_VIOLATION,
                    obj.record.coordinates,
                    f"the backend rejected {obj.object_type.name} _id {obj.object_id!r}: "
                    f"{result.reason}",
                ),
                discard=True,
            )
        else:
            summary.conflicts += 1
            self._fail(self._conflict(obj, result), discard=True)
        return False

    @staticmethod
    def _conflict(obj: MappedObject, result: ObjectResult) -> RecordError:
        return RecordError(RecordErrorKind.CONFLICT, obj.record.coordinates, str(result.reason))

    async def _ingest_with_retry(self, batch: Batch) -> list[ObjectResult]:
        try:
            return await self._retrying(
                lambda: self._backend.ingest(batch.objects), "backend write", self._abandon
            )
        except _Interrupted:
            raise ConnectorError(
                "shutdown while the backend was unavailable; the batch was abandoned "
                "and will be read again on the next start"
            ) from None

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
                    await asyncio.wait_for(interrupt.wait(), wait)
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
            try:
                await self._source.commit(offsets)
            except Exception as exc:  # the next interval retries; uncommitted = redelivered
                log.warning("offset commit failed, will retry: %s", exc)
                return
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

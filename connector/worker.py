"""The worker: hosts named connectors (``tasks.max`` pipeline tasks each) and controls them.

A connector comes from a pipeline file of the connectors directory (its name is the file
stem) or from the REST API. Each has a target state (RUNNING, PAUSED, STOPPED) as in Kafka
Connect: PAUSED keeps the task in its group with every partition paused, STOPPED ends the
task (the group is left, so its offsets may be changed). The REST layer calls the methods
here and turns ``ApiError`` into Connect's error bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from connector import group_offsets
from connector.backends import create_backend
from connector.config import PipelineConfig, load_config
from connector.connect_config import (
    SecretFilter,
    flatten,
    normalize,
    pipeline_of,
    redact,
    scrub,
    secret_values,
    secrets_of,
    with_connect_keys,
)
from connector.errors import ConfigError, ConnectorError
from connector.mapping import checked_types
from connector.metrics import ConnectorMetrics, Metrics
from connector.pipeline import Pipeline, RunSummary
from connector.records import TopicPartition
from connector.schemas import ObjectTypes
from connector.sources import create_source
from connector.task_process import TaskProcess
from connector.timeouts import within

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0
STOP_MARGIN_S = 5.0
CHILDREN_START_S = 30.0  # task 0 starts after the task processes, or after this long


@dataclass(frozen=True)
class ConnectorRecord:
    """A connector's config and target state, as the cluster's config topic holds it."""

    flat: dict[str, str]
    target: str = "RUNNING"


class ClusterStore(Protocol):
    """Where a cluster's workers share connector configs and task states."""

    async def put(self, name: str, record: ConnectorRecord | None) -> None:
        """Publish ``record`` to every worker and return once this one applied it."""

    def publish_status(self, connector: HostedConnector) -> None:
        """Tell the other workers the state of this worker's task of ``connector``."""

    def forget_status(self, name: str) -> None:
        """This worker no longer runs ``name``."""

    def remote_tasks(self, name: str) -> list[dict[str, Any]]:
        """The live tasks of ``name`` on the other workers (Connect's TaskState, ``id`` the
        task's id on its worker)."""

    async def request_restart(
        self, name: str, worker_id: str | None, task_id: int | None, only_failed: bool
    ) -> None:
        """Ask the worker ``worker_id`` (None: every worker) to restart its task ``task_id``
        (None: all its tasks of ``name``); return once this worker applied its part."""


class ApiError(Exception):
    """A request the worker refuses; ``status`` is the HTTP status Connect would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(name: str) -> ApiError:
    return ApiError(404, f"Connector {name} not found")


class LocalTask:
    """Task 0 of a connector: its pipeline on the worker's own event loop."""

    id = 0

    def __init__(self, connector: HostedConnector, on_end: Callable[[LocalTask], None]) -> None:
        self._connector = connector
        self._on_end = on_end
        self.pipeline: Pipeline | None = None
        self._task: asyncio.Task[None] | None = None
        self.summary: RunSummary | None = None
        self.failed = False
        self.trace: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def started(self) -> bool:
        return self.pipeline is not None and self.pipeline.started

    @property
    def paused_partitions(self) -> int:
        return self.pipeline.paused_partitions if self.pipeline is not None else 0

    def start(self, held: bool) -> None:
        c = self._connector
        self.summary, self.failed, self.trace = None, False, None
        self.pipeline = Pipeline(
            c.config,
            c.types,
            create_source(c.config.kafka),
            create_backend(c.config.backend, c.types),
            until_caught_up=c.until_caught_up,
            assignment_timeout_s=c.assignment_timeout_s,
            observer=c.metrics,
        )
        self.pipeline.hold(held)
        self._task = asyncio.create_task(self._run(self.pipeline), name=f"connector {c.name}")

    async def _run(self, pipeline: Pipeline) -> None:
        try:
            summary = await pipeline.run()
        except Exception as exc:
            log.exception("connector %s: the task failed", self._connector.name)
            summary = RunSummary(error=f"{type(exc).__name__}: {exc}")
            self.trace = traceback.format_exc()
        self.summary = summary
        if summary.error is not None:
            self.failed = True
            self.trace = self.trace or summary.error
        self._task = None  # not running from here on, though this coroutine still returns
        self._on_end(self)

    def hold(self, held: bool) -> None:
        if self.pipeline is not None:
            self.pipeline.hold(held)

    def request_stop(self, abandon: bool) -> None:
        if self.pipeline is not None:
            self.pipeline.request_stop(abandon=abandon)

    async def lag(self) -> dict[TopicPartition, int]:
        return await self.pipeline.lag() if self.pipeline is not None else {}

    async def stop(self, timeout_s: float) -> None:
        """Stop the pipeline (commit, leave the group) and wait for it, bounded."""
        task, pipeline = self._task, self.pipeline
        if task is None or pipeline is None or task.done():
            return
        pipeline.request_stop()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            pipeline.request_stop(abandon=True)
            await asyncio.wait({task}, timeout=STOP_MARGIN_S)


Task = LocalTask | TaskProcess


class HostedConnector:
    """One connector on this worker: its config, target state and ``tasks.max`` tasks
    (task 0 in this process, the others in child processes; see ``task_process``)."""

    def __init__(
        self,
        name: str,
        flat: dict[str, str],
        config: PipelineConfig,
        types: ObjectTypes,
        *,
        worker_id: str,
        metrics: ConnectorMetrics,
        base_dir: Path,
        target: str = "RUNNING",
        until_caught_up: bool = False,
        assignment_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.flat = flat
        self.config = config
        self.types = types
        self.worker_id = worker_id
        self.metrics = metrics
        self.target = target
        self.until_caught_up = until_caught_up
        self.assignment_timeout_s = assignment_timeout_s
        settings = {
            "name": name,
            "flat": flat,
            "base_dir": str(base_dir),
            "until_caught_up": until_caught_up,
            "assignment_timeout_s": assignment_timeout_s,
        }
        self.local = LocalTask(self, self._task_ended)
        self.tasks: list[Task] = [
            self.local,
            *(
                TaskProcess(i, settings, metrics, self._task_ended)
                for i in range(1, config.tasks_max)
            ),
        ]
        self._lag_task: asyncio.Task[None] | None = None
        self._assigned_topics: set[str] = set()  # since the start or the last topics reset
        self._pending: asyncio.Task[None] | None = None  # task 0 waiting for the processes
        self._restarting: set[int] = set()
        self.on_state: Callable[[HostedConnector], None] | None = None
        self.ended = asyncio.Event()  # every task ended, and no restart follows
        metrics.watch_paused(lambda: sum(t.paused_partitions for t in self.tasks))

    # --- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        starting = self._pending is not None and not self._pending.done()
        return starting or any(t.running for t in self.tasks)

    @property
    def failed(self) -> bool:
        return any(t.failed for t in self.tasks)

    @property
    def summary(self) -> RunSummary | None:
        """Task 0's summary (``data-ingest run --rest-listen`` has that one task)."""
        return self.local.summary

    def task(self, task_id: int) -> Task:
        if self.target == "STOPPED" or not 0 <= task_id < len(self.tasks):
            raise ApiError(404, f"Task {self.name}-{task_id} not found")
        return self.tasks[task_id]

    def task_state(self, task: Task) -> str:
        if task.failed:
            return "FAILED"
        if not task.running:
            return "UNASSIGNED"
        return "PAUSED" if self.target == "PAUSED" else "RUNNING"

    def connector_state(self) -> str:
        return self.target

    def task_states(self) -> list[dict[str, Any]]:
        """Connect's TaskState of each task on this worker (none while STOPPED)."""
        if self.target == "STOPPED":
            return []
        states = []
        for task in self.tasks:
            state: dict[str, Any] = {
                "id": task.id,
                "state": self.task_state(task),
                "worker_id": self.worker_id,
            }
            if task.failed and task.trace:
                state["trace"] = task.trace
            states.append(state)
        return states

    def status(self) -> dict[str, Any]:
        """Connect's ConnectorStateInfo."""
        connector: dict[str, Any] = {"state": self.connector_state(), "worker_id": self.worker_id}
        tasks = self.task_states()
        return {"name": self.name, "connector": connector, "tasks": tasks, "type": "sink"}

    def info(self, task_ids: list[int] | None = None) -> dict[str, Any]:
        """Connect's ConnectorInfo (the config redacted)."""
        ids = [] if self.target == "STOPPED" else [t.id for t in self.tasks]
        ids = ids if task_ids is None else task_ids
        tasks = [{"connector": self.name, "task": i} for i in ids]
        return {"name": self.name, "config": self.shown_config(), "tasks": tasks, "type": "sink"}

    def shown_config(self) -> dict[str, str]:
        return redact(with_connect_keys(self.name, self.flat))

    def topics(self) -> list[str]:
        """Connect's active topics: the routed topic names, and every topic a task of this
        worker was assigned since the start or the last reset (what regex routes matched)."""
        named = {r.topic for r in self.config.routes if r.topic is not None}
        return sorted(named | self._assigned_topics)

    def reset_topics(self) -> None:
        self._assigned_topics.clear()

    def _publish_state(self) -> None:
        tasks = {t.id: self.task_state(t) for t in self.tasks} if self.target != "STOPPED" else {}
        self.metrics.set_state(self.connector_state(), tasks)
        if self.on_state is not None:
            self.on_state(self)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every task that is not running, unless the target state is STOPPED."""
        if self.target != "STOPPED":
            self._start_tasks(self.tasks)
        self._publish_state()

    def _start_tasks(self, tasks: list[Task]) -> None:
        """Start ``tasks``; task 0 once the task processes among them are up, so that all
        join the group at once: one rebalance rather than one more per late member (a
        process takes a second or two to import and open its backend)."""
        children = [t for t in tasks if isinstance(t, TaskProcess) and not t.running]
        for task in children:
            self._start(task)
        if self.local not in tasks or self.local.running:
            return
        if children:
            self.ended.clear()
            self._pending = asyncio.create_task(
                self._start_local_after(children), name=f"connector {self.name} task 0 start"
            )
        else:
            self._start(self.local)

    async def _start_local_after(self, children: list[TaskProcess]) -> None:
        waits = [asyncio.create_task(c.ready.wait()) for c in children]
        try:
            await asyncio.wait(waits, timeout=CHILDREN_START_S)
        finally:
            for wait in waits:
                wait.cancel()
        if self.target != "STOPPED":
            self._start(self.local)
            self._publish_state()

    def _start(self, task: Task) -> None:
        if task.running:
            return
        self.ended.clear()
        task.start(self.target == "PAUSED")
        if self._lag_task is None or self._lag_task.done():
            self._lag_task = asyncio.create_task(self._sample_lag(), name=f"lag {self.name}")

    def _task_ended(self, task: Task) -> None:
        if not self.running and self._lag_task is not None:
            self._lag_task.cancel()
            self.metrics.set_lag({})
        self._publish_state()
        if not self.running and not self._restarting:
            self.ended.set()

    async def _sample_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            lag: dict[TopicPartition, int] = {}
            try:
                for task in self.tasks:
                    lag.update(await task.lag())
            except Exception as exc:  # the broker is away: keep the last values
                log.debug("connector %s: lag not sampled: %s", self.name, exc)
                continue
            self.metrics.set_lag(lag)
            self._assigned_topics.update(tp.topic for tp in lag)

    def _stop_bound_s(self) -> float:
        return self.config.shutdown.timeout_ms / 1000 + STOP_MARGIN_S

    async def stop_task(self, tasks: list[Task] | None = None) -> None:
        """Stop ``tasks`` (default: all): commit, leave the group; bounded."""
        if self._pending is not None and (tasks is None or self.local in tasks):
            self._pending.cancel()
        bound = self._stop_bound_s()
        await asyncio.gather(*(t.stop(bound) for t in tasks or self.tasks))
        self._publish_state()

    def pause(self) -> None:
        self.target = "PAUSED"
        for task in self.tasks:
            if task.running:
                task.hold(True)
        self._publish_state()

    async def resume(self) -> None:
        self.target = "RUNNING"
        for task in self.tasks:
            if task.running:
                task.hold(False)
        self.start()

    async def stop(self) -> None:
        self.target = "STOPPED"
        await self.stop_task()

    async def set_target(self, target: str) -> None:
        if target == "PAUSED":
            self.pause()
        elif target == "STOPPED":
            await self.stop()
        else:
            await self.resume()

    async def restart(self, only_failed: bool = False, tasks: list[Task] | None = None) -> None:
        """Restart ``tasks`` (default: all), or only those that FAILED."""
        chosen = [t for t in tasks or self.tasks if t.failed or not only_failed]
        if not chosen:
            return
        log.info(
            "connector %s: restarting task(s) %s", self.name, ", ".join(str(t.id) for t in chosen)
        )
        self._restarting.update(t.id for t in chosen)
        try:
            await self.stop_task(chosen)
        finally:
            self._restarting.difference_update(t.id for t in chosen)
        if self.target != "STOPPED":
            self._start_tasks(chosen)
        self._publish_state()

    async def probe_backend(self) -> str | None:
        """None when the backend answers a read-only check; otherwise why not."""
        backend = create_backend(self.config.backend, self.types)
        try:
            await within(backend.check(), PROBE_TIMEOUT_S)
        except Exception as exc:
            return f"connector {self.name}: backend unreachable: {exc or type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await within(backend.close(), PROBE_TIMEOUT_S)
        return None

    def not_ready(self) -> list[str]:
        """Why this connector's tasks are not ready (empty when they all are)."""
        reasons = []
        for task in self.tasks if self.target != "STOPPED" else []:
            who = f"connector {self.name} task {task.id}"
            if task.failed:
                reasons.append(f"{who}: FAILED: {task.trace}")
            elif not task.running:
                reasons.append(f"{who}: not running")
            elif not task.started:
                reasons.append(f"{who}: starting (backend not open yet)")
        return reasons


class Worker:
    """The connectors of this process, by name."""

    def __init__(
        self,
        worker_id: str,
        metrics: Metrics,
        *,
        base_dir: Path,
        secret_filter: SecretFilter | None = None,
        single: bool = False,
    ) -> None:
        self.worker_id = worker_id
        self.metrics = metrics
        self.base_dir = base_dir
        self.secret_filter = secret_filter
        self.single = single  # `data-ingest run`: one connector, none created or deleted
        self.connectors: dict[str, HostedConnector] = {}
        self.store: ClusterStore | None = None
        self.started = time.monotonic()
        self._lock = asyncio.Lock()

    def get(self, name: str) -> HostedConnector:
        connector = self.connectors.get(name)
        if connector is None:
            raise not_found(name)
        return connector

    def _check_mutable(self) -> None:
        if self.single:
            raise ApiError(
                405,
                "this is data-ingest run (one connector from its pipeline file): connectors "
                "cannot be created, reconfigured or deleted here; use data-ingest worker",
            )

    def validated(
        self, name: str, raw: Mapping[str, Any]
    ) -> tuple[dict[str, str], PipelineConfig, ObjectTypes]:
        """A request's config, validated; ``ApiError`` 400 naming every problem."""
        flat = normalize(raw)
        try:
            config = pipeline_of(name, flat, self.base_dir)
            types = checked_types(config, name)
        except ConfigError as exc:
            raise ApiError(
                400,
                scrub(
                    f"Connector configuration is invalid and contains the following "
                    f"{len(exc.problems)} error(s):\n" + "\n".join(exc.problems),
                    secret_values(flat),
                ),
            ) from None
        return flat, config, types

    def host(
        self,
        name: str,
        flat: dict[str, str],
        config: PipelineConfig,
        types: ObjectTypes,
        *,
        target: str = "RUNNING",
        base_dir: Path | None = None,
        **options: Any,
    ) -> HostedConnector:
        """A connector of this worker, not yet started; relative paths of ``flat`` are below
        ``base_dir`` (default: the worker file's folder)."""
        if self.secret_filter is not None:
            self.secret_filter.secrets |= secrets_of(config)
        connector = HostedConnector(
            name,
            flat,
            config,
            types,
            worker_id=self.worker_id,
            metrics=self.metrics.connector(name),
            base_dir=base_dir or self.base_dir,
            target=target,
            **options,
        )
        connector.on_state = self._state_changed
        return connector

    def _state_changed(self, connector: HostedConnector) -> None:
        if self.store is not None:
            self.store.publish_status(connector)

    def add(self, connector: HostedConnector) -> None:
        self.connectors[connector.name] = connector
        connector.start()

    async def apply(self, name: str, record: ConnectorRecord | None) -> None:
        """Bring this worker's connector ``name`` to ``record`` (None: deleted)."""
        async with self._lock:
            old = self.connectors.get(name)
            if record is None:
                if old is not None:
                    await old.stop_task()
                    old.metrics.remove()
                    del self.connectors[name]
                    if self.store is not None:
                        self.store.forget_status(name)
                    log.info("connector %s deleted", name)
                return
            if old is not None and old.flat == record.flat:
                await old.set_target(record.target)
                return
            try:
                flat, config, types = self.validated(name, record.flat)
            except ApiError as exc:
                log.error("connector %s: config not applied: %s", name, exc.message)
                return
            if old is not None:
                await old.stop_task()
                old.metrics.remove()
            self.add(self.host(name, flat, config, types, target=record.target))
            log.info(
                "connector %s %s (%s)", name, "reconfigured" if old else "created", record.target
            )

    async def _publish(self, name: str, record: ConnectorRecord | None) -> None:
        if self.store is not None:
            await self.store.put(name, record)
        else:
            await self.apply(name, record)

    async def create(self, name: str, raw: Mapping[str, Any], target: str) -> HostedConnector:
        self._check_mutable()
        if name in self.connectors:
            raise ApiError(409, f"Connector {name} already exists")
        flat, _, _ = self.validated(name, raw)
        await self._publish(name, ConnectorRecord(flat, target))
        return self.get(name)

    async def put_config(self, name: str, raw: Mapping[str, Any]) -> tuple[HostedConnector, bool]:
        """Create or reconfigure; True when it was created."""
        self._check_mutable()
        old = self.connectors.get(name)
        flat, _, _ = self.validated(name, raw)
        await self._publish(name, ConnectorRecord(flat, old.target if old else "RUNNING"))
        return self.get(name), old is None

    async def delete(self, name: str) -> None:
        self._check_mutable()
        self.get(name)
        await self._publish(name, None)

    async def set_target(self, name: str, target: str) -> None:
        """PAUSED, RUNNING (resume) or STOPPED, on every worker of the cluster."""
        connector = self.get(name)
        if self.single:
            await connector.set_target(target)
        else:
            await self._publish(name, ConnectorRecord(connector.flat, target))

    def cluster_tasks(self, name: str) -> list[dict[str, Any]]:
        """Connect's TaskState of every task of ``name`` in the cluster, by worker id and then
        the worker's own task id; ``id`` is the index in that order (stable while the same
        workers run it) and ``local_id`` the task's id on its worker."""
        tasks = self.get(name).task_states()
        if self.store is not None:
            tasks += self.store.remote_tasks(name)
        tasks.sort(key=lambda t: (str(t["worker_id"]), int(t["id"])))
        return [{**t, "id": i, "local_id": t["id"]} for i, t in enumerate(tasks)]

    def status(self, name: str) -> dict[str, Any]:
        """Connect's ConnectorStateInfo, with the tasks of every worker of the cluster."""
        status = self.get(name).status()
        status["tasks"] = [
            {k: v for k, v in t.items() if k != "local_id"} for t in self.cluster_tasks(name)
        ]
        return status

    def info(self, name: str) -> dict[str, Any]:
        """Connect's ConnectorInfo, with the task ids of the whole cluster."""
        return self.get(name).info([t["id"] for t in self.cluster_tasks(name)])

    def cluster_task(self, name: str, task_id: str) -> dict[str, Any]:
        """The task ``task_id`` (a cluster-wide id, as in ``status``); ApiError 404 if none."""
        tasks = self.cluster_tasks(name)
        if not task_id.isdigit() or int(task_id) >= len(tasks):
            raise ApiError(404, f"Task {name}-{task_id} not found")
        return tasks[int(task_id)]

    async def restart(self, name: str, *, only_failed: bool, task_id: str | None = None) -> None:
        """Restart the tasks of ``name`` on every worker (or the one task ``task_id``) — the
        other workers are asked through the cluster's config topic."""
        connector = self.get(name)
        if task_id is None:
            if self.store is not None:
                await self.store.request_restart(name, None, None, only_failed)
            else:
                await connector.restart(only_failed=only_failed)
            return
        task = self.cluster_task(name, task_id)
        if task["worker_id"] == self.worker_id:
            await connector.restart(tasks=[connector.task(task["local_id"])])
        elif self.store is not None:
            await self.store.request_restart(name, task["worker_id"], task["local_id"], False)

    async def apply_restart(
        self, name: str, worker_id: str | None, task_id: int | None, only_failed: bool
    ) -> None:
        """A restart requested through the cluster: this worker's part of it."""
        connector = self.connectors.get(name)
        if connector is None or worker_id not in (None, self.worker_id):
            return
        if task_id is None:
            await connector.restart(only_failed=only_failed)
        elif 0 <= task_id < len(connector.tasks):
            await connector.restart(tasks=[connector.tasks[task_id]])

    def load_directory(self, directory: Path) -> list[str]:
        """Host every ``*.yaml``/``*.yml`` pipeline file of ``directory``; the problems found."""
        problems: list[str] = []
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            name = path.stem
            try:
                config = load_config(path)
                types = checked_types(config, str(path))
                flat = flatten(yaml.safe_load(path.read_text(encoding="utf-8")))
            except (ConfigError, yaml.YAMLError, OSError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            self.add(self.host(name, flat, config, types, base_dir=path.parent))
        return problems

    async def close(self) -> None:
        await asyncio.gather(*(c.stop_task() for c in self.connectors.values()))

    async def readiness(self) -> list[str]:
        """Why this worker is not ready (empty when it is)."""
        reasons = [r for c in self.connectors.values() for r in c.not_ready()]
        probes = await asyncio.gather(
            *(c.probe_backend() for c in self.connectors.values() if c.target != "STOPPED")
        )
        reasons.extend(p for p in probes if p is not None)
        return reasons

    # --- offsets (KIP-875) ---------------------------------------------------------------

    async def offsets(self, name: str) -> dict[str, Any]:
        connector = self.get(name)
        try:
            committed = await group_offsets.committed(connector.config.kafka)
        except ConnectorError as exc:
            raise ApiError(500, str(exc)) from None
        return {
            "offsets": [
                {
                    "partition": {"kafka_topic": topic, "kafka_partition": partition},
                    "offset": {"kafka_offset": offset},
                }
                for (topic, partition), offset in sorted(committed.items())
            ]
        }

    def _stopped(self, name: str) -> HostedConnector:
        connector = self.get(name)
        if connector.target != "STOPPED" or connector.running:
            raise ApiError(
                400,
                "Connectors must be in the STOPPED state before their offsets can be modified. "
                "This can be done for the specified connector by issuing a 'PUT' request to "
                f"the '/connectors/{name}/stop' endpoint",
            )
        return connector

    async def alter_offsets(self, name: str, offsets: dict[tuple[str, int], int | None]) -> None:
        connector = self._stopped(name)
        try:
            await group_offsets.alter(connector.config.kafka, offsets)
        except ConnectorError as exc:
            raise ApiError(500, str(exc)) from None

    async def reset_offsets(self, name: str) -> None:
        connector = self._stopped(name)
        try:
            await group_offsets.reset(connector.config.kafka)
        except ConnectorError as exc:
            raise ApiError(500, str(exc)) from None

"""The worker: hosts named connectors (one pipeline task each) and controls them.

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
from connector.schemas import ObjectTypes
from connector.sources import create_source

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0
STOP_MARGIN_S = 5.0


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
        """The live tasks of ``name`` on the other workers (Connect's TaskState)."""


class ApiError(Exception):
    """A request the worker refuses; ``status`` is the HTTP status Connect would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(name: str) -> ApiError:
    return ApiError(404, f"Connector {name} not found")


class HostedConnector:
    """One connector on this worker: its config, target state and pipeline task."""

    def __init__(
        self,
        name: str,
        flat: dict[str, str],
        config: PipelineConfig,
        types: ObjectTypes,
        *,
        worker_id: str,
        metrics: ConnectorMetrics,
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
        self.pipeline: Pipeline | None = None
        self.task: asyncio.Task[RunSummary] | None = None
        self.summary: RunSummary | None = None
        self.trace: str | None = None
        self.failed = False
        self._lag_task: asyncio.Task[None] | None = None
        self._restarting = False
        self.on_state: Callable[[HostedConnector], None] | None = None
        self.ended = asyncio.Event()  # the task ended, and no restart follows
        metrics.watch_paused(lambda: self.pipeline.paused_partitions if self.pipeline else 0)

    # --- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def task_state(self) -> str:
        if self.failed:
            return "FAILED"
        if not self.running:
            return "UNASSIGNED"
        return "PAUSED" if self.target == "PAUSED" else "RUNNING"

    def connector_state(self) -> str:
        return self.target

    def status(self) -> dict[str, Any]:
        """Connect's ConnectorStateInfo."""
        connector: dict[str, Any] = {"state": self.connector_state(), "worker_id": self.worker_id}
        tasks: list[dict[str, Any]] = []
        if self.target != "STOPPED":
            task: dict[str, Any] = {
                "id": 0,
                "state": self.task_state(),
                "worker_id": self.worker_id,
            }
            if self.failed and self.trace:
                task["trace"] = self.trace
            tasks.append(task)
        return {"name": self.name, "connector": connector, "tasks": tasks, "type": "sink"}

    def info(self) -> dict[str, Any]:
        """Connect's ConnectorInfo (the config redacted)."""
        tasks = [] if self.target == "STOPPED" else [{"connector": self.name, "task": 0}]
        return {"name": self.name, "config": self.shown_config(), "tasks": tasks, "type": "sink"}

    def shown_config(self) -> dict[str, str]:
        return redact(with_connect_keys(self.name, self.flat))

    def topics(self) -> list[str]:
        return sorted({r.topic for r in self.config.routes if r.topic is not None})

    def _publish_state(self) -> None:
        tasks = {} if self.target == "STOPPED" else {0: self.task_state()}
        self.metrics.set_state(self.connector_state(), tasks)
        if self.on_state is not None:
            self.on_state(self)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the pipeline task unless the target state is STOPPED."""
        if self.target == "STOPPED" or self.running:
            self._publish_state()
            return
        self.failed, self.trace = False, None
        self.ended.clear()
        self.pipeline = Pipeline(
            self.config,
            self.types,
            create_source(self.config.kafka),
            create_backend(self.config.backend, self.types),
            until_caught_up=self.until_caught_up,
            assignment_timeout_s=self.assignment_timeout_s,
            observer=self.metrics,
        )
        self.pipeline.hold(self.target == "PAUSED")
        self.task = asyncio.create_task(self._run(self.pipeline), name=f"connector {self.name}")
        self._lag_task = asyncio.create_task(self._sample_lag(), name=f"lag {self.name}")
        self._publish_state()

    async def _run(self, pipeline: Pipeline) -> RunSummary:
        try:
            summary = await pipeline.run()
        except Exception as exc:
            log.exception("connector %s: the task failed", self.name)
            summary = RunSummary(error=f"{type(exc).__name__}: {exc}")
            self.trace = traceback.format_exc()
        self.summary = summary
        if summary.error is not None:
            self.failed = True
            self.trace = self.trace or summary.error
        if self._lag_task is not None:
            self._lag_task.cancel()
        self.metrics.set_lag({})
        self._publish_state()
        if not self._restarting:
            self.ended.set()
        return summary

    async def _sample_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            pipeline = self.pipeline
            if pipeline is None:
                continue
            try:
                self.metrics.set_lag(await pipeline.lag())
            except Exception as exc:  # the broker is away: keep the last values
                log.debug("connector %s: lag not sampled: %s", self.name, exc)

    async def stop_task(self) -> None:
        """Stop the pipeline (commit, leave the group) and wait for it, bounded."""
        task, pipeline = self.task, self.pipeline
        if task is None or pipeline is None:
            return
        if not task.done():
            pipeline.request_stop()
            bound = self.config.shutdown.timeout_ms / 1000 + STOP_MARGIN_S
            done, _ = await asyncio.wait({task}, timeout=bound)
            if not done:
                pipeline.request_stop(abandon=True)
                await asyncio.wait({task}, timeout=STOP_MARGIN_S)
        self._publish_state()

    def pause(self) -> None:
        self.target = "PAUSED"
        if self.pipeline is not None and self.running:
            self.pipeline.hold(True)
        self._publish_state()

    async def resume(self) -> None:
        self.target = "RUNNING"
        if self.running and self.pipeline is not None:
            self.pipeline.hold(False)
            self._publish_state()
        else:
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

    async def restart(self, only_failed: bool = False) -> None:
        if only_failed and not self.failed:
            return
        self._restarting = True
        try:
            await self.stop_task()
        finally:
            self._restarting = False
        self.start()

    async def probe_backend(self) -> str | None:
        """None when the backend answers a read-only check; otherwise why not."""
        backend = create_backend(self.config.backend, self.types)
        try:
            await asyncio.wait_for(backend.check(), PROBE_TIMEOUT_S)
        except Exception as exc:
            return f"connector {self.name}: backend unreachable: {exc or type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(backend.close(), PROBE_TIMEOUT_S)
        return None


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
        **options: Any,
    ) -> HostedConnector:
        """A connector of this worker, not yet started."""
        if self.secret_filter is not None:
            self.secret_filter.secrets |= secrets_of(config)
        connector = HostedConnector(
            name,
            flat,
            config,
            types,
            worker_id=self.worker_id,
            metrics=self.metrics.connector(name),
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

    def status(self, name: str) -> dict[str, Any]:
        """Connect's ConnectorStateInfo, with the tasks of every worker of the cluster."""
        connector = self.get(name)
        status = connector.status()
        if self.store is None:
            return status
        tasks = [*status["tasks"], *self.store.remote_tasks(name)]
        tasks.sort(key=lambda t: str(t["worker_id"]))
        for i, task in enumerate(tasks):
            task["id"] = i
        status["tasks"] = tasks
        return status

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
            self.add(self.host(name, flat, config, types))
        return problems

    async def close(self) -> None:
        await asyncio.gather(*(c.stop_task() for c in self.connectors.values()))

    async def readiness(self) -> list[str]:
        """Why this worker is not ready (empty when it is)."""
        reasons = []
        for connector in self.connectors.values():
            if connector.failed:
                reasons.append(f"connector {connector.name}: task FAILED: {connector.trace}")
            elif connector.target != "STOPPED" and not connector.running:
                reasons.append(f"connector {connector.name}: task not running")
            elif connector.pipeline is not None and not connector.pipeline.started:
                reasons.append(f"connector {connector.name}: task starting (backend not open yet)")
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

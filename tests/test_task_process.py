"""tasks.max: tasks 1..N-1 of a connector in child processes of the worker.

The processes are real (``python -m connector.task_process``); their broker is a closed
port, which a pipeline keeps retrying, so no Kafka is needed to see them start, report,
pause, fail, restart and stop.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from connector.backends import Outcome
from connector.connect_config import unflatten
from connector.dlq import DeadLetter
from connector.errors import RecordError, RecordErrorKind, RetryableError
from connector.metrics import Metrics
from connector.observer import PipelineObserver
from connector.pipeline import RunSummary
from connector.records import MappedObject, SourceRecord
from connector.rest import RestApi, RestSettings
from connector.task_process import TaskProcess, _Channel, _Forwarder
from connector.worker import HostedConnector, Worker
from tests.fakes import FakeBackend, FakeSource
from tests.test_metrics import samples
from tests.test_pipeline import Pipeline, config, logs
from tests.test_rest import AUTH, TOKEN, connector_config


class Tee(PipelineObserver):
    """Every event to both observers."""

    def __init__(self, *observers: PipelineObserver) -> None:
        self._observers = observers

    def acknowledged(self, objects: Sequence[MappedObject], outcomes: Sequence[Outcome]) -> None:
        for o in self._observers:
            o.acknowledged(objects, outcomes)

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        for o in self._observers:
            o.dead_lettered(letters)

    def batch_written(self, size: int, seconds: float) -> None:
        for o in self._observers:
            o.batch_written(size, seconds)

    def retried(self, operation: str) -> None:
        for o in self._observers:
            o.retried(operation)

    def committed(self, seconds: float, ok: bool) -> None:
        for o in self._observers:
            o.committed(seconds, ok)


def without_created(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The connector's series (not the process's), without their creation times."""
    return {
        k: v
        for k, v in samples(metrics).items()
        if k[0].startswith("data_ingest_") and not k[0].endswith("_created")
    }


async def test_forwarded_events_give_the_metrics_the_observer_gives_itself() -> None:
    """A task process's events, replayed by the worker, equal the pipeline's own metrics."""
    direct, replayed = Metrics(), Metrics()
    out = io.BytesIO()
    tee = Tee(direct.connector("c"), _Forwarder(_Channel(out)))
    failures = iter([RetryableError("down"), None])
    source = FakeSource(logs(40), timestamp_ms=int(time.time() * 1000) - 3_000)
    source.logs[next(iter(source.logs))][3] = source.logs[next(iter(source.logs))][2]
    backend = FakeBackend(fail=lambda _n: next(failures, None))
    summary = await Pipeline(config(), source, backend, until_caught_up=True, observer=tee).run()
    assert summary.records == 120 and summary.duplicates == 1
    record = SourceRecord("m", 1, 7, None, b"{", 1_700_000_000_000, 1, None)
    letters = [
        DeadLetter(record, RecordError(kind, record.coordinates, "bad"), name, "x")
        for kind, name in [
            (RecordErrorKind.DECODE, None),
            (RecordErrorKind.DECODE, None),
            (RecordErrorKind.RULE_VIOLATION, "Measurement"),
        ]
    ]
    tee.dead_lettered(letters)
    tee.committed(0.5, False)

    handle = TaskProcess(1, {"name": "c"}, replayed.connector("c"), lambda _t: None)
    for line in out.getvalue().splitlines():
        handle._handle(json.loads(line))
    ours, theirs = without_created(replayed), without_created(direct)
    ours_sums = {k: ours.pop(k) for k in list(ours) if k[0].endswith("_sum")}
    theirs_sums = {k: theirs.pop(k) for k in list(theirs) if k[0].endswith("_sum")}
    assert ours == theirs
    assert ours_sums == pytest.approx(theirs_sums, rel=1e-3)
    names = {k[0] for k in ours if ours[k]}
    for name in (
        "data_ingest_records_total",
        "data_ingest_dead_letters_total",
        "data_ingest_retries_total",
        "data_ingest_commit_failures_total",
        "data_ingest_end_to_end_latency_seconds_count",
        "data_ingest_batch_size_records_count",
    ):
        assert name in names, name


# --- a worker with tasks.max > 1 --------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Worker]]:
    worker = Worker("w1", Metrics(), base_dir=tmp_path)
    app = RestApi(worker, RestSettings(token=TOKEN)).app()
    async with TestClient(TestServer(app)) as client:
        yield client, worker
    await worker.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids(connector: HostedConnector) -> list[int | None]:
    """Each task's process (this one for task 0), None while it does not run."""
    return [
        t.pid if isinstance(t, TaskProcess) else os.getpid() if t.running else None
        for t in connector.tasks
    ]


async def states(client: TestClient[Any, Any]) -> list[tuple[int, str]]:
    body = await (await client.get("/connectors/c/status")).json()
    return [(t["id"], t["state"]) for t in body["tasks"]]


async def test_tasks_run_in_child_processes_and_are_controlled_one_by_one(
    served: tuple[TestClient[Any, Any], Worker], tmp_path: Path
) -> None:
    client, worker = served
    body = {"name": "c", "config": connector_config(tmp_path, **{"tasks.max": "3"})}
    response = await client.post("/connectors", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    info = await response.json()
    assert info["tasks"] == [{"connector": "c", "task": i} for i in range(3)]
    assert info["config"]["tasks.max"] == "3"
    connector = worker.get("c")
    await until(lambda: all(alive(p) for p in pids(connector)), "3 tasks alive")
    first = pids(connector)
    assert len(set(first)) == 3  # task 0 in this process, tasks 1 and 2 in two children
    assert await states(client) == [(0, "RUNNING"), (1, "RUNNING"), (2, "RUNNING")]
    tasks = await (await client.get("/connectors/c/tasks")).json()
    assert [t["id"] for t in tasks] == [{"connector": "c", "task": i} for i in range(3)]
    assert (await (await client.get("/connectors/c/tasks/2/status")).json()) == {
        "id": 2,
        "state": "RUNNING",
        "worker_id": "w1",
    }
    assert (await client.get("/connectors/c/tasks/3/status")).status == 404

    # Restarting task 2 replaces its process only.
    assert (await client.post("/connectors/c/tasks/2/restart", headers=AUTH)).status == 204
    await until(lambda: alive(pids(connector)[2]), "task 2 back")
    assert not alive(first[2]) and pids(connector)[:2] == first[:2]

    # Pause reaches the children.
    assert (await client.put("/connectors/c/pause", headers=AUTH)).status == 202
    assert await states(client) == [(0, "PAUSED"), (1, "PAUSED"), (2, "PAUSED")]
    assert (await client.put("/connectors/c/resume", headers=AUTH)).status == 202

    # A task process that dies is FAILED, with why; the worker stays up, not ready.
    killed = pids(connector)[1]
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    await until(lambda: connector.tasks[1].failed, "task 1 FAILED")
    status = await (await client.get("/connectors/c/status")).json()
    assert [t["state"] for t in status["tasks"]] == ["RUNNING", "FAILED", "RUNNING"]
    assert "exited with code -9" in status["tasks"][1]["trace"]
    ready = await (await client.get("/ready")).json()
    assert any(r.startswith("connector c task 1: FAILED") for r in ready["reasons"])
    before = pids(connector)
    response = await client.post(
        "/connectors/c/restart?includeTasks=true&onlyFailed=true", headers=AUTH
    )
    assert response.status == 202
    await until(lambda: alive(pids(connector)[1]), "task 1 restarted")
    assert pids(connector)[2] == before[2]  # only the failed task was restarted
    assert await states(client) == [(0, "RUNNING"), (1, "RUNNING"), (2, "RUNNING")]

    # Stop ends every task process; no task is listed.
    last = pids(connector)
    assert (await client.put("/connectors/c/stop", headers=AUTH)).status == 202
    assert not any(alive(p) for p in last[1:])
    assert await states(client) == []
    assert (await client.delete("/connectors/c", headers=AUTH)).status == 204


async def test_a_task_process_whose_worker_goes_away_stops_by_itself(tmp_path: Path) -> None:
    """The worker's end of stdin closing (the worker died) stops the task gracefully."""
    metrics = Metrics().connector("c")
    ended: list[TaskProcess] = []
    flat = connector_config(tmp_path)
    settings = {
        "name": "c",
        "flat": flat,
        "base_dir": str(tmp_path),
        "until_caught_up": False,
        "assignment_timeout_s": 60.0,
    }
    task = TaskProcess(1, settings, metrics, ended.append)
    task.start(held=False)
    await until(lambda: task.pid is not None, "the process started")
    await asyncio.sleep(1.0)  # its pipeline is retrying the closed broker port
    proc = task._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    await until(lambda: bool(ended), "the task ended", timeout=30)
    assert proc.returncode == 0 and not task.failed, task.trace
    assert task.summary is not None and task.summary.error is None


def test_tasks_max_in_a_directory_pipeline_file(tmp_path: Path) -> None:
    """A pipeline file of the connectors directory may carry tasks.max."""
    flat_tree = connector_config(tmp_path, **{"tasks.max": "2"})
    del flat_tree["connector.class"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "two.yaml").write_text(yaml.safe_dump(unflatten(flat_tree)))
    assert "tasks.max: '2'" in (tmp_path / "d" / "two.yaml").read_text()

    async def host() -> list[int]:
        worker = Worker("w", Metrics(), base_dir=tmp_path)
        assert worker.load_directory(tmp_path / "d") == []
        ids = [t.id for t in worker.get("two").tasks]
        await worker.close()
        return ids

    assert asyncio.run(host()) == [0, 1]


def test_the_summary_of_tasks_side_by_side() -> None:
    one = RunSummary(records=10, inserted=9, duplicates=1, elapsed_s=4.0, startup_s=2.0)
    two = RunSummary(records=5, inserted=4, dead_lettered=1, elapsed_s=6.0, error="boom")
    three = RunSummary(records=1, upserted=1, deleted=0, rejected=1, elapsed_s=1.0)
    total = RunSummary.combined([one, two, three])
    assert (total.records, total.inserted, total.duplicates, total.dead_lettered) == (16, 13, 1, 1)
    assert (total.upserted, total.rejected) == (1, 1)
    assert (total.elapsed_s, total.startup_s, total.error) == (6.0, 2.0, "boom")
    assert RunSummary.combined([three]) == three

"""The worker and its REST API as real processes against the real broker and databases.

The Connect-side calls go through kafka-connect-py, a Kafka Connect REST client from PyPI
(what Connect users script with); KIP-875 offsets and bad input, which it does not cover,
through plain HTTP requests.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from kafka_connect import KafkaConnect
from requests.exceptions import HTTPError

from connector.connect_config import PLUGIN_CLASS, flatten
from integration.backends import PostgresUnderTest
from integration.kafka_broker import create_topic
from integration.processes import LOOPBACK, free_port
from integration.support import (
    COORDINATOR_MOVING,
    DATA_INGEST,
    committed_offsets,
    measurement,
    produce,
    sqlite_rows,
    summary_of,
    unique,
    write_config,
)
from integration.tls import CertificateAuthority
from integration.worker_process import ServiceProcess, start_worker

RECORDS = "data_ingest_records_total"
LAG = "data_ingest_consumer_lag"


def pipeline(
    tmp_path: Path, bootstrap: str, topic: str, backend: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    path = write_config(
        tmp_path / f"{unique('p')}.yaml",
        bootstrap,
        unique("g"),
        [{"topic": topic, "type": "Measurement"}],
        backend,
        **sections,
    )
    return dict(yaml.safe_load(path.read_text()))


def produce_range(bootstrap: str, topic: str, start: int, end: int, partitions: int = 3) -> None:
    produce(
        bootstrap,
        topic,
        [(p, measurement(topic, p, i)) for i in range(start, end) for p in range(partitions)],
    )


def lags(service: ServiceProcess, connector: str) -> dict[str, float]:
    return {
        dict(labels)["partition"]: value
        for (name, labels), value in service.metrics().items()
        if name == LAG and dict(labels)["connector"] == connector
    }


def test_run_serves_metrics_that_equal_its_summary(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique("metrics")
    create_topic(kafka_bootstrap, topic, 3)
    produce_range(kafka_bootstrap, topic, 0, 1000)
    tree = pipeline(
        tmp_path, kafka_bootstrap, topic, {"type": "sqlite", "path": str(tmp_path / "m.db")}
    )
    # A regex route: GET .../topics lists the topic it matched (Connect's active topics).
    tree["routes"] = [{"topic_regex": re.escape(topic), "type": "Measurement"}]
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump(tree))
    port = free_port()
    run = ServiceProcess(
        ["run", "-c", str(config), "--rest-listen", f"{LOOPBACK}:{port}"],
        tmp_path / "run.log",
        port,
    )
    try:
        run.wait_until(
            lambda: run.metric_sum(RECORDS, connector="ingest") == 3000, 120, "3000 records counted"
        )
        run.wait_until(
            lambda: lags(run, "ingest") == {"0": 0, "1": 0, "2": 0}, 60, "lag 0 everywhere"
        )
        got = run.metrics()
        assert (
            got[("data_ingest_end_to_end_latency_seconds_count", (("connector", "ingest"),))]
            == 3000
        )
        assert got[("data_ingest_batch_size_records_sum", (("connector", "ingest"),))] == 3000
        assert run.get("/ready") == (200, {"ready": True, "reasons": []})
        assert run.get("/connectors/ingest/topics") == (200, {"ingest": {"topics": [topic]}})
        status, body = run.get("/connectors/ingest/status")
        assert status == 200 and body["connector"]["state"] == "RUNNING"
        assert body["tasks"][0]["state"] == "RUNNING"
        status, body = run.request("POST", "/connectors", {"name": "x", "config": {}})
        assert status == 405 and "data-ingest worker" in body["message"]
        inserted = run.metric_sum(RECORDS, connector="ingest", outcome="inserted")
    finally:
        code, out = run.stop()
    assert code == 0, run.tail()
    summary = summary_of(out)
    assert int(summary["records"]) == 3000 and int(summary["ingested"]) == inserted == 3000
    assert len(sqlite_rows(tmp_path / "m.db", "Measurement")) == 3000


def test_worker_driven_by_a_connect_client(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic, other = unique("w"), unique("w-file")
    create_topic(kafka_bootstrap, topic, 3)
    create_topic(kafka_bootstrap, other, 1)
    produce_range(kafka_bootstrap, topic, 0, 200)
    produce(kafka_bootstrap, other, [(0, measurement(other, 0, i)) for i in range(50)])
    db = tmp_path / "w.db"
    file_db = tmp_path / "file.db"
    on_file = pipeline(tmp_path, kafka_bootstrap, other, {"type": "sqlite", "path": str(file_db)})
    worker = start_worker(tmp_path, connectors={"from-file": on_file})
    client = KafkaConnect(url=worker.url)
    try:
        config = flatten(
            pipeline(tmp_path, kafka_bootstrap, topic, {"type": "sqlite", "path": str(db)})
        )
        created = client.create_connector(
            {"name": "c", "config": {"connector.class": PLUGIN_CLASS, **config}}
        )
        assert created["name"] == "c" and created["tasks"] == [{"connector": "c", "task": 0}]
        assert sorted(client.list_connectors()) == ["c", "from-file"]

        def rows() -> int:
            return len(sqlite_rows(db, "Measurement"))

        worker.wait_until(lambda: rows() == 600, 120, "600 rows")
        worker.wait_until(
            lambda: len(sqlite_rows(file_db, "Measurement")) == 50, 60, "file connector"
        )
        status = client.get_connector_status("c")
        assert status["connector"] == {"state": "RUNNING", "worker_id": "worker"}
        assert [t["state"] for t in status["tasks"]] == ["RUNNING"]

        # Paused: no progress, lag grows.
        client.pause_connector("c")
        worker.wait_until(
            lambda: client.get_connector_status("c")["tasks"][0]["state"] == "PAUSED", 30, "paused"
        )
        worker.wait_until(
            lambda: worker.metric_sum("data_ingest_paused_partitions", connector="c") == 3,
            30,
            "3 paused partitions",
        )
        produce_range(kafka_bootstrap, topic, 200, 300)
        worker.wait_until(
            lambda: sum(lags(worker, "c").values()) == 300, 30, "lag of the paused connector"
        )
        time.sleep(2)
        assert rows() == 600 and worker.metric_sum(RECORDS, connector="c") == 600

        client.resume_connector("c")
        worker.wait_until(lambda: rows() == 900, 60, "900 rows after resume")
        worker.wait_until(lambda: sum(lags(worker, "c").values()) == 0, 30, "lag back to 0")

        # Offsets may change only while stopped.
        back = {
            "offsets": [
                {
                    "partition": {"kafka_topic": topic, "kafka_partition": 0},
                    "offset": {"kafka_offset": 0},
                }
            ]
        }
        status, body = worker.request("PATCH", "/connectors/c/offsets", back)
        assert status == 400 and "STOPPED state" in body["message"]
        client.stop_connector("c")
        assert client.get_connector_status("c")["connector"]["state"] == "STOPPED"
        status, offsets = worker.get("/connectors/c/offsets")
        assert status == 200, offsets
        assert sorted(
            (o["partition"]["kafka_partition"], o["offset"]["kafka_offset"])
            for o in offsets["offsets"]
        ) == [(0, 300), (1, 300), (2, 300)]
        assert {o["partition"]["kafka_topic"] for o in offsets["offsets"]} == {topic}
        status, body = worker.request("PATCH", "/connectors/c/offsets", back)
        assert status == 200 and "altered successfully" in body["message"]
        status, offsets = worker.get("/connectors/c/offsets")
        assert {
            (o["partition"]["kafka_partition"], o["offset"]["kafka_offset"])
            for o in offsets["offsets"]
        } == {(0, 0), (1, 300), (2, 300)}

        # Read again from offset 0 of partition 0: duplicates only.
        before = worker.metric_sum(RECORDS, connector="c", outcome="inserted")
        client.resume_connector("c")
        worker.wait_until(
            lambda: worker.metric_sum(RECORDS, connector="c", outcome="duplicate") == 300,
            60,
            "300 duplicates",
        )
        assert worker.metric_sum(RECORDS, connector="c", outcome="inserted") == before == 900
        assert worker.metric_sum(RECORDS, connector="c", outcome="conflict") == 0
        assert rows() == 900

        restarted = client.restart_connector("c", include_tasks=True)
        assert restarted["name"] == "c"
        worker.wait_until(
            lambda: client.get_connector_status("c")["tasks"][0]["state"] == "RUNNING",
            30,
            "running after restart",
        )
        client.restart_connector_task("c", 0)
        task = client.get_connector_task_status("c", 0)
        assert task == {"id": 0, "state": "RUNNING", "worker_id": "worker"}

        # Bad input: Connect's status codes, and the worker keeps running.
        status, body = worker.request("POST", "/connectors", b"{oops")
        assert status == 400 and "not valid JSON" in body["message"]
        status, body = worker.request(
            "PUT", "/connectors/c/config", {**config, "routes.0.typo": "x"}
        )
        assert status == 400 and "routes.0.typo: unknown key" in body["message"]
        with pytest.raises(HTTPError):
            client.get_connector_status("missing")
        status, body = worker.get("/connectors/missing")
        assert (status, body) == (
            404,
            {"error_code": 404, "message": "Connector missing not found"},
        )
        status, body = worker.request("POST", "/connectors", {"name": "c", "config": config})
        assert status == 409
        assert worker.get("/ping")[0] == 200

        # Reset every offset while stopped: the group has none left.
        client.stop_connector("c")
        status, body = worker.request("DELETE", "/connectors/c/offsets")
        assert status == 200 and "reset successfully" in body["message"]
        assert worker.get("/connectors/c/offsets") == (200, {"offsets": []})

        client.delete_connector("c")
        assert client.list_connectors() == ["from-file"]
        assert worker.metric_sum(RECORDS, connector="c") == 0
        assert worker.metric_sum(RECORDS, connector="from-file") == 50
    finally:
        code, _ = worker.stop()
    assert code == 0, worker.tail()


def test_ready_is_false_while_the_backend_is_down(
    kafka_bootstrap: str, postgres_server: Any, tmp_path: Path
) -> None:
    topic = unique("ready")
    create_topic(kafka_bootstrap, topic, 1)
    backend = PostgresUnderTest(postgres_server)
    tree = pipeline(
        tmp_path,
        kafka_bootstrap,
        topic,
        backend.section(),
        retry={"initial_backoff_ms": 100, "max_backoff_ms": 500},
    )
    worker = start_worker(tmp_path, connectors={"pg": tree})
    try:
        worker.wait_until(lambda: worker.get("/ready")[0] == 200, 60, "ready")
        with backend.outage():
            worker.wait_until(
                lambda: worker.get("/ready")[0] == 503, 30, "not ready while PostgreSQL is down"
            )
            status, body = worker.get("/ready")
            assert status == 503 and body["ready"] is False
            assert any("connector pg: backend unreachable" in r for r in body["reasons"])
            produce(kafka_bootstrap, topic, [(0, measurement(topic, 0, i)) for i in range(20)])
            worker.wait_until(
                lambda: worker.metric_sum("data_ingest_retries_total", connector="pg") > 0,
                30,
                "a retried write",
            )
        worker.wait_until(lambda: worker.get("/ready")[0] == 200, 60, "ready again")
        worker.wait_until(
            lambda: worker.metric_sum(RECORDS, connector="pg", outcome="inserted") == 20,
            60,
            "20 inserted",
        )
    finally:
        code, _ = worker.stop()
    assert code == 0, worker.tail()


def test_secrets_never_leave_the_worker(
    kafka_sasl_broker: Any, postgres_server: Any, tmp_path: Path
) -> None:
    topic = unique("secret")
    sasl = kafka_sasl_broker
    sasl.broker.create_topic(topic, 1)
    producer = Producer(sasl.client_config())
    for i in range(30):
        producer.produce(topic, measurement(topic, 0, i), partition=0)
    assert producer.flush(30) == 0
    dsn_password = "dsn-pw-" + unique("x")
    backend = PostgresUnderTest(postgres_server)
    section = backend.section()
    section["dsn"] = section["dsn"].replace("@", f":{dsn_password}@", 1)  # trust auth: ignored
    assert dsn_password in section["dsn"]
    tree = pipeline(tmp_path, sasl.bootstrap_servers, topic, section)
    tree["kafka"]["security"] = {
        "protocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": sasl.username,
            "password": sasl.password,
        },
        "tls": {"ca_file": str(sasl.ca_file)},
    }
    worker = start_worker(tmp_path, log_level="DEBUG")
    secrets = (sasl.password, dsn_password)
    responses: list[str] = []
    try:
        config = flatten(tree)
        status, body = worker.request("POST", "/connectors", {"name": "s", "config": config})
        assert status == 201, body
        responses.append(str(body))
        worker.wait_until(
            lambda: worker.metric_sum(RECORDS, connector="s") == 30, 120, "30 records over SASL_SSL"
        )
        for path in (
            "/connectors/s",
            "/connectors/s/config",
            "/connectors/s/tasks",
            "/connectors/s/status",
            "/connectors?expand=info&expand=status",
            "/metrics",
        ):
            status, body = worker.get(path)
            assert status == 200
            responses.append(str(body))
        status, body = worker.request(
            "PUT", f"/connector-plugins/{PLUGIN_CLASS}/config/validate", config
        )
        assert status == 200 and body["error_count"] == 0
        responses.append(str(body))
        for bad in (
            {"batching.max_recordz": "1"},
            {"backend.dsn": f"mysql://u:{dsn_password}@h/db"},
        ):
            status, body = worker.request("PUT", "/connectors/s/config", {**config, **bad})
            assert status == 400 and next(iter(bad)) in body["message"]
            responses.append(str(body))
    finally:
        code, _ = worker.stop()
    assert code == 0, worker.tail()
    log = worker.log.read_text()
    assert "DEBUG" in log and "connector s created" in log
    for secret in secrets:
        assert not [r for r in responses if secret in r], "a response shows a secret"
        assert secret not in log, "the log shows a secret"
    assert "[hidden]" in "".join(responses)


def test_two_workers_share_a_connector_and_survive_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique("cluster")
    create_topic(kafka_bootstrap, topic, 4)
    produce(
        kafka_bootstrap,
        topic,
        [(p, measurement(topic, p, i)) for i in range(100) for p in range(4)],
    )
    db = tmp_path / "cluster.db"
    tree = pipeline(tmp_path, kafka_bootstrap, topic, {"type": "sqlite", "path": str(db)})
    cluster = {"cluster": {"id": unique("c"), "kafka": {"bootstrap_servers": kafka_bootstrap}}}
    a = start_worker(tmp_path, "a", extra=cluster)
    b = start_worker(tmp_path, "b", extra=cluster)
    try:
        KafkaConnect(url=a.url).create_connector({"name": "shared", "config": flatten(tree)})
        on_b = KafkaConnect(url=b.url)
        b.wait_until(
            lambda: on_b.list_connectors() == ["shared"], 30, "the connector reaches worker b"
        )

        def task_workers() -> list[tuple[str, str]]:
            return [
                (t["worker_id"], t["state"]) for t in on_b.get_connector_status("shared")["tasks"]
            ]

        b.wait_until(
            lambda: task_workers() == [("a", "RUNNING"), ("b", "RUNNING")], 30, "tasks of both on b"
        )
        assert [t["id"] for t in on_b.get_connector_status("shared")["tasks"]] == [0, 1]
        b.wait_until(lambda: len(sqlite_rows(db, "Measurement")) == 400, 120, "400 rows")

        def partitions(service: ServiceProcess) -> set[str]:
            return set(lags(service, "shared"))

        b.wait_until(
            lambda: len(partitions(a)) + len(partitions(b)) == 4, 30, "4 partitions between a and b"
        )
        assert partitions(a) and partitions(b) and not partitions(a) & partitions(b)

        # A pause on b reaches a's task through the config topic.
        on_b.pause_connector("shared")
        b.wait_until(
            lambda: task_workers() == [("a", "PAUSED"), ("b", "PAUSED")], 30, "both tasks paused"
        )
        assert (
            KafkaConnect(url=a.url).get_connector_status("shared")["connector"]["state"] == "PAUSED"
        )
        on_b.resume_connector("shared")
        b.wait_until(
            lambda: task_workers() == [("a", "RUNNING"), ("b", "RUNNING")], 30, "both resumed"
        )

        # Task 0 of the cluster is a's: restarting it on b is done by a.
        assert b.request("POST", "/connectors/shared/tasks/0/restart")[0] == 204
        a.wait_until(
            lambda: "connector shared: restarting task(s) 0" in a.log.read_text(),
            30,
            "a restarts it",
        )
        assert "restarting task" not in b.log.read_text()
        b.wait_until(
            lambda: task_workers() == [("a", "RUNNING"), ("b", "RUNNING")], 30, "both running"
        )

        a.kill()
        produce(
            kafka_bootstrap,
            topic,
            [(p, measurement(topic, p, i)) for i in range(100, 300) for p in range(4)],
        )
        b.wait_until(lambda: partitions(b) == {"0", "1", "2", "3"}, 60, "b owns every partition")
        b.wait_until(lambda: len(sqlite_rows(db, "Measurement")) == 1200, 120, "1200 rows")
        b.wait_until(
            lambda: task_workers() == [("b", "RUNNING")], 30, "a's task gone from the status"
        )
        b.wait_until(lambda: sum(lags(b, "shared").values()) == 0, 30, "lag 0 on b")
        group = tree["kafka"]["group_id"]
        committed = committed_offsets(kafka_bootstrap, group, topic, 4)
        assert committed == {0: 300, 1: 300, 2: 300, 3: 300}
        ids = [row[0] for row in sqlite_rows(db, "Measurement")]
        assert len(set(ids)) == len(ids) == 1200
        assert b.metric_sum(RECORDS, connector="shared", outcome="conflict") == 0

        # A new worker of the cluster reads the connector from the config topic.
        c = start_worker(tmp_path, "c", extra=cluster)
        try:
            b.wait_until(
                lambda: task_workers() == [("b", "RUNNING"), ("c", "RUNNING")], 60, "c joined"
            )
            on_b.delete_connector("shared")
            c.wait_until(lambda: c.get("/connectors") == (200, []), 30, "deleted on c too")
        finally:
            code, _ = c.stop()
        assert code == 0, c.tail()
    finally:
        a.kill()
        code, _ = b.stop()
    assert code == 0, b.tail()


def test_https_and_a_token_for_every_call(tmp_path: Path) -> None:
    """TLS from a test CA; with token_for_reads every call but /ping and /health needs it."""
    cert = CertificateAuthority.create(tmp_path, "rest test CA").issue_server_cert(tmp_path, "rest")
    port = free_port()
    home = tmp_path / "tls-worker"
    home.mkdir()
    token = "rest-" + unique("token")
    (home / "worker.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "tls",
                "rest": {
                    "listen": f"{LOOPBACK}:{port}",
                    "token": "${TEST_REST_TOKEN}",
                    "token_for_reads": True,
                    "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
                },
            }
        )
    )
    context = ssl.create_default_context(cafile=str(cert.ca_file))

    def call(path: str, method: str = "GET", auth: bool = False) -> int:
        headers = {"Authorization": f"Bearer {token}"} if auth else {}
        request = urllib.request.Request(
            f"https://{LOOPBACK}:{port}{path}", method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except urllib.error.URLError:
            return 0

    log = tmp_path / "tls.log"
    process = subprocess.Popen(
        [DATA_INGEST, "worker", "-c", str(home / "worker.yaml")],
        stderr=log.open("a"),
        start_new_session=True,
        env={**os.environ, "TEST_REST_TOKEN": token},
    )
    try:
        deadline = time.monotonic() + 60
        while call("/ping") != 200:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert call("/health") == 200
        assert call("/connectors") == 401
        assert call("/connectors", auth=True) == 200
        assert call("/connectors/x", method="DELETE") == 401
        assert call("/connectors/x", method="DELETE", auth=True) == 404
        plain = urllib.request.Request(f"http://{LOOPBACK}:{port}/ping")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(plain, timeout=5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
    assert token not in log.read_text()


def group_members(bootstrap: str, group: str) -> list[set[int]]:
    """The partitions of each member of ``group``, as the broker describes it (members with
    no partition left out; none while the coordinator is loading or moving)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    except KafkaException as exc:  # e.g. the coordinator is still loading the group
        error = exc.args[0]
        if error.retriable() or error.code() in COORDINATOR_MOVING:
            return []
        raise
    members = ({tp.partition for tp in m.assignment.topic_partitions} for m in description.members)
    return sorted((m for m in members if m), key=sorted)


def child_pids(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_tasks_max_spreads_a_connector_over_processes_and_survives_a_task_sigkill(
    kafka_bootstrap: str, postgres_server: Any, tmp_path: Path
) -> None:
    """tasks.max 2: two members of the connector's group (the worker and one child process),
    counted together in /metrics; a SIGKILLed task is FAILED, its partitions move to the
    other task, and a task restart over REST brings it back with nothing lost."""
    topic = unique("tasks")
    create_topic(kafka_bootstrap, topic, 4)
    produce_range(kafka_bootstrap, topic, 0, 250, partitions=4)
    backend = PostgresUnderTest(postgres_server)
    tree = pipeline(tmp_path, kafka_bootstrap, topic, backend.section())
    group = tree["kafka"]["group_id"]
    worker = start_worker(tmp_path)
    client = KafkaConnect(url=worker.url)
    try:
        created = client.create_connector(
            {"name": "two", "config": {**flatten(tree), "tasks.max": "2"}}
        )
        assert created["tasks"] == [{"connector": "two", "task": i} for i in range(2)]
        worker.wait_until(
            lambda: [len(m) for m in group_members(kafka_bootstrap, group)] == [2, 2],
            60,
            "two members with two partitions each",
        )
        children = child_pids(worker.process.pid)
        assert len(children) == 1, children
        worker.wait_until(
            lambda: worker.metric_sum(RECORDS, connector="two", outcome="inserted") == 1000,
            120,
            "1000 inserted, counted over both tasks",
        )
        worker.wait_until(lambda: lags(worker, "two") == dict.fromkeys("0123", 0), 30, "lag 0")
        got = worker.metrics()
        two = (("connector", "two"),)
        assert got[("data_ingest_end_to_end_latency_seconds_count", two)] == 1000
        assert got[("data_ingest_batch_size_records_sum", two)] == 1000

        # Pausing holds the partitions of both tasks.
        client.pause_connector("two")
        worker.wait_until(
            lambda: worker.metric_sum("data_ingest_paused_partitions", connector="two") == 4,
            30,
            "4 partitions paused over both tasks",
        )
        client.resume_connector("two")
        worker.wait_until(
            lambda: worker.metric_sum("data_ingest_paused_partitions", connector="two") == 0,
            30,
            "resumed",
        )

        os.kill(children[0], signal.SIGKILL)
        worker.wait_until(
            lambda: (
                [t["state"] for t in client.get_connector_status("two")["tasks"]]
                == ["RUNNING", "FAILED"]
            ),
            30,
            "task 1 FAILED",
        )
        trace = client.get_connector_status("two")["tasks"][1]["trace"]
        assert "exited with code -9" in trace, trace
        produce_range(kafka_bootstrap, topic, 250, 500, partitions=4)
        worker.wait_until(
            lambda: group_members(kafka_bootstrap, group) == [{0, 1, 2, 3}],
            60,
            "task 0 owns every partition",
        )
        status, _ = worker.request("POST", "/connectors/two/tasks/1/restart")
        assert status == 204
        worker.wait_until(
            lambda: (
                [t["state"] for t in client.get_connector_status("two")["tasks"]]
                == ["RUNNING", "RUNNING"]
            ),
            30,
            "task 1 back",
        )
        replacement = child_pids(worker.process.pid)
        assert len(replacement) == 1 and replacement != children
        worker.wait_until(
            lambda: len(group_members(kafka_bootstrap, group)) == 2, 60, "two members again"
        )
        worker.wait_until(
            lambda: (
                sorted(committed_offsets(kafka_bootstrap, group, topic, 4).values()) == [500] * 4
            ),
            120,
            "every record committed",
        )
        ids = backend.ids("Measurement")
        assert len(ids) == len(set(ids)) == 2000
        assert worker.metric_sum(RECORDS, connector="two", outcome="conflict") == 0
    finally:
        code, _ = worker.stop()
    assert code == 0, worker.tail()
    assert not any(Path(f"/proc/{pid}").exists() for pid in child_pids(worker.process.pid))


def test_run_with_tasks_max_runs_the_tasks_side_by_side_to_the_end(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``data-ingest run --until-caught-up`` of a file with tasks.max 3: three members of
    the group, one summary adding up their counts, every record stored once."""
    topic = unique("run-tasks")
    create_topic(kafka_bootstrap, topic, 6)
    produce_range(kafka_bootstrap, topic, 0, 500, partitions=6)
    db = tmp_path / "tasks.db"
    tree = pipeline(tmp_path, kafka_bootstrap, topic, {"type": "sqlite", "path": str(db)})
    config = tmp_path / "three.yaml"
    config.write_text(yaml.safe_dump({**tree, "tasks.max": 3}))
    result = subprocess.run(
        [DATA_INGEST, "run", "-c", str(config), "--until-caught-up"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert int(summary["records"]) == int(summary["ingested"]) == 3000
    ids = [row[0] for row in sqlite_rows(db, "Measurement")]
    assert len(ids) == len(set(ids)) == 3000
    group = tree["kafka"]["group_id"]
    assert committed_offsets(kafka_bootstrap, group, topic, 6) == dict.fromkeys(range(6), 500)
    for task in (1, 2):  # the child tasks log as themselves, and were assigned partitions
        assert f"[task {task}]: assigned: {topic}[" in result.stderr, result.stderr[-3000:]

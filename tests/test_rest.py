"""The REST API's shapes, status codes and error bodies, against a worker without Kafka.

Connectors are created STOPPED (no pipeline runs), except where a state change is tested:
there the broker address is a closed port, which the pipeline simply keeps retrying.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from connector.connect_config import HIDDEN, PLUGIN_CLASS, flatten
from connector.metrics import Metrics
from connector.rest import RestApi, RestSettings
from connector.worker import Worker
from tests.fakes import AVRO_DIR

TOKEN = "t0ken-for-tests"
PASSWORD = "sasl-secret-9"


def connector_config(tmp_path: Path, **extra: str) -> dict[str, str]:
    nested = {
        "kafka": {
            "bootstrap_servers": "127.0.0.1:1",
            "group_id": "g-rest",
            "poll_timeout_ms": 50,
            "security": {
                "protocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "PLAIN", "username": "u", "password": PASSWORD},
            },
        },
        "schemas": {"dir": str(AVRO_DIR)},
        "routes": [{"topic": "measurements", "type": "Measurement"}],
        "backend": {"type": "sqlite", "path": str(tmp_path / "rest.db")},
        "shutdown": {"timeout_ms": 2000},
    }
    return {"connector.class": PLUGIN_CLASS, **flatten(nested), **extra}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    worker = Worker("w1", Metrics(), base_dir=tmp_path)
    app = RestApi(worker, RestSettings(token=TOKEN)).app()
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await worker.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def create(
    client: TestClient[Any, Any], tmp_path: Path, name: str = "c1", state: str = "STOPPED"
) -> Any:
    body = {"name": name, "config": connector_config(tmp_path), "initial_state": state}
    response = await client.post("/connectors", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    assert response.headers["Location"] == f"/connectors/{name}"
    return await response.json()


async def error(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error_code", "message"} and body["error_code"] == status
    return str(body["message"])


async def test_root_health_ping_and_plugins(client: TestClient[Any, Any]) -> None:
    root = await (await client.get("/")).json()
    assert set(root) == {"version", "commit", "kafka_cluster_id"} and root["version"]
    health = await client.get("/health")
    assert health.status == 200 and (await health.json())["status"] == "healthy"
    assert (await client.get("/ping")).status == 200
    plugins = await (await client.get("/connector-plugins")).json()
    assert plugins == [{"class": PLUGIN_CLASS, "type": "sink", "version": root["version"]}]
    every = await (await client.get("/connector-plugins?connectorsOnly=false")).json()
    assert every[0] == plugins[0]
    assert {"class": "postgres", "type": "sink", "version": root["version"]} in every
    assert {"class": "avro", "type": "converter", "version": root["version"]} in every


async def test_create_get_list_and_secrets_redacted(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    info = await create(client, tmp_path)
    assert info["name"] == "c1" and info["type"] == "sink" and info["tasks"] == []
    assert info["config"]["kafka.security.sasl.password"] == HIDDEN
    assert info["config"]["name"] == "c1" and info["config"]["tasks.max"] == "1"
    for path in (
        "/connectors/c1",
        "/connectors/c1/config",
        "/connectors?expand=info&expand=status",
    ):
        response = await client.get(path)
        assert response.status == 200
        assert PASSWORD not in await response.text()
    assert await (await client.get("/connectors")).json() == ["c1"]
    expanded = await (await client.get("/connectors?expand=status&expand=info")).json()
    assert expanded["c1"]["status"] == {
        "name": "c1",
        "connector": {"state": "STOPPED", "worker_id": "w1"},
        "tasks": [],
        "type": "sink",
    }
    assert expanded["c1"]["info"]["config"]["routes.0.topic"] == "measurements"
    topics = await (await client.get("/connectors/c1/topics")).json()
    assert topics == {"c1": {"topics": ["measurements"]}}
    assert (await client.put("/connectors/c1/topics/reset", headers=AUTH)).status == 202


async def test_errors_have_connect_status_codes_and_bodies(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    await create(client, tmp_path)
    message = await error(
        await client.post(
            "/connectors", json={"name": "c1", "config": connector_config(tmp_path)}, headers=AUTH
        ),
        409,
    )
    assert message == "Connector c1 already exists"
    assert (
        await error(await client.get("/connectors/nope/status"), 404) == "Connector nope not found"
    )
    bad_json = await client.post(
        "/connectors", data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "not valid JSON" in await error(bad_json, 400)
    unknown = await client.post(
        "/connectors", json={"name": "x", "config": {}, "extra": 1}, headers=AUTH
    )
    assert "unknown key(s) in the request body: extra" in await error(unknown, 400)
    invalid = connector_config(tmp_path, **{"batching.max_recordz": "5"})
    response = await client.put("/connectors/c2/config", json=invalid, headers=AUTH)
    message = await error(response, 400)
    assert message.startswith(
        "Connector configuration is invalid and contains the following 1 error(s)"
    )
    assert "batching.max_recordz: unknown key" in message
    assert await (await client.get("/connectors")).json() == ["c1"]  # nothing half-created
    assert "kafka_partition" in await error(
        await client.patch(
            "/connectors/c1/offsets",
            json={"offsets": [{"partition": {"kafka_topic": "t"}, "offset": {"kafka_offset": 1}}]},
            headers=AUTH,
        ),
        400,
    )
    assert (
        await error(await client.get("/connectors/c1/tasks/0/status"), 404) == "Task c1-0 not found"
    )
    assert (await client.get("/no/such/path")).status == 404


async def test_mutating_calls_need_the_token(client: TestClient[Any, Any], tmp_path: Path) -> None:
    body = {"name": "c1", "config": connector_config(tmp_path), "initial_state": "STOPPED"}
    message = await error(await client.post("/connectors", json=body), 401)
    assert "Bearer" in message
    wrong = await client.post("/connectors", json=body, headers={"Authorization": "Bearer nope"})
    await error(wrong, 401)
    assert await (await client.get("/connectors")).json() == []
    await create(client, tmp_path)
    await error(await client.delete("/connectors/c1"), 401)
    assert (await client.delete("/connectors/c1", headers=AUTH)).status == 204
    assert await (await client.get("/connectors")).json() == []


async def test_state_changes_and_offsets_only_while_stopped(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    await create(client, tmp_path, state="RUNNING")

    async def status() -> Any:
        return await (await client.get("/connectors/c1/status")).json()

    running = await status()
    assert running["connector"]["state"] == "RUNNING"
    assert running["tasks"] == [{"id": 0, "state": "RUNNING", "worker_id": "w1"}]
    patch = {
        "offsets": [
            {"partition": {"kafka_topic": "t", "kafka_partition": 0}, "offset": {"kafka_offset": 0}}
        ]
    }
    message = await error(
        await client.patch("/connectors/c1/offsets", json=patch, headers=AUTH), 400
    )
    assert message.startswith(
        "Connectors must be in the STOPPED state before their offsets can be modified"
    )
    assert (await client.put("/connectors/c1/pause", headers=AUTH)).status == 202
    paused = await status()
    assert paused["connector"]["state"] == "PAUSED" and paused["tasks"][0]["state"] == "PAUSED"
    assert (await client.put("/connectors/c1/resume", headers=AUTH)).status == 202
    assert (await status())["tasks"][0]["state"] == "RUNNING"
    restart = await client.post(
        "/connectors/c1/restart?includeTasks=true&onlyFailed=false", headers=AUTH
    )
    assert restart.status == 202 and (await restart.json())["name"] == "c1"
    assert (await client.post("/connectors/c1/restart", headers=AUTH)).status == 204
    tasks = await (await client.get("/connectors/c1/tasks")).json()
    assert tasks[0]["id"] == {"connector": "c1", "task": 0}
    assert tasks[0]["config"]["kafka.security.sasl.password"] == HIDDEN
    assert (await client.put("/connectors/c1/stop", headers=AUTH)).status == 202
    stopped = await status()
    assert stopped["connector"]["state"] == "STOPPED" and stopped["tasks"] == []
    metrics = (await (await client.get("/metrics")).read()).decode()
    states = {
        s.labels["data_ingest_connector_state"]: s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "data_ingest_connector_state" and s.labels["connector"] == "c1"
    }
    assert states["STOPPED"] == 1 and states["RUNNING"] == 0


async def test_validate_in_connect_shape(client: TestClient[Any, Any], tmp_path: Path) -> None:
    good = await client.put(
        f"/connector-plugins/{PLUGIN_CLASS}/config/validate", json=connector_config(tmp_path)
    )
    body = await good.json()
    assert good.status == 200 and body["name"] == PLUGIN_CLASS and body["error_count"] == 0
    assert PASSWORD not in await good.text()
    bad = connector_config(tmp_path, **{"routes.0.type": "Nope", "commit.interval_ms": "-5"})
    body = await (
        await client.put("/connector-plugins/DataIngestSinkConnector/config/validate", json=bad)
    ).json()
    errors = {
        c["value"]["name"]: c["value"]["errors"] for c in body["configs"] if c["value"]["errors"]
    }
    assert body["error_count"] == sum(len(e) for e in errors.values()) >= 1
    assert "commit.interval_ms" in errors
    assert {"definition", "value"} == set(body["configs"][0])
    assert "FileStream" in await error(
        await client.put("/connector-plugins/FileStreamSink/config/validate", json={}), 404
    )


async def test_patch_config_merges_keys_and_null_removes_one(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    await create(client, tmp_path)
    patch = {"batching.max_records": "7", "shutdown.timeout_ms": None}
    response = await client.patch("/connectors/c1/config", json=patch, headers=AUTH)
    assert response.status == 200, await response.text()
    config = (await response.json())["config"]
    assert config["batching.max_records"] == "7"
    assert "shutdown.timeout_ms" not in config
    assert config["routes.0.topic"] == "measurements"
    assert config["kafka.security.sasl.password"] == HIDDEN
    bad = await client.patch(
        "/connectors/c1/config", json={"batching.max_records": "-1"}, headers=AUTH
    )
    assert "batching.max_records" in await error(bad, 400)
    stored = await (await client.get("/connectors/c1/config")).json()
    assert stored["batching.max_records"] == "7"

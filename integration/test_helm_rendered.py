"""The Helm chart's container, run locally exactly as rendered, against Kafka and PostgreSQL.

The chart is rendered with Helm v4's SDK; the ConfigMap's files are laid out as the pod's
config volume places them (``/etc/data-ingest`` becomes a temp dir, the only change), the
environment is built from the rendered env list (plain values, the chart-made Secret's keys
through their secretKeyRefs, the pod name through its fieldRef), and the rendered
``command`` + ``args`` run. What Kubernetes would do is then done by hand: the startup and
readiness probes' paths are polled, records are produced, and SIGTERM ends the process,
which must exit 0 within the rendered ``terminationGracePeriodSeconds`` with committed
offsets equal to the stored objects.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from integration.backends import PostgresUnderTest
from integration.kafka_broker import create_topic
from integration.processes import free_port
from integration.support import committed_offsets, measurement, produce, unique
from integration.worker_process import ServiceProcess

CHART = Path(__file__).resolve().parent.parent / "helm" / "data-ingest-connector"
AVRO = Path(__file__).resolve().parent.parent / "avro"
PARTITIONS, RECORDS = 3, 900


def test_the_rendered_worker_ingests_and_stops_cleanly_on_sigterm(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_server)
    topic, group = unique("helm-measurements"), unique("helm-group")
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    user_at_host = postgres_server.dsn.split("://", 1)[1]
    user, host = user_at_host.split("@", 1)
    port = free_port()
    values = yaml.safe_load((CHART / "ci" / "minimal-values.yaml").read_text())
    values["kafka"]["bootstrapServers"] = kafka_bootstrap
    values["worker"] = {"port": port}
    pipeline = values["connectors"]["measurements"]
    pipeline["kafka"]["group_id"] = group
    pipeline["routes"] = [{"topic": topic, "type": "Measurement", "format": "json"}]
    # The password reaches the DSN only through the Secret -> env -> ${POSTGRES_PASSWORD}
    # (the test server trusts loopback, so any password is accepted).
    pipeline["backend"]["dsn"] = f"postgresql://{user}:${{POSTGRES_PASSWORD}}@{host}"
    pipeline["backend"]["schema"] = backend.schema
    values["objectTypes"] = {p.stem: p.read_text() for p in AVRO.glob("*.avsc")}
    manifests = helm.Chart.load(CHART).render(values, name="ingest", namespace="data")
    docs = [
        d
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    by_kind = {d["kind"]: d for d in docs}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]

    # The config volume, as mounted.
    etc = tmp_path / "etc-data-ingest"
    data = by_kind["ConfigMap"]["data"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "config"]
    for item in volume["configMap"]["items"]:
        (etc / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (etc / item["path"]).write_text(data[item["key"]])
    assert "POSTGRES_PASSWORD" not in data["connector.measurements.yaml"].replace(
        "${POSTGRES_PASSWORD}", ""
    )

    # The environment, as the kubelet would set it.
    secret = {k: base64.b64decode(v).decode() for k, v in by_kind["Secret"]["data"].items()}
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == by_kind["Secret"]["metadata"]["name"]
            env[entry["name"]] = secret[ref["key"]]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = "ingest-data-ingest-connector-0"
    assert env["POSTGRES_PASSWORD"] == "ci-minimal-pg-password-7f3a"

    # The rendered command (ServiceProcess runs `data-ingest` and waits for /ping).
    assert container["command"] == ["data-ingest"]
    args = [a.replace("/etc/data-ingest", str(etc)) for a in container["args"]]
    assert container["ports"][0]["containerPort"] == port
    worker = ServiceProcess(args, tmp_path / "worker.log", port, env)
    try:
        paths = {
            probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert worker.get(paths["startupProbe"])[0] == 200
        worker.wait_until(lambda: worker.get(paths["readinessProbe"])[0] == 200, 60, "/ready")

        produce(
            kafka_bootstrap,
            topic,
            ((i % PARTITIONS, measurement(topic, i % PARTITIONS, i)) for i in range(RECORDS)),
        )
        worker.wait_until(lambda: len(backend.ids("Measurement")) >= RECORDS, 120, "ingested")
        assert worker.get(paths["livenessProbe"])[0] == 200

        started = time.monotonic()
        code, _ = worker.stop(timeout=pod["terminationGracePeriodSeconds"])
        stopped_in = time.monotonic() - started
    finally:
        worker.kill()
    assert code == 0, worker.tail()
    assert stopped_in < pod["terminationGracePeriodSeconds"]
    stored = backend.ids("Measurement")
    assert len(stored) == len(set(stored)) == RECORDS
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert sum(committed.values()) == RECORDS
    print(
        f"rendered worker: {RECORDS} records ingested, SIGTERM -> exit {code} in "
        f"{stopped_in:.1f} s (grace {pod['terminationGracePeriodSeconds']} s), "
        f"committed {sum(committed.values())} == stored {len(stored)}"
    )

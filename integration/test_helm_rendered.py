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

import time
from pathlib import Path
from typing import Any

from integration.backends import PostgresUnderTest
from integration.helm_render import postgres_values, render_worker
from integration.kafka_broker import create_topic
from integration.processes import free_port
from integration.support import committed_offsets, measurement, produce, unique
from integration.worker_process import ServiceProcess

PARTITIONS, RECORDS = 3, 900


def test_the_rendered_worker_ingests_and_stops_cleanly_on_sigterm(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_server)
    topic, group = unique("helm-measurements"), unique("helm-group")
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    port = free_port()
    worker = render_worker(
        postgres_values(kafka_bootstrap, postgres_server.dsn, backend.schema, topic, group, port)
    )
    etc = tmp_path / "etc-data-ingest"
    worker.write_config(etc)
    pipeline_text = worker.configmap["connector.measurements.yaml"]
    assert "${POSTGRES_PASSWORD}" in pipeline_text
    assert worker.secret["POSTGRES_PASSWORD"] not in pipeline_text
    assert worker.env["POSTGRES_PASSWORD"] == worker.secret["POSTGRES_PASSWORD"]

    # The rendered command (ServiceProcess runs `data-ingest` and waits for /ping).
    container = worker.container
    assert container["command"] == ["data-ingest"]
    args = [a.replace("/etc/data-ingest", str(etc)) for a in container["args"]]
    assert container["ports"][0]["containerPort"] == port
    process = ServiceProcess(args, tmp_path / "worker.log", port, worker.env)
    try:
        paths = {
            probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert process.get(paths["startupProbe"])[0] == 200
        process.wait_until(lambda: process.get(paths["readinessProbe"])[0] == 200, 60, "/ready")

        produce(
            kafka_bootstrap,
            topic,
            ((i % PARTITIONS, measurement(topic, i % PARTITIONS, i)) for i in range(RECORDS)),
        )
        process.wait_until(lambda: len(backend.ids("Measurement")) >= RECORDS, 120, "ingested")
        assert process.get(paths["livenessProbe"])[0] == 200

        started = time.monotonic()
        code, _ = process.stop(timeout=worker.grace)
        stopped_in = time.monotonic() - started
    finally:
        process.kill()
    assert code == 0, process.tail()
    assert stopped_in < worker.grace
    stored = backend.ids("Measurement")
    assert len(stored) == len(set(stored)) == RECORDS
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert sum(committed.values()) == RECORDS
    print(
        f"rendered worker: {RECORDS} records ingested, SIGTERM -> exit {code} in "
        f"{stopped_in:.1f} s (grace {worker.grace} s), "
        f"committed {sum(committed.values())} == stored {len(stored)}"
    )

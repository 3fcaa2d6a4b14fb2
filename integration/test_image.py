"""The container image, built with podman (`make image`) and run as the chart runs it.

Only with DATA_INGEST_TEST_IMAGE=1 (`make test-image`): it needs podman, runc and the image
built by integration/build_image.sh, which takes minutes the first time; it is not part of
`make test`. The container runs rootful with host networking against the test broker and
PostgreSQL, with what the chart's pod spec asks for: a read-only root filesystem, /tmp as a
tmpfs, uid 10001, all capabilities dropped, no privilege escalation, the rendered ConfigMap
mounted read-only at /etc/data-ingest, the rendered environment (the Secret's values
included) and the rendered command and args. Then: /ready, ingest, `podman stop` (SIGTERM,
SIGKILL after the grace period), exit 0, committed == stored.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from integration.backends import PostgresUnderTest
from integration.helm_render import ROOT, postgres_values, render_worker
from integration.kafka_broker import create_topic
from integration.processes import free_port
from integration.support import committed_offsets, measurement, produce, unique

pytestmark = pytest.mark.skipif(
    os.environ.get("DATA_INGEST_TEST_IMAGE") != "1",
    reason="the image test runs with `make test-image` (needs podman and the built image)",
)
IMAGE = "localhost/data-ingest-connector:0.1.0"
PARTITIONS, RECORDS = 3, 900


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "integration" / "build_image.sh"), "podman", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def wait(predicate: Any, timeout: float, what: str, name: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = podman("logs", name, check=False)
            raise AssertionError(f"{what}: not within {timeout} s\n{logs.stdout}{logs.stderr}")
        time.sleep(0.3)


def test_the_image_runs_the_chart_pod_read_only_and_stops_cleanly(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, "run `make image`"
    backend = PostgresUnderTest(postgres_server)
    topic, group = unique("image-measurements"), unique("image-group")
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    port = free_port()
    worker = render_worker(
        postgres_values(kafka_bootstrap, postgres_server.dsn, backend.schema, topic, group, port)
    )
    etc = tmp_path / "etc"
    worker.write_config(etc)
    for path in [etc, *etc.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    c, security = worker.container, worker.container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    name = unique("data-ingest")
    env_args = [arg for key, value in worker.env.items() for arg in ("--env", f"{key}={value}")]
    run = [
        "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--tmpfs", "/tmp:rw,size=64m",
        "--user", f"{worker.pod['securityContext']['runAsUser']}:"
                  f"{worker.pod['securityContext']['runAsGroup']}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{etc}:/etc/data-ingest:ro",
        *env_args,
        "--entrypoint", c["command"][0],
        IMAGE, *c["args"],
    ]  # fmt: skip
    podman(*run)
    try:
        base = f"http://127.0.0.1:{port}"
        wait(lambda: status(base + c["startupProbe"]["httpGet"]["path"]) == 200, 60, "/ping", name)
        wait(
            lambda: status(base + c["readinessProbe"]["httpGet"]["path"]) == 200, 60, "/ready", name
        )
        produce(
            kafka_bootstrap,
            topic,
            ((i % PARTITIONS, measurement(topic, i % PARTITIONS, i)) for i in range(RECORDS)),
        )
        wait(lambda: len(backend.ids("Measurement")) >= RECORDS, 120, "ingested", name)
        started = time.monotonic()
        podman("stop", "--time", str(worker.grace), name)
        stopped_in = time.monotonic() - started
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())
        logs = podman("logs", name, check=False)
    finally:
        podman("rm", "--force", name, check=False)
    assert code == 0, logs.stdout + logs.stderr
    assert stopped_in < worker.grace
    stored = backend.ids("Measurement")
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert len(stored) == len(set(stored)) == sum(committed.values()) == RECORDS
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(
        f"image {IMAGE} ({int(size) / 1e6:.0f} MB): {RECORDS} records ingested, podman stop "
        f"(SIGTERM) -> exit {code} in {stopped_in:.1f} s (grace {worker.grace} s), "
        f"committed {sum(committed.values())} == stored {len(stored)}"
    )

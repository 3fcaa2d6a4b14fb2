"""``data-ingest worker`` and ``data-ingest run --rest-listen`` as real child processes,
with small HTTP helpers for their REST API and /metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from integration.processes import LOOPBACK, free_port
from integration.support import DATA_INGEST


class ServiceProcess:
    """A connector process serving the REST API on a free loopback port."""

    def __init__(self, args: list[str], log: Path, port: int, env: dict[str, str] | None = None):
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.log = log
        self.process = subprocess.Popen(
            [DATA_INGEST, *args],
            stdout=subprocess.PIPE,
            stderr=open(log, "a"),  # noqa: SIM115 (the child keeps it)
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.wait_until(lambda: self.get("/ping")[0] == 200, 60, "REST API up")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or text) of one call; never raises on an HTTP error."""
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, None
        text = raw.decode()
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics (parsed by prometheus-client's parser)."""
        status, text = self.get("/metrics")
        assert status == 200, text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in self.metrics().items()
            if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
        )

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{what}: the process exited {self.process.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float = 40) -> tuple[int, str]:
        """SIGTERM; the exit status and stdout."""
        os.killpg(self.process.pid, signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def start_worker(
    tmp_path: Path,
    name: str = "worker",
    *,
    connectors: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    log_level: str = "INFO",
) -> ServiceProcess:
    """A worker whose connectors directory holds ``connectors`` (name → pipeline tree)."""
    port = free_port()
    home = tmp_path / name
    (home / "connectors").mkdir(parents=True, exist_ok=True)
    for stem, tree in (connectors or {}).items():
        (home / "connectors" / f"{stem}.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    config = {
        "id": name,
        "connectors_dir": "connectors",
        "rest": {"listen": f"{LOOPBACK}:{port}"},
        **(extra or {}),
    }
    (home / "worker.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["--log-level", log_level, "worker", "-c", str(home / "worker.yaml")]
    return ServiceProcess(args, tmp_path / f"{name}.log", port)


def start_hosted(config: Path, home: Path, log: Path) -> subprocess.Popen[str]:
    """``data-ingest worker`` hosting the pipeline file ``config`` (from its connectors
    directory), as a drop-in for a ``data-ingest run`` fleet member."""
    (home / "connectors").mkdir(parents=True, exist_ok=True)
    (home / "connectors" / config.name).symlink_to(config)
    worker = {
        "id": home.name,
        "connectors_dir": "connectors",
        "rest": {"listen": f"{LOOPBACK}:{free_port()}"},
    }
    (home / "worker.yaml").write_text(yaml.safe_dump(worker))
    return subprocess.Popen(
        [DATA_INGEST, "worker", "-c", str(home / "worker.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "a"),
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

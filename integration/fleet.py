"""A fleet of connector processes in one consumer group, for the fleet tests and the soak.

``Fleet`` starts and stops real ``data-ingest run`` processes (each logging to a file of
its own); the helpers compute the ids the connector gives records and check the delivery
promise against the real broker and backend.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient

from connector.errors import Coordinates
from connector.mapping import coordinates_uuid
from integration.support import kill, measurement, start_connector
from integration.worker_process import start_hosted

SHUTDOWN_S = 10.0
INTERPRETER_START_S = 0.2
EXIT_MARGIN_S = 8.0  # process start-up and interpreter teardown on a loaded 2-core machine


class MemberFailed(AssertionError):
    """A member did not behave: exited on its own, non-zero, or too late after SIGTERM."""


def measurement_without_id(topic: str, partition: int, n: int) -> bytes:
    """A Measurement with no ``_id``: the connector derives it from the coordinates (R10)."""
    document = json.loads(measurement(topic, partition, n))
    del document["_id"]
    return json.dumps(document).encode()


def derived_id(topic: str, partition: int, offset: int) -> str:
    return str(coordinates_uuid(Coordinates(topic, partition, offset)))


class Fleet:
    """Connector processes of one group, each logging to a file of its own."""

    def __init__(self, config: Path, tmp_path: Path, *, hosted: bool = False) -> None:
        self.config = config
        self.hosted = hosted  # members are `data-ingest worker` processes hosting the file
        self.tmp_path = tmp_path
        self.members: dict[int, subprocess.Popen[str]] = {}
        self.logs: list[Path] = []
        self.exit_times: list[float] = []
        self.started: dict[int, float] = {}

    def start(self) -> int:
        key = len(self.logs)
        log = self.tmp_path / f"member-{key}.log"
        self.logs.append(log)
        if self.hosted:
            self.members[key] = start_hosted(self.config, self.tmp_path / f"worker-{key}", log)
        else:
            self.members[key] = start_connector(self.config, log=log)
        self.started[key] = time.monotonic()
        return key

    def sigterm(self, key: int) -> None:
        """SIGTERM one member; it must exit 0 within the shutdown timeout."""
        # The first ~0.15 s the interpreter itself is starting and no Python code can catch
        # a signal yet (connector.entry catches it from the first line on).
        time.sleep(max(0.0, self.started[key] + INTERPRETER_START_S - time.monotonic()))
        process = self.members.pop(key)
        started = time.monotonic()
        kill(process, signal.SIGTERM)
        try:
            code = process.wait(SHUTDOWN_S + EXIT_MARGIN_S)
        except subprocess.TimeoutExpired:
            kill(process, signal.SIGKILL)
            process.wait(10)
            raise MemberFailed(
                f"member {key} did not exit within {SHUTDOWN_S + EXIT_MARGIN_S:.0f} s of "
                f"SIGTERM (shutdown.timeout_ms is {SHUTDOWN_S * 1000:.0f}):\n"
                + self.logs[key].read_text()[-3000:]
            ) from None
        self.exit_times.append(time.monotonic() - started)
        if code != 0:
            raise MemberFailed(f"member {key} exited {code}:\n{self.tail(key)}")

    def sigkill(self, key: int, after_sigterm_s: float | None = None) -> None:
        """SIGKILL one member; with ``after_sigterm_s``, that long after a SIGTERM, so that
        the kill lands while it commits on revoke and leaves the group."""
        process = self.members.pop(key)
        if after_sigterm_s is not None:
            kill(process, signal.SIGTERM)
            time.sleep(after_sigterm_s)
        kill(process, signal.SIGKILL)
        process.wait(10)

    def check_alive(self) -> None:
        for key, process in self.members.items():
            if process.poll() is not None:
                raise MemberFailed(f"member {key} exited {process.returncode}:\n{self.tail(key)}")

    def stop_all(self) -> None:
        for key in list(self.members):
            self.sigterm(key)

    def tail(self, key: int) -> str:
        return self.logs[key].read_text()[-3000:]

    def log_text(self) -> str:
        return "".join(log.read_text() for log in self.logs if log.exists())


def assert_not_ahead(
    committed: dict[int, int], stored: set[str], id_at: Callable[[int, int], str]
) -> None:
    """Every record below a committed offset is stored: nothing committed ahead."""
    for partition, offset in committed.items():
        missing = [n for n in range(offset) if id_at(partition, n) not in stored]
        assert not missing, (
            f"partition {partition}: committed {offset}, but {len(missing)} records below it "
            f"are not stored (first: offset {missing[0]})"
        )


def wait_until_group_empty(bootstrap: str, group: str, timeout: float = 60.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
        if not description.members:
            return
        assert time.monotonic() < deadline, (
            f"group {group} still has {len(description.members)} members after {timeout:.0f} s"
        )
        time.sleep(0.5)

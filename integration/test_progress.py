"""Progress of ``run --until-caught-up``: a live bar on a terminal (a pseudo-terminal here),
plain log lines when the output is not a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from integration.kafka_broker import create_topic
from integration.support import (
    DATA_INGEST,
    measurement,
    produce,
    run_connector,
    summary_of,
    unique,
    write_config,
)

PARTITIONS = 3
TOTAL = 30_000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def setup(tmp_path: Path, bootstrap: str) -> Path:
    topic, group = unique("progress"), unique("progress")
    create_topic(bootstrap, topic, PARTITIONS)
    produce(
        bootstrap,
        topic,
        (
            (i % PARTITIONS, measurement(topic, i % PARTITIONS, i // PARTITIONS))
            for i in range(TOTAL)
        ),
    )
    return write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "sqlite", "path": str(tmp_path / "ingest.db")},
    )


def run_on_a_terminal(config: Path, timeout: float = 180) -> tuple[int, str]:
    """``data-ingest run --until-caught-up`` with stdout and stderr on a pseudo-terminal."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [DATA_INGEST, "run", "-c", str(config), "--until-caught-up"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "150"},
        start_new_session=True,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(30), output.decode("utf-8", "replace")


def test_bar_on_a_terminal_finishes_at_100_percent(tmp_path: Path, kafka_bootstrap: str) -> None:
    config = setup(tmp_path, kafka_bootstrap)
    status, output = run_on_a_terminal(config)
    (tmp_path / "terminal.txt").write_text(output)
    assert status == 0, output[-3000:]
    assert "\x1b[" in output, "no terminal control sequences: the bar was not drawn live"
    frames = [ANSI.sub("", frame) for frame in re.split(r"\r|\x1b\[2K|\x1b\[1A", output)]
    bars = [f for f in frames if f.lstrip().startswith("ingest") and "records/s" in f]
    assert bars, output[-3000:]
    last = bars[-1]
    assert "100%" in last, last
    assert f"{TOTAL}/{TOTAL}" in last, last
    assert "lag 0" in last and "ETA" in last, last
    assert "progress: " not in output  # the bar replaces the log lines
    assert summary_of(ANSI.sub("", output))["records"] == str(TOTAL)


def test_plain_lines_when_not_a_terminal(tmp_path: Path, kafka_bootstrap: str) -> None:
    config = setup(tmp_path, kafka_bootstrap)
    result = run_connector(config, "--progress-interval", "0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b[" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert lines, result.stderr[-3000:]
    assert re.search(r"INFO connector.progress: progress: \d+ records \(\d+ ingested", lines[-1])
    assert summary_of(result.stdout)["records"] == str(TOTAL)

"""A third-party backend plugin, built and installed from a temporary directory with pip,
found through its entry point, and fed by a pipeline from the real broker.

The package is integration/plugin_jsonl (JSON lines, one file per object type), copied to
a temporary directory and installed with ``pip install --target`` into a directory of its
own, which the connector processes get on ``PYTHONPATH``: the venv itself stays untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from integration.kafka_broker import create_topic
from integration.support import (
    DATA_INGEST,
    committed_offsets,
    measurement,
    measurement_id,
    produce,
    summary_of,
    unique,
    write_config,
)

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_jsonl"
PARTITIONS = 3


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package, built from a temporary copy of its source and installed by pip
    into a directory of its own (no index: nothing is downloaded)."""
    source = tmp_path_factory.mktemp("plugin-source") / "data-ingest-jsonl"
    shutil.copytree(PLUGIN_SOURCE, source)
    site = tmp_path_factory.mktemp("plugin-site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    installed = subprocess.run(
        [*pip, "--no-index", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "data_ingest_jsonl-1.2.3.dist-info" / "entry_points.txt").exists()
    return site


def cli(site: Path | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``data-ingest ARGS``, with the plugin's directory on PYTHONPATH when ``site`` is set."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [DATA_INGEST, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_installed_plugin_is_listed_with_its_version(plugin_site: Path) -> None:
    listed = cli(plugin_site, "plugins")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["backend", "jsonl", "data-ingest-jsonl", "1.2.3", "data_ingest_jsonl:PLUGIN"] in rows
    own = version("data-ingest-connector")
    builtin = [
        "backend",
        "sqlite",
        "data-ingest-connector",
        own,
        "connector.backends.builtin:SQLITE",
    ]
    assert builtin in rows
    without = cli(None, "plugins")
    assert "jsonl" not in without.stdout


def stored_lines(directory: Path) -> list[dict[str, object]]:
    path = directory / "Measurement.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_through_the_plugin_keeps_one_copy_per_id(
    plugin_site: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic, group = unique("plugin"), unique("group")
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    total = 12_000
    produce(
        kafka_bootstrap,
        topic,
        (
            (i % PARTITIONS, measurement(topic, i % PARTITIONS, i // PARTITIONS))
            for i in range(total)
        ),
    )
    directory = tmp_path / "out"
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "jsonl", "directory": str(directory)},
        batching={"max_records": 100, "max_wait_ms": 20},
    )

    # SIGKILL mid-ingest: what the plugin acked may be committed, nothing more.
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    process = subprocess.Popen(
        [DATA_INGEST, "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(stored_lines(directory)) < 1000 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    killed_at = len(stored_lines(directory))
    assert 0 < killed_at < total, killed_at
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    per_partition = {p: 0 for p in range(PARTITIONS)}
    for line in stored_lines(directory):
        per_partition[int(str(line["partition"]))] += 1
    assert all(committed[p] <= per_partition[p] for p in range(PARTITIONS)), (
        committed,
        per_partition,
    )

    result = cli(plugin_site, "run", "-c", str(config), "--until-caught-up")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = stored_lines(directory)
    ids = [line["_id"] for line in lines]
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {
        measurement_id(topic, i % PARTITIONS, i // PARTITIONS) for i in range(total)
    }
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == {
        p: total // PARTITIONS for p in range(PARTITIONS)
    }
    summary = summary_of(result.stdout)
    assert int(summary["ingested"]) + killed_at == total
    assert summary["conflicts"] == "0"

    # A replay by another group: every object is a duplicate, nothing is written twice.
    replay = write_config(
        tmp_path / "replay.yaml",
        kafka_bootstrap,
        unique("group"),
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "jsonl", "directory": str(directory)},
    )
    again = cli(plugin_site, "run", "-c", str(replay), "--until-caught-up")
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again.stdout)["duplicates"] == str(total)
    assert summary_of(again.stdout)["ingested"] == "0"
    assert len(stored_lines(directory)) == total


def test_plugin_settings_are_checked_at_load(plugin_site: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "pipeline.yaml",
        "127.0.0.1:1",
        "group",
        [{"topic": "t", "type": "Measurement", "format": "json"}],
        {"type": "jsonl", "directry": "out"},
    )
    result = cli(plugin_site, "validate", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{config}: backend.directory: missing value; this key is required",
        f"{config}: backend.directry: unknown key of this backend plugin",
    ]
    missing = cli(None, "validate", "-c", str(config))
    assert missing.returncode == 2
    assert "backend.type: unknown type 'jsonl'" in missing.stderr

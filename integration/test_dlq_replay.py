"""``data-ingest dlq replay`` and ``dlq inspect`` end to end: records that failed for a
missing field default are stored once the type is fixed, with the ids and coordinates of a
direct run; replaying again changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from integration.backends import (
    BackendUnderTest,
    MongoUnderTest,
    PostgresUnderTest,
    SqliteUnderTest,
)
from integration.kafka_broker import create_topic
from integration.poison import Out, produce_records, read_topic
from integration.support import (
    AVRO_DIR,
    DATA_INGEST,
    committed_offsets,
    measurement,
    run_connector,
    summary_of,
    unique,
    write_config,
)

RECORDS = 300


def measurement_schemas(directory: Path, unit_default: str | None) -> Path:
    """The example types, with Measurement given a required ``unit`` (a default when fixed)."""
    shutil.copytree(AVRO_DIR, directory)
    path = directory / "Measurement.avsc"
    schema = json.loads(path.read_text())
    unit: dict[str, Any] = {"name": "unit", "type": "string"}
    if unit_default is not None:
        unit["default"] = unit_default
    schema["fields"].append(unit)
    path.write_text(json.dumps(schema))
    return directory


def value(topic: str, i: int) -> bytes:
    """Measurements without _id (derived from the coordinates); every third without unit."""
    document = json.loads(measurement(topic, i % 2, i))
    del document["_id"]
    if i % 3:
        document["unit"] = "kelvin"
    return json.dumps(document).encode()


def like(backend: BackendUnderTest, tmp_path: Path) -> BackendUnderTest:
    """A second, empty namespace on the same backend, for the direct run."""
    if isinstance(backend, SqliteUnderTest):
        (tmp_path / "direct").mkdir()
        return SqliteUnderTest(tmp_path / "direct")
    if isinstance(backend, PostgresUnderTest):
        return PostgresUnderTest(backend.server)
    assert isinstance(backend, MongoUnderTest)
    return MongoUnderTest(backend.server)


def dlq_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DATA_INGEST, "dlq", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_replay_after_fixing_a_type_stores_what_a_direct_run_stores(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    topic, dlq, group = unique("measurements"), unique("dlq"), unique("group")
    create_topic(kafka_bootstrap, topic, 2)
    produce_records(kafka_bootstrap, topic, [Out(i % 2, value(topic, i)) for i in range(RECORDS)])
    failing = RECORDS // 3

    def config(name: str, schemas: Path, backend: BackendUnderTest, group_id: str) -> Path:
        return write_config(
            tmp_path / name,
            kafka_bootstrap,
            group_id,
            [{"topic": topic, "type": "Measurement", "format": "json"}],
            backend.section(),
            schemas={"dir": str(schemas)},
            errors={"tolerance": "all", "dead_letter_queue": {"topic": dlq}},
        )

    broken = measurement_schemas(tmp_path / "broken", None)
    fixed = measurement_schemas(tmp_path / "fixed", "celsius")
    first = run_connector(config("broken.yaml", broken, backend_under_test, group))
    assert first.returncode == 0, first.stderr[-3000:]
    assert summary_of(first.stdout)["dead-lettered"] == str(failing)
    assert len(backend_under_test.ids("Measurement")) == RECORDS - failing

    fixed_config = config("fixed.yaml", fixed, backend_under_test, group)
    inspected = dlq_command("inspect", "-c", str(fixed_config), "--errors", "2")
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    lines = inspected.stdout.splitlines()
    assert lines[:8] == [
        f"dead-letter topic '{dlq}': {failing} records",
        "by error kind:",
        f"  schema-mismatch: {failing}",
        "by original topic:",
        f"  {topic}: {failing}",
        "by object type:",
        f"  Measurement: {failing}",
        "first 2 errors:",
    ]
    assert len(lines) == 10
    assert lines[8].startswith(
        f"  [0] offset 0: schema-mismatch error at topic '{topic}' partition "
    )
    assert "unit: missing, and the field has no default" in lines[8]

    replayed = dlq_command("replay", "-c", str(fixed_config), "--until-caught-up")
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    summary = summary_of(replayed.stdout)
    assert (summary["records"], summary["ingested"], summary["dead-lettered"]) == (
        str(failing),
        str(failing),
        "0",
    )
    assert committed_offsets(kafka_bootstrap, f"{group}.dlq-replay", dlq, 1) == {0: failing}

    direct_backend = like(backend_under_test, tmp_path)
    direct = run_connector(config("direct.yaml", fixed, direct_backend, unique("group")))
    assert direct.returncode == 0, direct.stderr[-3000:]
    stored = backend_under_test.documents("Measurement")
    assert len(stored) == RECORDS
    assert stored == direct_backend.documents("Measurement")
    assert backend_under_test.coordinates("Measurement") == direct_backend.coordinates(
        "Measurement"
    )

    again = dlq_command("replay", "-c", str(fixed_config))  # same group: nothing left
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again.stdout)["records"] == "0"
    other = dlq_command("replay", "-c", str(fixed_config), "--group", unique("replay"))
    assert other.returncode == 0, other.stderr[-3000:]
    summary = summary_of(other.stdout)
    assert (summary["duplicates"], summary["ingested"]) == (str(failing), "0")
    assert backend_under_test.documents("Measurement") == stored
    assert len(read_topic(kafka_bootstrap, dlq, at_least=failing)) == failing

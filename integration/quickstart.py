"""``make quickstart``: a local Kafka, sample Measurements, the connector, the stored rows.

Starts the project's own single-node Kafka, creates the ``measurements`` topic, produces a
few thousand JSON Measurement records (value, timestamp, sensor link; the object type is
declared in avro/Measurement.avsc), runs
``data-ingest run --until-caught-up`` into an SQLite file, prints the counts and a few rows,
and stops the broker.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from integration.kafka_broker import KafkaBroker, create_topic
from integration.support import DATA_INGEST, produce

TOPIC = "measurements"
PARTITIONS = 3
RECORDS = 5000
CONFIG = Path(__file__).with_name("quickstart.yaml")


def sample(i: int, rng: random.Random) -> tuple[int, bytes]:
    sensor = i % 12
    value = {
        "_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "sensor": f"sensor-{sensor:02d}",
        "value": round(18 + sensor + rng.gauss(0, 0.5), 3),
        "timestamp": f"2025-11-24T12:{i // 240 % 60:02d}:{i // 4 % 60:02d}.{i % 4 * 250:03d}Z",
    }
    return sensor % PARTITIONS, json.dumps(value).encode()


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="data-ingest-quickstart-"))
    db = workdir / "quickstart.db"
    print("==> starting a local Kafka broker (data in a temp dir)", flush=True)
    with KafkaBroker() as broker:
        bootstrap = broker.bootstrap_servers
        print(f"    broker at {bootstrap}")
        create_topic(bootstrap, TOPIC, PARTITIONS)
        print(f"==> topic {TOPIC!r} with {PARTITIONS} partitions; producing {RECORDS} Measurements")
        rng = random.Random(7)
        produced = produce(bootstrap, TOPIC, (sample(i, rng) for i in range(RECORDS)))
        print(f"    {produced} records acknowledged by the broker")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "QUICKSTART_DB": str(db),
            "QUICKSTART_TOPIC": TOPIC,
        }
        command = [DATA_INGEST, "run", "-c", str(CONFIG), "--until-caught-up"]
        print(f"==> {' '.join(['data-ingest', *command[1:]])}", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, env=env, check=False, text=True, capture_output=True)
        print(result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            print(f"connector failed with exit status {result.returncode}", file=sys.stderr)
            return result.returncode
        print(f"    (connector process took {time.monotonic() - started:.1f} s)")
    print(f"==> broker stopped; SQLite file {db}")
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute('SELECT count(*) FROM "Measurement"').fetchone()
        print(f"    {count} Measurement rows stored (produced {produced})")
        per_partition = conn.execute(
            'SELECT _partition, count(*) FROM "Measurement" GROUP BY _partition ORDER BY 1'
        ).fetchall()
        print("    rows per partition: " + ", ".join(f"{p}: {n}" for p, n in per_partition))
        print("    a few stored rows (_id, document):")
        for object_id, doc in conn.execute(
            'SELECT _id, doc FROM "Measurement" ORDER BY _partition, _offset LIMIT 5'
        ):
            print(f"      {object_id}  {doc}")
    return 0 if count == produced else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak: a fleet of connector processes under ≥ 100 SIGKILLs, restarts and membership changes
over mixed data, then a count of what was lost, duplicated or in conflict.

    python bench/chaos.py [--changes 120] [--backend postgres] [--engine confluent]
                          [--rate 1500] [--seed 1]

One run, all on this machine: starts the project's Kafka broker and the chosen database,
and two 12-partition topics: Measurements that carry their ``_id`` and Measurements without
one (the connector derives it from the coordinates, R10). A producer writes both
continuously (idempotent, so the n-th record of a partition is at offset n) while members
of one consumer group are started, SIGTERMed (each must exit 0 within
``shutdown.timeout_ms``), SIGKILLed, and SIGKILLed right after a SIGTERM (during the commit
on revoke). After every change, nothing may be committed ahead of the backend. At the end
one member catches up, and the script prints:

  lost        produced objects not in the backend
  duplicated  objects stored more than once, or carrying other coordinates than their record
  conflicts   conflicts reported by any member (errors.conflict: stop makes each one fatal)

It exits 1 unless all three are 0. Not part of ``make test``: it runs for minutes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration.backends import (  # noqa: E402
    BackendUnderTest,
    MongoUnderTest,
    PostgresUnderTest,
    SqliteUnderTest,
)
from integration.fleet import (  # noqa: E402
    SHUTDOWN_S,
    Fleet,
    MemberFailed,
    derived_id,
    measurement_without_id,
    wait_until_group_empty,
)
from integration.kafka_broker import KafkaBroker, create_topic  # noqa: E402
from integration.support import (  # noqa: E402
    BackgroundProducer,
    committed_offsets,
    measurement_id,
    run_connector,
    summary_of,
    unique,
    write_config,
)

PARTITIONS = 12


def backend_for(name: str, workdir: Path, stack: list[Any]) -> BackendUnderTest:
    if name == "sqlite":
        return SqliteUnderTest(workdir)
    if name == "postgres":
        from integration.postgres_server import PostgresServer

        server = PostgresServer().start()
        stack.append(server)
        return PostgresUnderTest(server)
    from integration.mongo_server import MongoWireServer

    mongo = MongoWireServer().start()
    stack.append(mongo)
    return MongoUnderTest(mongo)


def soak(args: argparse.Namespace, bootstrap: str, backend: BackendUnderTest, workdir: Path) -> int:
    given, derived = unique("soak-ids"), unique("soak-derived")
    for topic in (given, derived):
        create_topic(bootstrap, topic, PARTITIONS)
    group = unique("soak")
    config = write_config(
        workdir / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": given, "type": "Measurement"}, {"topic": derived, "type": "Measurement"}],
        backend.section(),
        engine=args.engine,
        batching={"max_records": 200, "max_wait_ms": 50},
        commit={"interval_ms": 50},
        shutdown={"timeout_ms": int(SHUTDOWN_S * 1000)},
        errors={"conflict": "stop"},
    )
    ids = {
        given: lambda p, n: measurement_id(given, p, n),
        derived: lambda p, n: derived_id(derived, p, n),
    }
    producers = {
        given: BackgroundProducer(bootstrap, given, PARTITIONS, args.rate // 2),
        derived: BackgroundProducer(
            bootstrap, derived, PARTITIONS, args.rate // 2, value=measurement_without_id
        ),
    }
    rng = random.Random(args.seed)
    fleet = Fleet(config, workdir)
    actions: Counter[str] = Counter()
    ahead: list[str] = []
    began = time.monotonic()
    for producer in producers.values():
        producer.start()
    try:
        for _ in range(3):
            fleet.start()
        for change in range(args.changes):
            time.sleep(rng.uniform(0.05, 0.3) if change % 4 == 3 else rng.uniform(0.3, 1.5))
            fleet.check_alive()
            live = sorted(fleet.members)
            action = rng.choice(["start", "sigterm", "sigkill", "sigkill in revoke"])
            if len(live) <= 1:
                action = "start"
            elif len(live) >= 4 and action == "start":
                action = "sigkill"
            if action == "start":
                fleet.start()
            elif action == "sigterm":
                fleet.sigterm(rng.choice(live))
            elif action == "sigkill":
                fleet.sigkill(rng.choice(live))
            else:
                fleet.sigkill(rng.choice(live), after_sigterm_s=rng.uniform(0.0, 0.3))
            actions[action] += 1
            # Committed first, stored second: live members keep storing and committing, so
            # the other order would see commits of objects stored after the snapshot.
            committed = {t: committed_offsets(bootstrap, group, t, PARTITIONS) for t in ids}
            stored = set(backend.ids("Measurement"))
            for topic, id_at in ids.items():
                for partition, offset in committed[topic].items():
                    missing = sum(1 for n in range(offset) if id_at(partition, n) not in stored)
                    if missing:
                        ahead.append(f"change {change}: {topic}[{partition}] {missing} below")
            if change % 10 == 9:
                print(f"  {change + 1} changes, {dict(actions)}", flush=True)
    except MemberFailed as exc:
        print(f"a member misbehaved: {exc}", file=sys.stderr)
        return 1
    finally:
        sent = {topic: producer.stop() for topic, producer in producers.items()}
        for key in list(fleet.members):
            fleet.sigkill(key)
    wait_until_group_empty(bootstrap, group)
    result = run_connector(config, timeout=600)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    summary = summary_of(result.stdout)

    expected = {
        ids[topic](p, n): (topic, p, n)
        for topic, counts in sent.items()
        for p, count in counts.items()
        for n in range(count)
    }
    stored_ids = backend.ids("Measurement")
    counts = Counter(stored_ids)
    lost = len(set(expected) - set(counts))
    unexpected = len(set(counts) - set(expected))
    duplicated = sum(1 for c in counts.values() if c > 1) + unexpected
    coordinates = backend.coordinates("Measurement")
    moved = (
        0
        if coordinates is None
        else sum(1 for i, c in coordinates.items() if i in expected and c != expected[i])
    )
    duplicated += moved
    conflicts = int(summary["conflicts"]) + fleet.log_text().count("conflict error")
    behind = {
        topic: committed_offsets(bootstrap, group, topic, PARTITIONS) != counts_
        for topic, counts_ in sent.items()
    }
    print()
    print(
        f"soak: {backend.name}, engine {args.engine}, {args.changes} membership changes "
        f"({', '.join(f'{k} {v}' for k, v in sorted(actions.items()))}), "
        f"{len(fleet.logs)} members started, {time.monotonic() - began:.0f} s"
    )
    print(f"records produced: {len(expected):,} over 2 topics x {PARTITIONS} partitions")
    print(f"SIGTERM exits: max {max(fleet.exit_times, default=0):.1f} s")
    print(f"committed ahead of the backend after a change: {len(ahead)}")
    print(f"lost:       {lost}")
    print(f"duplicated: {duplicated}")
    print(f"conflicts:  {conflicts}")
    if any(behind.values()):
        print(f"committed != produced on: {[t for t, b in behind.items() if b]}")
    ok = not (lost or duplicated or conflicts or ahead or any(behind.values()))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=120)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "mongodb"], default="postgres")
    parser.add_argument("--engine", choices=["confluent", "aiokafka"], default="confluent")
    parser.add_argument("--rate", type=int, default=1500, help="records/s over both topics")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    stack: list[Any] = []
    with KafkaBroker() as broker:
        try:
            backend = backend_for(args.backend, workdir, stack)
            return soak(args, broker.bootstrap_servers, backend, workdir)
        finally:
            for server in stack:
                server.stop()


if __name__ == "__main__":
    sys.exit(main())

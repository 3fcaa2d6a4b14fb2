"""Our Quix Streams application for the benchmark: one topic of JSON records into one sink.

Runs in the Quix Streams virtualenv under the cache (not the project's), started by
``bench/peers/quix.py`` as ``<venv>/bin/python quix_app.py CONFIG.json``. Only our
configuration lives here; Quix Streams itself is installed from PyPI by name.

Settings (from the Quix Streams 3.28 sources, ``quixstreams/app.py`` and
``quixstreams/sinks/community/{postgresql,mongodb}.py``):

* Sinks are ``BatchingSink``s: they buffer per partition and write on each checkpoint, so
  the batch is what arrives between two checkpoints. A checkpoint happens every
  ``commit_interval`` seconds or every ``commit_every`` records, whichever comes first.
* ``PostgreSQLSink``: ``primary_key_columns="_id"`` makes ``_id`` the primary key of the
  table it creates; ``on_conflict_do_nothing=True`` adds ``ON CONFLICT DO NOTHING`` to its
  ``INSERT ... VALUES`` (psycopg2 ``execute_values``), so a redelivered record is a no-op.
  (``upsert_on_primary_key=True`` would be ``ON CONFLICT (_id) DO UPDATE``; the two are
  mutually exclusive.) ``include_metadata=False``: no ``__key``/``timestamp`` columns, whose
  ``timestamp`` would clash with the Measurement field of that name.
* ``MongoDBSink``: ``update_method="ReplaceOne"`` with ``upsert=True`` and a document
  matcher on the value's ``_id`` (its default matches on the Kafka key): one
  ``bulk_write`` of ReplaceOne-upserts per batch, idempotent on redelivery.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from quixstreams import Application


def _postgres_sink(cfg: dict[str, Any]) -> Any:
    from quixstreams.sinks.community.postgresql import PostgreSQLSink

    pg = cfg["postgres"]
    return PostgreSQLSink(
        host=pg["host"],
        port=pg["port"],
        dbname=pg["database"],
        user=pg["user"],
        password=pg["password"],
        table_name=cfg["table"],
        schema_auto_update=True,
        primary_key_columns="_id",
        on_conflict_do_nothing=True,
        include_metadata=False,
    )


def _mongo_sink(cfg: dict[str, Any]) -> Any:
    from quixstreams.sinks.community.mongodb import MongoDBSink

    mongo = cfg["mongo"]
    return MongoDBSink(
        host=mongo["host"],
        port=mongo["port"],
        db=mongo["database"],
        collection=mongo["collection"],
        document_matcher=lambda item: {"_id": item.value["_id"]},
        update_method="ReplaceOne",
        upsert=True,
    )


def main(path: str) -> None:
    with open(path) as fh:
        cfg = json.load(fh)
    app = Application(
        broker_address=cfg["bootstrap"],
        consumer_group=cfg["group"],
        auto_offset_reset="earliest",
        commit_interval=cfg["commit_interval"],
        commit_every=cfg["commit_every"],
        processing_guarantee="at-least-once",
        use_changelog_topics=False,
        auto_create_topics=False,
        loglevel=cfg.get("loglevel", "WARNING"),
    )
    topic = app.topic(cfg["topic"], value_deserializer="json")
    sdf = app.dataframe(topic=topic)
    sink = _postgres_sink(cfg) if cfg["target"] == "postgres" else _mongo_sink(cfg)
    sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1])

"""The peers of the side-by-side benchmark (issue 8), behind one small contract.

Each peer (Quix Streams, the MongoDB Kafka sink and Debezium's JDBC sink in a Kafka Connect
worker, Benthos) lives in its own virtualenv, Maven folder or Go build under the cache
directory; none of them is a dependency of the project and none of their code is copied
here, only our configuration for them. ``bench/bench.py`` drives every contender through
``Peer``: install once, then run over a topic into a server, optionally SIGKILLed once
mid-run and restarted. To try one peer quickly: ``python bench/bench.py --records 2000
--crash-records 0 --latency-s 0 --only NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Target = Literal["postgres", "mongodb"]


@dataclass(frozen=True)
class RunContext:
    """Everything a contender needs for one run."""

    bootstrap: str  # the broker
    topic: str  # plain JSON Measurements with _id
    envelope_topic: str  # the same records in Kafka Connect's JSON schema+payload envelope
    records: int  # how many records the topic holds (a run ends when all are stored)
    partitions: int
    group: str  # a fresh consumer group
    target: Target
    postgres_dsn: str  # postgresql://user@127.0.0.1:port/db
    postgres_table: str  # table to write (the peer creates it if it needs to)
    mongo_uri: str  # mongodb://127.0.0.1:port/
    mongo_database: str
    mongo_collection: str
    batch_size: int  # the same batch size for every contender that has one
    workdir: Path  # scratch space for config files and logs
    cache: Path  # where peers are installed
    # A run still short of ``records`` after this long is stopped and reported as partial,
    # its rate taken over what it stored (a contender at tens of records/s would otherwise
    # hold the whole benchmark for hours). None: no budget.
    budget_s: float | None = None


@dataclass
class RunResult:
    """What one run measured; ``bench.py`` checks the stored data itself."""

    wall_s: float  # whole run, process start to all records stored
    first_record_s: float | None  # process start to the first stored record, when known
    cpu_s: float  # user + system CPU of the contender's processes (wait4 / psutil)
    peak_rss_mb: float
    killed: bool = False  # SIGKILLed once mid-run and restarted
    errors: list[str] = field(default_factory=list)  # errors the peer itself reported
    budget_spent: bool = False  # stopped by ``RunContext.budget_s`` before storing everything
    stored: int | None = None  # what the target held when the run ended (counted by the runner)


class Peer(Protocol):
    """One contender of the benchmark."""

    name: str  # e.g. "quix-postgres"
    target: Target
    version: str  # what was installed, for the results file

    def install(self, cache: Path) -> None:
        """Install into ``cache`` (idempotent; reuses what is there)."""

    def settings(self) -> dict[str, object]:
        """The settings used, for the results file and the README (fairness)."""

    def run(self, ctx: RunContext, *, kill_after_s: float | None = None) -> RunResult:
        """Consume ``ctx.topic`` (or ``ctx.envelope_topic``) into the target until all
        ``ctx.records`` are stored. With ``kill_after_s``: SIGKILL the peer that long after
        it started or once a third of the records is stored, whichever comes first, start it
        again on the same group and let it finish."""

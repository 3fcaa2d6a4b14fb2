"""Tests of the database harnesses, against the real servers.

They check what the connector relies on: PostgreSQL keeps committed rows across an outage and a
crash, and with TLS on accepts only verified TLS clients; FerretDB (MongoDB wire protocol, SQLite backend) reports duplicate keys in an unordered
``insert_many`` the way MongoDB does (BulkWriteError, code 11000, other documents inserted),
accepts ``w: "majority"``, works with pymongo's asyncio client, and keeps data across restarts.
Features FerretDB lacks (time-series collections, Decimal128...) are recorded, not failed on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.mongo_server import MongoWireServer
from integration.postgres_server import PostgresServer, StopMode
from integration.tls import CertificateAuthority

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'asyncpg>=0.29')")
pymongo = pytest.importorskip("pymongo", reason="needs pymongo (pip install 'pymongo>=4.9')")

from bson import Decimal128  # noqa: E402 - after importorskip: bson ships with pymongo
from pymongo.errors import (  # noqa: E402
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from pymongo.write_concern import WriteConcern  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

RecordProperty = Callable[[str, object], None]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for this module."""
    with PostgresServer() as server:
        print(f"\nPostgreSQL: {server.version}; started in {server.start_seconds:.2f} s")
        yield server


@pytest.fixture(scope="module")
def ferret() -> Iterator[MongoWireServer]:
    """One throwaway FerretDB (SQLite backend) for this module."""
    with MongoWireServer() as server:
        print(
            f"\nFerretDB {server.ferretdb_version} (claims MongoDB {server.version}, "
            f"{server.backend} backend); started in {server.start_seconds:.2f} s"
        )
        yield server


@pytest.fixture
def mongo(ferret: MongoWireServer) -> Iterator[Any]:
    """A pymongo client on the module's FerretDB; the database ``ingest`` is dropped after."""
    client: Any = pymongo.MongoClient(ferret.uri, serverSelectionTimeoutMS=5000)
    yield client
    try:
        client.drop_database("ingest")
    finally:
        client.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


async def test_postgres_settings_and_roundtrip(pg: PostgresServer) -> None:
    """The server is private (127.0.0.1), durable (fsync on) and serves the ``ingest`` db."""
    conn = await asyncpg.connect(pg.dsn)
    try:
        settings = dict(
            await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                ["fsync", "synchronous_commit", "full_page_writes", "listen_addresses", "port"],
            )
        )
        assert settings == {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "listen_addresses": "127.0.0.1",
            "port": str(pg.port),
        }
        assert await conn.fetchval("SELECT current_database()") == "ingest"
        await conn.execute("CREATE TABLE roundtrip (id bigint PRIMARY KEY, payload jsonb)")
        await conn.executemany(
            "INSERT INTO roundtrip VALUES ($1, $2)", [(i, f'{{"n": {i}}}') for i in range(10)]
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO roundtrip VALUES (1, '{}')")
        rows = await conn.fetch("SELECT id, payload->>'n' AS n FROM roundtrip ORDER BY id")
        assert [(r["id"], r["n"]) for r in rows] == [(i, str(i)) for i in range(10)]
    finally:
        await conn.close()


async def test_postgres_outage_keeps_data(pg: PostgresServer) -> None:
    """stop_server/start_server: connections fail while down; same port and data after."""
    conn = await asyncpg.connect(pg.dsn)
    await conn.execute("CREATE TABLE outage (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO outage SELECT generate_series(1, 100)")
    port = pg.port

    pg.stop_server()
    assert not pg.is_running
    # The open connection was terminated by the shutdown...
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")
    # ...and new ones are refused.
    with pytest.raises(OSError):
        await asyncpg.connect(pg.dsn, timeout=2)
    await asyncio.sleep(1)

    t0 = time.monotonic()
    pg.start_server()
    print(f"\nPostgreSQL restart (fast shutdown before): {time.monotonic() - t0:.2f} s")
    assert pg.port == port
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM outage") == 100
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["immediate", "kill"])
async def test_postgres_crash_keeps_committed_rows(pg: PostgresServer, mode: StopMode) -> None:
    """A crash (SIGQUIT / SIGKILL of every server process) loses no committed transaction."""
    table = f"crash_{mode}"
    conn = await asyncpg.connect(pg.dsn)
    await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    for i in range(50):  # 50 separate commits, each fsynced before it returns
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", i)
    pg.stop_server(mode)
    await conn.close()

    t0 = time.monotonic()
    pg.start_server()  # runs crash recovery (WAL replay)
    print(f"\nPostgreSQL restart after {mode}: {time.monotonic() - t0:.2f} s")
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 50
    finally:
        await conn.close()


async def test_postgres_tls_verify_full(postgres_tls_server: PostgresServer) -> None:
    """verify-full against the test CA connects over TLS, by ssl context and by the DSN."""
    server = postgres_tls_server
    assert server.ca_file is not None
    context = ssl.create_default_context(cafile=str(server.ca_file))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, database=server.database, ssl=context
    )
    try:
        in_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        assert await conn.fetchval(in_tls) is True
    finally:
        await conn.close()
    assert "sslmode=verify-full" in server.dsn
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval(in_tls) is True
    finally:
        await conn.close()


async def test_postgres_tls_refuses_other_ca_and_plaintext(
    postgres_tls_server: PostgresServer, tmp_path: Path
) -> None:
    """A client trusting another CA fails verification; a client without TLS is refused."""
    server = postgres_tls_server
    other = CertificateAuthority.create(tmp_path, "other CA")
    context = ssl.create_default_context(cafile=str(other.cert_file))
    params: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "database": server.database,
        "timeout": 10,
    }
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(**params, ssl=context)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(**params, ssl=False)


# -- FerretDB -----------------------------------------------------------------------------------


def test_ferretdb_identity(ferret: MongoWireServer, record_property: RecordProperty) -> None:
    """buildInfo: FerretDB's own version, and the MongoDB version it claims."""
    assert ferret.ferretdb_version == "v1.24.2"
    assert ferret.version.split(".")[0].isdigit()
    assert ferret.uri == f"mongodb://127.0.0.1:{ferret.port}/"
    record_property("ferretdb_version", ferret.ferretdb_version)
    record_property("mongodb_version_claimed", ferret.version)


def test_ferretdb_unordered_duplicate_in_batch(mongo: Any) -> None:
    """insert_many(ordered=False) with duplicate _ids: BulkWriteError 11000, the rest inserted."""
    coll = mongo.ingest.dups
    coll.insert_one({"_id": "existing"})
    batch = [
        {"_id": "a", "n": 1},
        {"_id": "existing", "n": 2},  # duplicate of a stored document
        {"_id": "b", "n": 3},
        {"_id": "a", "n": 4},  # duplicate within the batch
        {"_id": "c", "n": 5},
    ]
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many(batch, ordered=False)
    details = info.value.details
    assert details["nInserted"] == 3
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000), (3, 11000)]
    assert details["writeErrors"][0]["errmsg"].startswith("E11000 duplicate key error")
    assert details["writeErrors"][0]["op"]["_id"] == "existing"
    assert details["writeConcernErrors"] == []
    assert {d["_id"]: d.get("n") for d in coll.find()} == {
        "existing": None,
        "a": 1,
        "b": 3,
        "c": 5,
    }


def test_ferretdb_ordered_duplicate_stops_batch(mongo: Any) -> None:
    """ordered=True stops at the first duplicate (MongoDB semantics)."""
    coll = mongo.ingest.ordered
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}], ordered=True)
    assert info.value.details["nInserted"] == 2
    assert [e["index"] for e in info.value.details["writeErrors"]] == [2]
    assert sorted(d["_id"] for d in coll.find()) == [1, 2]


def test_ferretdb_large_unordered_batch(mongo: Any) -> None:
    """A batch larger than FerretDB's internal insert batch (100) reports every duplicate."""
    coll = mongo.ingest.large
    coll.insert_many([{"_id": i} for i in range(0, 1000, 10)])  # 100 docs
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": i, "v": "x" * 100} for i in range(1000)], ordered=False)
    assert info.value.details["nInserted"] == 900
    assert len(info.value.details["writeErrors"]) == 100
    assert {e["code"] for e in info.value.details["writeErrors"]} == {11000}
    assert coll.count_documents({}) == 1000


def test_ferretdb_unique_index(mongo: Any) -> None:
    """A unique secondary index is enforced: DuplicateKeyError (11000) on insert_one."""
    coll = mongo.ingest.uniq
    coll.create_index([("key", 1)], unique=True)
    coll.insert_one({"key": "k1"})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"key": "k1"})
    assert info.value.code == 11000
    assert coll.count_documents({}) == 1


def test_ferretdb_write_concern_majority(mongo: Any) -> None:
    """w='majority', j=True is accepted (FerretDB is a single node; it does not reject it),
    and so is a w no single node could satisfy: FerretDB v1.24 ignores write concerns, so
    the connector's durability there rests on FerretDB's own SQLite synchronous=full."""
    coll = mongo.ingest.get_collection(
        "wc", write_concern=WriteConcern(w="majority", j=True, wtimeout=5000)
    )
    result = coll.insert_many([{"_id": i} for i in range(5)], ordered=False)
    assert result.acknowledged
    assert coll.count_documents({}) == 5
    # Also a w that no single node could satisfy: accepted as well (write concern is ignored).
    w3 = mongo.ingest.get_collection("wc", write_concern=WriteConcern(w=3, wtimeout=1000))
    assert w3.insert_one({"_id": "w3"}).acknowledged


def test_ferretdb_has_no_timeseries_collections(mongo: Any) -> None:
    """FerretDB v1.24 answers NotImplemented: why the connector refuses a ``timeseries``
    section at start-up when it detects FerretDB."""
    with pytest.raises(OperationFailure) as info:
        mongo.ingest.create_collection(
            "ts", timeseries={"timeField": "ts", "metaField": "meta", "granularity": "seconds"}
        )
    assert info.value.code == 238  # NotImplemented


def test_ferretdb_unsupported_bson_drops_connection(ferret: MongoWireServer) -> None:
    """A Decimal128 value makes FerretDB v1.24 close the connection (AutoReconnect).

    That is a *transient-looking* error for a poison document, so the connector must not
    write Decimal128 (or NaN, MinKey/MaxKey, JS code) to FerretDB.
    """
    client: Any = pymongo.MongoClient(ferret.uri, retryWrites=False)
    try:
        with pytest.raises(AutoReconnect):
            client.ingest.dec.insert_one({"_id": 1, "amount": Decimal128("1.50")})
        # The server itself survives it.
        assert client.admin.command("ping")["ok"] == 1.0
        client.drop_database("ingest")
    finally:
        client.close()


async def test_ferretdb_async_client(ferret: MongoWireServer) -> None:
    """pymongo.AsyncMongoClient works: insert, duplicate handling, find, aggregate."""
    client: Any = pymongo.AsyncMongoClient(ferret.uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client.ingest_async.events
        await coll.insert_many([{"_id": i, "k": i % 2} for i in range(10)], ordered=False)
        with pytest.raises(BulkWriteError) as info:
            await coll.insert_many([{"_id": 9}, {"_id": 10}], ordered=False)
        assert info.value.details["nInserted"] == 1
        assert info.value.details["writeErrors"][0]["code"] == 11000
        docs = await coll.find({"k": 1}).sort("_id", 1).to_list()
        assert [d["_id"] for d in docs] == [1, 3, 5, 7, 9]
        counts = await (
            await coll.aggregate(
                [{"$group": {"_id": "$k", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
            )
        ).to_list()
        # _id 10 has no "k": it is grouped under None, which sorts first.
        assert counts == [{"_id": None, "n": 1}, {"_id": 0, "n": 5}, {"_id": 1, "n": 5}]
        await client.drop_database("ingest_async")
    finally:
        await client.close()


def test_ferretdb_outage_keeps_data(ferret: MongoWireServer) -> None:
    """stop_server/start_server: operations fail while down; same port and data after."""
    client: Any = pymongo.MongoClient(
        ferret.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
    )
    try:
        coll = client.ingest_outage.docs
        coll.insert_many([{"_id": i} for i in range(100)])
        port = ferret.port

        ferret.stop_server()
        with pytest.raises((ServerSelectionTimeoutError, AutoReconnect)):
            coll.insert_one({"_id": "during-outage"})

        t0 = time.monotonic()
        ferret.start_server()
        print(f"\nFerretDB restart: {time.monotonic() - t0:.2f} s")
        assert ferret.port == port
        assert coll.count_documents({}) == 100  # the same client reconnects by itself
    finally:
        client.drop_database("ingest_outage")
        client.close()


def test_ferretdb_kill_keeps_acknowledged_writes(ferret: MongoWireServer) -> None:
    """SIGKILL right after acknowledged (j=True) writes loses none of them."""
    client: Any = pymongo.MongoClient(ferret.uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client.ingest_kill.get_collection("docs", write_concern=WriteConcern(j=True))
        for i in range(50):
            coll.insert_one({"_id": i})
        ferret.stop_server("kill")
        ferret.start_server()
        assert coll.count_documents({}) == 50
    finally:
        client.drop_database("ingest_kill")
        client.close()


def test_ferretdb_postgresql_backend(pg: PostgresServer) -> None:
    """FerretDB can also run on the throwaway PostgreSQL; duplicate keys behave the same."""
    with MongoWireServer(postgresql_url=pg.dsn) as server:
        assert server.backend == "postgresql"
        client: Any = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000)
        try:
            coll = client.ingest.pg_backed
            with pytest.raises(BulkWriteError) as info:
                coll.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}], ordered=False)
            assert info.value.details["nInserted"] == 2
            assert info.value.details["writeErrors"][0]["code"] == 11000
            assert sorted(d["_id"] for d in coll.find()) == [1, 2]
        finally:
            client.close()


# -- no leftovers -------------------------------------------------------------------------------

_CRASH_SCRIPT = """
import sys, time
from integration.{module} import {cls}
server = {cls}().start()
print(server._proc.pid, {dir_attr}, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("module", "cls", "dir_attr"),
    [
        ("postgres_server", "PostgresServer", "server._tmpdir"),
        ("mongo_server", "MongoWireServer", "server._tmpdir"),
        ("kafka_broker", "KafkaBroker", "server.data_dir"),
    ],
)
def test_no_server_survives_a_killed_session(module: str, cls: str, dir_attr: str) -> None:
    """If the test process is SIGKILLed (no atexit), the watchdog stops the server and cleans up."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = _CRASH_SCRIPT.format(module=module, cls=cls, dir_attr=dir_attr)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        pid_text, tmpdir = proc.stdout.readline().split()
        server_pid = int(pid_text)
        assert Path(tmpdir).is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not _alive(server_pid) and not Path(tmpdir).exists():
            break
        time.sleep(0.1)
    assert not _alive(server_pid), f"{cls} process {server_pid} survived"
    assert not Path(tmpdir).exists(), f"{tmpdir} left behind"


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies do not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

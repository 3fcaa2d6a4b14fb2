"""Workarounds for FerretDB 1.x, a MongoDB-wire server over SQLite or PostgreSQL.

FerretDB is recognised by ``buildInfo.ferretdbVersion``. Where it differs from MongoDB:

* it drops the connection on a NaN or a Decimal128 value, which a driver reports as a
  network error (so a retry would loop forever): ``BsonConverter(ferretdb=...)`` rejects
  such documents before they are sent, naming the field, and ``decimals: decimal128`` is
  refused at start-up;
* it has no time-series collections: a ``timeseries`` section is refused at start-up;
* it stops an ``update`` or ``delete`` command at its first failing op, ordered or not,
  reports that error under index 0 wherever the op was, and says nothing of the ops it
  skipped: ``errors_op_by_op`` sends such a command again one op at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from connector.config import MongoBackendConfig

Op = dict[str, Any]
WriteError = dict[str, Any]


def ferretdb_name(build_info: Mapping[str, Any]) -> str | None:
    """ "FerretDB <version>" when ``buildInfo`` comes from FerretDB, else None."""
    if "ferretdbVersion" in build_info or "ferretdb" in build_info:
        return f"FerretDB {build_info.get('ferretdbVersion', '?')}"
    return None


def ferretdb_problems(config: MongoBackendConfig, ferretdb: str, server: str) -> list[str]:
    """Settings that FerretDB cannot honour, one line each with the fix."""
    problems: list[str] = []
    if config.decimals == "decimal128":
        problems.append(
            f"backend.decimals: {ferretdb} cannot store Decimal128 values (it drops the "
            "connection on them); set decimals: string to store decimals as text"
        )
    for type_name in config.timeseries:
        problems.append(
            f"backend.timeseries.{type_name}: the server ({server}) has no time-series "
            f"collections ({ferretdb} does not implement them); remove backend.timeseries, or "
            "use MongoDB 7.0 or later"
        )
    return problems


async def errors_op_by_op(
    send: Callable[[list[Op]], Awaitable[list[WriteError]]],
    ops: list[Op],
    reported: list[WriteError],
) -> dict[int, WriteError]:
    """The write errors of ``ops`` by position, after one command with them reported some.

    Only answers to single-op commands are trusted (see the module docstring). Every op the
    backend sends is idempotent (a guarded replace of the same offset writes the same
    document, a delete of one copy deletes it once), and errors are rare (replays of older
    offsets), so sending the command's ops again costs little.
    """
    if len(ops) == 1:
        return {0: reported[0]}
    errors: dict[int, WriteError] = {}
    for position, op in enumerate(ops):
        single = await send([op])
        if single:
            errors[position] = single[0]
    return errors

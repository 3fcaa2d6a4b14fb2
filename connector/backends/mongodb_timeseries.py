"""Time-series collections: MongoDB keeps no unique ``_id`` there, so the backend does.

The backend looks a batch's ``_id``s up before inserting and inserts only new ones, but two
group members may still insert the same object at the same time (during a rebalance, a
stale member's in-flight batch). So every document inserted into a time-series collection
carries ``_kafka: {topic, partition, offset, write}``, ``write`` being an ObjectId unique to
that insert, and after inserting the backend reads which of the batch's ``_id``s are stored
more than once and deletes every copy but the one with the lowest
``(topic, partition, offset, write)``. Every writer picks the same survivor, so concurrent
clean-ups delete the same copies and never the survivor: at most one copy remains, and
among different documents under one ``_id`` the earliest record of a partition wins, as
"first write wins" (R9) says.

Deleting such a surplus copy is the only delete the connector ever makes on asymmetric
data (R8): it removes a second copy of an object whose first copy stays. It needs MongoDB
7.0 or later, which deletes by any field in time-series collections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from connector.backends.bson_documents import KAFKA_FIELD
from connector.records import SourceRecord

#: The first server version whose time-series collections delete by any field.
MIN_VERSION = (7, 0)
FIND_CHUNK = 5000

Document = dict[str, Any]


def chunks(items: list[Any], size: int = FIND_CHUNK) -> Iterable[list[Any]]:
    """``items`` in lists of at most ``size`` (bounded ``$in`` filters)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_tag(record: SourceRecord) -> Document:
    """The ``_kafka`` field of one insert: its coordinates and a unique write id."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "write": ObjectId(),
    }


def rank(document: Document) -> tuple[int, str, int, int, str]:
    """Sort key of a copy: lowest first. Untagged copies (written before tags existed, or
    by others) come first: they are kept and cannot be told apart for a delete."""
    tag = document.get(KAFKA_FIELD)
    if not isinstance(tag, dict) or not isinstance(tag.get("write"), ObjectId):
        return (0, "", 0, 0, "")
    return (1, str(tag.get("topic")), int(tag["partition"]), int(tag["offset"]), str(tag["write"]))


def untagged(document: Document) -> Document:
    """The object's document without the backend's ``_kafka`` field."""
    return {k: v for k, v in document.items() if k != KAFKA_FIELD}


def surplus(copies: list[Document]) -> tuple[Document, list[Document]]:
    """The copy to keep and the copies to delete, the same for every writer."""
    ordered = sorted(copies, key=rank)
    return ordered[0], [c for c in ordered[1:] if rank(c)[0] == 1]


def delete_op(copy: Document) -> dict[str, Any]:
    """A delete of exactly this tagged copy."""
    return {
        "q": {"_id": copy["_id"], f"{KAFKA_FIELD}.write": copy[KAFKA_FIELD]["write"]},
        "limit": 0,
    }


async def repeated(
    collection: AsyncCollection[Document], keys: list[Any]
) -> dict[Any, list[Document]]:
    """Every stored copy of those ``keys`` that are stored more than once, by ``_id``."""
    found: list[Any] = []
    for chunk in chunks(keys):
        cursor = await collection.aggregate(
            [
                {"$match": {"_id": {"$in": chunk}}},
                {"$group": {"_id": "$_id", "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
        found += [doc["_id"] async for doc in cursor]
    copies: dict[Any, list[Document]] = defaultdict(list)
    for chunk in chunks(found):
        async for doc in collection.find({"_id": {"$in": chunk}}):
            copies[doc["_id"]].append(doc)
    return copies

"""Release after sync: records leave the topic once the backend has them.

This is Realm's upload queue: a device deletes an object from its queue once the server
confirmed it. For routes with ``release: delete``, after a successful commit the records
below the committed offset are deleted from the topic with Kafka's DeleteRecords, at most
every ``release.interval_ms``. Only offsets that this group's own commit stored are used,
so nothing that is not durably in the backend is ever deleted. Other consumer groups of
the same topic lose the released records; that is the point of the setting.

A compacted topic is refused at start-up: DeleteRecords on it would remove the latest value
of keys that compaction is meant to keep.
"""

from __future__ import annotations

import logging
import time

from connector.config import PipelineConfig
from connector.errors import ConnectorError
from connector.records import TopicPartition
from connector.sources import Source

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 30.0


class Releaser:
    """Deletes the committed records of ``release: delete`` routes, at a bounded rate."""

    def __init__(self, config: PipelineConfig, source: Source) -> None:
        self._config = config
        self._source = source
        self._interval_s = config.release.interval_ms / 1000
        self._routes = [r for r in config.routes if r.release == "delete"]
        self._pending: dict[TopicPartition, int] = {}
        self._released: dict[TopicPartition, int] = {}
        self._last = time.monotonic()
        self._topics: dict[str, bool] = {}  # topic -> released?

    @property
    def enabled(self) -> bool:
        return bool(self._routes)

    async def check(self) -> None:
        """Refuse ``release: delete`` on a compacted topic, before anything is consumed."""
        if not self._routes:
            return
        names = await self._source.check(CHECK_TIMEOUT_S)
        topics = sorted({t for t in names if any(r.matches(t) for r in self._routes)})
        configs = await self._source.topic_configs(topics)
        problems = []
        for topic in topics:
            policy = configs.get(topic, {}).get("cleanup.policy", "delete")
            if "compact" in policy:
                problems.append(
                    f"routes: release: delete on topic {topic!r}, whose cleanup.policy is "
                    f"{policy!r}: deleting records would remove the latest value of keys that "
                    "compaction keeps; use release: keep for this route"
                )
        if problems:
            raise ConnectorError("; ".join(problems))

    def _releases(self, topic: str) -> bool:
        known = self._topics.get(topic)
        if known is None:
            route = self._config.route_for(topic)
            known = self._topics[topic] = route is not None and route.release == "delete"
        return known

    async def committed(self, offsets: dict[TopicPartition, int], *, force: bool = False) -> None:
        """Note what a successful commit stored; delete below it when the interval is up
        (or at once with ``force``, at shutdown)."""
        for tp, offset in offsets.items():
            if self._releases(tp.topic) and offset > self._released.get(tp, 0):
                self._pending[tp] = offset
        if not self._pending:
            return
        if not force and time.monotonic() - self._last < self._interval_s:
            return
        self._last = time.monotonic()
        pending, self._pending = self._pending, {}
        try:
            await self._source.delete_records(pending)
        except Exception as exc:  # released later: the next commit carries a higher offset
            log.warning("release: deleting committed records failed, will retry: %s", exc)
            for tp, offset in pending.items():
                self._pending.setdefault(tp, offset)
            return
        self._released.update(pending)
        log.info(
            "released (deleted from the topic below the committed offset): %s",
            ", ".join(f"{tp}@{off}" for tp, off in sorted(pending.items(), key=str)),
        )

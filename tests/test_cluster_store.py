"""The cluster store waits for a leader of a config topic it has just created."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from connector import cluster
from connector.cluster import KafkaClusterStore


class ConsumerWithoutLeaderYet:
    """Answers the watermark query with ``code`` the first ``failures`` times."""

    def __init__(self, failures: int, code: int) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0

    def get_watermark_offsets(self, _partition: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return 0, 7


def store_with(consumer: ConsumerWithoutLeaderYet) -> KafkaClusterStore:
    store = KafkaClusterStore.__new__(KafkaClusterStore)
    store.config_topic = "data-ingest-c-configs"
    store._consumer = consumer  # type: ignore[assignment]
    return store


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    ],
)
def test_the_end_offset_is_read_once_the_new_topic_has_a_leader(
    code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: None)
    consumer = ConsumerWithoutLeaderYet(3, code)
    assert store_with(consumer)._config_end() == 7
    assert consumer.calls == 4


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: None)
    consumer = ConsumerWithoutLeaderYet(1, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        store_with(consumer)._config_end()
    assert consumer.calls == 1


def test_a_leader_that_never_comes_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(cluster.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: None)
    consumer = ConsumerWithoutLeaderYet(100, KafkaError.NOT_LEADER_FOR_PARTITION)
    with pytest.raises(KafkaException):
        store_with(consumer)._config_end()
    assert consumer.calls == 4

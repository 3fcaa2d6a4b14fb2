"""Every peer of the benchmark, in the order ``bench.py`` runs them, and one installer."""

from __future__ import annotations

import time
from pathlib import Path

from bench.peers import Peer
from bench.peers.benthos import BenthosPeer
from bench.peers.connect import ConnectPeer
from bench.peers.quix import QuixPeer


def all_peers() -> list[Peer]:
    """One instance per contender: two per project (a PostgreSQL and a MongoDB target)."""
    return [
        QuixPeer("postgres"),
        QuixPeer("mongodb"),
        ConnectPeer("mongo-kafka-sink", "mongodb"),
        ConnectPeer("debezium-jdbc", "postgres"),
        BenthosPeer("postgres"),
        BenthosPeer("mongodb"),
    ]


def install_all(cache: Path, *, verbose: bool = True) -> dict[str, float]:
    """Install every peer into ``cache`` (idempotent); seconds spent per peer."""
    took: dict[str, float] = {}
    for peer in all_peers():
        start = time.monotonic()
        peer.install(cache)
        took[peer.name] = round(time.monotonic() - start, 1)
        if verbose:
            print(f"installed {peer.name} ({peer.version}) in {took[peer.name]} s", flush=True)
    return took

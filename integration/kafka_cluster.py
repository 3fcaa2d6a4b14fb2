"""A 3-node Apache Kafka KRaft cluster on loopback ports, for fault tests.

Why: a single broker cannot show what the connector meets in production when a broker dies:
a partition leader vanishes, a new one is elected from the in-sync replicas, producers with
``acks=all`` keep going, and the dead broker comes back on its own data and catches up. Each
node is a `KafkaBroker` in combined mode (broker + controller); the three form one static
3-voter quorum, so the cluster survives the loss of any one node. Created topics default to
replication factor 3 with ``min.insync.replicas=2``.

Usage::

    with KafkaCluster() as cluster:
        cluster.create_topic("events", partitions=3)
        leader = cluster.leader("events", 0)
        cluster.kill(leader)          # SIGKILL
        cluster.start_node(leader)    # same ports, same data
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Self, Unpack

from integration.kafka_broker import (
    KAFKA_VERSION,
    STARTUP_TIMEOUT_S,
    KafkaBroker,
    TopicOptions,
    create_topic,
    new_cluster_id,
    wait_for_topic,
)
from integration.processes import (
    LOOPBACK,
    ManagedServer,
    free_ports,
    register_live,
    unregister_live,
    wait_until,
)

CLUSTER_JVM_OPTS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx384m",
    # Serial GC and C1 only: three JVMs share two cores; tests need no peak throughput.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
"""JVM flags of each node (three share two cores and the memory of a CI machine)."""

MIN_INSYNC_REPLICAS = 2
"""Default ``min.insync.replicas``: an acks=all write survives the loss of any one node."""


class KafkaCluster(ManagedServer):
    """``size`` KRaft nodes (broker+controller each, node ids 1..size) forming one cluster."""

    def __init__(
        self,
        size: int = 3,
        *,
        version: str = KAFKA_VERSION,
        jvm_opts: Sequence[str] = CLUSTER_JVM_OPTS,
        extra_properties: Mapping[str, str | int | bool] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        """Configure (not start) the cluster; ``extra_properties`` go to every node."""
        if size < 3:
            raise ValueError("a fault-tolerant quorum needs at least 3 nodes")
        self.size = size
        self.version = version
        self.jvm_opts = tuple(jvm_opts)
        self.extra_properties = dict(extra_properties or {})
        self.startup_timeout = startup_timeout
        self.nodes: dict[int, KafkaBroker] = {}
        """The nodes by node id (empty before `start`)."""
        self._admin: Any = None

    @property
    def bootstrap_servers(self) -> str:
        """Every node's PLAINTEXT listener, comma-separated (valid once started)."""
        if not self.nodes:
            raise RuntimeError("cluster not started")
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def start(self) -> Self:
        """Format and launch every node, then wait until each serves metadata listing itself."""
        if self.nodes:
            raise RuntimeError("cluster already started")
        ports = free_ports(2 * self.size)
        client_ports, controller_ports = ports[: self.size], ports[self.size :]
        node_ids = range(1, self.size + 1)
        voters = ",".join(
            f"{n}@{LOOPBACK}:{p}" for n, p in zip(node_ids, controller_ports, strict=True)
        )
        cluster_id = new_cluster_id()
        min_isr = MIN_INSYNC_REPLICAS
        defaults: dict[str, str | int | bool] = {
            "default.replication.factor": self.size,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": self.size,
            "transaction.state.log.replication.factor": self.size,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": self.size,
            "share.coordinator.state.topic.min.isr": min_isr,
            "num.network.threads": 2,
            "num.io.threads": 2,
            **self.extra_properties,
        }
        for node_id, port, controller_port in zip(
            node_ids, client_ports, controller_ports, strict=True
        ):
            self.nodes[node_id] = KafkaBroker(
                version=self.version,
                jvm_opts=self.jvm_opts,
                extra_properties=defaults,
                startup_timeout=self.startup_timeout,
                node_id=node_id,
                port=port,
                controller_port=controller_port,
                quorum_voters=voters,
                cluster_id=cluster_id,
            )
        try:
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        # Registered after its nodes, so that at exit it stops them before they would be
        # stopped one by one, each with a clean shutdown.
        register_live(self)
        return self

    def stop(self) -> None:
        """SIGKILL every node and remove its data.

        Not a clean shutdown: the data goes anyway, and nodes shutting down together wait for
        a controller quorum that is going away (up to the stop timeout, 30 s, each).
        """
        nodes, self.nodes = list(self.nodes.values()), {}
        self._admin = None
        unregister_live(self)
        for node in nodes:
            with contextlib.suppress(Exception):  # stop the others whatever happens to one
                node.stop(graceful=False)

    def node(self, node_id: int) -> KafkaBroker:
        """The node with this id."""
        return self.nodes[node_id]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash); its data dir and ports stay for `start_node`."""
        self.node(node_id).kill()

    def start_node(self, node_id: int) -> None:
        """Start a stopped node again on its data and ports; wait until it is registered."""
        self.node(node_id).start()

    def create_topic(self, name: str, partitions: int = 3, **options: Unpack[TopicOptions]) -> None:
        """Create a topic (replication factor = cluster size by default).

        Waits until every running node knows a leader per partition: nodes learn new topics
        from the metadata log at their own pace, and tests may ask any of them.
        """
        options.setdefault("replication_factor", self.size)
        create_topic(self.bootstrap_servers, name, partitions, **options)
        for node in self.nodes.values():
            if node.is_running:
                wait_for_topic(node.bootstrap_servers, name, partitions)

    def partition(self, topic: str, partition: int, timeout: float = 10.0) -> Any:
        """The partition's metadata (``leader``, ``replicas``, ``isrs``) as a live node sees it."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        md = self._admin.list_topics(topic=topic, timeout=timeout)
        tmd = md.topics[topic]
        if tmd.error is not None:
            raise RuntimeError(f"metadata of {topic!r}: {tmd.error}")
        return tmd.partitions[partition]

    def leader(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        """Node id of the partition's leader (-1 while it has none)."""
        return int(self.partition(topic, partition, timeout).leader)

    def wait_for_leader(
        self, topic: str, partition: int, *, not_on: int | None = None, timeout: float = 60.0
    ) -> int:
        """Wait until the partition has a leader (other than node ``not_on``); return its id."""
        from confluent_kafka import KafkaException

        found: list[int] = []

        def elected() -> bool:
            try:
                leader = self.leader(topic, partition, timeout=5.0)
            except KafkaException:  # e.g. the node asked was the one just killed
                return False
            found.append(leader)
            return leader >= 0 and leader != not_on

        wait_until(
            elected,
            timeout,
            lambda: (
                f"{topic}[{partition}]: no leader other than {not_on} after {timeout} s "
                f"(last seen: {found[-1:]})"
            ),
            interval=0.2,
        )
        return found[-1]

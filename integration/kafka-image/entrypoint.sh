#!/bin/sh
# One KRaft node (broker and controller) for the tests: it listens on the loopback ports
# KAFKA_PORT and KAFKA_CONTROLLER_PORT of the network it runs in (the tests run it with the
# host's network, so clients reach it at 127.0.0.1:KAFKA_PORT), with the settings of
# integration/kafka_broker.py that the tests rely on (no topic auto-creation, RF 1, no
# initial rebalance delay). Data lives in /tmp and goes with the container.
set -eu
port="${KAFKA_PORT:?set KAFKA_PORT}"
cport="${KAFKA_CONTROLLER_PORT:?set KAFKA_CONTROLLER_PORT}"
dir=/tmp/kafka
mkdir -p "$dir"
cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
PROPS
cat > "$dir/log4j2.xml" <<'XML'
<Configuration status="WARN">
  <Appenders><Console name="stdout" target="SYSTEM_OUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
XML
kafka() { java -Dlog4j2.configurationFile="$dir/log4j2.xml" -cp '/opt/kafka/libs/*' "$@"; }
cluster_id="$(kafka kafka.tools.StorageTool random-uuid)"
kafka kafka.tools.StorageTool format --cluster-id "$cluster_id" \
    --config "$dir/server.properties" --ignore-formatted >/dev/null
exec java -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.xml" \
    -cp '/opt/kafka/libs/*' kafka.Kafka "$dir/server.properties"

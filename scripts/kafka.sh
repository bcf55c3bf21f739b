#!/usr/bin/env bash
# A single-node Apache Kafka 4.4 broker in KRaft mode on loopback, for the Kafka tests
# (issue 4). Its classpath comes from Maven Central through scripts/kafka/pom.xml.
#   scripts/kafka.sh install          fetch the jars into .cache/kafka/libs
#   scripts/kafka.sh start [PORT]     format a fresh log folder and start (default 19092)
#   scripts/kafka.sh stop             stop the broker started by `start`
set -euo pipefail
cd "$(dirname "$0")/.."
home=.cache/kafka
libs="$home/libs"
port=${2:-19092}
controller=$((port + 1))

install() {
  if [ ! -f "$libs/.complete" ]; then
    command -v mvn >/dev/null || { echo "mvn not found: install Maven (Debian: maven)" >&2; exit 1; }
    mvn -q -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$PWD/$libs"
    touch "$libs/.complete"
  fi
}

start() {
  install
  local data="$home/run-$port"
  rm -rf "$data" && mkdir -p "$data/logs"
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$PWD/$data/logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  local cluster
  cluster=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)
  java -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster" -c "$data/server.properties" >/dev/null
  nohup java -Xmx1g -cp "$libs/*" kafka.Kafka "$data/server.properties" >"$data/broker.log" 2>&1 &
  echo $! >"$data/pid"
  for _ in $(seq 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
      echo "kafka listening on 127.0.0.1:$port (pid $(cat "$data/pid"), log $data/broker.log)"
      return 0
    fi
    sleep 0.2
  done
  echo "kafka did not start within 60 s; see $data/broker.log" >&2
  kill "$(cat "$data/pid")" 2>/dev/null || true
  exit 1
}

stop() {
  local pidfile="$home/run-$port/pid"
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: scripts/kafka.sh install|start [PORT]|stop [PORT]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Install and run the real backing services that pkgstream's acceptance tests
# and local development use (see shared DESIGN.md, "Real components").
#
#   scripts/services.sh {install|start|stop|restart|status|check|wipe} [SERVICE...] [--wipe]
#
# SERVICE defaults to every known service (today: kafka). Each service is a
# set of functions named <service>_<action>; adding opensearch or prometheus
# means writing opensearch_install/_start/_stop/_status/... and appending the
# name to ALL_SERVICES.
#
# Actions:
#   install   fetch the service into the cache (no-op when already there)
#   start     install if needed, start in the background, wait until it answers
#             (already running: says so, exit 0)
#   stop      clean stop (SIGTERM, then SIGKILL after a timeout); idempotent.
#             --wipe also deletes the service's data dir.
#   restart   stop + start
#   status    prints running/stopped and the address; exit 0 if all requested
#             services run, 3 otherwise
#   check     end-to-end smoke test against the running service
#             (kafka: create a topic, produce a message, consume it back)
#   wipe      stop, then delete the service's data dir
#
# Environment:
#   PKGSTREAM_HOME          cache + runtime root (default ~/.cache/pkgstream)
#   PKGSTREAM_RUN_DIR       runtime root only (default $PKGSTREAM_HOME/run): a
#                           second broker for a test uses its own run dir and
#                           ports and shares the installed jars
#   KAFKA_VERSION           org.apache.kafka:kafka_2.13 version (default 4.1.1)
#   KAFKA_LOG4J_VERSION     log4j2 version pinned for api/core/slf4j binding
#                           (default 2.24.3, the one Kafka 4.1.1 is built with)
#   KAFKA_PORT              broker listener port (default 9092)
#   KAFKA_CONTROLLER_PORT   KRaft controller listener port (default 9093)
#   KAFKA_HEAP_OPTS         JVM heap flags (default "-Xms512m -Xmx512m")
#   KAFKA_START_TIMEOUT     seconds to wait for the broker (default 90)
#   KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM (default 30)
#   JAVA                    java binary (default $JAVA_HOME/bin/java or java)
#
# Everything is printed on stderr, prefixed with [services]. No prompts.
set -euo pipefail

ALL_SERVICES=(kafka)

PKGSTREAM_HOME="${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}"
RUN_DIR="${PKGSTREAM_RUN_DIR:-$PKGSTREAM_HOME/run}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# ---------------------------------------------------------------- helpers ---

java_bin() {
  if [[ -n "${JAVA:-}" ]]; then
    printf '%s' "$JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s' "$JAVA_HOME/bin/java"
  else
    printf 'java'
  fi
}

require_java() {
  local java major
  java="$(java_bin)"
  command -v "$java" >/dev/null 2>&1 || die "java not found ('$java'); install a JDK 17+ (e.g. apt-get install -y openjdk-17-jre-headless)"
  major="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1)"
  [[ -n "$major" ]] || die "could not determine the version of '$java'"
  (( major >= ${1:-17} )) || die "'$java' is Java $major; ${1:-17}+ is needed"
}

require_mvn() {
  command -v mvn >/dev/null 2>&1 || die "mvn not found; install Maven (e.g. apt-get install -y maven)"
}

# tcp_open HOST PORT: true when something accepts connections there.
tcp_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# pid_alive PIDFILE PATTERN: prints the pid and succeeds when the process in
# PIDFILE is alive and its command line contains PATTERN (guards pid reuse).
pid_alive() {
  local pidfile="$1" pattern="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  printf '%s' "$pid"
}

# stop_pid NAME PIDFILE PATTERN TIMEOUT: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name="$1" pidfile="$2" pattern="$3" timeout="$4" pid i
  if ! pid="$(pid_alive "$pidfile" "$pattern")"; then
    rm -f "$pidfile"
    log "$name: not running"
    return 0
  fi
  log "$name: stopping (pid $pid, SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
  log "$name: stopped"
}

# maven_fetch DIR POMBODY: resolves the dependencies declared in POMBODY (the
# <dependencyManagement>/<dependencies> part of a pom) into DIR/lib.
maven_fetch() {
  local dir="$1" body="$2" tmp
  require_mvn
  mkdir -p "$dir"
  tmp="$dir/lib.partial"
  rm -rf "$tmp"
  cat >"$dir/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by pkgstream scripts/services.sh; only used to fetch jars -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pkgstream</groupId>
  <artifactId>services-fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
$body
</project>
EOF
  if ! mvn -B -q -Dstyle.color=never -f "$dir/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" \
      >"$dir/mvn.log" 2>&1; then
    tail -n 40 "$dir/mvn.log" >&2 || true
    die "Maven could not resolve the jars for $dir (full log: $dir/mvn.log, pom: $dir/pom.xml)"
  fi
  rm -rf "${dir:?}/lib"
  mv "$tmp" "$dir/lib"
}

# ------------------------------------------------------------------ kafka ---

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.24.3}"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HOME_DIR="$PKGSTREAM_HOME/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_HOME_DIR/lib"
KAFKA_RUN="$RUN_DIR/kafka"
KAFKA_DATA="$KAFKA_RUN/data"
KAFKA_PID="$KAFKA_RUN/kafka.pid"
KAFKA_LOG="$KAFKA_RUN/kafka.log"
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
KAFKA_MAIN=kafka.Kafka

# What install resolves; written next to lib/ so a changed recipe reinstalls.
kafka_stamp() {
  printf 'kafka_2.13=%s kafka-tools=%s log4j=%s recipe=1\n' \
    "$KAFKA_VERSION" "$KAFKA_VERSION" "$KAFKA_LOG4J_VERSION"
}

kafka_installed() {
  [[ -f "$KAFKA_LIB/.installed" ]] &&
    [[ "$(cat "$KAFKA_LIB/.installed")" == "$(kafka_stamp)" ]] &&
    compgen -G "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
}

kafka_install() {
  if kafka_installed; then
    log "kafka: $KAFKA_VERSION already installed in $KAFKA_LIB"
    return 0
  fi
  require_java 17
  log "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION (+ kafka-tools, log4j $KAFKA_LOG4J_VERSION) with Maven ..."
  local t0=$SECONDS
  # Kafka 4.x logs through slf4j 1.7 -> log4j2; its published POM leaves the
  # slf4j binding out (the tarball adds log4j-slf4j-impl), so we add it here
  # and pin the whole log4j2 family to one version.
  # kafka-tools gives TopicCommand / console producer+consumer for readiness
  # and smoke checks; its Connect runtime (jetty, jersey) is not needed.
  maven_fetch "$KAFKA_HOME_DIR" "$(cat <<EOF
  <dependencyManagement>
    <dependencies>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
    </dependency>
  </dependencies>
EOF
)"
  compgen -G "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null ||
    die "kafka: Maven finished but $KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar is missing"
  kafka_stamp >"$KAFKA_LIB/.installed"
  log "kafka: installed $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIB" | cut -f1)) in $((SECONDS - t0))s -> $KAFKA_LIB"
}

# Runs a Kafka class (tool) on the broker's classpath, logging WARN+ to stderr.
kafka_java() {
  "$(java_bin)" -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_RUN/log4j2-tools.xml" \
    -cp "$KAFKA_LIB/*" "$@"
}

kafka_write_config() {
  mkdir -p "$KAFKA_RUN" "$KAFKA_DATA"
  cat >"$KAFKA_RUN/server.properties" <<EOF
# generated by pkgstream scripts/services.sh -- rewritten on every start
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# dynamic KRaft quorum (KIP-853); storage is formatted with --standalone
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
log.dirs=$KAFKA_DATA
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
  cat >"$KAFKA_RUN/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by pkgstream scripts/services.sh; log4j's own shutdown hook is
     off so the broker's shutdown sequence still gets logged -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="file" fileName="$KAFKA_LOG" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
  cat >"$KAFKA_RUN/log4j2-tools.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by pkgstream scripts/services.sh: Kafka command-line tools -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stderr"/></Root>
  </Loggers>
</Configuration>
EOF
}

kafka_format_storage() {
  [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
  local cluster_id
  cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid)" ||
    die "kafka: StorageTool random-uuid failed"
  log "kafka: formatting $KAFKA_DATA (cluster id $cluster_id)"
  if ! kafka_java kafka.tools.StorageTool format --standalone \
      -t "$cluster_id" -c "$KAFKA_RUN/server.properties" \
      >"$KAFKA_RUN/format.log" 2>&1; then
    cat "$KAFKA_RUN/format.log" >&2
    die "kafka: formatting the storage in $KAFKA_DATA failed"
  fi
}

kafka_start() {
  local pid
  if pid="$(pid_alive "$KAFKA_PID" "$KAFKA_MAIN")"; then
    log "kafka: already running (pid $pid) on $KAFKA_BOOTSTRAP"
    return 0
  fi
  rm -f "$KAFKA_PID"
  kafka_install
  require_java 17
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
      die "kafka: invalid port '$port' (KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
    ! tcp_open "$KAFKA_HOST" "$port" ||
      die "kafka: port $KAFKA_HOST:$port is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
  done
  kafka_write_config
  kafka_format_storage

  log "kafka: starting $KAFKA_VERSION on $KAFKA_BOOTSTRAP (log: $KAFKA_LOG)"
  # one log per run: the previous one is kept as kafka.log.1
  [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
  local t0=$SECONDS
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
  nohup "$(java_bin)" $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_RUN/log4j2.xml" \
    -Dkafka.logs.dir="$KAFKA_RUN" \
    -cp "$KAFKA_LIB/*" "$KAFKA_MAIN" "$KAFKA_RUN/server.properties" \
    </dev/null >"$KAFKA_RUN/kafka.out" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_PID"

  local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) why=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the broker process exited"
      break
    fi
    if tcp_open "$KAFKA_HOST" "$KAFKA_PORT" &&
        kafka_java org.apache.kafka.tools.TopicCommand \
          --bootstrap-server "$KAFKA_BOOTSTRAP" --list >/dev/null 2>"$KAFKA_RUN/ready-check.err"; then
      log "kafka: ready on $KAFKA_BOOTSTRAP (pid $pid) after $((SECONDS - t0))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="it did not answer within ${KAFKA_START_TIMEOUT}s"
      break
    fi
    sleep 1
  done
  log "kafka: failed to start: $why"
  if grep -qE '^\[[^]]*\] (ERROR|FATAL) ' "$KAFKA_LOG" 2>/dev/null; then
    log "---- first errors in $KAFKA_LOG ----"
    grep -A2 -E '^\[[^]]*\] (ERROR|FATAL) ' "$KAFKA_LOG" | head -n 24 >&2 || true
  fi
  log "---- tail of $KAFKA_LOG ----"
  tail -n 30 "$KAFKA_LOG" >&2 2>/dev/null || true
  log "---- tail of $KAFKA_RUN/kafka.out ----"
  tail -n 20 "$KAFKA_RUN/kafka.out" >&2 2>/dev/null || true
  if [[ -s "$KAFKA_RUN/ready-check.err" ]]; then
    log "---- last readiness check ----"
    tail -n 10 "$KAFKA_RUN/ready-check.err" >&2 || true
  fi
  stop_pid kafka "$KAFKA_PID" "$KAFKA_MAIN" 10 || true
  exit 1
}

kafka_stop() {
  stop_pid kafka "$KAFKA_PID" "$KAFKA_MAIN" "$KAFKA_STOP_TIMEOUT"
  if ((WIPE)); then
    log "kafka: wiping $KAFKA_DATA"
    rm -rf "$KAFKA_DATA"
  fi
}

kafka_wipe() {
  WIPE=1 kafka_stop
}

kafka_status() {
  local pid
  if pid="$(pid_alive "$KAFKA_PID" "$KAFKA_MAIN")"; then
    log "kafka: running (pid $pid), bootstrap $KAFKA_BOOTSTRAP"
    return 0
  fi
  log "kafka: stopped (bootstrap would be $KAFKA_BOOTSTRAP)"
  return 3
}

kafka_check() {
  kafka_status >/dev/null 2>&1 || die "kafka: not running; run '$0 start kafka' first"
  local topic msg out
  topic="pkgstream-smoke-$(date +%s)-$$"
  msg="hello-$topic"
  log "kafka: check: create topic $topic, produce one message, consume it back, delete the topic"
  kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --create --topic "$topic" --partitions 1 --replication-factor 1 >/dev/null ||
    die "kafka: check: could not create topic $topic"
  printf '%s\n' "$msg" | kafka_java org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" --producer-property acks=all ||
    die "kafka: check: producing to $topic failed"
  out="$(kafka_java org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" --from-beginning \
    --max-messages 1 --timeout-ms 30000 2>/dev/null || true)"
  kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --delete --topic "$topic" >/dev/null || log "kafka: check: could not delete topic $topic"
  [[ "$out" == "$msg" ]] ||
    die "kafka: check: expected to read back '$msg' from $topic, got '$out'"
  log "kafka: check: OK (produced and consumed '$msg')"
}

# ------------------------------------------------------------------- main ---

ACTION="${1:-}"
[[ -n "$ACTION" ]] || { usage; exit 2; }
shift
SERVICES=()
WIPE=0
for arg in "$@"; do
  case "$arg" in
    --wipe) WIPE=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$arg'" ;;
    *)
      known=0
      for s in "${ALL_SERVICES[@]}"; do [[ "$s" == "$arg" ]] && known=1; done
      ((known)) || die "unknown service '$arg' (known: ${ALL_SERVICES[*]})"
      SERVICES+=("$arg")
      ;;
  esac
done
((${#SERVICES[@]})) || SERVICES=("${ALL_SERVICES[@]}")

# One action at a time per PKGSTREAM_HOME: tests may call this concurrently.
mkdir -p "$RUN_DIR"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$RUN_DIR/.services.lock"
  flock -w 600 9 || die "timed out waiting for another services.sh run (lock $RUN_DIR/.services.lock)"
fi

# reversed list, for stopping in the opposite order of starting
REVERSED=()
for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do REVERSED+=("${SERVICES[i]}"); done

case "$ACTION" in
  install|start|check)
    for s in "${SERVICES[@]}"; do "${s}_${ACTION}"; done
    ;;
  stop|wipe)
    for s in "${REVERSED[@]}"; do "${s}_${ACTION}"; done
    ;;
  restart)
    for s in "${REVERSED[@]}"; do "${s}_stop"; done
    for s in "${SERVICES[@]}"; do "${s}_start"; done
    ;;
  status)
    rc=0
    for s in "${SERVICES[@]}"; do "${s}_status" || rc=3; done
    exit "$rc"
    ;;
  -h|--help|help) usage ;;
  *) die "unknown action '$ACTION' (use: install|start|stop|restart|status|check|wipe; --help for more)" ;;
esac

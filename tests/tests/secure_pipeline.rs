//! The whole pipeline end to end with every connection secured, nothing
//! mocked: the run of the plaintext acceptance test (`pipeline_e2e.rs`,
//! [`pkgstream_tests::fleet`]) — four hosts whose real dnf and rpm
//! changes go through the hooks into each host's spool — wired as in
//! production:
//! - `pkgstream-emit flush` (the hooks' background flushes too) over mTLS
//!   as the host principal (`scripts/services.sh`'s kafka-secure, port
//!   9195: the host may only write the raw topics);
//! - the router and both sinks over SASL_SSL with SCRAM-SHA-512 (9194),
//!   each as its own principal, passwords from files;
//! - the search sink into the secured OpenSearch (9250) as
//!   `pkgstream-sink` (its role covers `pkgstream*` indices only), the
//!   metrics sink into the secured Prometheus (9098) with basic auth over
//!   TLS;
//! - `history`, `changes`, `drift` as the read-only `pkgstream-query`
//!   engine user and `replay` as the `pkgstream-query` Kafka principal.
//!
//! It must give exactly the figures of the plaintext test
//! ([`fleet::EXPECTED`]), checked by the same assertions.
//!
//! Needs rpmbuild, createrepo_c and dnf (scripts/bootstrap.sh) and
//! `scripts/services.sh start kafka-secure opensearch-secure
//! prometheus-secure` (scripts/test.sh starts them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pkgstream_tests::fleet::{self, Wiring};
use pkgstream_tests::secure;
use pkgstream_tests::secure_kafka::{override_vars, SecureKafka};

fn owned(v: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    v.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[test]
fn the_whole_pipeline_over_mtls_sasl_ssl_and_tls_gives_the_plaintext_figures() {
    let k = SecureKafka::get();
    let (engine, prom) = secure::init();
    let router = k.router_env("e2e");
    let sinks = k.sink_env(&router, "e2e");
    // The engine's roles cover the `pkgstream*` indices.
    let prefix = format!("pkgstream-{}", sinks.prefix);
    let mut sinks = sinks.with_prefix(&prefix);
    let mut with = owned(engine.basic_vars("pkgstream-sink"));
    with.extend(owned(prom.vars()));
    override_vars(&mut sinks.vars, with);
    let mut cli_env = k.central_vars("pkgstream-query");
    cli_env.extend(owned(engine.basic_vars("pkgstream-query")));
    let figures = fleet::run(Wiring {
        brokers: k.sasl.clone(),
        router,
        sinks,
        host_kafka: k.host_vars("PKGSTREAM_EMIT"),
        cli_env,
    });
    assert_eq!(figures, fleet::EXPECTED);
}

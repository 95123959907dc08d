//! The whole pipeline end to end over plaintext, nothing mocked: four
//! simulated hosts whose real dnf and rpm changes go hooks → spool →
//! `pkgstream-emit flush` → Kafka → `pkgstream router` → both sinks →
//! OpenSearch and Prometheus → `history`, `changes`, `drift`, `replay`.
//! The run and everything it asserts is [`pkgstream_tests::fleet`], shared
//! with the secured twin of this test (`secure_pipeline.rs`): both must
//! give [`fleet::EXPECTED`].
//!
//! Needs rpmbuild, createrepo_c and dnf (scripts/bootstrap.sh) and the
//! Kafka, OpenSearch and Prometheus of `scripts/services.sh start`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pkgstream_tests::fleet::{self, Wiring};
use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::RouterEnv;
use pkgstream_tests::secure_kafka::override_vars;
use pkgstream_tests::sinks::{engine_url, SinkEnv};

#[test]
fn dnf_and_rogue_rpm_changes_on_four_hosts_reach_search_and_prometheus_exactly_once() {
    let brokers = kafka_brokers();
    let router = RouterEnv::new(&brokers, "e2e");
    let mut sinks = SinkEnv::new(&brokers, "e2e");
    override_vars(
        &mut sinks.vars,
        vec![(
            "PKGSTREAM__TOPICS__CHANGES_ENRICHED".into(),
            router.enriched.clone(),
        )],
    );
    let cli_env = vec![
        ("PKGSTREAM__KAFKA__BROKERS".into(), brokers.clone()),
        ("PKGSTREAM__SEARCH_SINK__URL".into(), engine_url()),
    ];
    let figures = fleet::run(Wiring {
        brokers,
        router,
        sinks,
        host_kafka: Vec::new(),
        cli_env,
    });
    assert_eq!(figures, fleet::EXPECTED);
}

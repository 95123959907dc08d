//! The search engine stopped mid-stream (an OpenSearch of this test's own,
//! stopped and started again by scripts/services.sh like the shared one):
//! the sink waits, keeps its memory bounded while the backlog grows in
//! Kafka, and resumes with nothing lost and nothing twice. Its own test
//! binary: its engine is named for the whole process ([`use_engine`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pkgstream_tests::sinks::*;
use pkgstream_tests::{kafka_brokers, PrivateEngine};

const LIMIT: Duration = Duration::from_secs(600);

/// Starts the engine again even if the test fails half-way (before its
/// drop stops it for good).
struct Restart<'a>(&'a PrivateEngine);
impl Drop for Restart<'_> {
    fn drop(&mut self) {
        self.0.start();
    }
}

#[test]
fn engine_down_for_a_while_nothing_lost_memory_bounded() {
    let engine = PrivateEngine::new();
    engine.start();
    use_engine(&engine.url());
    let env = SinkEnv::new(&kafka_brokers(), "sink-down");
    let sc = scenario(&env.prefix, 1000, 100, 50, 10);
    let records = sc.records();
    let (first, rest) = records.split_at(20_000);
    env.produce(first);
    let sink = env.start("search", &[]);
    wait_for("the first events indexed", LIMIT, || {
        count(&env.changes()) >= 5_000
    });

    let restart = Restart(&engine);
    engine.stop();
    env.produce(rest);
    let backlog_mib = rest.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() >> 20;
    wait_for("the sink to notice", LIMIT, || {
        sink.metric("pkgstream_search_sink_engine_up") == 0.0
    });
    std::thread::sleep(Duration::from_secs(20));
    assert!(sink.metric("pkgstream_search_sink_bulk_requests_total{outcome=\"failed\"}") >= 1.0);
    let rss_down = sink.peak_rss_kib();
    drop(restart);

    wait_count(&env.changes(), sc.changes.len() as u64, LIMIT);
    wait_state(&env.packages(), &sc.expected_state(), LIMIT);
    assert_eq!(count(&env.hosts()), 1000);
    let rss_end = sink.peak_rss_kib();
    // Kafka's prefetch (32 MiB), the lanes' queues and one batch per lane
    // bound it; the backlog waits in Kafka, not in the sink.
    assert!(rss_end < 256 * 1024, "peak RSS {rss_end} KiB");
    assert!(sink.stop().success());
    println!(
        "engine down: {} changes, {} while the engine was down ({backlog_mib} MiB); peak RSS {} MiB while down, {} MiB overall; nothing lost, nothing twice",
        sc.changes.len(),
        rest.len(),
        rss_down / 1024,
        rss_end / 1024
    );
}

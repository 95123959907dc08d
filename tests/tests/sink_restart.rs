//! A search sink killed with `kill -9` and started again resumes indexing
//! at once (static group membership: the restarted instance replaces its
//! old member instead of waiting the session timeout out), against real
//! Kafka and OpenSearch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::free_port;
use pkgstream_tests::sinks::*;

const LIMIT: Duration = Duration::from_secs(120);

/// Well under the 30 s a new dynamic member waited for the dead one.
const RESUME_BOUND: Duration = Duration::from_secs(12);

#[test]
fn a_sink_restarted_after_kill_9_resumes_indexing_within_seconds() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-restart");
    let sc = scenario(&env.prefix, 20, 10, 10, 0);
    let records = sc.records();
    let (first, rest) = records.split_at(100);
    env.produce(first);
    // The same configuration both times, as a restarted unit has: the
    // default instance id (`<hostname>-<port>`) is the same.
    let port = free_port();
    let listen = [(
        "PKGSTREAM__SEARCH_SINK__METRICS_LISTEN",
        format!("127.0.0.1:{port}"),
    )];
    let mut sink = env.start("search", &listen);
    sink.port = port;
    wait_count(&env.changes(), 100, LIMIT);
    sink.child.0.kill().unwrap();
    sink.child.0.wait().unwrap();

    let restarted = Instant::now();
    let mut sink = env.start("search", &listen);
    sink.port = port;
    env.produce(rest);
    wait_for("the 200 changes after the restart", LIMIT, || {
        count(&env.changes()) == 200
    });
    let resumed = restarted.elapsed();
    assert!(
        resumed < RESUME_BOUND,
        "indexing resumed {:.1} s after the restart (bound {RESUME_BOUND:?})",
        resumed.as_secs_f64()
    );
    wait_state(&env.packages(), &sc.expected_state(), LIMIT);
    assert!(sink.stop().success());
    println!(
        "restart after kill -9: indexing resumed {:.1} s after the new process started",
        resumed.as_secs_f64()
    );
}

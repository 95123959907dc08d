//! Poison that used to stop the search sink for good, against real Kafka
//! and OpenSearch: an event whose package-state `_id` is longer than the
//! engine's 512 bytes (the whole `_bulk` answered 400), a bulk a gateway
//! refuses as too large (413, split down to the one event that is too large
//! alone), and an empty inventory snapshot (which used to delete every
//! package document of its host). Each time: exactly the poison in the DLQ
//! with its reason, exactly the good documents in the engine, and the sink
//! still running and indexing what comes after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_schemas::{snapshot_id, Encoder, EnrichedSnapshot, EventId, InventorySnapshot};
use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::read_all;
use pkgstream_tests::sinks::*;

const LIMIT: Duration = Duration::from_secs(120);

/// Polls `f` like `wait_for`, but fails at once if the sink exited.
fn wait_alive(sink: &mut SinkProcess, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    loop {
        if let Some(status) = sink.child.0.try_wait().unwrap() {
            panic!("the sink exited ({status}) while waiting for {what}");
        }
        if f() {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn encode_change(c: &pkgstream_schemas::EnrichedChange<'_>) -> (Vec<u8>, Vec<u8>) {
    let mut v = Vec::new();
    Encoder::new().encode_enriched_change(c, &mut v).unwrap();
    (c.host.machine_id.as_bytes().to_vec(), v)
}

#[test]
fn an_id_longer_than_512_bytes_goes_to_the_dlq_and_the_rest_flows() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-longid");
    let sc = scenario(&env.prefix, 10, 20, 10, 0);
    let mut records = sc.records();
    // A package name of 100 KB: the package document's `_id`
    // (`<machine_id>/<name>.<arch>`) is far over the engine's 512 bytes.
    let mut poison = sc.changes[50].clone();
    poison.package.name = "p".repeat(100_000).into();
    poison.replaced = None;
    poison.event_id = EventId([0xcc; 16]);
    let (key, bytes) = encode_change(&poison);
    records.insert(100, (key, bytes.clone()));
    let (first, rest) = records.split_at(150);
    env.produce(first);
    let mut sink = env.start("search", &[]);
    // 149 good changes among the first 150 records.
    wait_alive(&mut sink, "149 history documents", || {
        count(&env.changes()) == 149
    });
    let dlq = read_all(&env.brokers, &env.dlq, 1, Duration::from_secs(3), LIMIT);
    assert_eq!(dlq.len(), 1, "exactly the poison in the DLQ");
    assert_eq!(dlq[0].value, bytes, "the original bytes");
    assert_eq!(dlq[0].headers["pkgstream.error.code"], "index_rejected");
    let reason = &dlq[0].headers["pkgstream.error.reason"];
    assert!(reason.contains("_id") && reason.contains("512"), "{reason}");
    assert!(reason.len() < 4096, "reason of {} bytes", reason.len());
    // Later events flow: the sink is still running and consuming.
    env.produce(rest);
    wait_alive(&mut sink, "200 history documents", || {
        count(&env.changes()) == 200
    });
    wait_state(&env.packages(), &sc.expected_state(), LIMIT);
    assert_eq!(
        sink.metric("pkgstream_search_sink_events_total{outcome=\"dlq\"}"),
        1.0
    );
    assert_eq!(
        sink.metric("pkgstream_search_sink_events_total{outcome=\"indexed\"}"),
        200.0
    );
    assert!(sink.stop().success());
    println!("long _id: 200 good changes indexed, the poison in the DLQ: {reason}");
}

#[test]
fn a_bulk_too_large_for_the_gateway_is_split_and_only_the_oversized_event_is_dead_lettered() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-413");
    // A gateway in front of the engine refuses bodies over 64 KiB with 413
    // (an nginx with client_max_body_size 64k; OpenSearch answers the same,
    // empty body, above http.max_content_length, which cannot be lowered
    // on the shared engine at run time).
    const MAX_BODY: usize = 64 << 10;
    let gateway = GatewayProxy::start(
        &engine_url(),
        Arc::new(|method: &str, path: &str, len: usize| {
            (method == "POST" && path.starts_with("/_bulk") && len > MAX_BODY)
                .then(|| (413, Vec::new()))
        }),
    );
    let mut sc = scenario(&env.prefix, 10, 20, 10, 0);
    let mut records = sc.records();
    // One change whose history document alone is larger than the gateway
    // accepts (a 100 KB command line). Its package-state item is small
    // and the same as change 60's, so the state does not depend on it.
    let mut big = sc.changes[60].clone();
    big.transaction.command_line = Some("x".repeat(100_000).into());
    big.event_id = EventId([0xdd; 16]);
    let (key, bytes) = encode_change(&big);
    records.insert(61, (key, bytes.clone()));
    sc.changes.insert(61, big);
    env.produce(&records);
    let mut sink = env.start(
        "search",
        &[("PKGSTREAM__SEARCH_SINK__URL", gateway.url.clone())],
    );
    wait_alive(&mut sink, "200 history documents", || {
        count(&env.changes()) == 200
    });
    let dlq = read_all(&env.brokers, &env.dlq, 1, Duration::from_secs(3), LIMIT);
    assert_eq!(dlq.len(), 1, "exactly the oversized event in the DLQ");
    assert_eq!(dlq[0].value, bytes);
    assert_eq!(dlq[0].headers["pkgstream.error.code"], "index_rejected");
    let reason = &dlq[0].headers["pkgstream.error.reason"];
    assert!(reason.contains("413"), "{reason}");
    wait_state(&env.packages(), &sc.expected_state(), LIMIT);
    let refused = gateway.answered.load(Ordering::Relaxed);
    assert!(refused > 1, "the gateway refused {refused} bulks");
    // The history holds the 200 good changes and not the oversized one.
    let doc = engine(
        "GET",
        &format!(
            "/{}-changes-*/_search?q=_id:{}",
            env.prefix,
            "dd".repeat(16)
        ),
        None,
    );
    assert_eq!(doc["hits"]["total"]["value"], 0, "{doc}");
    assert!(sink.stop().success());
    println!(
        "413: {refused} bulks refused by the gateway and split; 200 good changes indexed; DLQ reason: {reason}"
    );
}

#[test]
fn an_empty_snapshot_keeps_the_host_state_and_goes_to_the_dlq() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-empty");
    let sc = scenario(&env.prefix, 4, 10, 10, 4);
    env.produce(&sc.records());
    let mut sink = env.start("search", &[]);
    let expected = sc.expected_state();
    wait_alive(&mut sink, "the package state", || {
        indexed_state(&env.packages()) == expected
    });
    let host = &sc.snapshots[0].host;
    let before = all_docs(&env.hosts())[host.machine_id.as_ref()].clone();
    // The host's rpmdb read as empty (a wrong %_dbpath): an empty snapshot,
    // later than everything the index holds.
    let taken_at = sc.snapshots[0].taken_at + 3_600_000_000;
    let empty = EnrichedSnapshot::new(
        InventorySnapshot {
            snapshot_id: snapshot_id(&host.machine_id, taken_at),
            taken_at,
            host: host.clone(),
            packages: Vec::new(),
            chunk: None,
        },
        sc.snapshots[0].enrichment.clone(),
    );
    let mut bytes = Vec::new();
    Encoder::new()
        .encode_enriched_snapshot(&empty, &mut bytes)
        .unwrap();
    env.produce(&[(host.machine_id.as_bytes().to_vec(), bytes.clone())]);
    let dlq = read_all(&env.brokers, &env.dlq, 1, Duration::from_secs(3), LIMIT);
    assert_eq!(dlq.len(), 1, "exactly the empty snapshot in the DLQ");
    assert_eq!(dlq[0].value, bytes);
    assert_eq!(dlq[0].headers["pkgstream.error.code"], "empty_snapshot");
    let reason = &dlq[0].headers["pkgstream.error.reason"];
    assert!(reason.contains(host.hostname.as_ref()), "{reason}");
    // The sink handled it (it is in the DLQ): the state is what it was.
    assert_eq!(indexed_state(&env.packages()), expected);
    let after = all_docs(&env.hosts())[host.machine_id.as_ref()].clone();
    assert_eq!(after["package_count"], before["package_count"]);
    assert_eq!(after["last_snapshot_us"], before["last_snapshot_us"]);
    assert!(sink.child.0.try_wait().unwrap().is_none(), "still running");
    assert!(sink.stop().success());
    println!(
        "empty snapshot: {} package documents kept, DLQ reason: {reason}",
        expected.len()
    );
}

//! The router at its boundaries, against the real Kafka (issue 10): an
//! aborted transaction loses no synthetic INVENTORY change; outputs Kafka
//! refuses as too large (client and broker side) go to the DLQ with code
//! `too_large` while the rest of the batch flows; `/readyz` and the lag
//! gauge tell the truth while a transaction cannot commit, and SIGTERM ends
//! a retry backoff at once; host clocks far ahead go to the DLQ with code
//! `clock_ahead`; host metadata that would make a host's events poison is
//! refused. (The `Instant` underflow of item #10 is kept out by
//! `clippy::unchecked_time_subtraction`, denied in the router crate: Rust's
//! `Instant` on Linux does not panic below zero, so no run here shows it.)
//!
//! A transaction that cannot commit is made with
//! `message.timestamp.before.max.ms=1` on the test's own enriched topic:
//! the broker refuses every record (`INVALID_TIMESTAMP`) until the test sets
//! it back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pkgstream_schemas::{
    decode_enriched_change, decode_enriched_snapshot, sample, Encoder, EnrichedChange,
    InventorySnapshot, PackageChange, Source,
};
use pkgstream_tests::router::{
    enriched_changes, numbered_change as change, read_all, send, RouterEnv, WithHeaders,
};
use pkgstream_tests::{kafka_brokers, set_topic_config};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const QUIET: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(180);

fn encode_snapshot(s: &InventorySnapshot<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    Encoder::new().encode_snapshot(s, &mut v).expect("encode");
    v
}

fn encode_change(c: &PackageChange<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    Encoder::new().encode_change(c, &mut v).expect("encode");
    v
}

fn keyed(c: &PackageChange<'_>) -> (Vec<u8>, Vec<u8>) {
    (c.host.machine_id.as_bytes().to_vec(), encode_change(c))
}

/// `/readyz` status, `None` when nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split(' ').nth(1)?.parse().ok()
}

/// The sum of the router's lag gauge over the partitions of `topic`, `None`
/// when the endpoint does not answer or has no such series.
fn lag(port: u16, topic: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.starts_with("pkgstream_router_consumer_lag_messages{")
                && l.contains(&format!("topic=\"{topic}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes every produce to `env`'s enriched topic fail (or work again): the
/// broker refuses records whose timestamp is more than 1 ms older than its
/// clock (INVALID_TIMESTAMP), which every record is by the time it arrives.
fn wedge(env: &RouterEnv, on: bool) {
    set_topic_config(
        &env.brokers,
        &env.enriched,
        &[(
            "message.timestamp.before.max.ms",
            if on { "1" } else { "9223372036854775807" },
        )],
    );
}

fn aborted(env: &RouterEnv) -> f64 {
    env.metric("pkgstream_router_transactions_aborted_total")
}

struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_aborted_transaction_loses_no_synthetic_inventory_change() {
    let env = RouterEnv::new(&kafka_brokers(), "abort-inventory");
    let producer = env.producer();
    let _router = Router(env.start());
    env.wait_ready(Duration::from_secs(60));

    // Two hosts on (likely) different partitions; each second snapshot
    // differs from the first by unreported changes.
    let firsts: Vec<InventorySnapshot<'static>> =
        (0..6).map(|h| sample::snapshot(h + 20, 5)).collect();
    let records: Vec<(Vec<u8>, Vec<u8>)> = firsts
        .iter()
        .map(|s| (s.host.machine_id.as_bytes().to_vec(), encode_snapshot(s)))
        .collect();
    send(&producer, &env.inventory_raw, &records);
    assert_eq!(
        read_all(
            &env.brokers,
            &env.enriched,
            6,
            Duration::from_millis(500),
            LIMIT
        )
        .len(),
        6
    );

    wedge(&env, true);
    let before = aborted(&env);
    let mut expected = Vec::new();
    let mut records = Vec::new();
    for first in &firsts {
        let mut s = first.clone();
        s.taken_at += 86_400_000_000;
        s.snapshot_id = pkgstream_schemas::snapshot_id(&s.host.machine_id, s.taken_at);
        s.packages[2].release = Cow::Borrowed("9.el9");
        s.packages.remove(4);
        expected.push(format!("{} Upgrade pkg-0002-9.el9", s.host.machine_id));
        expected.push(format!("{} Remove pkg-0004-4.el9", s.host.machine_id));
        records.push((s.host.machine_id.as_bytes().to_vec(), encode_snapshot(&s)));
    }
    send(&producer, &env.inventory_raw, &records);
    // The second snapshots are processed, and their transaction aborted,
    // twice; then the topic takes writes again.
    wait_until("two aborted transactions", LIMIT, || {
        aborted(&env) >= before + 2.0
    });
    wedge(&env, false);

    let got = read_all(&env.brokers, &env.enriched, 6 + 6 + 12, QUIET, LIMIT);
    let snapshots = got
        .iter()
        .filter(|m| decode_enriched_snapshot(&m.value).is_ok())
        .count();
    assert_eq!(snapshots, 12, "both snapshots of each host, once");
    let mut synthetic: Vec<String> = enriched_changes(&got)
        .into_iter()
        .filter(|e| e.source == Source::Inventory)
        .map(|e| {
            format!(
                "{} {:?} {}-{}",
                e.host.machine_id, e.action, e.package.name, e.package.release
            )
        })
        .collect();
    synthetic.sort();
    expected.sort();
    assert_eq!(
        synthetic, expected,
        "every synthetic change of the aborted batch, exactly once"
    );
}

/// A snapshot of host `host` whose packages carry `bytes` of incompressible
/// text (what zstd cannot shrink below the topic limits).
fn padded_snapshot(host: u64, bytes: usize, seed: u64) -> InventorySnapshot<'static> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut s = sample::snapshot(host, 0);
    let per_package = 200;
    for k in 0..bytes / per_package + 1 {
        let mut name = String::with_capacity(per_package);
        for _ in 0..per_package {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            name.push(ALPHABET[(x % 64) as usize] as char);
        }
        let mut p = sample::snapshot(host, 1).packages[0].clone();
        p.name = Cow::Owned(format!("{k}-{name}"));
        s.packages.push(p);
    }
    s
}

#[test]
fn outputs_too_large_for_kafka_go_to_the_dlq_and_the_rest_flows() {
    let mut env = RouterEnv::new(&kafka_brokers(), "too-large");
    // Broker side: enriched records above 20 kB and dead letters above
    // 100 kB are refused; the raw topic takes what the client side refuses
    // (the router's producer sends at most 1 MB).
    set_topic_config(
        &env.brokers,
        &env.enriched,
        &[("max.message.bytes", "20000")],
    );
    set_topic_config(&env.brokers, &env.dlq, &[("max.message.bytes", "100000")]);
    set_topic_config(
        &env.brokers,
        &env.inventory_raw,
        &[("max.message.bytes", "3000000")],
    );
    env.vars
        .push(("PKGSTREAM__ROUTER__BATCH_EVENTS".into(), "100000".into()));
    let big_producer: BaseProducer = pkgstream_tests::client_config(&env.brokers)
        .set("message.max.bytes", "3000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");

    let broker_refuses = padded_snapshot(31, 60_000, 1); // DLQ takes it with payload
    let dlq_refuses = padded_snapshot(32, 300_000, 2); // DLQ takes it without
    let client_refuses = padded_snapshot(33, 1_200_000, 3); // over 1 MB: without
    let small = sample::snapshot(34, 3);
    let poison = [&broker_refuses, &dlq_refuses, &client_refuses];
    let raw: Vec<Vec<u8>> = poison.iter().map(|s| encode_snapshot(s)).collect();
    // Good changes of many hosts (all partitions) around the poison, in one
    // batch with it: sent before the router starts.
    let good: Vec<PackageChange<'static>> = (0..300).map(|i| change(i, i % 13)).collect();
    let goods: Vec<(Vec<u8>, Vec<u8>)> = good.iter().map(keyed).collect();
    send(&big_producer, &env.changes_raw, &goods[..150]);
    let mut inventory: Vec<(Vec<u8>, Vec<u8>)> = poison
        .iter()
        .zip(&raw)
        .map(|(s, v)| (s.host.machine_id.as_bytes().to_vec(), v.clone()))
        .collect();
    inventory.push((
        small.host.machine_id.as_bytes().to_vec(),
        encode_snapshot(&small),
    ));
    send(&big_producer, &env.inventory_raw, &inventory);
    send(&big_producer, &env.changes_raw, &goods[150..]);

    let _router = Router(env.start());
    let enriched = read_all(&env.brokers, &env.enriched, good.len() + 1, QUIET, LIMIT);
    let dlq = read_all(&env.brokers, &env.dlq, 3, QUIET, LIMIT);

    let mut ids: Vec<[u8; 16]> = enriched_changes(&enriched)
        .iter()
        .map(|e| e.event_id.0)
        .collect();
    ids.sort();
    let mut want: Vec<[u8; 16]> = good.iter().map(|c| c.event_id.0).collect();
    want.sort();
    assert_eq!(ids.len(), want.len(), "every good change, exactly once");
    assert!(ids == want, "every good change, exactly once");
    let snapshots: Vec<_> = enriched
        .iter()
        .filter_map(|m| decode_enriched_snapshot(&m.value).ok())
        .collect();
    assert_eq!(snapshots.len(), 1, "the small snapshot, once");
    assert_eq!(snapshots[0].host.machine_id, small.host.machine_id);

    assert_eq!(dlq.len(), 3, "each refused snapshot once in the DLQ");
    let by_host: HashMap<Vec<u8>, &WithHeaders> = dlq.iter().map(|m| (m.key.clone(), m)).collect();
    for (s, raw) in poison.iter().zip(&raw) {
        let m = by_host
            .get(s.host.machine_id.as_bytes())
            .unwrap_or_else(|| panic!("no dead letter for host {}", s.host.machine_id));
        assert_eq!(m.headers["pkgstream.error.code"], "too_large");
        assert_eq!(m.headers["pkgstream.source.topic"], env.inventory_raw);
        let reason = &m.headers["pkgstream.error.reason"];
        assert!(reason.contains("too large"), "{reason}");
        assert!(reason.len() < 2048, "the reason is bounded");
        if std::ptr::eq(*s, &broker_refuses) {
            assert_eq!(&m.value, raw, "the DLQ keeps the raw event when it fits");
        } else {
            assert!(
                m.value.is_empty(),
                "a raw event too large for the DLQ is omitted"
            );
            assert!(reason.contains("omitted"), "{reason}");
        }
    }
    assert_eq!(
        env.metric("pkgstream_router_events_dlq_total{reason=\"too_large\"}"),
        3.0
    );
}

#[test]
fn readyz_and_lag_tell_the_truth_while_a_transaction_cannot_commit_and_sigterm_ends_the_backoff() {
    let env = RouterEnv::new(&kafka_brokers(), "wedged");
    let producer = env.producer();
    let mut router = Router(env.start());
    env.wait_ready(Duration::from_secs(60));
    wedge(&env, true);
    let good: Vec<PackageChange<'static>> = (0..50).map(|i| change(i, i % 7)).collect();
    send(
        &producer,
        &env.changes_raw,
        &good.iter().map(keyed).collect::<Vec<_>>(),
    );

    wait_until("a failed transaction", LIMIT, || aborted(&env) >= 1.0);
    wait_until("not ready", Duration::from_secs(10), || {
        readyz(env.metrics_port) == Some(503)
    });
    // From the first failure on, while wedged: never ready, and the lag
    // counts every event not committed.
    let watch = Instant::now();
    let mut samples = 0;
    while watch.elapsed() < Duration::from_secs(12) {
        match readyz(env.metrics_port) {
            Some(503) => samples += 1,
            other => panic!("/readyz answered {other:?} while no transaction commits"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples > 50);
    wait_until(
        "the lag gauge to show the 50 events",
        Duration::from_secs(60),
        || lag(env.metrics_port, &env.changes_raw) == Some(50.0),
    );

    // Writable again: ready, everything arrives once, the lag drains.
    wedge(&env, false);
    env.wait_ready(LIMIT);
    let got = read_all(&env.brokers, &env.enriched, 50, QUIET, LIMIT);
    let mut ids: Vec<[u8; 16]> = enriched_changes(&got)
        .iter()
        .map(|e| e.event_id.0)
        .collect();
    ids.sort();
    let mut want: Vec<[u8; 16]> = good.iter().map(|c| c.event_id.0).collect();
    want.sort();
    assert_eq!(ids.len(), want.len());
    assert!(ids == want, "each event once");
    wait_until("the lag gauge to drain", Duration::from_secs(60), || {
        lag(env.metrics_port, &env.changes_raw) == Some(0.0)
    });

    // Wedged again until the backoff between attempts is long (8 s and
    // more after four failures): SIGTERM ends it at once.
    wedge(&env, true);
    send(&producer, &env.changes_raw, &[keyed(&change(1000, 1))]);
    let base = aborted(&env);
    wait_until("four more failed transactions", LIMIT, || {
        aborted(&env) >= base + 4.0
    });
    // Right after a failure the router is in its backoff.
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &router.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    loop {
        if let Some(s) = router.0.try_wait().expect("wait") {
            assert!(s.success(), "exit status {s:?}");
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(7),
            "SIGTERM did not end the retry backoff within 7 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wedge(&env, false);
}

#[test]
fn a_host_clock_far_ahead_goes_to_the_dlq_as_clock_ahead() {
    let env = RouterEnv::new(&kafka_brokers(), "clock");
    let producer = env.producer();
    let now = chrono::Utc::now().timestamp_micros();
    let mut ahead = change(1, 3);
    ahead.event_time = now + 2 * 86_400_000_000;
    let mut slightly = change(2, 3);
    slightly.event_time = now + 600_000_000;
    let mut snap = sample::snapshot(3, 2);
    snap.taken_at = now + 365 * 86_400_000_000;
    snap.snapshot_id = pkgstream_schemas::snapshot_id(&snap.host.machine_id, snap.taken_at);
    send(
        &producer,
        &env.changes_raw,
        &[keyed(&ahead), keyed(&slightly)],
    );
    send(
        &producer,
        &env.inventory_raw,
        &[(
            snap.host.machine_id.as_bytes().to_vec(),
            encode_snapshot(&snap),
        )],
    );
    let _router = Router(env.start());
    let enriched = read_all(&env.brokers, &env.enriched, 1, QUIET, LIMIT);
    let dlq = read_all(&env.brokers, &env.dlq, 2, QUIET, LIMIT);
    let ids: Vec<_> = enriched_changes(&enriched)
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        ids,
        [slightly.event_id],
        "ten minutes ahead is within the bound"
    );
    assert_eq!(enriched.len(), 1);
    assert_eq!(dlq.len(), 2);
    for m in &dlq {
        assert_eq!(m.headers["pkgstream.error.code"], "clock_ahead");
        assert!(
            m.headers["pkgstream.error.reason"].contains("ahead"),
            "{:?}",
            m.headers
        );
    }
    let mut values: Vec<&Vec<u8>> = dlq.iter().map(|m| &m.value).collect();
    values.sort();
    let (a, b) = (encode_change(&ahead), encode_snapshot(&snap));
    let mut want = vec![&a, &b];
    want.sort();
    assert_eq!(values, want, "the DLQ keeps the original bytes");
}

#[test]
fn host_metadata_that_would_poison_a_host_is_refused_and_its_events_flow() {
    let env = RouterEnv::new(&kafka_brokers(), "bad-meta");
    let producer = env.producer();
    let host = |h: u64| sample::host(h).machine_id.as_bytes().to_vec();
    send(
        &producer,
        &env.hosts,
        &[
            (
                host(1),
                br#"{"hostgroup":"","environment":"prod"}"#.to_vec(),
            ),
            (
                host(2),
                br#"{"hostgroup":"web","environment":" "}"#.to_vec(),
            ),
            (host(3), br#"["web",""]"#.to_vec()),
            (
                host(4),
                br#"{"hostgroup":"db","environment":"prod"}"#.to_vec(),
            ),
        ],
    );
    let changes: Vec<PackageChange<'static>> = (1..=4).map(|h| change(h, h)).collect();
    send(
        &producer,
        &env.changes_raw,
        &changes.iter().map(keyed).collect::<Vec<_>>(),
    );
    let _router = Router(env.start());
    let got = read_all(&env.brokers, &env.enriched, 4, QUIET, LIMIT);
    let mut seen: Vec<(String, String, bool)> = enriched_changes(&got)
        .iter()
        .map(|e| {
            (
                e.host.machine_id.to_string(),
                format!("{}/{}", e.enrichment.hostgroup, e.enrichment.environment),
                e.enrichment.known_host,
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String, bool)> = (1..=3)
        .map(|h| {
            (
                sample::host(h).machine_id.to_string(),
                "unassigned/unknown".to_owned(),
                false,
            )
        })
        .chain([(
            sample::host(4).machine_id.to_string(),
            "db/prod".to_owned(),
            true,
        )])
        .collect();
    want.sort();
    assert_eq!(
        seen, want,
        "refused metadata leaves the host unknown; its events are routed, not poison"
    );
}

/// History records of the enriched topic as a router would have left them
/// for the rebuild: the enriched header and an event id (all the rebuild
/// reads), `ids` of them for partition `p`, sent with an empty key.
fn send_history(producer: &BaseProducer, topic: &str, p: i32, ids: impl Iterator<Item = [u8; 16]>) {
    let mut header = Vec::new();
    Encoder::new()
        .encode_enriched_change(
            &EnrichedChange::new(change(0, 0), sample::enrichment(0)),
            &mut header,
        )
        .expect("encode");
    header.truncate(10);
    let mut value = header.clone();
    for id in ids {
        value.truncate(10);
        value.extend_from_slice(&id);
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(p)
            .payload(&value[..]);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("flush history");
}

/// The enriched records of `topic` from offset `from[p]` of each partition
/// on (read_committed), until `expected` arrived and `quiet` passed.
fn read_from(brokers: &str, topic: &str, from: &[i64], expected: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = pkgstream_tests::client_config(brokers)
        .set("group.id", pkgstream_tests::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in from.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let (started, mut last) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    while started.elapsed() < LIMIT {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.payload().unwrap_or_default().to_vec());
                last = Instant::now();
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            None if out.len() >= expected && last.elapsed() >= QUIET => break,
            None => {}
        }
    }
    out
}

/// Issue 10 #10: the dedupe-window rebuild ran inside the poll loop, so a
/// partition with a big window kept the group consumer from polling past
/// `max.poll.interval.ms`: the member was kicked out, its transaction's
/// offsets refused, the loop restarted and rebuilt again, forever (nothing
/// routed). Here the router must poll every 10 s (the least librdkafka
/// allows with its 10 s session timeout) and each enriched partition holds
/// more history than is read in 10 s; the rebuild's own histogram proves it
/// took longer. Now: no transaction aborted, every new change routed once,
/// and those already in the history deduplicated by the rebuilt window.
#[test]
fn a_big_dedupe_window_is_rebuilt_while_the_loop_keeps_polling() {
    const HISTORY: u64 = 1_500_000;
    const NEW: u64 = 300;
    const SEEN: u64 = 30;
    let history: u64 = std::env::var("PKGSTREAM_TEST_REBUILD_HISTORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(HISTORY);
    let mut env = RouterEnv::new(&kafka_brokers(), "rebuild-stall");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pkgstream.toml");
    std::fs::write(
        &config,
        "[kafka.librdkafka_options]\n\"max.poll.interval.ms\" = \"10000\"\n",
    )
    .expect("write config");
    env.vars.extend([
        ("PKGSTREAM_CONFIG".to_owned(), config.display().to_string()),
        (
            "PKGSTREAM__ROUTER__DEDUPE_WINDOW_ENTRIES".to_owned(),
            (history * 2).to_string(),
        ),
    ]);
    // New change i goes to raw (so enriched) partition i % 3; the first
    // SEEN of them are already in their partition's history.
    let changes: Vec<PackageChange<'static>> = (0..NEW).map(|i| change(i, i % 7)).collect();
    let producer: BaseProducer = pkgstream_tests::client_config(&env.brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    for p in 0..3i32 {
        let seen = changes
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as u64) < SEEN && *i as i32 % 3 == p)
            .map(|(_, c)| c.event_id.0);
        let filler = (0..history).map(|n| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_le_bytes());
            id[8..12].copy_from_slice(&p.to_le_bytes());
            id[12..].copy_from_slice(b"hist");
            id
        });
        send_history(&producer, &env.enriched, p, filler.chain(seen));
    }
    let from: Vec<i64> = (0..3)
        .map(|p| {
            producer
                .client()
                .fetch_watermarks(&env.enriched, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect();
    println!(
        "history: {} records in {:?}",
        from.iter().sum::<i64>(),
        started.elapsed()
    );

    let _router = Router(env.start());
    env.wait_ready(Duration::from_secs(60));
    for (i, c) in changes.iter().enumerate() {
        let (k, v) = keyed(c);
        let mut r = BaseRecord::to(&env.changes_raw)
            .partition(i as i32 % 3)
            .key(&k[..])
            .payload(&v[..]);
        while let Err((_, back)) = producer.send(r) {
            r = back;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let want = (NEW - SEEN) as usize;
    let got = read_from(&env.brokers, &env.enriched, &from, want);
    let mut ids: Vec<[u8; 16]> = got
        .iter()
        .map(|v| {
            decode_enriched_change(v)
                .expect("enriched change")
                .event_id
                .0
        })
        .collect();
    ids.sort();
    let mut expected: Vec<[u8; 16]> = changes[SEEN as usize..]
        .iter()
        .map(|c| c.event_id.0)
        .collect();
    expected.sort();
    assert_eq!(ids.len(), want, "every new change once, none already seen");
    assert_eq!(ids, expected);
    let rebuilds = env.metric("pkgstream_router_dedupe_window_rebuild_seconds_count");
    let within_poll_interval =
        env.metric("pkgstream_router_dedupe_window_rebuild_seconds_bucket{le=\"10\"}");
    println!(
        "rebuilds: {rebuilds}, of which within 10 s: {within_poll_interval}, sum {} s",
        env.metric("pkgstream_router_dedupe_window_rebuild_seconds_sum")
    );
    assert!(
        rebuilds >= 3.0 && rebuilds > within_poll_interval,
        "no rebuild took longer than max.poll.interval.ms: the test proves nothing"
    );
    assert_eq!(
        env.metric("pkgstream_router_events_deduplicated_total"),
        SEEN as f64,
        "the rebuilt windows hold the history"
    );
    assert_eq!(
        aborted(&env),
        0.0,
        "a transaction aborted (the member was kicked out)"
    );
}

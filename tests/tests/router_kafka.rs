//! Acceptance tests of the router against the real Kafka: exactly once
//! through repeated `kill -9`, poison to the DLQ with its reason, live host
//! metadata updates, and lost changes inferred from snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pkgstream_schemas::{
    decode_enriched_snapshot, sample, Action, Encoder, Kind, PackageChange, Registry, Source,
};
use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::{enriched_changes, numbered_change, read_all, send, RouterEnv};

const QUIET: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(180);

fn host_meta(group: &str) -> Vec<u8> {
    format!(r#"{{"hostgroup":"{group}","environment":"prod","owner":"team-{group}","maintenance":["sat 02:00-04:00"]}}"#).into_bytes()
}

/// Change number `i`, on host `i % hosts`, as raw bytes.
fn raw_change(enc: &mut Encoder, i: u64, hosts: u64) -> (Vec<u8>, Vec<u8>, PackageChange<'static>) {
    let c = numbered_change(i, i % hosts);
    let mut v = Vec::new();
    enc.encode_change(&c, &mut v).expect("encode");
    (c.host.machine_id.as_bytes().to_vec(), v, c)
}

#[test]
fn exactly_once_through_repeated_kill_9() {
    let env = RouterEnv::new(&kafka_brokers(), "eos");
    let producer = env.producer();
    // Hosts 0..10 are known (group web-<h % 2>), 10..40 are not.
    let metas: Vec<(Vec<u8>, Vec<u8>)> = (0..10u64)
        .map(|h| {
            (
                sample::host(h).machine_id.as_bytes().to_vec(),
                host_meta(&format!("web-{}", h % 2)),
            )
        })
        .collect();
    send(&producer, &env.hosts, &metas);

    let mut enc = Encoder::new();
    const N: u64 = 20_000;
    let events: Vec<(Vec<u8>, Vec<u8>, PackageChange<'static>)> =
        (0..N).map(|i| raw_change(&mut enc, i, 40)).collect();
    // Every 10th event is reported twice (a second hook, a spool replay).
    let mut stream: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, (k, v, _)) in events.iter().enumerate() {
        stream.push((k.clone(), v.clone()));
        if i % 10 == 0 {
            stream.push((k.clone(), v.clone()));
        }
    }
    let duplicates = stream.len() as u64 - N;

    // Feed in 10 slices while the router is killed with SIGKILL 3 times,
    // each time after it committed at least 3 batches (then mid-batch), and
    // restarted.
    let mut env = env;
    env.vars
        .push(("PKGSTREAM__ROUTER__BATCH_EVENTS".into(), "300".into()));
    let mut router = env.start();
    let mut lives = Vec::new();
    for (n, slice) in stream.chunks(stream.len() / 10 + 1).enumerate() {
        send(&producer, &env.changes_raw, slice);
        if n % 3 == 1 {
            let started = Instant::now();
            while env.metric("pkgstream_router_events_out_total{kind=\"change\"}") < 900.0 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "router made no progress"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(37 * n as u64));
            let done = env.metric("pkgstream_router_events_out_total{kind=\"change\"}");
            router.kill().expect("kill -9 router");
            router.wait().expect("reap");
            lives.push(done);
            router = env.start();
        }
    }
    // A host replays the first 1,000 events after the restarts: the rebuilt
    // dedupe windows must drop them.
    send(&producer, &env.changes_raw, &stream[..1000]);
    let replayed = 1000u64;
    let got = read_all(
        &env.brokers,
        &env.enriched,
        N as usize,
        Duration::from_secs(5),
        LIMIT,
    );
    env.wait_ready(Duration::from_secs(60));
    let deduplicated = env.metric("pkgstream_router_events_deduplicated_total");
    let last_in = env.metric("pkgstream_router_events_in_total{lane=\"changes\"}");
    router.kill().expect("stop router");
    router.wait().expect("reap");
    let mut per_partition = [0usize; 3];
    got.iter()
        .for_each(|m| per_partition[m.partition as usize] += 1);
    println!("enriched messages per partition: {per_partition:?}");
    let changes = enriched_changes(&got);
    let mut seen: HashMap<[u8; 16], usize> = HashMap::new();
    for c in &changes {
        *seen.entry(c.event_id.0).or_default() += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    println!("router killed {} times (events produced before each kill, as last scraped: {lives:?}): {} enriched messages for {N} events ({duplicates} duplicates + {replayed} replayed fed), {twice} ids more than once; the last life read {last_in} and dropped {deduplicated} duplicates", lives.len(), got.len());
    assert_eq!(lives.len(), 3);
    assert_eq!(
        twice, 0,
        "an event appears more than once in the enriched topic"
    );
    assert_eq!(changes.len() as u64, N, "exactly the unique events");
    let expected: HashSet<[u8; 16]> = events.iter().map(|(_, _, c)| c.event_id.0).collect();
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), expected);
    // Enriched correctly: the change as reported plus the right host data,
    // and raw partition p went to enriched partition p with the host's key.
    let by_id: HashMap<[u8; 16], &PackageChange<'static>> =
        events.iter().map(|(_, _, c)| (c.event_id.0, c)).collect();
    for (m, e) in got.iter().zip(&changes) {
        let (c, enrichment) = e.clone().into_parts();
        assert_eq!(&c, by_id[&c.event_id.0]);
        assert_eq!(m.key, c.host.machine_id.as_bytes());
        let h = (0..40u64)
            .find(|h| sample::host(*h).machine_id == c.host.machine_id)
            .expect("host");
        if h < 10 {
            assert_eq!(
                (
                    &*enrichment.hostgroup,
                    enrichment.known_host,
                    enrichment.owner.as_deref()
                ),
                (
                    format!("web-{}", h % 2).as_str(),
                    true,
                    Some(format!("team-web-{}", h % 2).as_str())
                )
            );
        } else {
            assert_eq!(
                (
                    &*enrichment.hostgroup,
                    &*enrichment.environment,
                    enrichment.known_host
                ),
                ("unassigned", "unknown", false)
            );
        }
    }
}

#[test]
fn poison_goes_to_the_dlq_with_its_reason_and_the_rest_flows() {
    let env = RouterEnv::new(&kafka_brokers(), "poison");
    let producer = env.producer();
    let mut enc = Encoder::new();
    let good: Vec<(Vec<u8>, Vec<u8>, PackageChange<'static>)> =
        (0..300).map(|i| raw_change(&mut enc, i, 7)).collect();
    let valid = good[0].1.clone();
    let mut unknown_fp = valid.clone();
    unknown_fp[5] ^= 0xff;
    let mut empty_name = good[1].2.clone();
    empty_name.package.name = Cow::Borrowed("");
    let mut invalid = vec![0xC3, 0x01];
    invalid.extend_from_slice(
        Registry::get()
            .current(Kind::PackageChange)
            .schema
            .rabin_fingerprint(),
    );
    invalid.extend(serde_avro_fast_datum(&empty_name));
    let mut snapshot_on_changes = Vec::new();
    enc.encode_snapshot(&sample::snapshot(1, 2), &mut snapshot_on_changes)
        .expect("encode");
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("wrong_magic", b"{\"not\": \"avro\"}".to_vec()),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("truncated", valid[..6].to_vec()),
        ("unknown_schema", unknown_fp),
        ("invalid", invalid),
        ("wrong_kind", snapshot_on_changes),
    ];
    let mut stream: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, (k, v, _)) in good.iter().enumerate() {
        stream.push((k.clone(), v.clone()));
        if let Some((_, p)) = poison.get(i / 50) {
            if i % 50 == 25 {
                stream.push((b"poison-host".to_vec(), p.clone()));
            }
        }
    }
    send(&producer, &env.changes_raw, &stream);
    let mut router = env.start();
    let enriched = read_all(&env.brokers, &env.enriched, good.len(), QUIET, LIMIT);
    let dlq = read_all(&env.brokers, &env.dlq, poison.len(), QUIET, LIMIT);
    router.kill().expect("stop");
    router.wait().expect("reap");

    assert_eq!(
        enriched_changes(&enriched).len(),
        good.len(),
        "every good event arrives"
    );
    assert_eq!(dlq.len(), poison.len(), "every poison event is in the DLQ");
    let mut codes: Vec<&str> = dlq
        .iter()
        .map(|m| {
            m.headers
                .get("pkgstream.error.code")
                .map(String::as_str)
                .unwrap_or("-")
        })
        .collect();
    let mut expected: Vec<&str> = poison.iter().map(|(c, _)| *c).collect();
    codes.sort();
    expected.sort();
    assert_eq!(codes, expected);
    for m in &dlq {
        assert_eq!(
            m.headers.get("pkgstream.source.topic"),
            Some(&env.changes_raw)
        );
        assert!(m
            .headers
            .get("pkgstream.source.offset")
            .is_some_and(|o| o.parse::<i64>().is_ok()));
        assert!(m.headers.contains_key("pkgstream.source.partition"));
        assert_eq!(m.key, b"poison-host");
        assert!(
            poison.iter().any(|(_, p)| *p == m.value),
            "the DLQ keeps the original bytes"
        );
        let reason = &m.headers["pkgstream.error.reason"];
        if m.headers["pkgstream.error.code"] == "invalid" {
            assert_eq!(reason, "invalid PackageChange: package.name is empty");
        }
    }
}

fn serde_avro_fast_datum(c: &PackageChange<'_>) -> Vec<u8> {
    // An encoder that skips our validation: what a buggy producer would send.
    let schema = &Registry::get().current(Kind::PackageChange).schema;
    let config = &mut serde_avro_fast::ser::SerializerConfig::new(schema);
    serde_avro_fast::to_datum_vec(c, config).expect("datum")
}

#[test]
fn host_metadata_updates_apply_without_restart() {
    let env = RouterEnv::new(&kafka_brokers(), "hostmeta");
    let producer = env.producer();
    let host = sample::host(77);
    let key = host.machine_id.as_bytes().to_vec();
    send(
        &producer,
        &env.hosts,
        &[(key.clone(), host_meta("old-group"))],
    );
    let mut router = env.start();
    env.wait_ready(Duration::from_secs(60));
    let mut enc = Encoder::new();
    let first = raw_change(&mut enc, 77, 100);
    send(
        &producer,
        &env.changes_raw,
        &[(first.0.clone(), first.1.clone())],
    );
    assert_eq!(
        read_all(
            &env.brokers,
            &env.enriched,
            1,
            Duration::from_millis(500),
            LIMIT
        )
        .len(),
        1
    );

    let updates_before = env.metric("pkgstream_router_host_table_updates_total");
    send(
        &producer,
        &env.hosts,
        &[(key.clone(), host_meta("new-group"))],
    );
    let started = Instant::now();
    while env.metric("pkgstream_router_host_table_updates_total") <= updates_before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "update not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = raw_change(&mut enc, 177, 100);
    send(
        &producer,
        &env.changes_raw,
        &[(second.0.clone(), second.1.clone())],
    );
    let got = read_all(&env.brokers, &env.enriched, 2, QUIET, LIMIT);
    router.kill().expect("stop");
    router.wait().expect("reap");
    let groups: Vec<(String, String)> = enriched_changes(&got)
        .into_iter()
        .map(|e| {
            (
                e.package.name.to_string(),
                e.enrichment.hostgroup.to_string(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("pkg-77".to_string(), "old-group".to_string()),
            ("pkg-177".to_string(), "new-group".to_string())
        ]
    );
}

#[test]
fn a_snapshot_with_unreported_differences_yields_synthetic_events() {
    let env = RouterEnv::new(&kafka_brokers(), "inventory");
    let producer = env.producer();
    let mut enc = Encoder::new();
    let mut snap = sample::snapshot(5, 4);
    let key = snap.host.machine_id.as_bytes().to_vec();
    let encode = |enc: &mut Encoder, s: &pkgstream_schemas::InventorySnapshot<'_>| {
        let mut v = Vec::new();
        enc.encode_snapshot(s, &mut v).expect("encode");
        v
    };
    let mut router = env.start();
    env.wait_ready(Duration::from_secs(60));
    send(
        &producer,
        &env.inventory_raw,
        &[(key.clone(), encode(&mut enc, &snap))],
    );
    assert_eq!(
        read_all(
            &env.brokers,
            &env.enriched,
            1,
            Duration::from_millis(500),
            LIMIT
        )
        .len(),
        1
    );

    // Between the snapshots: pkg-0001 upgraded and reported; pkg-0002
    // upgraded behind the hooks' back; pkg-0003 removed unreported;
    // rogue-tool installed unreported.
    let mut reported = sample::change(9);
    reported.host = snap.host.clone();
    reported.package = snap.packages[1].clone();
    reported.package.release = Cow::Borrowed("2.el9");
    reported.replaced = Some(snap.packages[1].clone());
    reported.event_id = pkgstream_schemas::change_event_id(
        &reported.host.machine_id,
        Action::Upgrade,
        &reported.package.name,
        reported.package.epoch,
        &reported.package.version,
        &reported.package.release,
        &reported.package.arch,
        reported.transaction.rpm_tid,
    );
    let mut reported_bytes = Vec::new();
    enc.encode_change(&reported, &mut reported_bytes)
        .expect("encode");
    send(
        &producer,
        &env.changes_raw,
        &[(key.clone(), reported_bytes)],
    );
    // The change and the snapshot travel on different topics: make sure the
    // change is routed before the next snapshot.
    assert_eq!(
        read_all(
            &env.brokers,
            &env.enriched,
            2,
            Duration::from_millis(500),
            LIMIT
        )
        .len(),
        2
    );

    snap.taken_at += 86_400_000_000;
    snap.snapshot_id = pkgstream_schemas::snapshot_id(&snap.host.machine_id, snap.taken_at);
    snap.packages[1].release = Cow::Borrowed("2.el9");
    snap.packages[2].release = Cow::Borrowed("7.el9");
    snap.packages.remove(3);
    let mut rogue = snap.packages[0].clone();
    rogue.name = Cow::Borrowed("rogue-tool");
    snap.packages.push(rogue);
    send(
        &producer,
        &env.inventory_raw,
        &[(key.clone(), encode(&mut enc, &snap))],
    );
    let got = read_all(&env.brokers, &env.enriched, 2 + 1 + 3, QUIET, LIMIT);
    router.kill().expect("stop");
    router.wait().expect("reap");

    let snapshots = got
        .iter()
        .filter(|m| decode_enriched_snapshot(&m.value).is_ok())
        .count();
    assert_eq!(snapshots, 2);
    let mut synthetic: Vec<String> = enriched_changes(&got)
        .into_iter()
        .filter(|e| e.source == Source::Inventory)
        .map(|e| {
            format!(
                "{:?} {}-{}{}",
                e.action,
                e.package.name,
                e.package.release,
                e.replaced
                    .as_ref()
                    .map(|r| format!(" (was {})", r.release))
                    .unwrap_or_default()
            )
        })
        .collect();
    synthetic.sort();
    assert_eq!(
        synthetic,
        [
            "Install rogue-tool-0.el9",
            "Remove pkg-0003-3.el9",
            "Upgrade pkg-0002-7.el9 (was 2.el9)"
        ]
    );
}

#[test]
fn rebalances_between_two_instances_and_sigterm_lose_and_duplicate_nothing() {
    let mut env = RouterEnv::new(&kafka_brokers(), "rebalance");
    env.vars
        .push(("PKGSTREAM__ROUTER__BATCH_EVENTS".into(), "300".into()));
    let producer = env.producer();
    let mut enc = Encoder::new();
    const N: u64 = 12_000;
    let events: Vec<(Vec<u8>, Vec<u8>, PackageChange<'static>)> =
        (0..N).map(|i| raw_change(&mut enc, i, 60)).collect();
    let stream: Vec<(Vec<u8>, Vec<u8>)> = events
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let third = stream.len() / 3;

    // A alone; then B joins (rebalance); then A gets SIGTERM and B takes
    // over A's partitions after the session timeout.
    let mut a = env.start();
    send(&producer, &env.changes_raw, &stream[..third]);
    let started = Instant::now();
    while env.metric("pkgstream_router_events_out_total{kind=\"change\"}") < 900.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let b_port = pkgstream_tests::router::free_port();
    let b_vars = vec![
        (
            "PKGSTREAM__ROUTER__TRANSACTIONAL_ID".to_string(),
            format!(
                "{}-b",
                env.vars
                    .iter()
                    .find(|(k, _)| k == "PKGSTREAM__ROUTER__TRANSACTIONAL_ID")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            ),
        ),
        (
            "PKGSTREAM__ROUTER__METRICS_LISTEN".to_string(),
            format!("127.0.0.1:{b_port}"),
        ),
    ];
    let mut b = env.start_with(&b_vars);
    send(&producer, &env.changes_raw, &stream[third..2 * third]);
    std::thread::sleep(Duration::from_secs(3));
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(signalled.success());
    let a_status = a.wait().expect("wait A");
    assert!(
        a_status.success(),
        "router A must exit 0 on SIGTERM, got {a_status:?}"
    );
    send(&producer, &env.changes_raw, &stream[2 * third..]);

    let got = read_all(
        &env.brokers,
        &env.enriched,
        N as usize,
        Duration::from_secs(5),
        LIMIT,
    );
    b.kill().expect("stop B");
    b.wait().expect("reap");
    let changes = enriched_changes(&got);
    let ids: HashSet<[u8; 16]> = changes.iter().map(|c| c.event_id.0).collect();
    println!(
        "two routers, a rebalance and a SIGTERM: {} enriched messages, {} distinct, {N} expected",
        changes.len(),
        ids.len()
    );
    assert_eq!(
        ids,
        events
            .iter()
            .map(|(_, _, c)| c.event_id.0)
            .collect::<HashSet<_>>(),
        "every event arrives"
    );
    assert_eq!(changes.len() as u64, N, "and each once");
}

#[test]
fn a_missing_raw_topic_is_created_like_its_sibling() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    // Hosts have shipped snapshots only: the inventory topic exists (3
    // partitions), the change topic and the enriched topic do not.
    let mut env = RouterEnv::new(&kafka_brokers(), "missing-raw");
    let changes_raw = pkgstream_tests::unique("missing-raw-changes");
    let enriched = pkgstream_tests::unique("missing-raw-enriched");
    for (k, v) in env.vars.iter_mut() {
        match k.as_str() {
            "PKGSTREAM__TOPICS__CHANGES_RAW" => *v = changes_raw.clone(),
            "PKGSTREAM__TOPICS__CHANGES_ENRICHED" => *v = enriched.clone(),
            _ => {}
        }
    }
    let mut router = env.start();
    env.wait_ready(LIMIT);
    let consumer: BaseConsumer = pkgstream_tests::client_config(&env.brokers)
        .create()
        .unwrap();
    for topic in [&changes_raw, &enriched] {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let t = &md.topics()[0];
        assert!(t.error().is_none(), "{topic}: {:?}", t.error());
        assert_eq!(t.partitions().len(), 3, "{topic}");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &router.id().to_string()])
        .status();
    assert!(router.wait().unwrap().success());
}

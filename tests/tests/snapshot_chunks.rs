//! Snapshots larger than one Kafka message (issue 10, item 3), against the
//! real Kafka, OpenSearch and Prometheus:
//! - a host with 25,000 packages: `pkgstream-emit record` + `flush` ship it
//!   as chunks (each under the broker's 1 MB), the router enriches every
//!   chunk, the search sink's package state is exactly the snapshot's
//!   25,000 documents, the metrics sink's gauges are exact; a second
//!   snapshot differing by an unreported upgrade, install and removal
//!   gives exactly those three synthetic INVENTORY changes (history
//!   documents too), a state of exactly the new set, and the gauges move;
//! - a snapshot with a chunk missing, and a router killed (-9) in the
//!   middle of a snapshot, give no synthetic change at all, while a
//!   complete pair still gives exactly its one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pkgstream_schemas::{
    decode_enriched_change, decode_enriched_snapshot, Action, Encoder, Kind, Registry, Source,
};
use pkgstream_tests::pipeline::{daily_window, write_hosts_csv};
use pkgstream_tests::router::{read_all, send, RouterEnv, WithHeaders};
use pkgstream_tests::sinks::{all_docs, count, wait_for, wait_state, SinkEnv, State};
use pkgstream_tests::{consume_all, kafka_brokers, EmitEnv, Running};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// One package of the synthetic host: (name, version).
type Pkg = (String, String);

/// 25,000 realistic packages (≈155 bytes each encoded).
fn packages(n: usize) -> Vec<Pkg> {
    (0..n)
        .map(|i| (format!("pkg-{i:05}-libs"), "1.2.3".to_owned()))
        .collect()
}

/// The hook line of a snapshot taken at `taken_at` (Unix seconds).
fn inventory_line(taken_at: i64, pkgs: &[Pkg]) -> String {
    let list: Vec<serde_json::Value> = pkgs
        .iter()
        .enumerate()
        .map(|(i, (name, version))| {
            json!({
                "name": name, "version": version, "release": "4.el9", "arch": "x86_64",
                "repo": "baseos", "vendor": "Rocky Enterprise Software Foundation",
                "buildtime": 1_700_000_000 + i as i64, "install_time": 1_710_000_000 + i as i64,
                "size": 100_000 + i as i64,
                "digest": format!("sha256:{:064x}", i),
            })
        })
        .collect();
    json!({"kind": "inventory", "taken_at": taken_at, "packages": list}).to_string()
}

/// The package state a snapshot of `pkgs` means: `_id → E:V-R`.
fn state_of(pkgs: &[Pkg]) -> State {
    pkgs.iter()
        .map(|(n, v)| (format!("{MACHINE_ID}/{n}.x86_64"), format!("0:{v}-4.el9")))
        .collect()
}

fn record_and_flush(emit: &EmitEnv, line: String) -> Duration {
    let out = emit.record(&[line]);
    assert!(
        out.status.success(),
        "record: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let out = emit.flush(&[]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The synthetic (INVENTORY) changes on the enriched topic, as
/// (action, name, version).
fn synthetic(records: &[WithHeaders]) -> Vec<(Action, String, String)> {
    let mut out: Vec<_> = records
        .iter()
        .filter_map(|r| decode_enriched_change(&r.value).ok())
        .filter(|c| c.source == Source::Inventory)
        .map(|c| {
            (
                c.action,
                c.package.name.to_string(),
                c.package.version.to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| (a.1.as_str(), a.0.symbol()).cmp(&(b.1.as_str(), b.0.symbol())));
    out
}

fn snapshots_on(records: &[WithHeaders]) -> usize {
    records
        .iter()
        .filter(|r| {
            Registry::get()
                .writer_of(&r.value)
                .is_ok_and(|(v, _)| v.kind == Kind::EnrichedSnapshot)
        })
        .count()
}

#[test]
fn a_25000_package_host_is_chunked_and_reconciled_exactly_by_router_and_both_sinks() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let brokers = kafka_brokers();
    let mut router = RouterEnv::new(&brokers, "chunk");
    let mut sinks = SinkEnv::new(&brokers, "chunk");
    sinks
        .vars
        .retain(|(k, _)| k != "PKGSTREAM__TOPICS__CHANGES_ENRICHED");
    sinks.vars.push((
        "PKGSTREAM__TOPICS__CHANGES_ENRICHED".into(),
        router.enriched.clone(),
    ));
    let group = format!("{}-big", sinks.prefix);
    let csv_dir = tempfile::tempdir().unwrap();
    let csv = csv_dir.path().join("hosts.csv");
    let window = daily_window(chrono::Utc::now() - chrono::Duration::hours(2), 4);
    write_hosts_csv(&csv, &[("test-host", &group, "prod", window)]);
    router.vars.push((
        "PKGSTREAM__ROUTER__HOSTS_FILE".into(),
        csv.display().to_string(),
    ));
    let mut emit = EmitEnv::new(&brokers, "chunk");
    for (k, v) in &mut emit.vars {
        if k == "PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW" {
            *v = router.inventory_raw.clone();
        } else if k == "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW" {
            *v = router.changes_raw.clone();
        }
    }

    // The first snapshot, shipped before anything central runs.
    let first = packages(25_000);
    let t0 = chrono::Utc::now().timestamp() - 600;
    let flush_time = record_and_flush(&emit, inventory_line(t0, &first));
    let raw = consume_all(
        &brokers,
        &router.inventory_raw,
        6,
        Duration::from_secs(2),
        LIMIT,
    );
    let chunks = raw.len();
    let bytes: usize = raw.iter().map(|m| m.value.len()).sum();
    eprintln!("25,000 packages: {chunks} chunks, {bytes} bytes, flushed in {flush_time:?}");
    assert!(chunks >= 6, "{chunks} records for 25,000 packages");
    assert!(raw
        .iter()
        .all(|m| m.value.len() <= 512 << 10 && m.key == MACHINE_ID.as_bytes()));

    let _router = Running(router.start());
    router.wait_ready(LIMIT);
    let search = sinks.start("search", &[]);
    let watch = "pkg-00100-libs,pkg-00200-libs,pkg-24999-libs,zz-new";
    let metrics = sinks.start(
        "metrics",
        &[("PKGSTREAM__METRICS_SINK__WATCH_PACKAGES", watch.into())],
    );

    phase("sinks started");
    // Polling 25,000 documents would slow the engine the sink writes to:
    // wait for the sink to say it is done, then compare once.
    wait_for("the first snapshot reconciled", LIMIT, || {
        search.metric("pkgstream_search_sink_snapshots_total") == 1.0
    });
    wait_state(&sinks.packages(), &state_of(&first), LIMIT);
    phase("first state");
    let gauge = |p: &str, v: &str| {
        metrics.metric(&format!(
            "pkgstream_fleet_watched_package_hosts{{hostgroup=\"{group}\",package=\"{p}\",version=\"{v}-4.el9\"}}"
        ))
    };
    wait_for("the watched gauges of the first snapshot", LIMIT, || {
        gauge("pkg-00100-libs", "1.2.3") == 1.0
            && gauge("pkg-00200-libs", "1.2.3") == 1.0
            && gauge("pkg-24999-libs", "1.2.3") == 1.0
    });
    let host = all_docs(&sinks.hosts());
    assert_eq!(host[MACHINE_ID]["package_count"], 25_000);
    assert_eq!(
        host[MACHINE_ID]["drift_count"], 0,
        "a first snapshot is no drift"
    );

    // The second: pkg-00100 upgraded, pkg-24999 removed, zz-new installed,
    // none of it reported by a hook.
    let mut second = first.clone();
    second[100].1 = "1.2.4".into();
    second.pop();
    second.push(("zz-new".into(), "0.1".into()));
    phase("first gauges");
    record_and_flush(&emit, inventory_line(t0 + 300, &second));
    phase("second flushed");
    wait_for("the second snapshot reconciled", LIMIT, || {
        search.metric("pkgstream_search_sink_snapshots_total") == 2.0
    });
    wait_state(&sinks.packages(), &state_of(&second), LIMIT);
    phase("second state");
    let enriched = read_all(
        &brokers,
        &router.enriched,
        2 * chunks + 3,
        Duration::from_secs(2),
        LIMIT,
    );
    assert_eq!(
        snapshots_on(&enriched),
        2 * chunks,
        "every chunk enriched exactly once"
    );
    assert_eq!(
        synthetic(&enriched),
        vec![
            (Action::Upgrade, "pkg-00100-libs".into(), "1.2.4".into()),
            (Action::Remove, "pkg-24999-libs".into(), "1.2.3".into()),
            (Action::Install, "zz-new".into(), "0.1".into()),
        ],
        "exactly the unreported changes, inferred across two chunked snapshots"
    );
    // Each enriched chunk stays under the broker's limit and names its snapshot.
    for r in &enriched {
        if let Ok(s) = decode_enriched_snapshot(&r.value) {
            assert!(r.value.len() < 1 << 20);
            let c = s.chunk.expect("a chunk");
            assert_eq!(c.package_count as usize, 25_000);
        }
    }
    wait_for("the three history documents", LIMIT, || {
        count(&sinks.changes()) == 3
    });
    wait_for("the watched gauges of the second snapshot", LIMIT, || {
        gauge("pkg-00100-libs", "1.2.4") == 1.0
            && gauge("pkg-00100-libs", "1.2.3") == 0.0
            && gauge("pkg-00200-libs", "1.2.3") == 1.0
            && gauge("pkg-24999-libs", "1.2.3") == 0.0
            && gauge("zz-new", "0.1") == 1.0
    });
    wait_for("the host document of the second snapshot", LIMIT, || {
        let h = all_docs(&sinks.hosts());
        h[MACHINE_ID]["last_snapshot_us"] == (t0 + 300) * 1_000_000
    });
    phase("second host doc");
    let h = all_docs(&sinks.hosts());
    assert_eq!(h[MACHINE_ID]["package_count"], 25_000);
    assert_eq!(h[MACHINE_ID]["drift_count"], 3, "upgrade, install, removal");
    assert_eq!(search.metric("pkgstream_search_sink_snapshots_total"), 2.0);
    assert_eq!(
        search.metric("pkgstream_search_sink_snapshots_incomplete_total"),
        0.0
    );
    search.stop();
    metrics.stop();
}

/// `pkgs` as encoded chunks (`max` bytes at most each) of a snapshot taken at `t` (µs).
fn chunked(t: i64, pkgs: &[Pkg], max: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let line = {
        let mut v: serde_json::Value = serde_json::from_str(&inventory_line(0, pkgs)).unwrap();
        v["taken_at"] = json!(t / 1_000_000);
        v["host"] = json!({"machine_id": MACHINE_ID, "hostname": "test-host", "os_id": "rocky", "os_version": "9.4", "arch": "x86_64"});
        v.to_string()
    };
    let pkgstream_producer::input::HookEvent::Inventory(s) =
        pkgstream_producer::input::HookEvent::parse(&line).unwrap()
    else {
        panic!("not an inventory line")
    };
    pkgstream_producer::chunk::encode_snapshot(&mut Encoder::new(), s.into_snapshot(None), max)
        .unwrap()
        .into_iter()
        .map(|v| (MACHINE_ID.as_bytes().to_vec(), v))
        .collect()
}

#[test]
fn a_missing_chunk_or_a_router_killed_mid_snapshot_gives_no_false_lost_changes() {
    let brokers = kafka_brokers();
    let router = RouterEnv::new(&brokers, "chunk-restart");
    let producer = router.producer();
    let base = packages(1_000);
    let t = (chrono::Utc::now().timestamp() - 3600) * 1_000_000;
    let max = pkgstream_producer::chunk::MIN_CHUNK_BYTES;
    let snap = |i: i64, pkgs: &[Pkg]| chunked(t + i * 60_000_000, pkgs, max);
    let a = snap(0, &base);
    assert!(a.len() >= 5, "{} chunks", a.len());
    // B: everything upgraded, its second chunk lost on the way.
    let all_new: Vec<Pkg> = base.iter().map(|(n, _)| (n.clone(), "9".into())).collect();
    let mut b = snap(1, &all_new);
    b.remove(1);
    // C: A plus one unreported upgrade.
    let mut c_pkgs = base.clone();
    c_pkgs[500].1 = "1.2.4".into();
    let c = snap(2, &c_pkgs);

    let mut sent = 0;
    let mut router1 = router.start();
    router.wait_ready(LIMIT);
    for s in [&a, &b, &c] {
        send(&producer, &router.inventory_raw, s);
        sent += s.len();
    }
    let out = read_all(
        &brokers,
        &router.enriched,
        sent + 1,
        Duration::from_secs(2),
        LIMIT,
    );
    assert_eq!(snapshots_on(&out), sent);
    assert_eq!(
        synthetic(&out),
        vec![(Action::Upgrade, "pkg-00500-libs".into(), "1.2.4".into())],
        "an incomplete snapshot is compared with nothing; the next complete one with the last complete one"
    );

    // D: its first chunk processed (and committed), then the router is
    // killed; a new router sees the rest of D, then E (D's packages
    // plus an upgrade: compared with D it would be a lost change).
    let d_pkgs = all_new.clone();
    let d = snap(3, &d_pkgs);
    send(&producer, &router.inventory_raw, &d[..1]);
    sent += 1;
    let seen = read_all(
        &brokers,
        &router.enriched,
        sent + 1,
        Duration::from_secs(1),
        LIMIT,
    );
    assert_eq!(
        snapshots_on(&seen),
        sent,
        "D's first chunk committed before the kill"
    );
    router1.kill().unwrap();
    router1.wait().unwrap();
    let _router2 = Running(router.start());
    router.wait_ready(LIMIT);
    let mut e_pkgs = d_pkgs.clone();
    e_pkgs[7].1 = "10".into();
    let e = snap(4, &e_pkgs);
    send(&producer, &router.inventory_raw, &d[1..]);
    send(&producer, &router.inventory_raw, &e);
    sent += d.len() - 1 + e.len();
    let out = read_all(
        &brokers,
        &router.enriched,
        sent + 1,
        Duration::from_secs(3),
        LIMIT,
    );
    assert_eq!(
        snapshots_on(&out),
        sent,
        "every chunk enriched exactly once"
    );
    assert_eq!(
        synthetic(&out),
        vec![(Action::Upgrade, "pkg-00500-libs".into(), "1.2.4".into())],
        "nothing inferred from a snapshot whose first chunk the restarted router never saw"
    );
}

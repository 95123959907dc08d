//! `pkgstream drift` at fleet scale: query time against host count.
//!
//! For each host count, the simulated fleet of `pkgstream simulate` (same
//! model, seed 1, 1,500 packages per host) is loaded into the real engine
//! under its own index prefix, then the release `pkgstream drift` is timed.
//!
//! Loading 15 million documents through Kafka, the router and the sink
//! would take hours on this machine, so the documents are built with the
//! sink's own code instead: each host's inventory *after* the simulated day
//! of traffic (patch wave with laggards, kernel updates, removals, rogue
//! rpm changes) becomes an `EnrichedSnapshot` that
//! `pkgstream_sinks::search::documents::snapshot_items` turns into bulk
//! items, exactly as the sink does for a host it knows nothing about. The
//! package-state items are scripted upserts whose stored script stores
//! `params.d` as the document; the bench sends that same `d` as a plain
//! `index` operation (same `_id`, same source), skipping only the painless
//! call. Host documents go through the sink's stored script unchanged.
//! Templates, mappings and scripts come from the sink's `setup`.
//!
//! Then, per query — whole fleet, `--group web`, `--package openssl-libs`,
//! `--expect openssl-libs=<patched>`, `--format prometheus` — the median
//! wall time of the `pkgstream drift` process over several runs, *cold*
//! (the engine's request, query and fielddata caches cleared before each
//! run; the OS page cache stays warm) and *warm* (repeated). It prints the
//! load rate, the index size on disk (`_cat/indices`), checks the report
//! against the simulator's expected drift, and deletes its indices and
//! templates at the end.
//!
//! Needs OpenSearch (`scripts/services.sh start opensearch`) and
//! `cargo build --release -p pkgstream`; then
//! `cargo bench -p pkgstream-benches --bench drift_scale` (1,000 and
//! 10,000 hosts; `PKGSTREAM_BENCH_DRIFT_HOSTS=1000,10000,20000`,
//! `PKGSTREAM_BENCH_DRIFT_PACKAGES`, `PKGSTREAM_BENCH_DRIFT_RUNS` override).
//! Without `--bench`: a 200-host smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::process::{Command, Stdio};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkgstream::simulate::catalog::{patched, GROUPS};
use pkgstream::simulate::fleet::{now_micros, SimHost};
use pkgstream::simulate::traffic::{facts, inventory_after, roles};
use pkgstream::simulate::{Fleet, FleetSpec};
use pkgstream_benches::release_pkgstream;
use pkgstream_schemas::{EnrichedSnapshot, Enrichment};
use pkgstream_sinks::config::SearchSinkConfig;
use pkgstream_sinks::search::client::{CallError, EngineClient};
use pkgstream_sinks::search::documents::{snapshot_items, Indices, SCRIPT_PACKAGE_UPSERT};
use pkgstream_sinks::search::setup::setup;
use pkgstream_tests::sinks::engine_url;
use serde_json::{json, Value};

/// Bulk bodies of about this many bytes.
const BODY_BYTES: usize = 8 << 20;
/// Bulk requests in flight.
const LANES: usize = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the router would attach to a host's events.
fn enrichment(h: &SimHost, at: i64) -> Enrichment<'static> {
    let group = h.group_name();
    Enrichment {
        hostgroup: Cow::Borrowed(group),
        environment: Cow::Borrowed(h.environment),
        owner: Some(Cow::Owned(format!("team-{group}"))),
        datacenter: Some(Cow::Borrowed(h.datacenter)),
        tags: Cow::Owned(
            [
                ("simulated".to_owned(), "true".to_owned()),
                (
                    "tier".to_owned(),
                    if h.environment == "prod" { "1" } else { "3" }.to_owned(),
                ),
            ]
            .into(),
        ),
        known_host: true,
        outside_maintenance_window: false,
        unexplained_rpm: false,
        routed_at: at,
    }
}

/// Rewrites the sink's package-state scripted upserts as plain `index`
/// operations carrying the document the script would store; everything
/// else (the host update) passes unchanged.
fn to_index_ops(body: &[u8], out: &mut Vec<u8>) {
    let upsert_prefix = format!(
        r#"{{"scripted_upsert":true,"upsert":{{}},"script":{{"id":"{SCRIPT_PACKAGE_UPSERT}","params":{{"d":"#
    );
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    while let (Some(action), Some(doc)) = (lines.next(), lines.next()) {
        let a = action
            .strip_prefix(br#"{"update":{"#.as_slice())
            .and_then(|a| a.strip_suffix(br#","retry_on_conflict":5}}"#.as_slice()));
        let d = doc
            .strip_prefix(upsert_prefix.as_bytes())
            .and_then(|d| d.strip_suffix(b"}}}".as_slice()));
        match (a, d) {
            (Some(a), Some(d)) => {
                out.extend_from_slice(br#"{"index":{"#);
                out.extend_from_slice(a);
                out.extend_from_slice(b"}}\n");
                out.extend_from_slice(d);
            }
            _ => {
                assert!(
                    !doc.starts_with(upsert_prefix.as_bytes()),
                    "the sink's bulk item format changed: {}",
                    String::from_utf8_lossy(action)
                );
                out.extend_from_slice(action);
                out.push(b'\n');
                out.extend_from_slice(doc);
            }
        }
        out.push(b'\n');
    }
}

fn post(client: &EngineClient, body: &[u8]) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.bulk(body) {
            Ok(r) if !r.errors => return,
            Ok(r) => {
                let bad: Vec<_> = r
                    .items
                    .iter()
                    .map(|i| i.status())
                    .filter(|s| s.status >= 300)
                    .collect();
                // Index operations are idempotent: resend the whole body.
                assert!(
                    bad.iter().all(|s| s.status == 429 || s.status >= 500) && attempt < 30,
                    "bulk item rejected: {} {}",
                    bad[0].status,
                    bad[0].reason()
                );
            }
            Err(CallError::Retry(e)) if attempt < 30 => {
                eprintln!("drift_scale: bulk retried: {e}");
            }
            Err(e) => panic!("bulk: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(500 * attempt));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Deletes the bench's indices and templates, also when a check fails.
struct Cleanup {
    client: EngineClient,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self
            .client
            .call("DELETE", &format!("/{}-*", self.prefix), None);
        let _ = self.client.call(
            "DELETE",
            &format!("/_index_template/{}-*", self.prefix),
            None,
        );
    }
}

struct Row {
    hosts: usize,
    docs: u64,
    store_bytes: u64,
    load_secs: f64,
    drift_pairs: usize,
    queries: Vec<(String, Duration, Duration)>,
}

fn run_one(bin: &std::path::Path, hosts: usize, packages: usize, runs: usize) -> Row {
    let prefix = format!("bench-drift-{hosts}-{}", std::process::id());
    let cfg = SearchSinkConfig {
        url: engine_url(),
        index_prefix: prefix.clone(),
        retention_days: 0,
        ..Default::default()
    };
    let client = EngineClient::new(&cfg).unwrap();
    let idx = Indices::new(&prefix);
    let _cleanup = Cleanup {
        client: client.clone(),
        prefix: prefix.clone(),
    };
    setup(&client, &idx, &cfg)
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let packages_index = idx.packages().to_owned();
    client
        .json(
            "PUT",
            &format!("/{packages_index}/_settings"),
            Some(&json!({"index": {"refresh_interval": "-1"}})),
        )
        .unwrap();

    let t = Instant::now();
    let fleet = Arc::new(
        Fleet::new(FleetSpec {
            hosts,
            packages,
            seed: 1,
            now: now_micros(),
        })
        .unwrap(),
    );
    let expected = facts(&fleet);
    let host_roles = roles(&fleet);
    println!(
        "drift_scale: {hosts} hosts × {packages} packages: fleet and expected facts in {:.1} s ({} package documents, {} drifted pairs expected)",
        t.elapsed().as_secs_f64(),
        expected.package_docs,
        expected.drift.len()
    );

    // Load: one thread builds bodies with the sink's code, LANES post them.
    let t = Instant::now();
    let (tx, rx) = sync_channel::<Vec<u8>>(LANES * 2);
    let rx = Arc::new(Mutex::new(rx));
    let posters: Vec<_> = (0..LANES)
        .map(|_| {
            let (rx, client) = (rx.clone(), client.clone());
            std::thread::spawn(move || loop {
                let body = rx.lock().unwrap().recv();
                match body {
                    Ok(b) => post(&client, &b),
                    Err(_) => return,
                }
            })
        })
        .collect();
    let gen_fleet = fleet.clone();
    let gen_idx = idx.clone();
    let generator = std::thread::spawn(move || {
        let empty = Default::default();
        let mut items = Vec::new();
        let mut body = Vec::with_capacity(BODY_BYTES + (2 << 20));
        let mut bytes = 0u64;
        for (h, role) in gen_fleet.hosts.iter().zip(host_roles) {
            let inv = inventory_after(&gen_fleet, h, role);
            let at = inv.taken_at.map_or(0, |t| t.0);
            let snapshot = EnrichedSnapshot::new(inv.into_snapshot(None), enrichment(h, at));
            items.clear();
            snapshot_items(&mut items, &gen_idx, &snapshot, &empty);
            to_index_ops(&items, &mut body);
            if body.len() >= BODY_BYTES {
                bytes += body.len() as u64;
                tx.send(std::mem::replace(
                    &mut body,
                    Vec::with_capacity(BODY_BYTES + (2 << 20)),
                ))
                .unwrap();
            }
        }
        if !body.is_empty() {
            bytes += body.len() as u64;
            tx.send(body).unwrap();
        }
        bytes
    });
    let bytes = generator.join().unwrap();
    for p in posters {
        p.join().unwrap();
    }
    client
        .json(
            "PUT",
            &format!("/{packages_index}/_settings"),
            Some(&json!({"index": {"refresh_interval": null}})),
        )
        .unwrap();
    client
        .json("POST", &format!("/{prefix}-*/_refresh"), None)
        .unwrap();
    let load_secs = t.elapsed().as_secs_f64();
    client
        .json("POST", &format!("/{packages_index}/_flush"), None)
        .unwrap();
    let cat = client
        .json(
            "GET",
            &format!("/_cat/indices/{packages_index}?format=json&bytes=b"),
            None,
        )
        .unwrap();
    let docs: u64 = cat[0]["docs.count"].as_str().unwrap().parse().unwrap();
    let store_bytes: u64 = cat[0]["store.size"].as_str().unwrap().parse().unwrap();
    assert_eq!(docs, expected.package_docs, "package documents loaded");
    println!(
        "drift_scale: loaded {docs} documents ({:.1} GiB of bulk bodies) in {load_secs:.0} s: {:.0} docs/s; index {:.2} GiB on disk ({:.0} bytes/doc)",
        bytes as f64 / (1u64 << 30) as f64,
        docs as f64 / load_secs,
        store_bytes as f64 / (1u64 << 30) as f64,
        store_bytes as f64 / docs as f64
    );

    let drift = |args: &[&str]| -> (Duration, Vec<u8>) {
        let t = Instant::now();
        let out = Command::new(bin)
            .arg("drift")
            .args(args)
            .env_remove("PKGSTREAM_CONFIG")
            .env("PKGSTREAM__SEARCH_SINK__URL", engine_url())
            .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &prefix)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "pkgstream drift {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (d, out.stdout)
    };

    // The report is the one the simulator expects (outlier lists capped at 20).
    let (_, out) = drift(&["--format", "json"]);
    let report: Value = serde_json::from_slice(&out).unwrap();
    let got = report["drift"].as_array().unwrap();
    assert_eq!(got.len(), expected.drift.len(), "drifted pairs");
    for (g, e) in got.iter().zip(&expected.drift) {
        assert_eq!(g["hostgroup"], e.hostgroup.as_str());
        assert_eq!(g["package"], e.package.as_str());
        assert_eq!(g["versions"], serde_json::to_value(&e.versions).unwrap());
        assert_eq!(g["outliers"], e.outliers);
        let first: Vec<&str> = e
            .outlier_hosts
            .iter()
            .take(20)
            .map(String::as_str)
            .collect();
        assert_eq!(g["outlier_hosts"], json!(first));
    }
    assert_eq!(report["checked"], expected.checked);

    let openssl = fleet.catalog.base_package("openssl-libs").unwrap();
    let expect = format!("openssl-libs={}", patched(&openssl.evr).label());
    let group = GROUPS[0].0;
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("whole fleet".into(), vec![]),
        (format!("--group {group}"), vec!["--group", group]),
        (
            "--package openssl-libs".into(),
            vec!["--package", "openssl-libs"],
        ),
        (format!("--expect {expect}"), vec!["--expect", &expect]),
        ("--format prometheus".into(), vec!["--format", "prometheus"]),
    ];
    let mut queries = Vec::new();
    for (name, args) in &cases {
        let cold: Vec<Duration> = (0..runs)
            .map(|_| {
                client
                    .json("POST", &format!("/{prefix}-*/_cache/clear"), None)
                    .unwrap();
                drift(args).0
            })
            .collect();
        drift(args);
        let warm: Vec<Duration> = (0..runs).map(|_| drift(args).0).collect();
        let (c, w) = (median(cold), median(warm));
        println!(
            "drift_scale: {hosts} hosts, pkgstream drift {name}: cold {} / warm {} (median of {runs})",
            fmt(c),
            fmt(w)
        );
        queries.push((name.clone(), c, w));
    }
    Row {
        hosts,
        docs,
        store_bytes,
        load_secs,
        drift_pairs: expected.drift.len(),
        queries,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let hosts: Vec<usize> = std::env::var("PKGSTREAM_BENCH_DRIFT_HOSTS")
        .unwrap_or_else(|_| if bench { "1000,10000" } else { "200" }.into())
        .split(',')
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    let packages = env_or("PKGSTREAM_BENCH_DRIFT_PACKAGES", 1500);
    let runs = env_or("PKGSTREAM_BENCH_DRIFT_RUNS", if bench { 5 } else { 1 });
    if ureq::get(&engine_url()).call().is_err() {
        println!(
            "drift_scale: skipped, the engine at {} is unreachable (scripts/services.sh start opensearch)",
            engine_url()
        );
        return;
    }
    let Some(bin) = release_pkgstream("drift_scale") else {
        return;
    };
    let rows: Vec<Row> = hosts
        .iter()
        .map(|&h| run_one(&bin, h, packages, runs.max(1)))
        .collect();
    let Some(first) = rows.first() else {
        return;
    };
    println!("drift_scale: median wall time of `pkgstream drift` (cold / warm):");
    let names: Vec<&str> = first.queries.iter().map(|q| q.0.as_str()).collect();
    println!(
        "| hosts | package docs | index on disk | load docs/s | drifted pairs | {} |",
        names.join(" | ")
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: |{}",
        " ---: |".repeat(names.len())
    );
    for r in &rows {
        let q: Vec<String> = r
            .queries
            .iter()
            .map(|(_, c, w)| format!("{} / {}", fmt(*c), fmt(*w)))
            .collect();
        println!(
            "| {} | {} | {:.2} GiB | {:.0} | {} | {} |",
            r.hosts,
            r.docs,
            r.store_bytes as f64 / (1u64 << 30) as f64,
            r.docs as f64 / r.load_secs,
            r.drift_pairs,
            q.join(" | ")
        );
    }
}

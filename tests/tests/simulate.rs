//! `pkgstream simulate` end to end against real Kafka and OpenSearch: a
//! 30-host × 200-package fleet written through the producer's spool and
//! flush code, enriched by `pkgstream router` (host metadata from the
//! compacted hosts topic the simulator publishes), indexed by `pkgstream
//! sink search`; then the search engine must hold exactly what the
//! simulator says it produced: one history document per change, hosts ×
//! packages package documents after the snapshots and the expected number
//! after the traffic, and `pkgstream drift --format json` naming exactly
//! the hosts the patch wave left behind (and every other drifted pair).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pkgstream_tests::router::RouterEnv;
use pkgstream_tests::sinks::{count, engine_url, wait_count, wait_for, SinkEnv};
use pkgstream_tests::{binary, kafka_brokers};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);
const HOSTS: u64 = 30;
const PACKAGES: u64 = 200;

fn pkgstream(vars: &[(String, String)], args: &[&str]) -> Output {
    let out = Command::new(binary("pkgstream"))
        .args(args)
        .env_remove("PKGSTREAM_CONFIG")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run pkgstream");
    assert!(
        out.status.success(),
        "pkgstream {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn simulated_fleet_through_router_and_sink_is_exact() {
    let brokers = kafka_brokers();
    let router = RouterEnv::new(&brokers, "simulate");
    let sink_env = SinkEnv::new(&brokers, "simulate");
    let mut vars = router.vars.clone();
    vars.push(("PKGSTREAM__SEARCH_SINK__URL".into(), engine_url()));
    vars.push((
        "PKGSTREAM__SEARCH_SINK__INDEX_PREFIX".into(),
        sink_env.prefix.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let facts_path = dir.path().join("facts.json");
    let at = chrono::Utc::now()
        .checked_sub_signed(chrono::Duration::minutes(1))
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let sim = |phase: &str| {
        let spool = dir.path().join(format!("spool-{phase}"));
        json(&pkgstream(
            &vars,
            &[
                "simulate",
                "--hosts",
                &HOSTS.to_string(),
                "--packages",
                &PACKAGES.to_string(),
                "--seed",
                "7",
                "--at",
                &at,
                "--spool-dir",
                spool.to_str().unwrap(),
                "--facts",
                facts_path.to_str().unwrap(),
                phase,
            ],
        ))
    };

    // The sink first (it creates the indices), reading the router's output.
    let sink = sink_env.start(
        "search",
        &[(
            "PKGSTREAM__TOPICS__CHANGES_ENRICHED",
            router.enriched.clone(),
        )],
    );

    // 1. Host metadata and one snapshot per host; then the router.
    let s1 = sim("--no-traffic");
    assert_eq!(s1["hosts"], HOSTS);
    assert_eq!(s1["snapshots"], HOSTS);
    assert_eq!(s1["changes"], 0);
    assert_eq!(s1["spools"], HOSTS, "one spool per host");
    let mut router_proc = router.start();
    router.wait_ready(LIMIT);
    wait_count(&sink_env.packages(), HOSTS * PACKAGES, LIMIT);
    wait_count(&sink_env.hosts(), HOSTS, LIMIT);
    // Every snapshot enriched with the group the hosts topic gave it.
    let unknown = count_query(
        &sink_env.hosts(),
        serde_json::json!({"term": {"pkgstream.hostgroup": "unassigned"}}),
    );
    assert_eq!(unknown, 0, "hosts without their metadata");

    // 2. The day of traffic (same seed and time: the same fleet).
    let s2 = sim("--no-snapshots");
    let facts: Value = serde_json::from_slice(&std::fs::read(&facts_path).unwrap()).unwrap();
    let changes = facts["changes"].as_u64().unwrap();
    assert_eq!(s2["changes"], changes);
    assert_eq!(s2["snapshots"], 0);
    assert_eq!(s1["package_docs"], s2["package_docs"]);
    assert!(changes > 200, "a patch wave over 30 hosts: {changes}");
    let lagging = facts["lagging_hosts"].as_array().unwrap();
    assert!(!lagging.is_empty());
    println!(
        "simulated: {HOSTS} hosts × {PACKAGES} packages, {changes} changes {}, {} lagging, {} drifted pairs, {} package docs after the traffic",
        facts["by_kind"], lagging.len(), facts["drift"].as_array().unwrap().len(), facts["package_docs"]
    );

    // History: exactly one document per change.
    wait_count(&sink_env.changes(), changes, LIMIT);
    // Package state: removals gone, the rogue install added.
    let docs = facts["package_docs"].as_u64().unwrap();
    wait_for("the package state after the traffic", LIMIT, || {
        count(&sink_env.packages()) == docs
    });
    assert_ne!(
        docs,
        HOSTS * PACKAGES,
        "the traffic removes and installs packages"
    );
    let removed = count_query(
        &sink_env.packages(),
        serde_json::json!({"term": {"package.name": "telnet"}}),
    );
    assert_eq!(
        removed,
        HOSTS - facts["by_kind"]["cleanup"].as_u64().unwrap_or(0)
    );

    // Drift: exactly the pairs, versions and outlier hosts the simulator derived.
    let out = pkgstream(
        &vars,
        &["drift", "--format", "json", "--max-outliers", "1000"],
    );
    let report = json(&out);
    assert_eq!(report["drift"], facts["drift"], "drift report");
    assert_eq!(report["checked"], facts["checked"]);
    assert_eq!(report["stale_hosts"], serde_json::json!([]));
    assert_eq!(report["contradicted_hosts"], serde_json::json!([]));
    assert_eq!(report["stale_count"], 0);
    assert_eq!(report["contradicted_count"], 0);
    // The patch wave's laggards, by name, for openssl-libs in every group.
    let mut named: Vec<String> = report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["package"] == "openssl-libs")
        .flat_map(|d| d["outlier_hosts"].as_array().unwrap().clone())
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    named.sort();
    let expected: Vec<String> = lagging
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, expected, "openssl-libs outliers = the lagging hosts");

    // The rogue changes are the plain-rpm ones, outside the maintenance windows.
    let out = pkgstream(
        &vars,
        &[
            "changes",
            "--since",
            "3d",
            "--outside-window",
            "--json",
            "--limit",
            "10000",
        ],
    );
    let outside = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert_eq!(outside, facts["outside_window"].as_u64().unwrap());
    let out = pkgstream(
        &vars,
        &[
            "changes", "--since", "3d", "--source", "rpm", "--json", "--limit", "10000",
        ],
    );
    let rpm = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert_eq!(rpm, facts["rogue"].as_array().unwrap().len() as u64);

    // Bad input: a clear error, non-zero exit.
    let bad = Command::new(binary("pkgstream"))
        .args(["simulate", "--hosts", "0"])
        .env_remove("PKGSTREAM_CONFIG")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--hosts 0"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    router_proc.kill().ok();
    router_proc.wait().ok();
    assert!(sink.stop().success());
}

fn count_query(index: &str, query: Value) -> u64 {
    pkgstream_tests::sinks::engine(
        "POST",
        &format!("/{index}/_count"),
        Some(serde_json::json!({ "query": query })),
    )["count"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_missing_hosts_topic_is_created_compacted() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let brokers = kafka_brokers();
    let mut router = RouterEnv::new(&brokers, "simulate-compact");
    router.hosts = pkgstream_tests::unique("simulate-compact-hosts-new");
    for (k, v) in router.vars.iter_mut() {
        if k == "PKGSTREAM__TOPICS__HOSTS" {
            *v = router.hosts.clone();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = json(&pkgstream(
        &router.vars,
        &[
            "simulate",
            "--hosts",
            "3",
            "--packages",
            "64",
            "--no-traffic",
            "--spool-dir",
            dir.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(out["snapshots"], 3);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        pkgstream_tests::client_config(&brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs = rt
        .block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(&router.hosts)],
            &AdminOptions::new(),
        ))
        .unwrap();
    let config = configs[0].as_ref().unwrap();
    assert_eq!(
        config
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref()),
        Some("compact")
    );
}

//! The search sink against real Kafka and OpenSearch: exact history, the
//! package state equal to the one computed from the events, host documents,
//! a `kill -9` mid-stream,
//! a replay from the start that changes nothing, items rejected with 429
//! retried to exactly once, and a mapping conflict in the DLQ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::read_all;
use pkgstream_tests::sinks::*;

const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn exact_history_state_hosts_and_replay() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-exact");
    let sc = scenario(&env.prefix, 200, 60, 40, 20);
    let records = sc.records();
    let distinct = sc.changes.len() as u64;
    env.produce(&records);

    // kill -9 after the first acknowledged batches: the restarted sink
    // reads again what was not committed (at-least-once delivery), and the
    // ids make that exactly once in the index.
    let mut sink = env.start(
        "search",
        &[("PKGSTREAM__SEARCH_SINK__BATCH_EVENTS", "500".into())],
    );
    wait_for("the first batches", LIMIT, || count(&env.changes()) >= 2000);
    sink.child.0.kill().unwrap();
    sink.child.0.wait().unwrap();
    let sink = env.start("search", &[]);
    wait_count(&env.changes(), distinct, LIMIT);
    let expected = sc.expected_state();
    wait_state(&env.packages(), &expected, LIMIT);
    // Both months the scenario spans have their index.
    let indices = engine(
        "GET",
        &format!("/_cat/indices/{}?format=json", env.changes()),
        None,
    );
    let names: BTreeSet<String> = indices
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            format!("{}-changes-2026.10", env.prefix),
            format!("{}-changes-2026.11", env.prefix)
        ]
        .into()
    );

    // One document per change, exactly as reported.
    let c = &sc.changes[17];
    let doc = engine(
        "GET",
        &format!(
            "/{}-changes-2026.10/_doc/{}",
            env.prefix,
            c.event_id.to_hex()
        ),
        None,
    );
    let src = &doc["_source"];
    assert_eq!(src["host"]["id"], c.host.machine_id.as_ref());
    assert_eq!(src["package"]["name"], c.package.name.as_ref());
    assert_eq!(
        src["package"]["evr"],
        format!("0:{}-{}", c.package.version, c.package.release)
    );
    assert_eq!(src["event"]["action"], c.action.symbol().to_lowercase());
    assert_eq!(src["user"]["name"], "alice");
    assert_eq!(
        src["process"]["command_line"],
        c.transaction.command_line.as_deref().unwrap()
    );
    assert_eq!(
        src["pkgstream"]["hostgroup"],
        c.enrichment.hostgroup.as_ref()
    );
    assert_eq!(src["event_time_us"], c.event_time);

    // One document per host: last seen, group; snapshot facts where one came.
    let hosts = all_docs(&env.hosts());
    assert_eq!(hosts.len(), 200);
    for s in &sc.snapshots {
        let h = &hosts[s.host.machine_id.as_ref()];
        assert_eq!(h["drift_count"], 3, "{h}");
        assert_eq!(h["package_count"], s.packages.len());
        assert_eq!(h["last_snapshot_us"], s.taken_at);
        assert_eq!(h["last_seen_us"], s.taken_at);
    }
    let last = sc
        .changes
        .iter()
        .filter(|c| c.host.machine_id == sc.changes[0].host.machine_id)
        .map(|c| c.event_time)
        .max()
        .unwrap();
    let h0 = &hosts[sc.changes[0].host.machine_id.as_ref()];
    assert_eq!(h0["pkgstream"]["hostgroup"], format!("{}-g0", env.prefix));
    if sc
        .snapshots
        .iter()
        .all(|s| s.host.machine_id != sc.changes[0].host.machine_id)
    {
        assert_eq!(h0["last_seen_us"], last);
    }
    let total = records.len() as f64;
    assert!(sink.stop().success(), "SIGTERM: exit 0");

    // Replay: a new consumer group reads the topic from the start again.
    let replay = env.start(
        "search",
        &[(
            "PKGSTREAM__SEARCH_SINK__GROUP_ID",
            format!("{}-replay", env.prefix),
        )],
    );
    wait_for("the replay acknowledged", LIMIT, || {
        replay.metric("pkgstream_search_sink_events_total{outcome=\"indexed\"}") == total
    });
    assert_eq!(
        count(&env.changes()),
        distinct,
        "replay added history documents"
    );
    assert_eq!(
        indexed_state(&env.packages()),
        expected,
        "replay changed the package state"
    );
    assert_eq!(count(&env.hosts()), 200);
    assert!(replay.stop().success());
    kibana_saved_searches_answer(&env, &sc);
    history_and_changes_answer(&env, &sc);
    drift_answers(&env, &sc);
    assert!(
        read_all(
            &env.brokers,
            &env.dlq,
            0,
            Duration::from_secs(1),
            Duration::from_secs(5)
        )
        .is_empty(),
        "nothing in the DLQ"
    );
    println!("sink exact: {} records ({distinct} changes, {} snapshots, sink killed once) -> {distinct} history docs, {} state docs", records.len(), sc.snapshots.len(), expected.len());
}

#[test]
fn items_rejected_with_429_are_retried_to_exactly_once() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-429");
    let proxy = RejectingProxy::start(&engine_url(), 3);
    let sc = scenario(&env.prefix, 50, 40, 20, 5);
    env.produce(&sc.records());
    let sink = env.start(
        "search",
        &[
            ("PKGSTREAM__SEARCH_SINK__URL", proxy.url.clone()),
            ("PKGSTREAM__SEARCH_SINK__RETRY_INITIAL_MS", "20".into()),
        ],
    );
    wait_count(&env.changes(), sc.changes.len() as u64, LIMIT);
    let expected = sc.expected_state();
    wait_state(&env.packages(), &expected, LIMIT);
    let rejected = proxy.rejected.load(Ordering::Relaxed);
    assert!(rejected > 0 && proxy.bulks.load(Ordering::Relaxed) > 1);
    let retried = sink.metric("pkgstream_search_sink_items_retried_total");
    // Every item answered 429 was sent again (and, behind it, the later
    // items on the same document, so the state sees events in order).
    assert!(
        retried as u64 >= rejected,
        "retried {retried} < rejected {rejected}"
    );
    assert!(sink.stop().success());
    println!(
        "sink 429: {} changes, {rejected} items answered 429, {retried} items sent again, {} bulks",
        sc.changes.len(),
        proxy.bulks.load(Ordering::Relaxed)
    );
}

#[test]
fn a_mapping_conflict_goes_to_the_dlq_and_the_rest_flows() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-dlq");
    let mut sc = scenario(&env.prefix, 20, 10, 10, 0);
    let (bad_key, bytes) = rack_conflict(&mut sc, 150);
    let records = sc.records();
    let (first, rest) = records.split_at(100);
    env.produce(first);
    let sink = env.start("search", &[]);
    wait_count(&env.changes(), 100, LIMIT);
    // `labels.rack` is a keyword now; a tag `rack.unit` needs it to be an object.
    let mut second = vec![(bad_key, bytes.clone())];
    second.extend_from_slice(rest);
    env.produce(&second);
    wait_count(&env.changes(), 200, LIMIT);
    let dlq = read_all(&env.brokers, &env.dlq, 1, Duration::from_secs(3), LIMIT);
    assert_eq!(dlq.len(), 1, "exactly the conflicting event");
    assert_eq!(dlq[0].value, bytes, "the original bytes");
    assert_eq!(dlq[0].headers["pkgstream.error.code"], "index_rejected");
    let reason = &dlq[0].headers["pkgstream.error.reason"];
    assert!(
        reason.contains("rack")
            && (reason.contains("mapper_parsing_exception")
                || reason.contains("illegal_argument_exception")),
        "{reason}"
    );
    assert_eq!(dlq[0].headers["pkgstream.source.topic"], env.enriched);
    assert_eq!(
        sink.metric("pkgstream_search_sink_events_total{outcome=\"dlq\"}"),
        1.0
    );
    assert!(sink.stop().success());
    // The dead letter's offset was committed: a restarted sink neither
    // sends it again nor indexes anything twice. Proven by what it does
    // handle: one new change produced after the restart is the one and
    // only event it counts (a sink that re-read the topic, or an endpoint
    // that does not answer, fails this).
    let again = env.start("search", &[]);
    let mut marker = sc.changes[0].clone();
    marker.event_id = pkgstream_schemas::EventId([0xee; 16]);
    marker.event_time += 86_400_000_000;
    let mut bytes = Vec::new();
    pkgstream_schemas::Encoder::new()
        .encode_enriched_change(&marker, &mut bytes)
        .unwrap();
    env.produce(&[(marker.host.machine_id.as_bytes().to_vec(), bytes)]);
    wait_count(&env.changes(), 201, LIMIT);
    assert_eq!(
        again.metric("pkgstream_search_sink_events_total{outcome=\"indexed\"}"),
        1.0,
        "the restarted sink handled exactly the new change"
    );
    assert_eq!(
        again.metric("pkgstream_search_sink_events_total{outcome=\"dlq\"}"),
        0.0
    );
    assert!(again.stop().success());
    assert_eq!(
        read_all(&env.brokers, &env.dlq, 1, Duration::from_secs(2), LIMIT).len(),
        1
    );
    println!("sink dlq: reason = {reason}");
}

/// Every saved search in `sinks/kibana/pkgstream.ndjson`, run against the
/// live engine on this test's indices, counts exactly what the scenario has.
fn kibana_saved_searches_answer(env: &SinkEnv, sc: &Scenario) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sinks/kibana/pkgstream.ndjson"
    );
    let objects: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let patterns: std::collections::HashMap<&str, &str> = objects
        .iter()
        .filter(|o| o["type"] == "index-pattern")
        .map(|o| {
            (
                o["id"].as_str().unwrap(),
                o["attributes"]["title"].as_str().unwrap(),
            )
        })
        .collect();
    let watched = ["kernel", "kernel-core", "openssl", "openssl-libs", "glibc"];
    let expected: std::collections::HashMap<&str, usize> = [
        (
            "pkgstream-unmanaged",
            sc.changes
                .iter()
                .filter(|c| c.enrichment.unexplained_rpm)
                .count(),
        ),
        (
            "pkgstream-outside-window",
            sc.changes
                .iter()
                .filter(|c| c.enrichment.outside_maintenance_window)
                .count(),
        ),
        (
            "pkgstream-removals",
            sc.changes
                .iter()
                .filter(|c| {
                    matches!(
                        c.action,
                        pkgstream_schemas::Action::Remove | pkgstream_schemas::Action::Obsolete
                    )
                })
                .count(),
        ),
        ("pkgstream-drifted-hosts", sc.snapshots.len()),
        (
            "pkgstream-watched-state",
            sc.expected_state()
                .keys()
                .filter(|k| watched.iter().any(|w| k.ends_with(&format!("/{w}.x86_64"))))
                .count(),
        ),
    ]
    .into();
    let mut checked = 0;
    for o in objects.iter().filter(|o| o["type"] == "search") {
        let id = o["id"].as_str().unwrap();
        let source: serde_json::Value = serde_json::from_str(
            o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let query = source["query"]["query"].as_str().unwrap();
        let pattern = patterns[o["references"][0]["id"].as_str().unwrap()];
        let index = pattern.replacen("pkgstream", &env.prefix, 1);
        let r = engine(
            "POST",
            &format!("/{index}/_count"),
            Some(serde_json::json!({"query": {"query_string": {"query": query}}})),
        );
        let n = r["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("saved search {id} ({query}) failed: {r}"));
        assert!(n > 0, "saved search {id} finds nothing");
        assert_eq!(n as usize, expected[id], "saved search {id}: {query}");
        checked += 1;
    }
    assert_eq!(
        checked,
        expected.len(),
        "every saved search has an expected count"
    );
    println!("kibana: {checked} saved searches answered with the expected counts");
}

/// `pkgstream history` and `pkgstream changes` on this test's indices:
/// exact rows, time order, and clear errors for bad input.
fn history_and_changes_answer(env: &SinkEnv, sc: &Scenario) {
    let run = |args: &[&str], url: &str| {
        let out = std::process::Command::new(pkgstream_tests::binary("pkgstream"))
            .args(args)
            .env_remove("PKGSTREAM_CONFIG")
            .env("PKGSTREAM__SEARCH_SINK__URL", url)
            .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &env.prefix)
            .output()
            .unwrap();
        let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (
            out.status.success(),
            docs,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = engine_url();
    let since = "2026-10-01T00:00:00Z";
    // History of host 3, oldest first, exactly its changes.
    let host = &sc
        .changes
        .iter()
        .find(|c| c.host.hostname.ends_with("00003.dc1"))
        .unwrap()
        .host;
    let want: Vec<String> = sc
        .changes
        .iter()
        .filter(|c| c.host.machine_id == host.machine_id)
        .map(|c| c.event_id.to_hex())
        .collect();
    let (ok, docs, err) = run(
        &["history", &host.hostname, "--since", since, "--json"],
        &url,
    );
    assert!(ok, "{err}");
    let got: Vec<&str> = docs
        .iter()
        .map(|d| d["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "history of {}", host.hostname);
    // The same by machine id, as a table: a header and one row per change.
    let out = std::process::Command::new(pkgstream_tests::binary("pkgstream"))
        .args(["history", &host.machine_id, "--since", since])
        .env("PKGSTREAM__SEARCH_SINK__URL", &url)
        .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &env.prefix)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), want.len() + 1, "{table}");
    assert!(table.lines().nth(1).unwrap().contains("alice"), "{table}");
    // Fleet-wide filters.
    let (ok, docs, err) = run(
        &[
            "changes", "--since", since, "--source", "rpm", "--limit", "100000", "--json",
        ],
        &url,
    );
    assert!(ok, "{err}");
    assert_eq!(
        docs.len(),
        sc.changes
            .iter()
            .filter(|c| c.source == pkgstream_schemas::Source::Rpm)
            .count()
    );
    assert!(docs.iter().all(|d| d["process"]["command_line"]
        .as_str()
        .unwrap()
        .starts_with("rpm -U")));
    assert!(
        docs.windows(2)
            .all(|w| w[0]["event_time_us"].as_i64() <= w[1]["event_time_us"].as_i64()),
        "time order"
    );
    let (ok, docs, _) = run(
        &[
            "changes",
            "--since",
            since,
            "--action",
            "remove",
            "--outside-window",
            "--limit",
            "100000",
            "--json",
        ],
        &url,
    );
    assert!(ok);
    assert_eq!(
        docs.len(),
        sc.changes
            .iter()
            .filter(|c| c.action == pkgstream_schemas::Action::Remove
                && c.enrichment.outside_maintenance_window)
            .count()
    );
    // Bad input: a clear line and a non-zero exit, not an empty table.
    let (ok, docs, err) = run(&["history", "no-such-host"], &url);
    assert!(!ok && docs.is_empty());
    assert!(
        err.contains("unknown host 'no-such-host'") && err.contains("200 hosts known"),
        "{err}"
    );
    let (ok, _, err) = run(&["changes", "--since", "2099-01-01T00:00:00Z"], &url);
    assert!(!ok && err.contains("is in the future"), "{err}");
    let (ok, _, err) = run(&["changes", "--since", "1d", "--until", "2d"], &url);
    assert!(
        !ok && err.contains("--since must be before --until"),
        "{err}"
    );
    let (ok, _, err) = run(&["changes", "--action", "erase"], &url);
    assert!(!ok && err.contains("--action 'erase'"), "{err}");
    let (ok, _, err) = run(&["changes"], "http://127.0.0.1:1");
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("http://127.0.0.1:1"),
        "{err}"
    );
    println!(
        "queries: history of {} ({} changes), rpm and removal filters, 5 kinds of bad input",
        host.hostname,
        want.len()
    );
}

/// `pkgstream drift` on this test's indices equals the drift computed from
/// the expected state; bad groups and packages are named errors.
fn drift_answers(env: &SinkEnv, sc: &Scenario) {
    use std::collections::BTreeMap;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(pkgstream_tests::binary("pkgstream"))
            .arg("drift")
            .args(args)
            .env_remove("PKGSTREAM_CONFIG")
            .env("PKGSTREAM__SEARCH_SINK__URL", engine_url())
            .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &env.prefix)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let group_of: BTreeMap<&str, &str> = sc
        .changes
        .iter()
        .map(|c| (c.host.machine_id.as_ref(), c.enrichment.hostgroup.as_ref()))
        .collect();
    // (group, package) -> version -> hosts, from the state the test computed.
    let mut want: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for (key, evr) in sc.expected_state() {
        let (mid, rest) = key.split_once('/').unwrap();
        let name = rest.strip_suffix(".x86_64").unwrap();
        if name == "openssl-libs" || name == "kernel-core" {
            *want
                .entry((group_of[mid].to_owned(), name.to_owned()))
                .or_default()
                .entry(evr)
                .or_default() += 1;
        }
    }
    let drifted: BTreeMap<(String, String), BTreeMap<String, u64>> = want
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!drifted.is_empty(), "the scenario has drift");
    let (ok, out, err) = run(&[
        "--package",
        "openssl-libs",
        "--package",
        "kernel-core",
        "--stale",
        "2026-11-01T00:00:00Z",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["checked"], want.len());
    let got: BTreeMap<(String, String), BTreeMap<String, u64>> = r["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let versions = d["versions"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(v, n)| (v.clone(), n.as_u64().unwrap()))
                .collect();
            (
                (
                    d["hostgroup"].as_str().unwrap().to_owned(),
                    d["package"].as_str().unwrap().to_owned(),
                ),
                versions,
            )
        })
        .collect();
    assert_eq!(got, drifted);
    for d in r["drift"].as_array().unwrap() {
        let versions = &drifted[&(
            d["hostgroup"].as_str().unwrap().to_owned(),
            d["package"].as_str().unwrap().to_owned(),
        )];
        let top = versions.values().max().unwrap();
        assert_eq!(
            d["outliers"].as_u64().unwrap(),
            versions.values().sum::<u64>() - top,
            "{d}"
        );
        assert_eq!(
            d["outlier_hosts"].as_array().unwrap().len() as u64,
            d["outliers"].as_u64().unwrap().min(20)
        );
    }
    // 180 hosts never sent a snapshot; 20 snapshots contradicted the reported state.
    assert_eq!(r["stale_hosts"].as_array().unwrap().len(), 180);
    assert_eq!(r["stale_count"], 180);
    assert_eq!(r["contradicted_hosts"].as_array().unwrap().len(), 20);
    assert_eq!(r["contradicted_count"], 20);
    // An expected version makes every other version an outlier.
    let ((g, p), versions) = drifted.iter().next().unwrap();
    let (v, n) = versions.iter().next().unwrap();
    let (ok, out, err) = run(&[
        "--group",
        g,
        "--package",
        p,
        "--expect",
        &format!("{p}={v}"),
        "--format",
        "prometheus",
    ]);
    assert!(ok, "{err}");
    let outliers = versions.values().sum::<u64>() - n;
    assert!(
        out.contains(&format!(
            "pkgstream_drift_outlier_hosts{{hostgroup=\"{g}\",package=\"{p}\"}} {outliers}"
        )),
        "{out}"
    );
    let (ok, out, _) = run(&["--group", g]);
    assert!(ok && out.starts_with("drift: "), "{out}");
    // Bad input.
    let (ok, _, err) = run(&["--group", "no-such-group"]);
    assert!(
        !ok && err.contains("unknown host group 'no-such-group'"),
        "{err}"
    );
    let (ok, _, err) = run(&["--package", "no-such-package"]);
    assert!(
        !ok && err.contains("no host has package no-such-package"),
        "{err}"
    );
    let (ok, _, err) = run(&["--expect", "openssl-libs"]);
    assert!(!ok && err.contains("PACKAGE=VERSION"), "{err}");
    println!(
        "drift: {} drifted (group, package) pairs of {}, exact versions and outliers",
        drifted.len(),
        want.len()
    );
}

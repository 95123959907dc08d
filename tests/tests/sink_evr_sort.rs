//! `package.evr_sort` in the real engine: the package documents sorted by
//! it come out in rpm's order (`evrcmp`), pre-releases (`~`) and snapshots
//! (`^`) included; a document an older sink wrote with another key gets
//! the new one from the host's next snapshot, without counting as drift.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pkgstream_schemas::rpmvercmp::evrcmp;
use pkgstream_schemas::{snapshot_id, Encoder, EnrichedSnapshot, InventorySnapshot};
use pkgstream_tests::kafka_brokers;
use pkgstream_tests::sinks::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn package_documents_sort_by_evr_sort_in_rpm_order_and_a_snapshot_refreshes_old_keys() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-evrsort");
    // One host per version, each installing pkg-0 at that version.
    let versions: [(Option<i32>, &str, &str); 12] = [
        (None, "1.0", "1.el9"),
        (None, "1.0~rc1", "1.el9"),
        (None, "1.0^git1", "1.el9"),
        (None, "1.0.1", "1.el9"),
        (None, "1.0a", "1.el9"),
        (None, "1.0~rc1~git2", "1.el9"),
        (None, "1.10", "1.el9"),
        (None, "1.9", "1.el9"),
        (Some(1), "0.1", "1.el9"),
        (None, "1.0", "10.el9"),
        (None, "1.0", "9.el9"),
        (None, "1.0^20160101", "1.el9"),
    ];
    let mut sc = scenario(&env.prefix, versions.len() as u64, 1, 1, 0);
    for (c, (e, v, r)) in sc.changes.iter_mut().zip(versions) {
        c.package.epoch = e;
        c.package.version = v.to_owned().into();
        c.package.release = r.to_owned().into();
    }
    env.produce(&sc.records());
    let sink = env.start("search", &[]);
    wait_count(&env.packages(), versions.len() as u64, LIMIT);

    let r = engine(
        "POST",
        &format!("/{}/_search", env.packages()),
        Some(
            json!({"size": 100, "sort": [{"package.evr_sort": "asc"}], "_source": ["package.evr"]}),
        ),
    );
    let got: Vec<String> = r["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"]["package"]["evr"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<(Option<i32>, &str, &str)> = versions.to_vec();
    want.sort_by(|a, b| evrcmp(*a, *b));
    let want: Vec<String> = want
        .iter()
        .map(|(e, v, r)| format!("{}:{v}-{r}", e.unwrap_or(0)))
        .collect();
    assert_eq!(got, want, "sorted by package.evr_sort in the engine");
    assert_eq!(want[0], "0:1.0~rc1~git2-1.el9");

    // An older sink's key on host 0's document: the next snapshot (same
    // version) rewrites it, and the host's drift stays 0.
    let c = &sc.changes[0];
    let id = format!(
        "{}/{}.{}",
        c.host.machine_id, c.package.name, c.package.arch
    );
    let path_id = id.replace('/', "%2F");
    let new_key = all_docs(&env.packages())[&id]["package"]["evr_sort"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_key = "0000000000:0000000001.0000000000-0000000001.el0000000009";
    engine(
        "POST",
        &format!("/{}/_update/{path_id}?refresh=true", env.packages()),
        Some(json!({"doc": {"package": {"evr_sort": old_key}}})),
    );
    let taken_at = c.event_time + 60_000_000;
    let snap = EnrichedSnapshot::new(
        InventorySnapshot {
            snapshot_id: snapshot_id(&c.host.machine_id, taken_at),
            taken_at,
            host: c.host.clone(),
            packages: vec![c.package.clone()],
            chunk: None,
        },
        c.enrichment.clone(),
    );
    let mut bytes = Vec::new();
    Encoder::new()
        .encode_enriched_snapshot(&snap, &mut bytes)
        .unwrap();
    env.produce(&[(c.host.machine_id.as_bytes().to_vec(), bytes)]);
    wait_for("the snapshot on the host document", LIMIT, || {
        all_docs(&env.hosts())
            .get(c.host.machine_id.as_ref())
            .is_some_and(|h| h["last_snapshot_us"] == taken_at)
    });
    let doc = &all_docs(&env.packages())[&id];
    assert_eq!(doc["package"]["evr_sort"], new_key.as_str(), "{doc}");
    assert_eq!(doc["package"]["evr"], "0:1.0-1.el9");
    let host = &all_docs(&env.hosts())[c.host.machine_id.as_ref()];
    assert_eq!(host["drift_count"], 0, "{host}");
    assert_eq!(host["package_count"], 1);
    assert!(sink.stop().success());
    println!(
        "evr_sort: {} versions in rpm order in the engine: {got:?}",
        got.len()
    );
}

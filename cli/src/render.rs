//! Events as JSON for people and scripts: ids in hex, times in RFC 3339.

use pkgstream_schemas::{InventorySnapshot, PackageChange};
use serde_json::Value;

fn rfc3339(micros: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(micros).map_or(Value::from(micros), |t| {
        Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    })
}

fn times(v: &mut Value, fields: &[&str]) {
    for f in fields {
        if let Some(slot) = v.get_mut(*f) {
            if let Some(m) = slot.as_i64() {
                *slot = rfc3339(m);
            }
        }
    }
}

fn package(v: &mut Value) {
    times(v, &["buildtime", "install_time"]);
}

/// A change event as a JSON object.
pub fn change(c: &PackageChange<'_>) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    v["event_id"] = c.event_id.to_hex().into();
    times(&mut v, &["event_time"]);
    package(&mut v["package"]);
    if v["replaced"].is_object() {
        package(&mut v["replaced"]);
    }
    times(&mut v["transaction"], &["start_time"]);
    v
}

/// An inventory snapshot as a JSON object.
pub fn snapshot(s: &InventorySnapshot<'_>) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["snapshot_id"] = s.snapshot_id.to_hex().into();
    // A chunk names its whole snapshot: `chunk: {snapshot_id, index, count, package_count}`.
    if let Some(c) = &s.chunk {
        v["chunk"]["snapshot_id"] = c.snapshot_id.to_hex().into();
    }
    times(&mut v, &["taken_at"]);
    if let Some(list) = v["packages"].as_array_mut() {
        list.iter_mut().for_each(package);
    }
    v
}

/// An enriched change: the change's fields plus `enrichment`.
pub fn enriched_change(e: pkgstream_schemas::EnrichedChange<'_>) -> Value {
    let (c, enrichment) = e.into_parts();
    let mut v = change(&c);
    v["enrichment"] = enrichment_json(&enrichment);
    v
}

/// An enriched snapshot: the snapshot's fields plus `enrichment`.
pub fn enriched_snapshot(e: pkgstream_schemas::EnrichedSnapshot<'_>) -> Value {
    let s = InventorySnapshot {
        snapshot_id: e.snapshot_id,
        taken_at: e.taken_at,
        host: e.host,
        packages: e.packages,
        chunk: e.chunk,
    };
    let mut v = snapshot(&s);
    v["enrichment"] = enrichment_json(&e.enrichment);
    v
}

fn enrichment_json(e: &pkgstream_schemas::Enrichment<'_>) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    times(&mut v, &["routed_at"]);
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use pkgstream_schemas::sample;

    #[test]
    fn change_renders_ids_and_times_for_people() {
        let c = sample::change(1);
        let v = super::change(&c);
        assert_eq!(v["event_id"], c.event_id.to_hex());
        assert_eq!(v["event_time"], "2025-11-24T16:00:00.250Z");
        assert_eq!(v["package"]["buildtime"], "2024-05-21T14:00:00Z");
        assert_eq!(v["action"], "UPGRADE");
        assert_eq!(v["replaced"]["release"], "427.13.1.el9_4");
        assert_eq!(v["transaction"]["start_time"], "2025-11-24T15:59:58.250Z");
    }

    #[test]
    fn snapshot_renders_each_package() {
        let s = sample::snapshot(2, 2);
        let v = super::snapshot(&s);
        assert_eq!(v["packages"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["packages"][1]["install_time"], "2025-06-15T15:06:40Z");
    }
}

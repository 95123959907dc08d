//! The router's host-table parsers (`router/src/hosts.rs`): the CSV file
//! reader `read_hosts_file`, the JSON `HostMeta` record of the compacted
//! hosts topic (as the router's topic reader decodes it, with
//! `HostMeta::from_topic_value`), and the maintenance windows (`Window::parse`,
//! `Window::contains`, `HostMeta::outside_maintenance`) both carry.
//!
//! Input: one mode byte, then bytes. Mode bit 0 clear: the bytes are a
//! hosts CSV file (written to a temporary file, as the reader takes a path).
//! Set: the bytes are one hosts-topic value.
//!
//! What must hold, beyond "never panics": a host entry the router accepts
//! from either source lets it enrich that host's change and snapshot (no
//! accepted metadata turns every event of the host into poison), and the
//! enriched event carries that metadata.
#![no_main]

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pkgstream_router::hosts::{read_hosts_file, HostMeta, HostTable, Window};
use pkgstream_router::process::{HostDefaults, Lane, Processor, RawEvent};
use pkgstream_schemas::{decode_enriched_change, sample, Encoder};

/// Event times at which every window is asked: Saturday 2026-11-28 02:30,
/// Tuesday 2026-11-24 23:59, Monday 2026-11-23 00:00 (UTC), the epoch, and
/// times no calendar holds.
const TIMES: [i64; 6] = [
    1_795_833_000_000_000,
    1_795_564_740_000_000,
    1_795_392_000_000_000,
    0,
    i64::MIN,
    i64::MAX,
];

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    made.expect("a temporary directory")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        hosts_file(bytes);
    } else {
        topic_record(bytes);
    }
    // The window grammar alone, on the text as given.
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(w) = Window::parse(text) {
            windows_hold(&[w]);
        }
    }
});

fn hosts_file(bytes: &[u8]) {
    let tmp = scratch_dir();
    let path = tmp.path().join("hosts.csv");
    std::fs::write(&path, bytes).expect("write the hosts file");
    let Ok(entries) = read_hosts_file(&path) else {
        return;
    };
    let machine_id = sample::host(1).machine_id.into_owned();
    for (host, meta) in entries.iter().take(8) {
        if host != &machine_id && entries.contains_key(&machine_id) {
            // The sample change's machine id has its own entry, which wins.
            continue;
        }
        assert!(!host.is_empty(), "an entry for an empty host");
        assert!(!meta.hostgroup.is_empty() && !meta.environment.is_empty());
        windows_hold(&meta.maintenance);
        let table = HostTable::default();
        table.set_file_entries(entries.clone());
        // The file matches a host by hostname (or machine id).
        enriches(&table, host, meta, true);
    }
}

fn topic_record(bytes: &[u8]) {
    let Ok(Some(meta)) = HostMeta::from_topic_value(bytes) else {
        return;
    };
    windows_hold(&meta.maintenance);
    let table = HostTable::default();
    let machine_id = sample::host(1).machine_id.into_owned();
    table.apply_topic_record(&machine_id, Some(meta.clone()));
    enriches(&table, &machine_id, &Arc::new(meta), false);
}

fn windows_hold(windows: &[Window]) {
    for w in windows {
        assert!(w.days < 0x80, "days mask {:#x} names an eighth day", w.days);
        assert!(w.start <= 24 * 60 && w.end <= 24 * 60, "{w:?}");
    }
    let meta = HostMeta {
        maintenance: windows.to_vec(),
        ..HostMeta::default()
    };
    for t in TIMES {
        let outside = meta.outside_maintenance(t);
        if windows.is_empty() {
            assert!(!outside, "no windows, yet outside them");
        }
    }
}

/// The router enriches a change and a snapshot of `host` (a hostname when
/// `by_hostname`, else the machine id) with `meta`.
fn enriches(table: &HostTable, host: &str, meta: &HostMeta, by_hostname: bool) {
    let mut change = sample::change(1);
    let mut snapshot = sample::snapshot(1, 3);
    if by_hostname {
        change.host.hostname = Cow::Owned(host.to_owned());
        snapshot.host.hostname = Cow::Owned(host.to_owned());
    }
    let mut enc = Encoder::new();
    let mut raw = Vec::new();
    enc.encode_change(&change, &mut raw)
        .expect("encode the sample change");
    let mut raw_snapshot = Vec::new();
    enc.encode_snapshot(&snapshot, &mut raw_snapshot)
        .expect("encode the sample snapshot");
    let mut p = Processor::new(
        table.clone(),
        HostDefaults {
            hostgroup: "unassigned".into(),
            environment: "unknown".into(),
        },
    );
    let now = 1_800_000_000_000_000;
    let event = |lane, bytes| RawEvent {
        lane,
        partition: 0,
        bytes,
        timestamp: None,
    };
    let out = p.process(&event(Lane::Changes, &raw), now).unwrap_or_else(|e| {
        panic!("accepted host metadata {meta:?} makes the host's change poison: {e}")
    });
    assert_eq!(out.len(), 1);
    let e = decode_enriched_change(&out[0].value).expect("the enriched change decodes");
    let (back, enrichment) = e.into_parts();
    assert_eq!(back, change);
    assert!(enrichment.known_host, "the host table's host is unknown");
    assert_eq!(enrichment.hostgroup, meta.hostgroup);
    assert_eq!(enrichment.environment, meta.environment);
    assert_eq!(*enrichment.tags, meta.tags);
    assert_eq!(
        enrichment.outside_maintenance_window,
        meta.outside_maintenance(change.event_time)
    );
    p.process(&event(Lane::Inventory, &raw_snapshot), now)
        .unwrap_or_else(|e| {
            panic!("accepted host metadata {meta:?} makes the host's snapshot poison: {e}")
        });
}

//! The hook-input parser of `pkgstream-emit record`
//! (`producer/src/input.rs`: `HookEvent::parse`, then `into_event` /
//! `into_snapshot`), on NDJSON as the hooks write it.
//!
//! Input: NDJSON; each line is parsed alone, as `record` does (lines that
//! are not UTF-8 are skipped here: reading stdin is `record`'s job, not the
//! parser's).
//!
//! Beyond "never panics", what must hold: an event that the producer's
//! encoder accepts (what `record` writes to the spool) decodes with the
//! router's decoder to the very same event, with the `event_id` derived
//! from its facts; the producer never spools what the router would call
//! poison.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkgstream_producer::input::HookEvent;
use pkgstream_schemas::{
    change_event_id, decode_change, decode_snapshot, sample, snapshot_id, Encoder,
};

fuzz_target!(|data: &[u8]| {
    let local = sample::host(1);
    let mut enc = Encoder::new();
    for line in data.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let event = match HookEvent::parse(line) {
            Ok(e) => e,
            Err(reason) => {
                assert!(!reason.is_empty(), "an error without a reason");
                continue;
            }
        };
        let _ = event.needs_local_host();
        match event {
            HookEvent::Change(c) => {
                let change = c.into_event(Some(&local));
                assert_eq!(
                    change.event_id,
                    change_event_id(
                        &change.host.machine_id,
                        change.action,
                        &change.package.name,
                        change.package.epoch,
                        &change.package.version,
                        &change.package.release,
                        &change.package.arch,
                        change.transaction.rpm_tid,
                    ),
                    "event_id is not derived from the event's facts"
                );
                let mut out = Vec::new();
                if enc.encode_change(&change, &mut out).is_ok() {
                    let back = decode_change(&out).unwrap_or_else(|e| {
                        panic!("the producer spools a change the router refuses: {e}")
                    });
                    assert_eq!(back, change, "the router reads another change");
                } else {
                    assert!(out.is_empty(), "a refused change left bytes behind");
                }
            }
            HookEvent::Inventory(i) => {
                let snapshot = i.into_snapshot(Some(&local));
                assert_eq!(
                    snapshot.snapshot_id,
                    snapshot_id(&snapshot.host.machine_id, snapshot.taken_at)
                );
                let mut out = Vec::new();
                if enc.encode_snapshot(&snapshot, &mut out).is_ok() {
                    let back = decode_snapshot(&out).unwrap_or_else(|e| {
                        panic!("the producer spools a snapshot the router refuses: {e}")
                    });
                    assert_eq!(back, snapshot, "the router reads another snapshot");
                }
            }
        }
    }
});

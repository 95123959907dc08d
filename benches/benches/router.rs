//! The router's in-process path on realistic ~380-byte events:
//! decode → enrich (host table of 10,000 hosts, maintenance windows) →
//! dedupe (window lookup + insert) → enriched bytes (raw datum copied, only
//! the enrichment encoded). Plus the dedupe window alone at 1M entries and
//! its memory per entry.
//!
//! `cargo bench -p pkgstream-benches --bench router`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pkgstream_router::dedupe::DedupeWindow;
use pkgstream_router::hosts::{HostMeta, HostTable, Window};
use pkgstream_router::process::{HostDefaults, Lane, Processor, RawEvent};
use pkgstream_schemas::{sample, Encoder, EventId};

fn host_table(hosts: u64) -> HostTable {
    let table = HostTable::default();
    let mut file = std::collections::HashMap::new();
    for h in 0..hosts {
        let meta = HostMeta {
            hostgroup: format!("web-{}", h % 20),
            environment: "prod".into(),
            owner: Some("team-web".into()),
            datacenter: Some("dc1".into()),
            tags: [("tier".to_owned(), "frontend".to_owned())].into(),
            maintenance: vec![Window::parse("sat,sun 02:00-04:00").unwrap()],
        };
        file.insert(sample::host(h).machine_id.into_owned(), Arc::new(meta));
    }
    table.set_file_entries(file);
    table
}

fn raw_events(n: u64) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new();
    (0..n)
        .map(|i| {
            let mut v = Vec::new();
            enc.encode_change(&sample::change(i * 7919), &mut v)
                .unwrap();
            v
        })
        .collect()
}

fn bench_router_path(c: &mut Criterion) {
    let events = raw_events(4096);
    let mut processor = Processor::new(
        host_table(10_000),
        HostDefaults {
            hostgroup: "unassigned".into(),
            environment: "unknown".into(),
        },
    );
    let mut window = DedupeWindow::new(100_000, u32::MAX);
    let now = 1_800_000_000_000_000;
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    let mut fresh = 0u64;
    g.bench_function("decode_enrich_dedupe_encode", |b| {
        b.iter(|| {
            let raw = &events[i % events.len()];
            i += 1;
            let out = processor
                .process(
                    &RawEvent {
                        lane: Lane::Changes,
                        partition: 0,
                        bytes: black_box(raw),
                        timestamp: None,
                    },
                    now,
                )
                .unwrap();
            let record = &out[0];
            // A fresh id each time (as in production most are new), so the
            // window really grows and evicts; the lookup is the real one.
            fresh += 1;
            let mut id = record.id;
            id.0[..8].copy_from_slice(&fresh.to_le_bytes());
            if !window.contains(&id) {
                window.insert(&id, 1);
            }
            black_box(out);
        })
    });
    g.finish();
}

fn bench_window(c: &mut Criterion) {
    let mut window = DedupeWindow::new(1_000_000, u32::MAX);
    let id = |n: u64| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        b[8..].copy_from_slice(&n.to_le_bytes());
        EventId(b)
    };
    for n in 0..1_000_000 {
        window.insert(&id(n), 1);
    }
    println!(
        "dedupe window: {} entries, {} bytes, {:.1} bytes/entry",
        window.len(),
        window.bytes(),
        window.bytes() as f64 / window.len() as f64
    );
    let mut n = 1_000_000u64;
    let mut g = c.benchmark_group("dedupe_window_1M");
    g.throughput(Throughput::Elements(1));
    g.bench_function("contains_then_insert", |b| {
        b.iter(|| {
            n += 1;
            let k = id(n);
            if !window.contains(black_box(&k)) {
                window.insert(&k, 1);
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(4));
    targets = bench_router_path, bench_window
}
criterion_main!(benches);

//! The search sink's per-event work, in process: bulk encoding of one
//! enriched change (history `create` + package-state upsert, NDJSON), and
//! the whole lane step (decode the Kafka payload + encode). Setup (the
//! events, their bytes) is outside the measured loop.
//!
//! `cargo bench -p pkgstream-benches --bench sink`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pkgstream_schemas::{decode_enriched_change, sample, Encoder, EnrichedChange};
use pkgstream_sinks::search::documents::{change_items, host_update, Indices};

const BATCH: u64 = 1000;

fn events() -> Vec<EnrichedChange<'static>> {
    (0..BATCH)
        .map(|i| EnrichedChange::new(sample::change(i), sample::enrichment(i)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let idx = Indices::new("pkgstream");
    let evs = events();
    let mut enc = Encoder::new();
    let payloads: Vec<Vec<u8>> = evs
        .iter()
        .map(|e| {
            let mut v = Vec::new();
            enc.encode_enriched_change(e, &mut v).unwrap();
            v
        })
        .collect();
    let mut body = Vec::with_capacity(4 << 20);
    change_items(&mut body, &idx, &evs[0]);
    println!(
        "sink bench: {} bytes of NDJSON per event (2 items), {} bytes of Avro in",
        body.len(),
        payloads[0].len()
    );

    let mut g = c.benchmark_group("search_sink");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("encode_bulk_items", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(4 << 20),
            |body| {
                for e in &evs {
                    change_items(body, &idx, e);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("decode_and_encode", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(4 << 20),
            |body| {
                for p in &payloads {
                    let e = decode_enriched_change(p).unwrap();
                    change_items(body, &idx, &e);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("host_update", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(1 << 20),
            |body| {
                for e in &evs {
                    host_update(body, &idx, &e.host, &e.enrichment, e.event_time, None);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

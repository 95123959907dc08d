//! Codec throughput: pkgstream's `Encoder`/`decode_change` (for the current
//! `PackageChange` version the hand-written positional codec in
//! `schemas/src/codec/fast.rs`; single-object framing and semantic
//! validation both ways) side by side with the apache-avro `Value` path on
//! the same schema text, plus the decode of a 1500-package inventory
//! snapshot (still serde_avro_fast) and the router's `append_enrichment`.
//!
//! `cargo bench -p pkgstream-benches --bench codec`; figures and targets in
//! BENCHMARKS.md. The `*/serde_avro_fast_raw` rows are a diagnostic: the
//! library pkgstream used for `PackageChange` before the fast path, alone (no
//! header, no validation, no registry lookup), still used for older schema
//! versions and for snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pkgstream_schemas::{
    decode_change, decode_snapshot, sample, validate, Encoder, Kind, PackageChange, Registry,
};
use serde_avro_fast::ser::SerializerConfig;

/// Distinct pre-built samples the loops rotate over, so no bench measures
/// one cached input. A power of two: the index is masked, not divided.
const DISTINCT: usize = 64;

fn samples() -> (Vec<PackageChange<'static>>, Vec<Vec<u8>>) {
    let events: Vec<_> = (0..DISTINCT as u64).map(sample::change).collect();
    let mut enc = Encoder::new();
    let bytes = events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            enc.encode_change(e, &mut out).unwrap();
            out
        })
        .collect();
    (events, bytes)
}

fn change(c: &mut Criterion) {
    let (events, bytes) = samples();
    let sizes: Vec<usize> = bytes.iter().map(Vec::len).collect();
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    println!(
        "PackageChange event size: {mean} bytes mean ({}..={} over {DISTINCT} samples), single-object encoded incl. the 10-byte header",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    println!(
        "PackageChange in memory: {} bytes (moved by value through the serde visitors on decode)",
        std::mem::size_of::<PackageChange<'_>>()
    );
    let current = Registry::get().current(Kind::PackageChange);
    let mut config = SerializerConfig::new(&current.schema);
    for (e, b) in events.iter().zip(&bytes) {
        let serde = serde_avro_fast::to_datum_vec(e, &mut config).unwrap();
        assert_eq!(
            &b[10..],
            &serde[..],
            "Encoder writes the same bytes as serde_avro_fast"
        );
        assert_eq!(&decode_change(b).unwrap(), e, "and reads them back");
    }
    let avro_schema = apache_avro::Schema::parse_str(current.json).unwrap();

    let mut g = c.benchmark_group("change");
    g.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: mean as u64,
    });

    g.bench_function("encode/pkgstream", |b| {
        let mut enc = Encoder::new();
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            enc.encode_change(black_box(&events[i]), &mut buf).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });
    g.bench_function("encode/apache_avro_value", |b| {
        let mut i = 0;
        b.iter(|| {
            let value = apache_avro::to_value(black_box(&events[i]))
                .unwrap()
                .resolve(&avro_schema)
                .unwrap();
            let datum = apache_avro::to_avro_datum(&avro_schema, value).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(datum)
        })
    });
    g.bench_function("encode/serde_avro_fast_raw", |b| {
        let mut config = SerializerConfig::new(&current.schema);
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            serde_avro_fast::to_datum(black_box(&events[i]), &mut buf, &mut config).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });

    g.bench_function("decode/pkgstream", |b| {
        let mut i = 0;
        b.iter(|| {
            let e = decode_change(black_box(&bytes[i])).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(e)
        })
    });
    g.bench_function("decode/apache_avro_value", |b| {
        let mut i = 0;
        b.iter(|| {
            let v = apache_avro::from_avro_datum(&avro_schema, &mut &bytes[i][10..], None).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(v)
        })
    });
    g.bench_function("decode/serde_avro_fast_raw", |b| {
        let mut i = 0;
        b.iter(|| {
            let e: PackageChange<'_> =
                serde_avro_fast::from_datum_slice(black_box(&bytes[i][10..]), &current.schema)
                    .unwrap();
            i = (i + 1) % DISTINCT;
            black_box(e)
        })
    });
    g.bench_function("validate_only", |b| {
        let mut i = 0;
        b.iter(|| {
            validate::change(black_box(&events[i])).unwrap();
            i = (i + 1) % DISTINCT;
        })
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let snapshot = sample::snapshot(1, 1500);
    let mut bytes = Vec::new();
    Encoder::new()
        .encode_snapshot(&snapshot, &mut bytes)
        .unwrap();
    println!(
        "InventorySnapshot event size: {} bytes for {} packages",
        bytes.len(),
        snapshot.packages.len()
    );
    let mut g = c.benchmark_group("snapshot_1500");
    g.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: bytes.len() as u64,
    });
    g.bench_function("decode/pkgstream", |b| {
        b.iter(|| black_box(decode_snapshot(black_box(&bytes)).unwrap()))
    });
    g.finish();
}

/// The router's hot path: the raw datum copied, the enrichment appended.
/// The `serde_avro_fast_raw` row encodes the enrichment alone through the
/// library, as `append_enrichment` did before the fast path.
fn enrichment(c: &mut Criterion) {
    let (_, bytes) = samples();
    let enrichments: Vec<_> = (0..DISTINCT as u64).map(sample::enrichment).collect();
    let enriched = Registry::get().current(Kind::EnrichedChange).json;
    let fields: serde_json::Value = serde_json::from_str(enriched).unwrap();
    let schema: serde_avro_fast::Schema = fields["fields"].as_array().unwrap().last().unwrap()
        ["type"]
        .to_string()
        .parse()
        .unwrap();
    let mut g = c.benchmark_group("enrichment");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append/pkgstream", |b| {
        let mut enc = Encoder::new();
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            assert!(enc
                .append_enrichment(black_box(&bytes[i]), black_box(&enrichments[i]), &mut buf)
                .unwrap());
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });
    g.bench_function("encode_enrichment_only/serde_avro_fast_raw", |b| {
        let mut config = SerializerConfig::new(&schema);
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            serde_avro_fast::to_datum(black_box(&enrichments[i]), &mut buf, &mut config).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! { name = benches; config = config(); targets = change, snapshot, enrichment }
criterion_main!(benches);

//! "No allocation per event on the hot path", checked with a counting global
//! allocator rather than assumed: after warm-up, encoding a `PackageChange`
//! into a reused buffer with a reused `Encoder`, decoding one, and the
//! router's `append_enrichment`, make zero heap allocations. The figures for the peer (apache-avro) and for a
//! 1500-package snapshot are printed for BENCHMARKS.md
//! (`cargo test -p pkgstream-benches --test no_alloc -- --nocapture`).
//!
//! Counts are per thread, so the test harness's other threads do not
//! disturb them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use pkgstream_benches::{count_allocs, Allocs, CountingAlloc};
use pkgstream_schemas::{
    decode_change, decode_snapshot, sample, Encoder, Kind, PackageChange, Registry,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const DISTINCT: usize = 64;
const ROUNDS: usize = 1000;

fn events() -> Vec<PackageChange<'static>> {
    (0..DISTINCT as u64).map(sample::change).collect()
}

fn encoded(events: &[PackageChange<'_>]) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new();
    events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            enc.encode_change(e, &mut out).unwrap();
            out
        })
        .collect()
}

/// The zero below means something only if the counter sees allocations.
fn assert_counter_works() {
    let (v, a) = count_allocs(|| black_box(Vec::<u8>::with_capacity(100)));
    drop(v);
    assert_eq!(
        a,
        Allocs {
            count: 1,
            bytes: 100
        },
        "CountingAlloc is not the global allocator"
    );
}

fn per_event(a: Allocs) -> String {
    format!(
        "{} allocations ({} bytes) in {ROUNDS} events = {:.2} per event",
        a.count,
        a.bytes,
        a.count as f64 / ROUNDS as f64
    )
}

#[test]
fn encode_into_reused_buffer_does_not_allocate() {
    let events = events();
    let mut enc = Encoder::new();
    let mut buf = Vec::new();
    // Warm-up: the buffer and the encoder's scratch space reach their size.
    for e in &events {
        buf.clear();
        enc.encode_change(e, &mut buf).unwrap();
    }
    assert_counter_works();
    let ((), allocs) = count_allocs(|| {
        for i in 0..ROUNDS {
            buf.clear();
            enc.encode_change(black_box(&events[i % DISTINCT]), &mut buf)
                .unwrap();
            black_box(&buf);
        }
    });
    println!("pkgstream Encoder::encode_change: {}", per_event(allocs));
    assert_eq!(
        allocs,
        Allocs::default(),
        "encode allocates: {}",
        per_event(allocs)
    );
}

#[test]
fn decode_does_not_allocate() {
    let events = events();
    let bytes = encoded(&events);
    for b in &bytes {
        black_box(decode_change(b).unwrap());
    }
    assert_counter_works();
    let ((), allocs) = count_allocs(|| {
        for i in 0..ROUNDS {
            black_box(decode_change(black_box(&bytes[i % DISTINCT])).unwrap());
        }
    });
    println!("pkgstream decode_change: {}", per_event(allocs));
    assert_eq!(
        allocs,
        Allocs::default(),
        "decode allocates: {}",
        per_event(allocs)
    );
    // The decoded events are the ones encoded (the loop above measured real work).
    assert_eq!(decode_change(&bytes[5]).unwrap(), events[5]);
}

#[test]
fn append_enrichment_does_not_allocate() {
    let events = events();
    let bytes = encoded(&events);
    let enrichments: Vec<_> = (0..DISTINCT as u64).map(sample::enrichment).collect();
    let mut enc = Encoder::new();
    let mut buf = Vec::new();
    for (b, e) in bytes.iter().zip(&enrichments) {
        buf.clear();
        assert!(enc.append_enrichment(b, e, &mut buf).unwrap());
    }
    assert_counter_works();
    let ((), allocs) = count_allocs(|| {
        for i in 0..ROUNDS {
            buf.clear();
            assert!(enc
                .append_enrichment(
                    black_box(&bytes[i % DISTINCT]),
                    black_box(&enrichments[i % DISTINCT]),
                    &mut buf
                )
                .unwrap());
            black_box(&buf);
        }
    });
    println!(
        "pkgstream Encoder::append_enrichment: {}",
        per_event(allocs)
    );
    assert_eq!(
        allocs,
        Allocs::default(),
        "append_enrichment allocates: {}",
        per_event(allocs)
    );
}

/// For comparison only (printed, not asserted): the apache-avro `Value`
/// path allocates for every field.
#[test]
fn peer_allocations_are_reported() {
    let events = events();
    let bytes = encoded(&events);
    let schema =
        apache_avro::Schema::parse_str(Registry::get().current(Kind::PackageChange).json).unwrap();
    let ((), enc) = count_allocs(|| {
        for i in 0..ROUNDS {
            let value = apache_avro::to_value(&events[i % DISTINCT])
                .unwrap()
                .resolve(&schema)
                .unwrap();
            black_box(apache_avro::to_avro_datum(&schema, value).unwrap());
        }
    });
    let ((), dec) = count_allocs(|| {
        for i in 0..ROUNDS {
            black_box(
                apache_avro::from_avro_datum(&schema, &mut &bytes[i % DISTINCT][10..], None)
                    .unwrap(),
            );
        }
    });
    println!(
        "apache-avro encode (to_value, resolve, to_avro_datum): {}",
        per_event(enc)
    );
    println!(
        "apache-avro decode (from_avro_datum to Value): {}",
        per_event(dec)
    );
    assert!(
        enc.count > 0 && dec.count > 0,
        "the counting allocator is installed"
    );
}

/// A snapshot decodes into one `Vec<Package>`; its strings borrow, so the
/// count is that vector's growth (doubling: about log2(1500) reallocations,
/// since the decoder gives serde no length hint), not one per package.
#[test]
fn snapshot_decode_allocations_are_reported() {
    let snapshot = sample::snapshot(1, 1500);
    let mut bytes = Vec::new();
    Encoder::new()
        .encode_snapshot(&snapshot, &mut bytes)
        .unwrap();
    black_box(decode_snapshot(&bytes).unwrap());
    let (decoded, allocs) = count_allocs(|| decode_snapshot(black_box(&bytes)).unwrap());
    println!(
        "pkgstream decode_snapshot (1500 packages, {} bytes): {} allocations, {} bytes",
        bytes.len(),
        allocs.count,
        allocs.bytes
    );
    assert_eq!(decoded.packages.len(), 1500);
    assert!(
        allocs.count <= 16,
        "a snapshot should cost its package vector only, not an allocation per package: {allocs:?}"
    );
}

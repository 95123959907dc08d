//! Schema evolution over every version pkgstream ever shipped, checked
//! against the reference behaviour of `apache-avro`:
//! - every `.avsc` on disk is in the registry (so none can be forgotten);
//! - our CRC-64-AVRO fingerprints equal apache-avro's;
//! - every pair of versions of a record is compatible both ways (FULL
//!   transitive: a new reader reads old data, an old reader reads new data);
//! - known-incompatible edits are rejected (the check can fail);
//! - data written with each version by apache-avro decodes with our decoder
//!   to what apache-avro's own resolution produces, and our current data
//!   resolves under every older reader schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema as RefSchema;
use pkgstream_schemas::codec::SHIPPED;
use pkgstream_schemas::{decode_change, decode_snapshot, sample, Encoder, Kind, Registry};

fn ref_schema(json: &str) -> RefSchema {
    RefSchema::parse_str(json).unwrap()
}

fn versions(kind: Kind) -> Vec<(u32, RefSchema)> {
    Registry::get()
        .versions()
        .iter()
        .filter(|v| v.kind == kind)
        .map(|v| (v.version, ref_schema(v.json)))
        .collect()
}

#[test]
fn registry_lists_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut on_disk = BTreeSet::new();
    for kind_dir in std::fs::read_dir(&root).unwrap() {
        let kind_dir = kind_dir.unwrap().path();
        if !kind_dir.is_dir() {
            continue;
        }
        let kind = kind_dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&kind_dir).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            let v: u32 = name
                .strip_prefix('v')
                .and_then(|n| n.strip_suffix(".avsc"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{kind}/{name} is not named vN.avsc"));
            on_disk.insert((kind.clone(), v));
        }
    }
    let listed: BTreeSet<_> = SHIPPED
        .iter()
        .map(|(k, v, _)| (k.name().to_owned(), *v))
        .collect();
    assert_eq!(on_disk, listed, "schemas/avro and codec::SHIPPED disagree");
    for kind in Kind::ALL {
        let mut vs: Vec<u32> = SHIPPED
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, v, _)| *v)
            .collect();
        vs.sort();
        assert_eq!(
            vs,
            (1..=vs.len() as u32).collect::<Vec<_>>(),
            "{kind:?} versions must be 1..=N without gaps"
        );
    }
}

/// Golden fingerprints come from the Java reference implementation
/// (`schemas/tools/Fingerprint.java`). apache-avro (Rust) is not used here:
/// it keeps logical-type primitives as objects in the canonical form and so
/// disagrees with Java and the spec for every schema with a timestamp.
#[test]
fn fingerprints_match_reference_implementation() {
    let golden =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("avro/FINGERPRINTS"))
            .unwrap();
    for v in Registry::get().versions() {
        let file = format!("{}/v{}.avsc", v.kind.name(), v.version);
        let line = golden
            .lines()
            .find(|l| l.ends_with(&format!(" {file}")))
            .unwrap_or_else(|| panic!("avro/FINGERPRINTS has no line for {file}"));
        assert_eq!(&line[..16], hex::encode(v.fingerprint), "{file}");
    }
    let all: BTreeSet<_> = Registry::get()
        .versions()
        .iter()
        .map(|v| v.fingerprint)
        .collect();
    assert_eq!(
        all.len(),
        Registry::get().versions().len(),
        "two shipped versions share a fingerprint"
    );
}

#[test]
fn every_version_pair_is_compatible_both_ways() {
    for kind in Kind::ALL {
        let vs = versions(kind);
        for (wv, w) in &vs {
            for (rv, r) in &vs {
                SchemaCompatibility::can_read(w, r)
                    .unwrap_or_else(|e| panic!("{kind:?} v{rv} cannot read v{wv}: {e}"));
            }
        }
    }
}

#[test]
fn incompatible_edits_are_rejected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/incompatible");
    let current = ref_schema(Registry::get().current(Kind::PackageChange).json);
    let mut checked = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        let edited = ref_schema(&std::fs::read_to_string(&path).unwrap());
        let both_ways = SchemaCompatibility::can_read(&current, &edited).is_ok()
            && SchemaCompatibility::can_read(&edited, &current).is_ok();
        assert!(!both_ways, "{} was accepted as compatible", path.display());
        checked += 1;
    }
    assert_eq!(checked, 4);
}

/// Encodes `sample` with apache-avro under `writer`, single-object framed.
fn reference_encode<T: serde::Serialize>(sample: &T, writer: &RefSchema) -> Vec<u8> {
    let value = apache_avro::to_value(sample)
        .unwrap()
        .resolve(writer)
        .unwrap();
    let canonical = writer.canonical_form();
    let ours = Registry::get()
        .versions()
        .iter()
        .find(|v| ref_schema(v.json).canonical_form() == canonical)
        .unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend(ours.fingerprint);
    out.extend(apache_avro::to_avro_datum(writer, value).unwrap());
    out
}

/// What apache-avro's resolution makes of `datum` for `reader`.
fn reference_decode(datum: &[u8], writer: &RefSchema, reader: &RefSchema) -> Value {
    apache_avro::from_avro_datum(writer, &mut &datum[10..], Some(reader)).unwrap()
}

#[test]
fn data_of_every_version_decodes_as_the_reference_resolves_it() {
    let current = ref_schema(Registry::get().current(Kind::PackageChange).json);
    for (v, writer) in versions(Kind::PackageChange) {
        for i in 0..20 {
            let bytes = reference_encode(&sample::change(i), &writer);
            let ours = decode_change(&bytes).unwrap_or_else(|e| panic!("v{v} sample {i}: {e}"));
            let expected = reference_decode(&bytes, &writer, &current);
            assert_eq!(
                apache_avro::to_value(&ours)
                    .unwrap()
                    .resolve(&current)
                    .unwrap(),
                expected,
                "v{v} sample {i}"
            );
        }
    }
    let current = ref_schema(Registry::get().current(Kind::InventorySnapshot).json);
    for (v, writer) in versions(Kind::InventorySnapshot) {
        let bytes = reference_encode(&sample::snapshot(3, 50), &writer);
        let ours = decode_snapshot(&bytes).unwrap_or_else(|e| panic!("v{v}: {e}"));
        let expected = reference_decode(&bytes, &writer, &current);
        assert_eq!(
            apache_avro::to_value(&ours)
                .unwrap()
                .resolve(&current)
                .unwrap(),
            expected,
            "v{v}"
        );
    }
}

#[test]
fn current_data_resolves_under_every_older_reader() {
    let current = ref_schema(Registry::get().current(Kind::PackageChange).json);
    let mut enc = Encoder::new();
    for (v, reader) in versions(Kind::PackageChange) {
        let mut bytes = Vec::new();
        enc.encode_change(&sample::change(5), &mut bytes).unwrap();
        let got = reference_decode(&bytes, &current, &reader);
        let expected = apache_avro::to_value(sample::change(5))
            .unwrap()
            .resolve(&current)
            .unwrap();
        let expected = apache_avro::from_avro_datum(
            &current,
            &mut apache_avro::to_avro_datum(&current, expected)
                .unwrap()
                .as_slice(),
            Some(&reader),
        )
        .unwrap();
        assert_eq!(got, expected, "reader v{v}");
    }
}

/// The router's fast path copies a raw datum and appends the enrichment;
/// that is only right while the current enriched schema is the current raw
/// schema's fields, unchanged and in order, plus `enrichment` last.
#[test]
fn enriched_schemas_extend_raw_schemas() {
    fn strip_docs(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("doc");
                m.values_mut().for_each(strip_docs);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip_docs),
            _ => {}
        }
    }
    for (raw, enriched) in [
        (Kind::PackageChange, Kind::EnrichedChange),
        (Kind::InventorySnapshot, Kind::EnrichedSnapshot),
    ] {
        let mut r: serde_json::Value =
            serde_json::from_str(Registry::get().current(raw).json).unwrap();
        let mut e: serde_json::Value =
            serde_json::from_str(Registry::get().current(enriched).json).unwrap();
        strip_docs(&mut r);
        strip_docs(&mut e);
        let mut fields = e["fields"].as_array().unwrap().clone();
        let last = fields.pop().unwrap();
        assert_eq!(last["name"], "enrichment");
        assert_eq!(
            &fields,
            r["fields"].as_array().unwrap(),
            "{enriched:?} does not start with the {raw:?} fields"
        );
    }
}

#[test]
fn enriched_data_of_every_version_decodes_as_the_reference_resolves_it() {
    let current = ref_schema(Registry::get().current(Kind::EnrichedChange).json);
    for (v, writer) in versions(Kind::EnrichedChange) {
        let sample =
            pkgstream_schemas::EnrichedChange::new(sample::change(4), sample::enrichment(4));
        let bytes = reference_encode(&sample, &writer);
        let ours = pkgstream_schemas::decode_enriched_change(&bytes)
            .unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert_eq!(
            apache_avro::to_value(&ours)
                .unwrap()
                .resolve(&current)
                .unwrap(),
            reference_decode(&bytes, &writer, &current),
            "v{v}"
        );
    }
    let current = ref_schema(Registry::get().current(Kind::EnrichedSnapshot).json);
    for (v, writer) in versions(Kind::EnrichedSnapshot) {
        let sample = pkgstream_schemas::EnrichedSnapshot::new(
            sample::snapshot(2, 20),
            sample::enrichment(2),
        );
        let bytes = reference_encode(&sample, &writer);
        let ours = pkgstream_schemas::decode_enriched_snapshot(&bytes)
            .unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert_eq!(
            apache_avro::to_value(&ours)
                .unwrap()
                .resolve(&current)
                .unwrap(),
            reference_decode(&bytes, &writer, &current),
            "v{v}"
        );
    }
}

//! Wire framing and the registry of every schema version ever shipped.
//!
//! On the wire an event is Avro single-object encoded: `C3 01`, the 8-byte
//! CRC-64-AVRO fingerprint (little endian) of the writer schema's parsing
//! canonical form, then the Avro datum. Decoding looks the fingerprint up in
//! [`Registry`] and reads the datum with that writer schema into the current
//! Rust types: fields added later take their serde/Avro defaults, fields
//! removed later are skipped. That is Avro schema resolution by field name,
//! done by serde (the `evolution` test proves it against `apache-avro`).
//!
//! The hot path is the exception: a `PackageChange` of the current version,
//! and the `Enrichment` the router appends, are written and read by the
//! hand-written positional codec in [`fast`] (same bytes, checked by
//! property tests against serde_avro_fast), 3–5× faster.

use std::sync::LazyLock;

use serde_avro_fast::de::{DeserializerConfig, DeserializerState};
use serde_avro_fast::ser::SerializerConfig;
use serde_avro_fast::Schema;

use crate::event::{
    EnrichedChange, EnrichedSnapshot, Enrichment, InventorySnapshot, PackageChange,
};
use crate::validate;
use crate::SchemaError;

mod fast;

/// The record types of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `PackageChange`.
    PackageChange,
    /// `InventorySnapshot`.
    InventorySnapshot,
    /// `EnrichedChange`: a `PackageChange` plus the router's `Enrichment`.
    EnrichedChange,
    /// `EnrichedSnapshot`: an `InventorySnapshot` plus the router's `Enrichment`.
    EnrichedSnapshot,
}

impl Kind {
    /// The Avro record name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PackageChange => "PackageChange",
            Kind::InventorySnapshot => "InventorySnapshot",
            Kind::EnrichedChange => "EnrichedChange",
            Kind::EnrichedSnapshot => "EnrichedSnapshot",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::PackageChange,
        Kind::InventorySnapshot,
        Kind::EnrichedChange,
        Kind::EnrichedSnapshot,
    ];

    /// The enriched kind the router turns this raw kind into.
    pub fn enriched(self) -> Kind {
        match self {
            Kind::PackageChange | Kind::EnrichedChange => Kind::EnrichedChange,
            Kind::InventorySnapshot | Kind::EnrichedSnapshot => Kind::EnrichedSnapshot,
        }
    }
}

/// One shipped version of one schema (an `.avsc` file under `schemas/avro/`).
pub struct SchemaVersion {
    /// Which record.
    pub kind: Kind,
    /// Version number, from the file name `vN.avsc`.
    pub version: u32,
    /// The `.avsc` text as shipped.
    pub json: &'static str,
    /// Parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO fingerprint of the parsing canonical form, little endian.
    pub fingerprint: [u8; 8],
}

impl SchemaVersion {
    /// `Name vN`, for messages.
    pub fn label(&self) -> String {
        format!("{} v{}", self.kind.name(), self.version)
    }
}

/// Every `.avsc` ever shipped, oldest first per kind. Never remove an entry:
/// replays for audits read events written years ago. The `registry_lists_
/// every_file` test fails when a file exists that is not listed here.
pub const SHIPPED: &[(Kind, u32, &str)] = &[
    (
        Kind::PackageChange,
        1,
        include_str!("../avro/PackageChange/v1.avsc"),
    ),
    (
        Kind::InventorySnapshot,
        1,
        include_str!("../avro/InventorySnapshot/v1.avsc"),
    ),
    (
        Kind::EnrichedChange,
        1,
        include_str!("../avro/EnrichedChange/v1.avsc"),
    ),
    (
        Kind::EnrichedSnapshot,
        1,
        include_str!("../avro/EnrichedSnapshot/v1.avsc"),
    ),
    (
        Kind::InventorySnapshot,
        2,
        include_str!("../avro/InventorySnapshot/v2.avsc"),
    ),
    (
        Kind::EnrichedSnapshot,
        2,
        include_str!("../avro/EnrichedSnapshot/v2.avsc"),
    ),
];

/// Upper bound on any array length in a decoded datum (an inventory of a
/// host has a few thousand packages); protects memory from hostile input.
const MAX_SEQ_LEN: usize = 1_000_000;

/// All shipped schema versions, looked up by fingerprint.
pub struct Registry {
    versions: Vec<SchemaVersion>,
    /// The `Enrichment` record alone (the last field of the current enriched
    /// schemas), for appending it to a copied raw datum.
    enrichment: Schema,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let versions = SHIPPED
        .iter()
        .map(|&(kind, version, json)| {
            // The shipped files are compiled in and parsed by the unit tests,
            // so a failure here is a build defect, not an input error.
            #[allow(clippy::expect_used)]
            let schema: Schema = json.parse().expect("a shipped .avsc does not parse");
            let fingerprint = *schema.rabin_fingerprint();
            SchemaVersion {
                kind,
                version,
                json,
                schema,
                fingerprint,
            }
        })
        .collect::<Vec<_>>();
    // The shipped files are compiled in and checked by the unit tests.
    #[allow(clippy::expect_used)]
    let enrichment = enrichment_schema_json(
        versions
            .iter()
            .filter(|v| v.kind == Kind::EnrichedChange)
            .max_by_key(|v| v.version)
            .expect("an EnrichedChange version")
            .json,
    )
    .parse()
    .expect("the Enrichment record parses on its own");
    Registry {
        versions,
        enrichment,
    }
});

/// The JSON of the last field's type (the `Enrichment` record) of an
/// enriched schema.
fn enrichment_schema_json(enriched: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(enriched).unwrap_or_default();
    v["fields"]
        .as_array()
        .and_then(|f| f.last())
        .map(|f| f["type"].to_string())
        .unwrap_or_default()
}

impl Registry {
    /// The process-wide registry.
    pub fn get() -> &'static Registry {
        &REGISTRY
    }

    /// Every version, in [`SHIPPED`] order.
    pub fn versions(&self) -> &[SchemaVersion] {
        &self.versions
    }

    /// The newest version of `kind`: what encoders write.
    pub fn current(&self, kind: Kind) -> &SchemaVersion {
        // SHIPPED has at least one version per kind (checked by tests).
        #[allow(clippy::expect_used)]
        self.versions
            .iter()
            .filter(|v| v.kind == kind)
            .max_by_key(|v| v.version)
            .expect("every kind has a shipped version")
    }

    /// The `Enrichment` record alone, as in the current `EnrichedChange`.
    #[cfg(test)]
    pub(crate) fn enrichment_schema(&self) -> &Schema {
        &self.enrichment
    }

    /// The version whose fingerprint is `fp`.
    pub fn by_fingerprint(&self, fp: &[u8; 8]) -> Option<&SchemaVersion> {
        self.versions.iter().find(|v| &v.fingerprint == fp)
    }

    /// Reads the single-object header and returns the writer schema and the
    /// datum that follows it.
    pub fn writer_of<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<(&SchemaVersion, &'b [u8]), SchemaError> {
        let Some((header, datum)) = bytes.split_first_chunk::<10>() else {
            return Err(SchemaError::TruncatedHeader { len: bytes.len() });
        };
        if header[..2] != [0xC3, 0x01] {
            return Err(SchemaError::WrongMagic {
                found: [header[0], header[1]],
            });
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&header[2..]);
        let version = self
            .by_fingerprint(&fp)
            .ok_or_else(|| SchemaError::UnknownFingerprint {
                fingerprint: hex::encode(fp),
            })?;
        Ok((version, datum))
    }
}

/// Decodes a single-object encoded `PackageChange` written with any shipped
/// version, borrowing strings from `bytes`, and validates it.
pub fn decode_change(bytes: &[u8]) -> Result<PackageChange<'_>, SchemaError> {
    let (writer, datum) = writer_of_kind(bytes, Kind::PackageChange)?;
    if writer.fingerprint == fast::PACKAGE_CHANGE_FINGERPRINT {
        // The version the hand-written codec reads: no resolution needed.
        return match fast::decode_change(datum) {
            Ok(change) => validate::change(&change).map(|()| change),
            Err(e) => Err(fast_decode_error(e, writer, datum)),
        };
    }
    let change = decode_datum(writer, datum)?;
    validate::change(&change)?;
    Ok(change)
}

#[cold]
fn fast_decode_error(e: fast::DecodeError, writer: &SchemaVersion, datum: &[u8]) -> SchemaError {
    match e {
        fast::DecodeError::Truncated => SchemaError::TruncatedDatum {
            schema: writer.label(),
            len: datum.len(),
        },
        fast::DecodeError::Trailing(len) => SchemaError::TrailingBytes {
            schema: writer.label(),
            len,
        },
        fast::DecodeError::Malformed { .. } => SchemaError::Malformed {
            schema: writer.label(),
            reason: e.to_string(),
        },
    }
}

/// Decodes a single-object encoded `InventorySnapshot` written with any
/// shipped version, borrowing strings from `bytes`, and validates it.
pub fn decode_snapshot(bytes: &[u8]) -> Result<InventorySnapshot<'_>, SchemaError> {
    let snapshot: InventorySnapshot<'_> = decode(bytes, Kind::InventorySnapshot)?;
    validate::snapshot(&snapshot)?;
    Ok(snapshot)
}

/// Decodes an `EnrichedChange` written with any shipped version.
pub fn decode_enriched_change(bytes: &[u8]) -> Result<EnrichedChange<'_>, SchemaError> {
    let e: EnrichedChange<'_> = decode(bytes, Kind::EnrichedChange)?;
    validate::enrichment("EnrichedChange", &e.enrichment)?;
    Ok(e)
}

/// Decodes an `EnrichedSnapshot` written with any shipped version.
pub fn decode_enriched_snapshot(bytes: &[u8]) -> Result<EnrichedSnapshot<'_>, SchemaError> {
    let e: EnrichedSnapshot<'_> = decode(bytes, Kind::EnrichedSnapshot)?;
    validate::enrichment("EnrichedSnapshot", &e.enrichment)?;
    Ok(e)
}

fn decode<'b, T: serde::Deserialize<'b>>(bytes: &'b [u8], kind: Kind) -> Result<T, SchemaError> {
    let (writer, datum) = writer_of_kind(bytes, kind)?;
    decode_datum(writer, datum)
}

/// The writer schema and datum of `bytes`, which must be of `kind`.
fn writer_of_kind(
    bytes: &[u8],
    kind: Kind,
) -> Result<(&'static SchemaVersion, &[u8]), SchemaError> {
    let (writer, datum) = Registry::get().writer_of(bytes)?;
    if writer.kind != kind {
        return Err(SchemaError::WrongKind {
            expected: kind.name(),
            found: writer.label(),
        });
    }
    Ok((writer, datum))
}

/// Reads `datum`, written with `writer`, into the current types through
/// serde_avro_fast (with schema resolution by field name). The datum must be
/// all of `datum`: bytes after it are refused, as the fast path does.
fn decode_datum<'b, T: serde::Deserialize<'b>>(
    writer: &SchemaVersion,
    datum: &'b [u8],
) -> Result<T, SchemaError> {
    let mut config = DeserializerConfig::new(&writer.schema);
    config.max_seq_size = MAX_SEQ_LEN;
    let mut state =
        DeserializerState::with_config(serde_avro_fast::de::read::SliceRead::new(datum), config);
    let value = T::deserialize(state.deserializer()).map_err(|e| {
        let reason = e.to_string();
        if reason.contains("end of slice") || reason.contains("Reached EOF") {
            SchemaError::TruncatedDatum {
                schema: writer.label(),
                len: datum.len(),
            }
        } else {
            SchemaError::Malformed {
                schema: writer.label(),
                reason,
            }
        }
    })?;
    // A slice reader's buffer is what it has not read yet.
    let rest = std::io::BufRead::fill_buf(&mut state.into_reader()).map_or(0, |r| r.len());
    if rest > 0 {
        return Err(SchemaError::TrailingBytes {
            schema: writer.label(),
            len: rest,
        });
    }
    Ok(value)
}

/// Encodes events with the current schema versions into caller-owned
/// buffers. Keep one per thread and reuse it: it holds the serializer's
/// scratch buffers, so encoding does not allocate per event.
pub struct Encoder {
    change: SerializerConfig<'static>,
    /// The current `PackageChange` is the version [`fast`] writes.
    fast_change: bool,
    /// The current `Enrichment` record is the one [`fast`] writes.
    fast_enrichment: bool,
    snapshot: SerializerConfig<'static>,
    enriched_change: SerializerConfig<'static>,
    enriched_snapshot: SerializerConfig<'static>,
    enrichment: SerializerConfig<'static>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for the current versions.
    pub fn new() -> Self {
        let r = Registry::get();
        Encoder {
            change: SerializerConfig::new(&r.current(Kind::PackageChange).schema),
            fast_change: r.current(Kind::PackageChange).fingerprint
                == fast::PACKAGE_CHANGE_FINGERPRINT,
            fast_enrichment: *r.enrichment.rabin_fingerprint() == fast::ENRICHMENT_FINGERPRINT,
            snapshot: SerializerConfig::new(&r.current(Kind::InventorySnapshot).schema),
            enriched_change: SerializerConfig::new(&r.current(Kind::EnrichedChange).schema),
            enriched_snapshot: SerializerConfig::new(&r.current(Kind::EnrichedSnapshot).schema),
            enrichment: SerializerConfig::new(&r.enrichment),
        }
    }

    /// Validates and encodes a whole `EnrichedChange` (the slow path, for
    /// events the router builds itself or read with an older raw version).
    pub fn encode_enriched_change(
        &mut self,
        e: &EnrichedChange<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), SchemaError> {
        validate::enrichment("EnrichedChange", &e.enrichment)?;
        encode(e, &mut self.enriched_change, out)
    }

    /// Validates and encodes a whole `EnrichedSnapshot`.
    pub fn encode_enriched_snapshot(
        &mut self,
        e: &EnrichedSnapshot<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), SchemaError> {
        validate::enrichment("EnrichedSnapshot", &e.enrichment)?;
        encode(e, &mut self.enriched_snapshot, out)
    }

    /// The router's fast path: appends the enriched form of `raw` (a
    /// single-object `PackageChange` or `InventorySnapshot` of the *current*
    /// version, already accepted by [`decode_change`]/[`decode_snapshot`],
    /// which also proves it is one datum and nothing more) to `out` without
    /// re-encoding it — the
    /// enriched header, the raw datum copied as is, then `enrichment`
    /// encoded. Avro writes a record as its fields in order, and the current
    /// enriched schema is the current raw schema's fields plus `enrichment`
    /// (checked by `enriched_schemas_extend_raw_schemas`), so the bytes are
    /// exactly those of a full encode. Returns `Ok(false)`, writing nothing,
    /// when `raw` was written with another version: decode and use
    /// `encode_enriched_*` then.
    pub fn append_enrichment(
        &mut self,
        raw: &[u8],
        enrichment: &Enrichment<'_>,
        out: &mut Vec<u8>,
    ) -> Result<bool, SchemaError> {
        let r = Registry::get();
        let (writer, datum) = r.writer_of(raw)?;
        if !matches!(writer.kind, Kind::PackageChange | Kind::InventorySnapshot)
            || writer.version != r.current(writer.kind).version
        {
            return Ok(false);
        }
        let enriched = r.current(writer.kind.enriched());
        validate::enrichment(enriched.kind.name(), enrichment)?;
        let start = out.len();
        out.extend_from_slice(&[0xC3, 0x01]);
        out.extend_from_slice(&enriched.fingerprint);
        out.extend_from_slice(datum);
        if self.fast_enrichment {
            fast::encode_enrichment(enrichment, out);
        } else if let Err(e) =
            serde_avro_fast::to_datum(enrichment, &mut *out, &mut self.enrichment)
        {
            out.truncate(start);
            return Err(SchemaError::Encode {
                schema: enriched.label(),
                reason: e.to_string(),
            });
        }
        Ok(true)
    }

    /// Validates `change` and appends its single-object encoding to `out`.
    pub fn encode_change(
        &mut self,
        change: &PackageChange<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), SchemaError> {
        validate::change(change)?;
        if !self.fast_change {
            return encode(change, &mut self.change, out);
        }
        out.extend_from_slice(&[0xC3, 0x01]);
        out.extend_from_slice(&fast::PACKAGE_CHANGE_FINGERPRINT);
        fast::encode_change(change, out);
        Ok(())
    }

    /// Validates `snapshot` and appends its single-object encoding to `out`.
    pub fn encode_snapshot(
        &mut self,
        snapshot: &InventorySnapshot<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), SchemaError> {
        validate::snapshot(snapshot)?;
        encode(snapshot, &mut self.snapshot, out)
    }
}

fn encode<T: serde::Serialize>(
    value: &T,
    config: &mut SerializerConfig<'static>,
    out: &mut Vec<u8>,
) -> Result<(), SchemaError> {
    let schema = config.schema();
    out.extend_from_slice(&[0xC3, 0x01]);
    out.extend_from_slice(schema.rabin_fingerprint());
    let start = out.len() - 10;
    serde_avro_fast::to_datum(value, &mut *out, config)
        .map(|_| ())
        .map_err(|e| {
            out.truncate(start);
            let label = Registry::get()
                .by_fingerprint(schema.rabin_fingerprint())
                .map(SchemaVersion::label)
                .unwrap_or_default();
            SchemaError::Encode {
                schema: label,
                reason: e.to_string(),
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sample;
    use std::borrow::Cow;

    fn encoded(i: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new()
            .encode_change(&sample::change(i), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn fast_path_enrichment_equals_a_full_encode() {
        let mut enc = Encoder::new();
        for i in 0..10 {
            let raw = encoded(i);
            let mut fast = Vec::new();
            assert!(enc
                .append_enrichment(&raw, &sample::enrichment(i), &mut fast)
                .unwrap());
            let mut full = Vec::new();
            enc.encode_enriched_change(
                &crate::EnrichedChange::new(sample::change(i), sample::enrichment(i)),
                &mut full,
            )
            .unwrap();
            assert_eq!(fast, full);
            let back = decode_enriched_change(&fast).unwrap();
            assert_eq!(
                back.into_parts(),
                (sample::change(i), sample::enrichment(i))
            );
        }
        let s = sample::snapshot(3, 40);
        let mut raw = Vec::new();
        enc.encode_snapshot(&s, &mut raw).unwrap();
        let mut fast = Vec::new();
        assert!(enc
            .append_enrichment(&raw, &sample::enrichment(3), &mut fast)
            .unwrap());
        assert_eq!(
            decode_enriched_snapshot(&fast).unwrap(),
            crate::EnrichedSnapshot::new(s, sample::enrichment(3))
        );
        let mut bad = sample::enrichment(1);
        bad.hostgroup = Cow::Borrowed("");
        let mut out = Vec::new();
        assert_eq!(
            enc.append_enrichment(&raw, &bad, &mut out)
                .unwrap_err()
                .to_string(),
            "invalid EnrichedSnapshot: enrichment.hostgroup is empty"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn change_round_trips_and_borrows() {
        let bytes = encoded(3);
        let back = decode_change(&bytes).unwrap();
        assert_eq!(back, sample::change(3));
        assert!(
            matches!(back.host.hostname, Cow::Borrowed(_)),
            "decode must not allocate strings"
        );
        assert!(matches!(back.package.repo, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn sample_is_realistic_size() {
        let n = encoded(1).len();
        assert!((300..=400).contains(&n), "sample event is {n} bytes");
    }

    #[test]
    fn snapshot_round_trips() {
        let s = sample::snapshot(7, 1500);
        let mut out = Vec::new();
        Encoder::new().encode_snapshot(&s, &mut out).unwrap();
        assert_eq!(decode_snapshot(&out).unwrap(), s);
        assert!(matches!(
            decode_change(&out),
            Err(SchemaError::WrongKind {
                expected: "PackageChange",
                ..
            })
        ));
    }

    #[test]
    fn a_chunk_round_trips_and_v1_snapshots_read_as_whole_ones() {
        let mut s = sample::snapshot(5, 4);
        let whole = s.snapshot_id;
        s.snapshot_id = crate::chunk_id(&whole, 1);
        s.chunk = Some(crate::SnapshotChunk {
            snapshot_id: whole,
            index: 1,
            count: 3,
            package_count: 10,
        });
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        enc.encode_snapshot(&s, &mut out).unwrap();
        let back = decode_snapshot(&out).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.whole_id(), whole);
        let mut enriched = Vec::new();
        assert!(enc
            .append_enrichment(&out, &sample::enrichment(5), &mut enriched)
            .unwrap());
        let e = decode_enriched_snapshot(&enriched).unwrap();
        assert_eq!(e.chunk, s.chunk);
        assert_eq!(e.whole_id(), whole);

        // A v1 record (written before chunks existed) is a whole snapshot.
        let v1 = Registry::get()
            .versions()
            .iter()
            .find(|v| v.kind == Kind::InventorySnapshot && v.version == 1)
            .unwrap();
        let plain = sample::snapshot(5, 4);
        let mut old = vec![0xC3, 0x01];
        old.extend_from_slice(&v1.fingerprint);
        #[derive(serde::Serialize)]
        struct V1<'a> {
            snapshot_id: crate::EventId,
            taken_at: i64,
            host: &'a crate::Host<'a>,
            packages: &'a [crate::Package<'a>],
        }
        serde_avro_fast::to_datum(
            &V1 {
                snapshot_id: plain.snapshot_id,
                taken_at: plain.taken_at,
                host: &plain.host,
                packages: &plain.packages,
            },
            &mut old,
            &mut SerializerConfig::new(&v1.schema),
        )
        .unwrap();
        assert_eq!(decode_snapshot(&old).unwrap(), plain);

        // Impossible chunk positions are refused, naming the field.
        for (index, count, field) in [
            (3, 3, "chunk.index"),
            (0, 0, "chunk.count"),
            (-1, 2, "chunk.index"),
        ] {
            let mut bad = s.clone();
            bad.chunk = Some(crate::SnapshotChunk {
                index,
                count,
                ..s.chunk.unwrap()
            });
            let e = enc.encode_snapshot(&bad, &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn encoder_reuses_buffer_and_appends() {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        enc.encode_change(&sample::change(1), &mut out).unwrap();
        let one = out.len();
        enc.encode_change(&sample::change(1), &mut out).unwrap();
        assert_eq!(out.len(), 2 * one);
        assert_eq!(out[..one], out[one..]);
    }

    /// Found by `fuzz/fuzz_targets/decode_event.rs` (input in
    /// `fuzz/regressions/decode_event/`): the decoders ignored bytes after
    /// the datum, and `append_enrichment` copies the whole rest of the raw
    /// event, so a host could append an `Enrichment` of its own choosing to
    /// a valid change; the router then appended its real enrichment after
    /// it, and the sink read the host's (hostgroup, `known_host`,
    /// `unexplained_rpm`...) and ignored the router's as trailing bytes.
    #[test]
    fn bytes_after_the_datum_are_refused_so_no_enrichment_can_be_forged() {
        let mut forged = sample::enrichment(9);
        forged.hostgroup = Cow::Borrowed("forged-by-the-host");
        forged.unexplained_rpm = false;
        let mut tail = Vec::new();
        fast::encode_enrichment(&forged, &mut tail);
        let router = sample::enrichment(1);
        let mut enc = Encoder::new();

        let mut change = encoded(1);
        change.extend_from_slice(&tail);
        let mut snapshot = Vec::new();
        enc.encode_snapshot(&sample::snapshot(1, 2), &mut snapshot)
            .unwrap();
        snapshot.extend_from_slice(&tail);
        for (raw, decoded) in [
            (&change, decode_change(&change).map(|_| ())),
            (&snapshot, decode_snapshot(&snapshot).map(|_| ())),
        ] {
            if decoded.is_ok() {
                // What the router did with it: the sink must read the router's enrichment.
                let mut out = Vec::new();
                assert!(enc.append_enrichment(raw, &router, &mut out).unwrap());
                let read = match decode_enriched_change(&out) {
                    Ok(e) => e.into_parts().1.hostgroup.into_owned(),
                    Err(_) => decode_enriched_snapshot(&out)
                        .map(|e| e.enrichment.hostgroup.into_owned())
                        .unwrap_or_else(|e| e.to_string()),
                };
                assert_eq!(read, router.hostgroup, "the sink reads a forged enrichment");
            }
        }
        let e = decode_change(&change).unwrap_err();
        assert_eq!(e.code(), "trailing_bytes");
        assert_eq!(
            e.to_string(),
            format!(
                "malformed PackageChange v1 event: {} byte(s) after the datum (a message holds exactly one event)",
                tail.len()
            )
        );
        assert_eq!(
            decode_snapshot(&snapshot).unwrap_err().code(),
            "trailing_bytes"
        );
        // Enriched events and older versions (the serde path) alike.
        let mut enriched = Vec::new();
        assert!(enc
            .append_enrichment(&encoded(1), &router, &mut enriched)
            .unwrap());
        enriched.push(0);
        assert_eq!(
            decode_enriched_change(&enriched).unwrap_err().to_string(),
            "malformed EnrichedChange v1 event: 1 byte(s) after the datum (a message holds exactly one event)"
        );
        // Exactly one datum is still fine.
        assert!(decode_change(&encoded(1)).is_ok());
    }

    #[test]
    fn each_bad_input_has_its_own_error() {
        let good = encoded(1);
        assert_eq!(
            decode_change(&good[..5]),
            Err(SchemaError::TruncatedHeader { len: 5 })
        );
        assert!(matches!(
            decode_change(&good[..good.len() - 20]),
            Err(SchemaError::TruncatedDatum { .. })
        ));
        let mut magic = good.clone();
        magic[0] = 0x4f;
        assert_eq!(
            decode_change(&magic),
            Err(SchemaError::WrongMagic {
                found: [0x4f, 0x01]
            })
        );
        let mut fp = good.clone();
        fp[2] ^= 0xff;
        assert!(matches!(
            decode_change(&fp),
            Err(SchemaError::UnknownFingerprint { .. })
        ));
        // A negative string length is malformed: patch the length varint in
        // front of host.machine_id (32 chars, zigzag 0x40) to -1 (0x01).
        let id = sample::change(1).host.machine_id.into_owned();
        let at = good
            .windows(id.len())
            .position(|w| w == id.as_bytes())
            .unwrap();
        assert_eq!(good[at - 1], 0x40);
        let mut neg = good.clone();
        neg[at - 1] = 0x01;
        assert!(
            matches!(decode_change(&neg), Err(SchemaError::Malformed { .. })),
            "{:?}",
            decode_change(&neg)
        );
    }

    #[test]
    fn semantically_impossible_events_are_rejected_both_ways() {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        let mut empty = sample::change(1);
        empty.package.name = Cow::Borrowed("");
        let err = enc.encode_change(&empty, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid PackageChange: package.name is empty"
        );
        assert!(out.is_empty(), "a rejected event leaves nothing behind");

        let mut negative = sample::change(1);
        negative.replaced.as_mut().unwrap().size = Some(-4);
        assert_eq!(
            enc.encode_change(&negative, &mut out)
                .unwrap_err()
                .to_string(),
            "invalid PackageChange: replaced.size is negative"
        );

        let mut lonely = sample::change(1);
        lonely.replaced = None;
        assert!(enc.encode_change(&lonely, &mut out).is_err());

        // The decoder refuses the same event when another producer wrote it.
        let mut raw = Vec::new();
        let schema = &Registry::get().current(Kind::PackageChange).schema;
        raw.extend_from_slice(&[0xC3, 0x01]);
        raw.extend_from_slice(schema.rabin_fingerprint());
        serde_avro_fast::to_datum(&empty, &mut raw, &mut SerializerConfig::new(schema)).unwrap();
        assert_eq!(decode_change(&raw).unwrap_err().code(), "invalid");

        let mut snap = sample::snapshot(1, 3);
        snap.packages[2].epoch = Some(-1);
        assert_eq!(
            Encoder::new()
                .encode_snapshot(&snap, &mut out)
                .unwrap_err()
                .to_string(),
            "invalid InventorySnapshot: packages[2].epoch is negative"
        );
    }
}

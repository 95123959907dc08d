//! The hand-written codec (`schemas/src/codec/fast.rs`, used by
//! `Encoder::encode_change`, `decode_change` and `append_enrichment` for the
//! current schema versions) against serde_avro_fast, the general codec it
//! replaces on the hot path:
//! - encoding any valid change gives the very bytes serde_avro_fast writes;
//! - decoding what serde_avro_fast wrote, for any change (valid or not),
//!   gives what serde_avro_fast reads, or the same error;
//! - on corrupted events and arbitrary bytes both accept or both reject
//!   (never a panic), and accepted bytes decode to the same event;
//! - appending any enrichment gives the bytes of a full serde encode.
//!
//! The reference decoder below is `codec::decode` as it was before the fast
//! path: serde_avro_fast on the writer schema, errors classified by message.

#![allow(clippy::unwrap_used)]

mod common;

use std::borrow::Cow;

use common::{any_change, any_enrichment, any_valid_change};
use pkgstream_schemas::{
    decode_change, decode_enriched_change, validate, Encoder, EnrichedChange, Kind, PackageChange,
    Registry, SchemaError,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_avro_fast::ser::SerializerConfig;

/// Single-object encoding of `value` with the current `kind` schema, by
/// serde_avro_fast alone (no validation).
fn serde_encode<T: serde::Serialize>(value: &T, kind: Kind) -> Vec<u8> {
    let current = Registry::get().current(kind);
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&current.fingerprint);
    serde_avro_fast::to_datum(value, &mut out, &mut SerializerConfig::new(&current.schema))
        .unwrap();
    out
}

/// `decode_change` through serde_avro_fast, as before the fast path (plus
/// the one-datum rule: bytes after the datum are refused).
fn serde_decode(bytes: &[u8]) -> Result<PackageChange<'_>, SchemaError> {
    let (writer, datum) = Registry::get().writer_of(bytes)?;
    if writer.kind != Kind::PackageChange {
        return Err(SchemaError::WrongKind {
            expected: "PackageChange",
            found: writer.label(),
        });
    }
    let mut state = serde_avro_fast::de::DeserializerState::new(
        serde_avro_fast::de::read::SliceRead::new(datum),
        &writer.schema,
    );
    let change: PackageChange<'_> =
        serde::Deserialize::deserialize(state.deserializer()).map_err(|e| {
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
    let rest = std::io::BufRead::fill_buf(&mut state.into_reader()).map_or(0, |r| r.len());
    if rest > 0 {
        return Err(SchemaError::TrailingBytes {
            schema: writer.label(),
            len: rest,
        });
    }
    validate::change(&change)?;
    Ok(change)
}

/// Both decoders accept `bytes` (as the same event) or both reject them
/// with the same kind of error. Two known differences in the *kind*:
/// serde_avro_fast reports an over-long varint, or an `int` beyond 32 bits,
/// as "Reached EOF" (so truncated); the fast decoder calls them malformed.
/// And Malformed reasons are worded differently.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let fast = decode_change(bytes);
    let reference = serde_decode(bytes);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) if a == b => {}
        (
            Err(SchemaError::Malformed { schema: a, .. }),
            Err(SchemaError::Malformed { schema: b, .. }),
        ) if a == b => {}
        (Err(SchemaError::Malformed { reason, .. }), Err(SchemaError::TruncatedDatum { .. }))
            if reason.contains("varint longer than 64 bits")
                || reason.contains("out of the 32-bit range") => {}
        _ => prop_assert!(
            false,
            "fast path {fast:?}\nserde path {reference:?}\nbytes {bytes:02x?}"
        ),
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Cut(prop::sample::Index),
}

/// Any byte, but often one that means something in Avro: a small varint
/// (union branch, enum index, short length), a continuation byte, a sign.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        0..16u8,
        Just(0x7f),
        Just(0x80),
        Just(0x81),
        Just(0xff)
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<prop::sample::Index>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        1 => any::<prop::sample::Index>().prop_map(Edit::Cut),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        if bytes.is_empty() {
            return;
        }
        match e {
            Edit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => bytes.insert(i.index(bytes.len()), *b),
            Edit::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Edit::Cut(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_writes_the_bytes_serde_writes(c in any_valid_change()) {
        let mut fast = Vec::new();
        Encoder::new().encode_change(&c, &mut fast).unwrap();
        prop_assert_eq!(&fast, &serde_encode(&c, Kind::PackageChange));
        let back = decode_change(&fast).unwrap();
        prop_assert_eq!(&back, &c);
        prop_assert!(matches!(back.host.hostname, Cow::Borrowed(_)) && back.package.digest.as_ref().is_none_or(|d| matches!(d, Cow::Borrowed(_))), "strings borrow from the input");
    }

    #[test]
    fn encode_rejects_what_validation_rejects(c in any_change()) {
        let mut out = Vec::new();
        let encoded = Encoder::new().encode_change(&c, &mut out);
        prop_assert_eq!(&encoded, &validate::change(&c));
        if encoded.is_err() {
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn decode_of_serde_bytes_equals_serde_decode(c in any_change()) {
        // Any change, valid or not: invalid ones must fail the same way.
        let bytes = serde_encode(&c, Kind::PackageChange);
        let fast = decode_change(&bytes);
        prop_assert_eq!(&fast, &serde_decode(&bytes));
        prop_assert_eq!(fast.is_ok(), validate::change(&c).is_ok());
        if let Ok(back) = fast {
            prop_assert_eq!(back, c);
        }
    }

    #[test]
    fn corrupted_events_are_judged_alike(c in any_valid_change(), edits in proptest::collection::vec(edit(), 1..4)) {
        let mut bytes = serde_encode(&c, Kind::PackageChange);
        // Keep the header in most cases so the datum decoders are exercised.
        let header = bytes[..10].to_vec();
        apply(&mut bytes, &edits);
        agree(&bytes)?;
        let mut datum_only = header;
        datum_only.extend_from_slice(bytes.get(10..).unwrap_or_default());
        agree(&datum_only)?;
    }

    #[test]
    fn arbitrary_datums_are_judged_alike(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = serde_encode(&pkgstream_schemas::sample::change(1), Kind::PackageChange);
        bytes.truncate(10);
        bytes.extend(tail);
        agree(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_are_judged_alike(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        agree(&bytes)?;
    }

    #[test]
    fn append_enrichment_writes_the_bytes_serde_writes(c in any_valid_change(), e in any_enrichment()) {
        let mut enc = Encoder::new();
        let mut raw = Vec::new();
        enc.encode_change(&c, &mut raw).unwrap();
        let mut fast = Vec::new();
        prop_assert!(enc.append_enrichment(&raw, &e, &mut fast).unwrap());
        let full = EnrichedChange::new(c.clone(), e.clone());
        prop_assert_eq!(&fast, &serde_encode(&full, Kind::EnrichedChange));
        prop_assert_eq!(decode_enriched_change(&fast).unwrap(), full);
    }
}

/// Every byte of two events set to every value, and every truncation:
/// deterministic, so that a wrong branch, enum or length check cannot hide
/// behind the luck of random corruption.
#[test]
fn every_single_byte_corruption_is_judged_alike() {
    let mut sparse = pkgstream_schemas::sample::change(2);
    sparse.replaced = None;
    sparse.action = pkgstream_schemas::Action::Remove;
    sparse.package.vendor = None;
    sparse.transaction = pkgstream_schemas::Transaction {
        rpm_tid: 7,
        history_id: None,
        command_line: None,
        login_user: None,
        start_time: None,
    };
    for c in [pkgstream_schemas::sample::change(1), sparse] {
        let good = serde_encode(&c, Kind::PackageChange);
        for at in 10..good.len() {
            let mut bytes = good.clone();
            for b in 0..=255 {
                bytes[at] = b;
                agree(&bytes).unwrap();
            }
            agree(&good[..at]).unwrap();
        }
    }
}

/// Edge values the strategies may miss, checked one by one.
#[test]
fn varint_and_length_edges_are_judged_alike() {
    let good = serde_encode(&pkgstream_schemas::sample::change(1), Kind::PackageChange);
    // event_time is the varint right after the 16-byte event id.
    let at = 10 + 16;
    for tail in [
        &[0xff; 9][..],                                                    // runs out
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..], // 10 bytes, bit 63: fine
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..], // 10 bytes, bit 64: overflow
        &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
        ][..], // 11 bytes
        &[0x80, 0x00][..],                                                 // non-minimal zero
    ] {
        let mut bytes = good[..at].to_vec();
        bytes.extend_from_slice(tail);
        bytes.extend_from_slice(&good[at + 8..]);
        agree(&bytes).unwrap();
        // And with nothing after it.
        let mut cut = good[..at].to_vec();
        cut.extend_from_slice(tail);
        agree(&cut).unwrap();
    }
    // Trailing bytes after a complete datum are refused by both.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    assert_eq!(
        decode_change(&trailing),
        Err(SchemaError::TrailingBytes {
            schema: "PackageChange v1".into(),
            len: 4
        })
    );
    agree(&trailing).unwrap();
}

//! The event decoder (`pkgstream-schemas`): `Registry::writer_of`,
//! `decode_change`, `decode_snapshot`, `decode_enriched_change`,
//! `decode_enriched_snapshot`, with every shipped schema version, and the
//! router's fast path `Encoder::append_enrichment`.
//!
//! Input: one selector byte, then bytes. A selector below the number of
//! shipped versions prepends that version's single-object header (magic +
//! fingerprint) to the bytes, so every version is reached whatever the
//! seeds; any other selector feeds the bytes as they are (the framing
//! itself: magic, fingerprint, truncation).
//!
//! Beyond "never panics", what must hold:
//! - at most one decoder accepts the bytes, the one of the header's kind;
//!   the others answer `WrongKind` (or the same framing error);
//! - what a decoder accepts re-encodes, and decodes back to the same value;
//! - the current `PackageChange` (hand-written fast codec) is judged like
//!   serde_avro_fast judges it, and both read the same event (but for
//!   bytes after the datum, which only the decoder refuses);
//! - a raw event the router accepts, enriched by `append_enrichment`,
//!   decodes back to exactly that event and that enrichment (the sink reads
//!   what the router meant to write).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkgstream_schemas::{
    decode_change, decode_enriched_change, decode_enriched_snapshot, decode_snapshot, sample,
    validate, Encoder, EnrichedSnapshot, Kind, PackageChange, Registry, SchemaError,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let registry = Registry::get();
    let versions = registry.versions();
    let framed: Vec<u8> = match versions.get(usize::from(selector)) {
        Some(v) => {
            let mut b = vec![0xC3, 0x01];
            b.extend_from_slice(&v.fingerprint);
            b.extend_from_slice(rest);
            b
        }
        None => rest.to_vec(),
    };
    check(&framed);
});

fn check(bytes: &[u8]) {
    let registry = Registry::get();
    let header = registry.writer_of(bytes);
    if let Ok((writer, datum)) = &header {
        assert_eq!(
            &bytes[2..10],
            &writer.fingerprint,
            "writer_of: wrong version"
        );
        assert_eq!(
            datum.len(),
            bytes.len() - 10,
            "writer_of: datum is the rest"
        );
    }
    let change = decode_change(bytes);
    let snapshot = decode_snapshot(bytes);
    let enriched_change = decode_enriched_change(bytes);
    let enriched_snapshot = decode_enriched_snapshot(bytes);

    // Exactly the decoder of the header's kind may accept; the others say why not.
    let results: [(Kind, Result<(), &SchemaError>); 4] = [
        (Kind::PackageChange, change.as_ref().map(|_| ())),
        (Kind::InventorySnapshot, snapshot.as_ref().map(|_| ())),
        (Kind::EnrichedChange, enriched_change.as_ref().map(|_| ())),
        (
            Kind::EnrichedSnapshot,
            enriched_snapshot.as_ref().map(|_| ()),
        ),
    ];
    for (kind, result) in &results {
        match &header {
            Err(framing) => assert_eq!(result, &Err(framing), "{kind:?}: framing error differs"),
            Ok((writer, _)) if writer.kind != *kind => assert!(
                matches!(result, Err(SchemaError::WrongKind { .. })),
                "{kind:?} decoder on a {} event: {result:?}",
                writer.label()
            ),
            Ok(_) => {}
        }
        if let Err(e) = result {
            // Every error has a message and a stable code.
            assert!(!e.to_string().is_empty());
            assert!(!e.code().is_empty());
        }
    }

    let mut enc = Encoder::new();
    let enrichment = sample::enrichment(7);
    if let Ok(c) = &change {
        let mut out = Vec::new();
        enc.encode_change(c, &mut out)
            .unwrap_or_else(|e| panic!("a decoded change does not re-encode: {e}"));
        assert_eq!(decode_change(&out).as_ref(), Ok(c), "change round trip");

        // The router's fast path: raw datum copied, enrichment appended.
        let mut enriched = Vec::new();
        let appended = enc
            .append_enrichment(bytes, &enrichment, &mut enriched)
            .unwrap_or_else(|e| panic!("append_enrichment refused a decoded change: {e}"));
        if appended {
            let back = decode_enriched_change(&enriched)
                .unwrap_or_else(|e| panic!("the router's enriched change does not decode: {e}"));
            assert_eq!(
                back.into_parts(),
                (c.clone(), enrichment.clone()),
                "the enriched change is not the change plus the router's enrichment"
            );
        }
    }
    if let Ok((writer, datum)) = &header {
        if writer.kind == Kind::PackageChange {
            // The fast codec against the general one, on the same writer schema.
            let serde: Result<PackageChange<'_>, _> =
                serde_avro_fast::from_datum_slice(datum, &writer.schema);
            let serde = serde
                .map_err(|e| e.to_string())
                .and_then(|c| validate::change(&c).map(|()| c).map_err(|e| e.to_string()));
            match (&change, &serde) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "fast and serde decode differ"),
                (Err(_), Err(_)) => {}
                // serde_avro_fast alone ignores bytes after the datum; the
                // decoder refuses them (see `append_enrichment`).
                (Err(SchemaError::TrailingBytes { .. }), Ok(_)) => {}
                (a, b) => panic!("fast and serde disagree: fast {a:?}, serde {b:?}"),
            }
        }
    }
    if let Ok(s) = &snapshot {
        let mut out = Vec::new();
        enc.encode_snapshot(s, &mut out)
            .unwrap_or_else(|e| panic!("a decoded snapshot does not re-encode: {e}"));
        assert_eq!(decode_snapshot(&out).as_ref(), Ok(s), "snapshot round trip");
        let mut enriched = Vec::new();
        let appended = enc
            .append_enrichment(bytes, &enrichment, &mut enriched)
            .unwrap_or_else(|e| panic!("append_enrichment refused a decoded snapshot: {e}"));
        if appended {
            let back = decode_enriched_snapshot(&enriched)
                .unwrap_or_else(|e| panic!("the router's enriched snapshot does not decode: {e}"));
            assert_eq!(
                back,
                EnrichedSnapshot::new(s.clone(), enrichment.clone()),
                "the enriched snapshot is not the snapshot plus the router's enrichment"
            );
        }
    }
    if let Ok(e) = &enriched_change {
        let mut out = Vec::new();
        enc.encode_enriched_change(e, &mut out)
            .unwrap_or_else(|err| panic!("a decoded enriched change does not re-encode: {err}"));
        assert_eq!(
            decode_enriched_change(&out).as_ref(),
            Ok(e),
            "enriched change round trip"
        );
    }
    if let Ok(e) = &enriched_snapshot {
        let mut out = Vec::new();
        enc.encode_enriched_snapshot(e, &mut out)
            .unwrap_or_else(|err| panic!("a decoded enriched snapshot does not re-encode: {err}"));
        assert_eq!(
            decode_enriched_snapshot(&out).as_ref(),
            Ok(e),
            "enriched snapshot round trip"
        );
    }
}

//! Property tests for the decoder: no input makes it panic, every valid
//! event round-trips, and every corruption of a valid event is an error or
//! a valid event (never a crash).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::change;
use pkgstream_schemas::{decode_change, decode_snapshot, sample, Encoder};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_change(&bytes);
        let _ = decode_snapshot(&bytes);
    }

    #[test]
    fn arbitrary_datum_after_a_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = Vec::new();
        Encoder::new().encode_change(&sample::change(1), &mut bytes).unwrap();
        bytes.truncate(10);
        bytes.extend(tail);
        let _ = decode_change(&bytes);
    }

    #[test]
    fn valid_changes_round_trip(c in change()) {
        let mut bytes = Vec::new();
        Encoder::new().encode_change(&c, &mut bytes).unwrap();
        prop_assert_eq!(decode_change(&bytes).unwrap(), c);
    }

    #[test]
    fn corrupted_events_are_errors_not_panics(c in change(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut valid = Vec::new();
        Encoder::new().encode_change(&c, &mut valid).unwrap();
        let mut bytes = valid.clone();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_change(&bytes);
        // Every strict prefix of a valid event is an error. (A prefix of a
        // corrupted one need not be: a changed length can end the datum early.)
        let n = cut.index(valid.len());
        prop_assert!(decode_change(&valid[..n]).is_err());
    }
}

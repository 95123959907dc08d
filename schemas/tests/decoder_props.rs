//! Property tests for the decoder: no input makes it panic, every valid
//! event round-trips, and every corruption of a valid event is an error or
//! a valid event (never a crash).

use std::borrow::Cow;

use pkgstream_schemas::{change_event_id, decode_change, decode_snapshot, sample, Action, Encoder, Package, PackageChange, Source};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._+~^-]{1,40}"
}

fn package() -> impl Strategy<Value = Package<'static>> {
    (text(), proptest::option::of(0..100i32), text(), text(), text(), proptest::option::of(text()), proptest::option::of(0..i64::MAX), proptest::option::of(".*"))
        .prop_map(|(name, epoch, version, release, arch, repo, size, digest)| Package {
            name: name.into(),
            epoch,
            version: version.into(),
            release: release.into(),
            arch: arch.into(),
            repo: repo.map(Cow::Owned),
            vendor: None,
            buildtime: size.map(|s| s / 3),
            install_time: None,
            size,
            digest: digest.map(Cow::Owned),
        })
}

fn change() -> impl Strategy<Value = PackageChange<'static>> {
    (package(), proptest::option::of(package()), 1..i64::MAX, 0..i64::MAX, prop::sample::select(vec![Action::Install, Action::Reinstall, Action::Remove, Action::Obsolete, Action::Upgrade]), ".{0,80}")
        .prop_map(|(package, replaced, event_time, rpm_tid, action, cmd)| {
            let mut c = sample::change(0);
            let action = if replaced.is_none() && action == Action::Upgrade { Action::Install } else { action };
            c.event_id = change_event_id(&c.host.machine_id, action, &package.name, package.epoch, &package.version, &package.release, &package.arch, rpm_tid);
            c.action = action;
            c.source = Source::Rpm;
            c.package = package;
            c.replaced = replaced;
            c.event_time = event_time;
            c.transaction.rpm_tid = rpm_tid;
            c.transaction.command_line = Some(cmd.into());
            c
        })
}

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
        let mut bytes = Vec::new();
        Encoder::new().encode_change(&c, &mut bytes).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_change(&bytes);
        let n = cut.index(bytes.len());
        prop_assert!(decode_change(&bytes[..n]).is_err());
    }
}

//! proptest strategies shared by the property tests: realistic valid events
//! (`change`), and events with every field arbitrary, valid or not
//! (`any_change`), for comparing codecs on the full value space.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use pkgstream_schemas::{
    change_event_id, sample, Action, Enrichment, EventId, Host, Package, PackageChange, Source,
    Transaction,
};
use proptest::prelude::*;

/// A NEVRA-like token.
pub fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._+~^-]{1,40}"
}

/// A realistic package (what `decoder_props` has always used).
pub fn package() -> impl Strategy<Value = Package<'static>> {
    (
        text(),
        proptest::option::of(0..100i32),
        text(),
        text(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(0..i64::MAX),
        proptest::option::of(".*"),
    )
        .prop_map(
            |(name, epoch, version, release, arch, repo, size, digest)| Package {
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
            },
        )
}

/// A realistic valid change built around `sample::change(0)`.
pub fn change() -> impl Strategy<Value = PackageChange<'static>> {
    (
        package(),
        proptest::option::of(package()),
        1..i64::MAX,
        0..i64::MAX,
        prop::sample::select(vec![
            Action::Install,
            Action::Reinstall,
            Action::Remove,
            Action::Obsolete,
            Action::Upgrade,
        ]),
        ".{0,80}",
    )
        .prop_map(|(package, replaced, event_time, rpm_tid, action, cmd)| {
            let mut c = sample::change(0);
            let action = if replaced.is_none() && action == Action::Upgrade {
                Action::Install
            } else {
                action
            };
            c.event_id = change_event_id(
                &c.host.machine_id,
                action,
                &package.name,
                package.epoch,
                &package.version,
                &package.release,
                &package.arch,
                rpm_tid,
            );
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

/// Any string: empty, ASCII, multi-byte UTF-8, control characters, and
/// long enough for a length varint of two bytes.
pub fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9._-]{1,20}",
        "\\PC{0,30}",
        ".{60,140}",
        any::<String>(),
    ]
    .boxed()
}

fn any_opt_text() -> BoxedStrategy<Option<Cow<'static, str>>> {
    proptest::option::of(any_text().prop_map(Cow::Owned)).boxed()
}

/// Any long, with the boundaries of each varint length well represented.
pub fn any_long() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -200..200i64,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        (0..63u32).prop_map(|b| 1i64 << b),
        (0..63u32).prop_map(|b| -(1i64 << b))
    ]
}

/// A package with every field arbitrary (possibly semantically invalid).
pub fn any_package() -> BoxedStrategy<Package<'static>> {
    (
        (
            any_text(),
            proptest::option::of(any::<i32>()),
            any_text(),
            any_text(),
            any_text(),
        ),
        (
            any_opt_text(),
            any_opt_text(),
            proptest::option::of(any_long()),
            proptest::option::of(any_long()),
            proptest::option::of(any_long()),
            any_opt_text(),
        ),
    )
        .prop_map(
            |(
                (name, epoch, version, release, arch),
                (repo, vendor, buildtime, install_time, size, digest),
            )| Package {
                name: name.into(),
                epoch,
                version: version.into(),
                release: release.into(),
                arch: arch.into(),
                repo,
                vendor,
                buildtime,
                install_time,
                size,
                digest,
            },
        )
        .boxed()
}

const SOURCES: [Source; 4] = [Source::Dnf, Source::Yum, Source::Rpm, Source::Inventory];
const ACTIONS: [Action; 6] = [
    Action::Install,
    Action::Upgrade,
    Action::Downgrade,
    Action::Reinstall,
    Action::Remove,
    Action::Obsolete,
];

/// A change with every field arbitrary: any source and action, any numbers,
/// any strings, `replaced` present or not regardless of the action. Many are
/// semantically invalid, which the codecs must reject the same way.
pub fn any_change() -> BoxedStrategy<PackageChange<'static>> {
    (
        (
            any::<[u8; 16]>(),
            any_long(),
            (any_text(), any_text(), any_text(), any_text(), any_text()),
            prop::sample::select(SOURCES.to_vec()),
            prop::sample::select(ACTIONS.to_vec()),
        ),
        (any_package(), proptest::option::of(any_package())),
        (
            any_long(),
            proptest::option::of(any_long()),
            any_opt_text(),
            any_opt_text(),
            proptest::option::of(any_long()),
        ),
    )
        .prop_map(
            |(
                (id, event_time, (machine_id, hostname, os_id, os_version, arch), source, action),
                (package, replaced),
                (rpm_tid, history_id, command_line, login_user, start_time),
            )| PackageChange {
                event_id: EventId(id),
                event_time,
                host: Host {
                    machine_id: machine_id.into(),
                    hostname: hostname.into(),
                    os_id: os_id.into(),
                    os_version: os_version.into(),
                    arch: arch.into(),
                },
                source,
                action,
                package,
                replaced,
                transaction: Transaction {
                    rpm_tid,
                    history_id,
                    command_line,
                    login_user,
                    start_time,
                },
            },
        )
        .boxed()
}

/// `any_change` made valid: what `validate::change` accepts, with every
/// other field still arbitrary (for the encoder, which validates).
pub fn any_valid_change() -> BoxedStrategy<PackageChange<'static>> {
    fn fix(p: &mut Package<'_>) {
        for s in [&mut p.name, &mut p.version, &mut p.release, &mut p.arch] {
            if s.is_empty() {
                *s = Cow::Borrowed("x");
            }
        }
        p.epoch = p.epoch.map(|e| e.checked_abs().unwrap_or(0));
        p.size = p.size.map(|s| s.checked_abs().unwrap_or(0));
    }
    (any_change(), any_package())
        .prop_map(|(mut c, spare)| {
            if c.host.machine_id.is_empty() {
                c.host.machine_id = Cow::Borrowed("0123456789abcdef0123456789abcdef");
            }
            c.event_time = c.event_time.checked_abs().unwrap_or(i64::MAX).max(1);
            c.transaction.rpm_tid = c.transaction.rpm_tid.checked_abs().unwrap_or(0);
            if c.replaced.is_none() && matches!(c.action, Action::Upgrade | Action::Downgrade) {
                c.replaced = Some(spare);
            }
            fix(&mut c.package);
            if let Some(r) = &mut c.replaced {
                fix(r);
            }
            c
        })
        .boxed()
}

/// A valid enrichment with arbitrary text, tags and flags.
pub fn any_enrichment() -> BoxedStrategy<Enrichment<'static>> {
    (
        (any_text(), any_text(), any_opt_text(), any_opt_text()),
        proptest::collection::btree_map(any_text(), any_text(), 0..5),
        (any::<bool>(), any::<bool>(), any::<bool>(), any_long()),
    )
        .prop_map(
            |(
                (hostgroup, environment, owner, datacenter),
                tags,
                (known_host, outside_maintenance_window, unexplained_rpm, routed_at),
            ): (_, BTreeMap<String, String>, _)| Enrichment {
                hostgroup: if hostgroup.is_empty() {
                    Cow::Borrowed("g")
                } else {
                    hostgroup.into()
                },
                environment: if environment.is_empty() {
                    Cow::Borrowed("prod")
                } else {
                    environment.into()
                },
                owner,
                datacenter,
                tags: std::borrow::Cow::Owned(tags),
                known_host,
                outside_maintenance_window,
                unexplained_rpm,
                routed_at: routed_at.checked_abs().unwrap_or(i64::MAX).max(1),
            },
        )
        .boxed()
}

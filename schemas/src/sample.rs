//! Realistic sample events for tests, benches and demos: a dnf upgrade of a
//! common package on a RHEL 9 host, about 350 bytes encoded.

use std::borrow::Cow;

use crate::event::{
    Action, Enrichment, Host, InventorySnapshot, Package, PackageChange, Source, Transaction,
};
use crate::id::{change_event_id, snapshot_id};

const PACKAGES: &[(&str, &str, &str)] = &[
    ("openssl-libs", "3.0.7", "27.el9"),
    ("kernel-core", "5.14.0", "427.13.1.el9_4"),
    ("glibc", "2.34", "100.el9_4.2"),
    ("systemd", "252", "32.el9_4"),
    ("bash", "5.1.8", "9.el9"),
];

/// The host of sample number `i`.
pub fn host(i: u64) -> Host<'static> {
    Host {
        machine_id: Cow::Owned(format!("{:032x}", 0x5eed_0000_u64 + i)),
        hostname: Cow::Owned(format!("web-{i:05}.dc1")),
        os_id: Cow::Borrowed("rhel"),
        os_version: Cow::Borrowed("9.4"),
        arch: Cow::Borrowed("x86_64"),
    }
}

fn package(
    name: &str,
    version: &str,
    release: &str,
    install_time: Option<i64>,
) -> Package<'static> {
    Package {
        name: Cow::Owned(name.to_owned()),
        epoch: Some(1),
        version: Cow::Owned(version.to_owned()),
        release: Cow::Owned(release.to_owned()),
        arch: Cow::Borrowed("x86_64"),
        repo: Some(Cow::Borrowed("rhel-9-for-x86_64-baseos-rpms")),
        vendor: Some(Cow::Borrowed("Red Hat, Inc.")),
        buildtime: Some(1_716_300_000_000_000),
        install_time,
        size: Some(6_712_345),
        digest: Some(Cow::Owned(format!(
            "sha256:{:064x}",
            name.len() * 7919 + version.len()
        ))),
    }
}

/// Sample change number `i`: an upgrade on host `i % 1000`.
pub fn change(i: u64) -> PackageChange<'static> {
    let (name, version, release) = PACKAGES[(i % PACKAGES.len() as u64) as usize];
    let host = host(i % 1000);
    let rpm_tid = 1_764_000_000 + (i / 1000) as i64;
    let event_time = rpm_tid * 1_000_000 + 250_000;
    let mut pkg = package(name, version, release, Some(event_time));
    pkg.release = Cow::Owned(format!("{release}.{}", i % 7 + 1));
    // What rpm still knows about the package it replaced.
    let replaced = Package {
        repo: None,
        vendor: None,
        digest: None,
        buildtime: None,
        ..package(name, version, release, Some(1_750_000_000_000_000))
    };
    PackageChange {
        event_id: change_event_id(
            &host.machine_id,
            Action::Upgrade,
            &pkg.name,
            pkg.epoch,
            &pkg.version,
            &pkg.release,
            &pkg.arch,
            rpm_tid,
        ),
        event_time,
        host,
        source: Source::Dnf,
        action: Action::Upgrade,
        package: pkg,
        replaced: Some(replaced),
        transaction: Transaction {
            rpm_tid,
            history_id: Some(40 + (i / 1000) as i64),
            command_line: Some(Cow::Borrowed("dnf -y upgrade --security")),
            login_user: Some(Cow::Borrowed("alice")),
            start_time: Some(event_time - 2_000_000),
        },
    }
}

/// A snapshot of host `i` with `n` packages.
pub fn snapshot(i: u64, n: usize) -> InventorySnapshot<'static> {
    let host = host(i);
    let taken_at = 1_764_000_000_000_000 + i as i64;
    InventorySnapshot {
        snapshot_id: snapshot_id(&host.machine_id, taken_at),
        taken_at,
        host,
        packages: (0..n)
            .map(|k| {
                package(
                    &format!("pkg-{k:04}"),
                    "1.0",
                    &format!("{k}.el9"),
                    Some(1_750_000_000_000_000),
                )
            })
            .collect(),
        chunk: None,
    }
}

/// The enrichment the router would attach to sample `i`.
pub fn enrichment(i: u64) -> Enrichment<'static> {
    Enrichment {
        hostgroup: Cow::Owned(format!("web-{}", i % 4)),
        environment: Cow::Borrowed(if i.is_multiple_of(10) {
            "staging"
        } else {
            "prod"
        }),
        owner: Some(Cow::Borrowed("team-web")),
        datacenter: Some(Cow::Borrowed("dc1")),
        tags: Cow::Owned([("tier".to_owned(), "frontend".to_owned())].into()),
        known_host: true,
        outside_maintenance_window: i.is_multiple_of(5),
        unexplained_rpm: false,
        routed_at: 1_764_000_100_000_000 + i as i64,
    }
}

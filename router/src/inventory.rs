//! Lost-change detection: each host's snapshot is compared with its
//! previous one; a difference that no change reported in between explains
//! becomes a synthetic `PackageChange` with source INVENTORY.
//!
//! State per host: the NEVRAs of its last snapshot and the `name.arch` of
//! the packages changed since (about 100 bytes per installed package).
//! It lives in memory: after a restart the first snapshot of each host is a
//! new baseline, and differences across the restart are not reported.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use pkgstream_schemas::{
    change_event_id, Action, InventorySnapshot, Package, PackageChange, Source, Transaction,
};

use pkgstream_schemas::rpmvercmp::evrcmp;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Nevra {
    name: String,
    epoch: Option<i32>,
    version: String,
    release: String,
    arch: String,
}

impl Nevra {
    fn of(p: &Package<'_>) -> Nevra {
        Nevra {
            name: p.name.to_string(),
            epoch: p.epoch.filter(|e| *e != 0),
            version: p.version.to_string(),
            release: p.release.to_string(),
            arch: p.arch.to_string(),
        }
    }

    fn name_arch(&self) -> (String, String) {
        (self.name.clone(), self.arch.clone())
    }
}

#[derive(Default)]
struct HostState {
    installed: HashSet<Nevra>,
    /// `(name, arch)` of packages changed since the snapshot.
    touched: HashSet<(String, String)>,
}

/// Last snapshot and later changes of every host this router saw.
#[derive(Default)]
pub struct InventoryTracker {
    hosts: HashMap<String, HostState>,
}

impl InventoryTracker {
    /// Notes a reported change, so the next snapshot's difference for that
    /// package counts as explained.
    pub fn note_change(&mut self, c: &PackageChange<'_>) {
        if let Some(h) = self.hosts.get_mut(&*c.host.machine_id) {
            h.touched
                .insert((c.package.name.to_string(), c.package.arch.to_string()));
            if let Some(r) = &c.replaced {
                h.touched.insert((r.name.to_string(), r.arch.to_string()));
            }
        }
    }

    /// Compares `s` with the host's previous snapshot, returns the synthetic
    /// changes for unexplained differences, and makes `s` the new baseline.
    /// The first snapshot of a host yields nothing.
    pub fn snapshot(&mut self, s: &InventorySnapshot<'_>) -> Vec<PackageChange<'static>> {
        let new: HashSet<Nevra> = s.packages.iter().map(Nevra::of).collect();
        let previous = self.hosts.insert(
            s.host.machine_id.to_string(),
            HostState {
                installed: new.clone(),
                touched: HashSet::new(),
            },
        );
        let Some(prev) = previous else {
            return Vec::new();
        };

        let mut added: HashMap<(String, String), Vec<&Nevra>> = HashMap::new();
        for n in new.difference(&prev.installed) {
            added.entry(n.name_arch()).or_default().push(n);
        }
        let mut removed: HashMap<(String, String), Vec<&Nevra>> = HashMap::new();
        for n in prev.installed.difference(&new) {
            removed.entry(n.name_arch()).or_default().push(n);
        }
        let mut keys: Vec<(String, String)> = added
            .keys()
            .chain(removed.keys())
            .filter(|k| !prev.touched.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();

        let rpm_tid = s.taken_at.div_euclid(1_000_000);
        let mut out = Vec::new();
        for key in keys {
            let mut add = added.remove(&key).unwrap_or_default();
            let mut rem = removed.remove(&key).unwrap_or_default();
            add.sort_by(|a, b| {
                evrcmp(
                    (a.epoch, &a.version, &a.release),
                    (b.epoch, &b.version, &b.release),
                )
            });
            rem.sort_by(|a, b| {
                evrcmp(
                    (a.epoch, &a.version, &a.release),
                    (b.epoch, &b.version, &b.release),
                )
            });
            match (add.as_slice(), rem.as_slice()) {
                ([new], [old]) => {
                    let action = match evrcmp(
                        (new.epoch, &new.version, &new.release),
                        (old.epoch, &old.version, &old.release),
                    ) {
                        std::cmp::Ordering::Less => Action::Downgrade,
                        _ => Action::Upgrade,
                    };
                    out.push(synthetic(s, action, new, Some(old), rpm_tid));
                }
                _ => {
                    out.extend(
                        add.iter()
                            .map(|n| synthetic(s, Action::Install, n, None, rpm_tid)),
                    );
                    out.extend(
                        rem.iter()
                            .map(|n| synthetic(s, Action::Remove, n, None, rpm_tid)),
                    );
                }
            }
        }
        out
    }

    /// Hosts tracked.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }
}

fn package(n: &Nevra) -> Package<'static> {
    Package {
        name: Cow::Owned(n.name.clone()),
        epoch: n.epoch,
        version: Cow::Owned(n.version.clone()),
        release: Cow::Owned(n.release.clone()),
        arch: Cow::Owned(n.arch.clone()),
        repo: None,
        vendor: None,
        buildtime: None,
        install_time: None,
        size: None,
        digest: None,
    }
}

fn synthetic(
    s: &InventorySnapshot<'_>,
    action: Action,
    n: &Nevra,
    replaced: Option<&Nevra>,
    rpm_tid: i64,
) -> PackageChange<'static> {
    let host = pkgstream_schemas::Host {
        machine_id: Cow::Owned(s.host.machine_id.to_string()),
        hostname: Cow::Owned(s.host.hostname.to_string()),
        os_id: Cow::Owned(s.host.os_id.to_string()),
        os_version: Cow::Owned(s.host.os_version.to_string()),
        arch: Cow::Owned(s.host.arch.to_string()),
    };
    // The installed entry of the snapshot carries more than the NEVRA.
    let mut pkg = package(n);
    if let Some(full) = s.packages.iter().find(|p| Nevra::of(p) == *n) {
        pkg.vendor = full.vendor.as_ref().map(|v| Cow::Owned(v.to_string()));
        pkg.install_time = full.install_time;
        pkg.buildtime = full.buildtime;
        pkg.size = full.size;
        pkg.digest = full.digest.as_ref().map(|v| Cow::Owned(v.to_string()));
        pkg.repo = full.repo.as_ref().map(|v| Cow::Owned(v.to_string()));
    }
    PackageChange {
        event_id: change_event_id(
            &host.machine_id,
            action,
            &pkg.name,
            pkg.epoch,
            &pkg.version,
            &pkg.release,
            &pkg.arch,
            rpm_tid,
        ),
        event_time: s.taken_at,
        host,
        source: Source::Inventory,
        action,
        package: pkg,
        replaced: replaced.map(package),
        transaction: Transaction {
            rpm_tid,
            history_id: None,
            command_line: None,
            login_user: None,
            start_time: None,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::sample;

    fn snap(taken_at: i64, pkgs: &[(&str, &str, &str)]) -> InventorySnapshot<'static> {
        let mut s = sample::snapshot(1, 0);
        s.taken_at = taken_at;
        s.packages = pkgs
            .iter()
            .map(|(n, v, r)| Package {
                name: Cow::Owned(n.to_string()),
                version: Cow::Owned(v.to_string()),
                release: Cow::Owned(r.to_string()),
                epoch: None,
                ..sample::snapshot(1, 1).packages[0].clone()
            })
            .collect();
        s
    }

    fn summary(v: &[PackageChange<'_>]) -> Vec<String> {
        v.iter()
            .map(|c| {
                format!(
                    "{:?} {}-{}-{}{}",
                    c.action,
                    c.package.name,
                    c.package.version,
                    c.package.release,
                    c.replaced
                        .as_ref()
                        .map(|r| format!(" (was {}-{})", r.version, r.release))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn unexplained_differences_become_synthetic_changes() {
        let mut t = InventoryTracker::default();
        assert!(
            t.snapshot(&snap(
                1_000_000,
                &[
                    ("bash", "5.1", "1"),
                    ("curl", "7.0", "1"),
                    ("vim", "9.0", "1"),
                    ("zsh", "5.8", "2")
                ]
            ))
            .is_empty(),
            "first snapshot is a baseline"
        );
        let mut reported = sample::change(0);
        reported.host.machine_id = Cow::Owned(sample::host(1).machine_id.to_string());
        reported.package.name = Cow::Borrowed("zsh");
        reported.package.arch = Cow::Borrowed("x86_64");
        t.note_change(&reported);
        let got = t.snapshot(&snap(
            2_000_000,
            &[
                ("bash", "5.2", "1"),
                ("curl", "6.9", "1"),
                ("htop", "3.3", "1"),
                ("zsh", "5.9", "1"),
            ],
        ));
        assert_eq!(
            summary(&got),
            [
                "Upgrade bash-5.2-1 (was 5.1-1)",
                "Downgrade curl-6.9-1 (was 7.0-1)",
                "Install htop-3.3-1",
                "Remove vim-9.0-1"
            ]
        );
        assert!(got.iter().all(|c| c.source == Source::Inventory
            && c.transaction.rpm_tid == 2
            && c.event_time == 2_000_000));
        // Same snapshot again: no differences; ids are deterministic for replays.
        assert!(t
            .snapshot(&snap(
                3_000_000,
                &[
                    ("bash", "5.2", "1"),
                    ("curl", "6.9", "1"),
                    ("htop", "3.3", "1"),
                    ("zsh", "5.9", "1")
                ]
            ))
            .is_empty());
    }

    #[test]
    fn install_only_packages_keep_several_versions() {
        let mut t = InventoryTracker::default();
        t.snapshot(&snap(
            1_000_000,
            &[("kernel", "5.14.0", "1"), ("kernel", "5.14.0", "2")],
        ));
        let got = t.snapshot(&snap(
            2_000_000,
            &[
                ("kernel", "5.14.0", "2"),
                ("kernel", "5.14.0", "3"),
                ("kernel", "5.14.0", "4"),
            ],
        ));
        assert_eq!(
            summary(&got),
            [
                "Install kernel-5.14.0-3",
                "Install kernel-5.14.0-4",
                "Remove kernel-5.14.0-1"
            ]
        );
    }
}

//! Lost-change detection: each host's snapshot is compared with its
//! previous one; a difference that no change reported in between explains
//! becomes a synthetic `PackageChange` with source INVENTORY.
//!
//! State per host: the NEVRAs of its last snapshot and the `name.arch` of
//! the packages changed since (about 100 bytes per installed package),
//! grouped by the raw partition the host's events come from.
//!
//! The state changes only with the Kafka transaction that publishes its
//! effects: what a batch notes is *staged* ([`InventoryTracker::note_change`],
//! [`InventoryTracker::snapshot`] read staged over committed state), made the
//! committed state by [`InventoryTracker::commit`] once the transaction
//! committed, and dropped by [`InventoryTracker::abort`] when it did not, so
//! a re-read snapshot is compared with the same baseline again. A partition
//! the router no longer owns, or whose committed offsets moved while it was
//! away, is dropped ([`InventoryTracker::retain_partitions`]): the next
//! snapshot of each of its hosts is a new baseline. It lives in memory: after
//! a restart the first snapshot of each host is a new baseline, and
//! differences across the restart are not reported.

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

type NameArch = (String, String);

#[derive(Default)]
struct HostState {
    installed: HashSet<Nevra>,
    /// `(name, arch)` of packages changed since the snapshot.
    touched: HashSet<NameArch>,
}

/// What the open transaction noted about one host.
enum Staged {
    /// Changes on top of the committed state.
    Touched(HashSet<NameArch>),
    /// A new baseline (a snapshot), with the changes noted after it.
    Baseline(HostState),
}

/// Last snapshot and later changes of every host this router saw, per raw
/// partition, plus what the open transaction staged.
#[derive(Default)]
pub struct InventoryTracker {
    partitions: HashMap<i32, HashMap<String, HostState>>,
    staged: HashMap<(i32, String), Staged>,
}

impl InventoryTracker {
    /// Stages a reported change of a tracked host, so the next snapshot's
    /// difference for that package counts as explained.
    pub fn note_change(&mut self, partition: i32, c: &PackageChange<'_>) {
        let host = &*c.host.machine_id;
        let key = (partition, host.to_owned());
        let names = std::iter::once((c.package.name.to_string(), c.package.arch.to_string()))
            .chain(
                c.replaced
                    .as_ref()
                    .map(|r| (r.name.to_string(), r.arch.to_string())),
            );
        match self.staged.get_mut(&key) {
            Some(Staged::Baseline(h)) => h.touched.extend(names),
            Some(Staged::Touched(t)) => t.extend(names),
            None => {
                let tracked = self
                    .partitions
                    .get(&partition)
                    .is_some_and(|hosts| hosts.contains_key(host));
                if tracked {
                    self.staged.insert(key, Staged::Touched(names.collect()));
                }
            }
        }
    }

    /// Compares `s` with the host's previous snapshot (staged or committed),
    /// returns the synthetic changes for unexplained differences, and stages
    /// `s` as the new baseline. The first snapshot of a host yields nothing.
    ///
    /// An empty snapshot is not taken as truth (an installed system always
    /// has packages: an empty one comes from an unreadable rpmdb or a wrong
    /// dbpath): it yields no synthetic removals and the baseline stays; the
    /// search sink sets it aside as `empty_snapshot`.
    pub fn snapshot(
        &mut self,
        partition: i32,
        s: &InventorySnapshot<'_>,
    ) -> Vec<PackageChange<'static>> {
        if s.packages.is_empty() {
            return Vec::new();
        }
        let new: HashSet<Nevra> = s.packages.iter().map(Nevra::of).collect();
        let key = (partition, s.host.machine_id.to_string());
        let committed = self
            .partitions
            .get(&partition)
            .and_then(|hosts| hosts.get(&key.1));
        let out = match (self.staged.get(&key), committed) {
            (Some(Staged::Baseline(h)), _) => {
                differences(s, &h.installed, &new, |k| h.touched.contains(k))
            }
            (Some(Staged::Touched(t)), Some(h)) => differences(s, &h.installed, &new, |k| {
                h.touched.contains(k) || t.contains(k)
            }),
            (None, Some(h)) => differences(s, &h.installed, &new, |k| h.touched.contains(k)),
            (_, None) => Vec::new(),
        };
        self.staged.insert(
            key,
            Staged::Baseline(HostState {
                installed: new,
                touched: HashSet::new(),
            }),
        );
        out
    }

    /// The open transaction committed: what it staged becomes the state.
    pub fn commit(&mut self) {
        for ((partition, host), staged) in self.staged.drain() {
            let hosts = self.partitions.entry(partition).or_default();
            match staged {
                Staged::Baseline(h) => {
                    hosts.insert(host, h);
                }
                Staged::Touched(t) => {
                    if let Some(h) = hosts.get_mut(&host) {
                        h.touched.extend(t);
                    }
                }
            }
        }
    }

    /// The open transaction aborted: what it staged is forgotten.
    pub fn abort(&mut self) {
        self.staged.clear();
    }

    /// Keeps the committed state of the partitions `keep` accepts and drops
    /// the others' (and anything staged).
    pub fn retain_partitions(&mut self, keep: impl Fn(i32) -> bool) {
        self.staged.clear();
        self.partitions.retain(|p, _| keep(*p));
    }

    /// Partitions with committed state.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Hosts tracked (committed state).
    pub fn hosts(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }
}

/// The synthetic changes that explain going from `old` to `new`, but for
/// the packages `touched` says were reported.
fn differences(
    s: &InventorySnapshot<'_>,
    old: &HashSet<Nevra>,
    new: &HashSet<Nevra>,
    touched: impl Fn(&NameArch) -> bool,
) -> Vec<PackageChange<'static>> {
    let mut added: HashMap<NameArch, Vec<&Nevra>> = HashMap::new();
    for n in new.difference(old) {
        added.entry(n.name_arch()).or_default().push(n);
    }
    let mut removed: HashMap<NameArch, Vec<&Nevra>> = HashMap::new();
    for n in old.difference(new) {
        removed.entry(n.name_arch()).or_default().push(n);
    }
    let mut keys: Vec<NameArch> = added
        .keys()
        .chain(removed.keys())
        .filter(|k| !touched(k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();

    let rpm_tid = s.taken_at.div_euclid(1_000_000);
    let mut out = Vec::new();
    for key in keys {
        let mut add = added.remove(&key).unwrap_or_default();
        let mut rem = removed.remove(&key).unwrap_or_default();
        let by_evr = |a: &&Nevra, b: &&Nevra| {
            evrcmp(
                (a.epoch, &a.version, &a.release),
                (b.epoch, &b.version, &b.release),
            )
        };
        add.sort_by(by_evr);
        rem.sort_by(by_evr);
        match (add.as_slice(), rem.as_slice()) {
            ([new], [old]) => {
                let action = match by_evr(new, old) {
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
            t.snapshot(
                0,
                &snap(
                    1_000_000,
                    &[
                        ("bash", "5.1", "1"),
                        ("curl", "7.0", "1"),
                        ("vim", "9.0", "1"),
                        ("zsh", "5.8", "2")
                    ]
                )
            )
            .is_empty(),
            "first snapshot is a baseline"
        );
        let mut reported = sample::change(0);
        reported.host.machine_id = Cow::Owned(sample::host(1).machine_id.to_string());
        reported.package.name = Cow::Borrowed("zsh");
        reported.package.arch = Cow::Borrowed("x86_64");
        t.note_change(0, &reported);
        t.commit();
        let got = t.snapshot(
            0,
            &snap(
                2_000_000,
                &[
                    ("bash", "5.2", "1"),
                    ("curl", "6.9", "1"),
                    ("htop", "3.3", "1"),
                    ("zsh", "5.9", "1"),
                ],
            ),
        );
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
            .snapshot(
                0,
                &snap(
                    3_000_000,
                    &[
                        ("bash", "5.2", "1"),
                        ("curl", "6.9", "1"),
                        ("htop", "3.3", "1"),
                        ("zsh", "5.9", "1")
                    ]
                )
            )
            .is_empty());
    }

    #[test]
    fn an_empty_snapshot_removes_nothing_and_keeps_the_baseline() {
        let mut t = InventoryTracker::default();
        assert!(t
            .snapshot(
                0,
                &snap(1_000_000, &[("bash", "5.1", "1"), ("vim", "9.0", "1")])
            )
            .is_empty());
        t.commit();
        assert!(t.snapshot(0, &snap(2_000_000, &[])).is_empty());
        t.commit();
        let got = t.snapshot(
            0,
            &snap(3_000_000, &[("bash", "5.2", "1"), ("vim", "9.0", "1")]),
        );
        assert_eq!(summary(&got), ["Upgrade bash-5.2-1 (was 5.1-1)"]);
    }

    #[test]
    fn state_changes_only_with_the_commit() {
        let mut t = InventoryTracker::default();
        let first = snap(1_000_000, &[("bash", "5.1", "1"), ("vim", "9.0", "1")]);
        let second = snap(2_000_000, &[("bash", "5.2", "1"), ("vim", "9.0", "1")]);
        assert!(t.snapshot(3, &first).is_empty());
        t.abort();
        assert!(
            t.snapshot(3, &second).is_empty(),
            "an aborted baseline is no baseline"
        );
        t.commit();
        assert_eq!(t.hosts(), 1);
        let third = snap(3_000_000, &[("bash", "5.3", "1"), ("vim", "9.0", "1")]);
        // Processed, aborted, processed again: the same synthetic change.
        let got = summary(&t.snapshot(3, &third));
        assert_eq!(got, ["Upgrade bash-5.3-1 (was 5.2-1)"]);
        t.abort();
        assert_eq!(summary(&t.snapshot(3, &third)), got);
        t.commit();
        assert!(t.snapshot(3, &third).is_empty());
        t.commit();
        // A change noted then aborted explains nothing.
        let mut reported = sample::change(0);
        reported.host.machine_id = Cow::Owned(sample::host(1).machine_id.to_string());
        reported.package.name = Cow::Borrowed("vim");
        reported.package.arch = Cow::Borrowed("x86_64");
        t.note_change(3, &reported);
        t.abort();
        let fourth = snap(4_000_000, &[("bash", "5.3", "1"), ("vim", "9.1", "1")]);
        assert_eq!(
            summary(&t.snapshot(3, &fourth)),
            ["Upgrade vim-9.1-1 (was 9.0-1)"]
        );
        t.abort();
        // Another partition's state is its own; dropping it keeps this one.
        assert!(t.snapshot(4, &first).is_empty());
        t.commit();
        t.retain_partitions(|p| p == 3);
        assert_eq!(t.partitions(), [3]);
        assert!(t.snapshot(4, &second).is_empty(), "dropped: a new baseline");
    }

    #[test]
    fn install_only_packages_keep_several_versions() {
        let mut t = InventoryTracker::default();
        t.snapshot(
            0,
            &snap(
                1_000_000,
                &[("kernel", "5.14.0", "1"), ("kernel", "5.14.0", "2")],
            ),
        );
        let got = t.snapshot(
            0,
            &snap(
                2_000_000,
                &[
                    ("kernel", "5.14.0", "2"),
                    ("kernel", "5.14.0", "3"),
                    ("kernel", "5.14.0", "4"),
                ],
            ),
        );
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

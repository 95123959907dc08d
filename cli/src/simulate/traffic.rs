//! The change traffic of a simulated day and the facts it leaves behind.
//!
//! After the initial snapshots, each host does, in its latest maintenance
//! window (all dnf, as root through the config-management tool):
//! - the **patch wave**: one `dnf -y upgrade --security` transaction
//!   upgrading [`names::WAVE`] (openssl, glibc, curl, sudo, ...). About 6 %
//!   of the hosts *lag* (they missed the window), and every group of three
//!   or more hosts has at least one laggard: these stay on the old
//!   versions, and `pkgstream drift` must name exactly them;
//! - a **kernel update** on about a quarter of the patched hosts: the new
//!   `kernel-core`/`kernel-modules` installed (install-only) and the oldest
//!   one removed (`installonly_limit=2`);
//! - a **cleanup**: `dnf -y remove telnet` on the patched prod hosts of the
//!   web and api groups.
//!
//! Outside any window, a few **rogue** plain-rpm changes (about 1.5 % of
//! the hosts, at least one in a fleet of ten or more), in turn: a locally
//! rebuilt `rsyslog` (`rpm -Uvh`), a package that is in no repository
//! (`rpm -ivh acme-debug-tools`), `rpm -e --nodeps firewalld`, and an
//! `rpm -Uvh --oldpackage` downgrade of `chrony`.
//!
//! [`facts`] replays the traffic over the initial state the way the search
//! sink keeps package state (one document per host × name.arch, a guarded
//! removal only deletes the version it names) and derives what the pipeline
//! must show: changes by kind, package documents, and the drift report
//! (`pkgstream drift` without `--expect`: the majority version per group
//! and package is expected).

use std::collections::{BTreeMap, BTreeSet};

use pkgstream_producer::input::{
    ChangeInput, InventoryInput, PackageInput, Timestamp, TransactionInput,
};
use pkgstream_schemas::{Action, Source};
use pkgstream_sinks::search::documents::{action_name, source_name};
use serde::Serialize;

use super::catalog::{names, older, patched, CatalogPackage, Evr, GROUPS};
use super::fleet::{package_input, Fleet, SimHost};
use super::rng::Rng;
use crate::drift::{majority, outlier_count, Drift};

/// What a simulated change is, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// Patch wave upgrade (dnf, in the window).
    Patch,
    /// New kernel installed (dnf).
    KernelInstall,
    /// Oldest kernel removed (dnf).
    KernelRemove,
    /// `dnf remove telnet`.
    Cleanup,
    /// `rpm -Uvh` of a local rebuild, outside the window.
    RogueUpgrade,
    /// `rpm -ivh` of a package in no repository, outside the window.
    RogueInstall,
    /// `rpm -e --nodeps`, outside the window.
    RogueRemove,
    /// `rpm -Uvh --oldpackage`, outside the window.
    RogueDowngrade,
}

impl ChangeKind {
    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Patch => "patch",
            ChangeKind::KernelInstall => "kernel-install",
            ChangeKind::KernelRemove => "kernel-remove",
            ChangeKind::Cleanup => "cleanup",
            ChangeKind::RogueUpgrade => "rogue-upgrade",
            ChangeKind::RogueInstall => "rogue-install",
            ChangeKind::RogueRemove => "rogue-remove",
            ChangeKind::RogueDowngrade => "rogue-downgrade",
        }
    }
}

/// One simulated package change.
#[derive(Clone, Debug)]
pub struct SimChange {
    /// Why it happens.
    pub kind: ChangeKind,
    /// The hook that reports it.
    pub source: Source,
    /// What happens.
    pub action: Action,
    /// The package (its catalog entry: name, arch, repo, ...).
    pub package: CatalogPackage,
    /// The version acted on (installed, or removed).
    pub evr: Evr,
    /// The version it replaced (upgrade, downgrade).
    pub replaced: Option<Evr>,
    /// When (µs).
    pub event_time: i64,
}

/// One package-manager run: what one hook call records.
#[derive(Clone, Debug)]
pub struct SimTransaction {
    /// rpm transaction id (start, Unix s).
    pub rpm_tid: i64,
    /// dnf history id (`None` for plain rpm).
    pub history_id: Option<i64>,
    /// The command line.
    pub command_line: String,
    /// Login user.
    pub login_user: String,
    /// Start (µs).
    pub start: i64,
    /// Its changes, in order.
    pub changes: Vec<SimChange>,
}

impl SimTransaction {
    /// The hook input of each change, as the dnf plugin or the rpm plugin
    /// writes it (host identity included).
    pub fn inputs(&self, h: &SimHost) -> Vec<ChangeInput> {
        self.changes
            .iter()
            .map(|c| ChangeInput {
                source: c.source,
                action: c.action,
                package: package_input(&c.package, &c.evr, c.event_time / 1_000_000),
                replaced: c
                    .replaced
                    .as_ref()
                    .map(|r| package_input(&c.package, r, c.event_time / 1_000_000)),
                transaction: TransactionInput {
                    rpm_tid: self.rpm_tid,
                    history_id: self.history_id,
                    command_line: Some(self.command_line.clone()),
                    login_user: Some(self.login_user.clone()),
                    start_time: Some(Timestamp(self.start)),
                },
                event_time: Some(Timestamp(c.event_time)),
                host: Some(h.identity()),
            })
            .collect()
    }
}

/// The per-host decisions of the traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostRole {
    /// Missed the patch window: no dnf change at all.
    pub lags: bool,
    /// Gets the new kernel (only if not lagging).
    pub kernel: bool,
    /// Does a rogue rpm change: which of the four (0..4).
    pub rogue: Option<u8>,
}

const MIN: i64 = 60_000_000;
const ROGUE_USERS: [&str; 4] = ["jdoe", "asmith", "mkumar", "lchen"];

/// The role of every host, in host order.
pub fn roles(fleet: &Fleet) -> Vec<HostRole> {
    let mut roles: Vec<HostRole> = fleet
        .hosts
        .iter()
        .map(|h| {
            let mut r = Rng::stream(fleet.spec.seed, 0x7aff_0000 + h.index as u64);
            let lags = r.chance(60);
            let kernel = !lags && r.chance(250);
            let rogue = r.chance(15);
            HostRole {
                lags,
                kernel,
                rogue: rogue.then_some(0),
            }
        })
        .collect();
    // At least one laggard in every group of three or more hosts: the one
    // with the largest machine id.
    for (g, _) in GROUPS.iter().enumerate() {
        let members: Vec<&SimHost> = fleet.hosts.iter().filter(|h| h.group == g).collect();
        if members.len() >= 3 && !members.iter().any(|h| roles[h.index].lags) {
            if let Some(h) = members
                .iter()
                .max_by(|a, b| a.machine_id.cmp(&b.machine_id))
            {
                roles[h.index] = HostRole {
                    lags: true,
                    kernel: false,
                    rogue: roles[h.index].rogue,
                };
            }
        }
    }
    // At least one rogue change in a fleet of ten or more hosts.
    if fleet.hosts.len() >= 10 && !roles.iter().any(|r| r.rogue.is_some()) {
        let i = (fleet.spec.seed % fleet.hosts.len() as u64) as usize;
        roles[i].rogue = Some(0);
    }
    let mut n = 0u8;
    for r in roles.iter_mut().filter(|r| r.rogue.is_some()) {
        r.rogue = Some(n % 4);
        n = n.wrapping_add(1);
    }
    roles
}

/// The transactions of `h` in time order.
pub fn host_traffic(fleet: &Fleet, h: &SimHost, role: HostRole) -> Vec<SimTransaction> {
    let mut rng = Rng::stream(fleet.spec.seed, 0x7aff_1000_0000 + h.index as u64);
    let mut out = Vec::new();
    let cat = &fleet.catalog;
    let base = |name: &str| cat.base_package(name).cloned();
    let window = fleet.window_start(h);
    let mut history_id = 40 + rng.below(200) as i64;
    if !role.lags {
        let start = window + (2 + rng.below(28) as i64) * MIN + rng.below(59_000_000) as i64;
        let wave = names::WAVE
            .iter()
            .filter_map(|n| base(n))
            .enumerate()
            .map(|(i, p)| SimChange {
                kind: ChangeKind::Patch,
                source: Source::Dnf,
                action: Action::Upgrade,
                evr: patched(&p.evr),
                replaced: Some(p.evr.clone()),
                package: p,
                event_time: start + 150_000 * (i as i64 + 1),
            })
            .collect();
        out.push(dnf(start, history_id, "dnf -y upgrade --security", wave));
        history_id += 1;
        if role.kernel {
            let start = start + 3 * MIN;
            let mut changes = Vec::new();
            for (i, p) in names::KERNEL.iter().filter_map(|n| base(n)).enumerate() {
                let t = start + 400_000 * (i as i64 + 1);
                changes.push(SimChange {
                    kind: ChangeKind::KernelInstall,
                    source: Source::Dnf,
                    action: Action::Install,
                    evr: patched(&p.evr),
                    replaced: None,
                    package: p.clone(),
                    event_time: t,
                });
                if let Some(prev) = p.previous.clone() {
                    changes.push(SimChange {
                        kind: ChangeKind::KernelRemove,
                        source: Source::Dnf,
                        action: Action::Remove,
                        evr: prev,
                        replaced: None,
                        package: p,
                        event_time: t + 200_000,
                    });
                }
            }
            let cmd = format!(
                "dnf -y install kernel-core-{}",
                patched(&Evr::new("5.14.0", "427.16.1.el9_4")).version_release()
            );
            out.push(dnf(start, history_id, &cmd, changes));
            history_id += 1;
        }
        if h.environment == "prod" && matches!(h.group_name(), "web" | "api") {
            if let Some(p) = base(names::CLEANUP) {
                let start = start + 6 * MIN;
                let c = SimChange {
                    kind: ChangeKind::Cleanup,
                    source: Source::Dnf,
                    action: Action::Remove,
                    evr: p.evr.clone(),
                    replaced: None,
                    package: p,
                    event_time: start + 300_000,
                };
                out.push(dnf(start, history_id, "dnf -y remove telnet", vec![c]));
            }
        }
    }
    if let Some(kind) = role.rogue {
        // Outside every window and after the host's snapshot: step back
        // from a random time until no window holds it; if that reaches the
        // snapshot, step forward from there instead.
        let mut t = (fleet.spec.now / MIN) * MIN - (20 + rng.below(18 * 60) as i64) * MIN;
        let jitter = rng.below(50_000_000) as i64;
        let earliest = fleet.taken_at(h) + MIN;
        let held = |t: i64| h.in_window(t) || h.in_window(t + jitter + MIN);
        while held(t) && t >= earliest {
            t -= 30 * MIN;
        }
        if t < earliest {
            t = earliest;
            while held(t) {
                t += 30 * MIN;
            }
        }
        let t = t + jitter;
        let user = ROGUE_USERS[rng.below(ROGUE_USERS.len() as u64) as usize];
        let rogue = match kind {
            0 => base(names::ROGUE_UPGRADE).map(|p| {
                let mut evr = p.evr.clone();
                evr.release = format!("{}.acme1", p.evr.release);
                let cmd = format!(
                    "rpm -Uvh /tmp/{}-{}.{}.rpm",
                    p.name,
                    evr.version_release(),
                    p.arch
                );
                (
                    cmd,
                    ChangeKind::RogueUpgrade,
                    Action::Upgrade,
                    Some(p.evr.clone()),
                    evr,
                    p,
                )
            }),
            1 => {
                let p = CatalogPackage {
                    name: names::ROGUE_INSTALL.into(),
                    evr: Evr::new("1.0", "1"),
                    arch: "noarch",
                    repo: "@commandline",
                    vendor: "ACME",
                    size: 48_213,
                    buildtime: fleet.snapshot_at / 1_000_000 - 86_400 * 30,
                    previous: None,
                };
                let cmd = format!("rpm -ivh /home/{user}/{}-1.0-1.noarch.rpm", p.name);
                Some((
                    cmd,
                    ChangeKind::RogueInstall,
                    Action::Install,
                    None,
                    p.evr.clone(),
                    p,
                ))
            }
            2 => base(names::ROGUE_REMOVE).map(|p| {
                let cmd = format!("rpm -e --nodeps {}", p.name);
                (
                    cmd,
                    ChangeKind::RogueRemove,
                    Action::Remove,
                    None,
                    p.evr.clone(),
                    p,
                )
            }),
            _ => base(names::ROGUE_DOWNGRADE).map(|p| {
                let evr = older(&p.evr);
                let cmd = format!(
                    "rpm -Uvh --oldpackage /tmp/{}-{}.{}.rpm",
                    p.name,
                    evr.version_release(),
                    p.arch
                );
                (
                    cmd,
                    ChangeKind::RogueDowngrade,
                    Action::Downgrade,
                    Some(p.evr.clone()),
                    evr,
                    p,
                )
            }),
        };
        if let Some((cmd, kind, action, replaced, evr, package)) = rogue {
            out.push(SimTransaction {
                rpm_tid: t / 1_000_000,
                history_id: None,
                command_line: cmd,
                login_user: user.into(),
                start: t,
                changes: vec![SimChange {
                    kind,
                    source: Source::Rpm,
                    action,
                    package,
                    evr,
                    replaced,
                    event_time: t + 500_000,
                }],
            });
        }
    }
    out.sort_by_key(|t| t.start);
    out
}

/// The inventory `h` reports after the traffic (`taken_at` a minute
/// before "now"): the initial one with every change of the day applied —
/// what the next daily `pkgstream-emit inventory` would send, and so the
/// package state the search sink holds once the changes are indexed.
pub fn inventory_after(fleet: &Fleet, h: &SimHost, role: HostRole) -> InventoryInput {
    let mut inv = fleet.inventory(h);
    for t in host_traffic(fleet, h, role) {
        for c in &t.changes {
            let same = |p: &PackageInput, evr: &Evr| {
                p.name == c.package.name
                    && p.epoch == evr.epoch
                    && p.version == evr.version
                    && p.release == evr.release
            };
            match c.action {
                Action::Remove | Action::Obsolete => inv.packages.retain(|p| !same(p, &c.evr)),
                Action::Upgrade | Action::Downgrade | Action::Reinstall => {
                    let old = c.replaced.as_ref().unwrap_or(&c.evr);
                    inv.packages.retain(|p| !same(p, old));
                    inv.packages
                        .push(package_input(&c.package, &c.evr, c.event_time / 1_000_000));
                }
                Action::Install => {
                    inv.packages
                        .push(package_input(&c.package, &c.evr, c.event_time / 1_000_000));
                }
            }
        }
    }
    inv.taken_at = Some(Timestamp(fleet.spec.now - 60_000_000));
    inv
}

fn dnf(start: i64, history_id: i64, cmd: &str, changes: Vec<SimChange>) -> SimTransaction {
    SimTransaction {
        rpm_tid: start / 1_000_000,
        history_id: Some(history_id),
        command_line: cmd.into(),
        login_user: "root".into(),
        start,
        changes,
    }
}

impl Evr {
    /// `V-R` (for file names and command lines).
    pub fn version_release(&self) -> String {
        format!("{}-{}", self.version, self.release)
    }
}

/// A rogue change, for the summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RogueFact {
    /// Host name.
    pub host: String,
    /// Which change.
    pub kind: ChangeKind,
    /// Package name.
    pub package: String,
}

/// Everything the simulated traffic must leave in the pipeline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Facts {
    /// Hosts.
    pub hosts: u64,
    /// Snapshots (one per host).
    pub snapshots: u64,
    /// rpm entries in all snapshots (install-only packages count twice).
    pub snapshot_packages: u64,
    /// Package documents after the snapshots (hosts × packages).
    pub package_docs_initial: u64,
    /// Package documents after the traffic.
    pub package_docs: u64,
    /// Change events (= history documents).
    pub changes: u64,
    /// Changes by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Changes by action.
    pub by_action: BTreeMap<String, u64>,
    /// Changes by source.
    pub by_source: BTreeMap<String, u64>,
    /// Changes outside the host's maintenance windows.
    pub outside_window: u64,
    /// dnf transactions plus rpm runs.
    pub transactions: u64,
    /// Hosts that missed the patch wave, by name.
    pub lagging_hosts: Vec<String>,
    /// Hosts with the new kernel.
    pub kernel_hosts: u64,
    /// Rogue changes.
    pub rogue: Vec<RogueFact>,
    /// (group, package) pairs in the package state.
    pub checked: u64,
    /// What `pkgstream drift --format json` must report under `drift`
    /// (with `--max-outliers` at least the largest `outliers`).
    pub drift: Vec<Drift>,
}

/// Replays the traffic over the initial state and derives the facts.
pub fn facts(fleet: &Fleet) -> Facts {
    let roles = roles(fleet);
    let mut f = Facts {
        hosts: fleet.hosts.len() as u64,
        snapshots: fleet.hosts.len() as u64,
        snapshot_packages: 0,
        package_docs_initial: (fleet.hosts.len() * fleet.spec.packages) as u64,
        ..Default::default()
    };
    let extra_rpm_entries = fleet
        .catalog
        .base
        .iter()
        .filter(|p| p.previous.is_some())
        .count();
    f.snapshot_packages = (fleet.hosts.len() * (fleet.spec.packages + extra_rpm_entries)) as u64;
    // Per host: name → state that differs from the initial one (None: gone).
    let mut overrides: Vec<BTreeMap<String, Option<Evr>>> = Vec::with_capacity(fleet.hosts.len());
    let mut docs: i64 = f.package_docs_initial as i64;
    for (h, role) in fleet.hosts.iter().zip(&roles) {
        let mut state: BTreeMap<String, Option<Evr>> = BTreeMap::new();
        if role.lags {
            f.lagging_hosts.push(h.hostname.clone());
        }
        if role.kernel && !role.lags {
            f.kernel_hosts += 1;
        }
        for t in host_traffic(fleet, h, *role) {
            f.transactions += 1;
            for c in &t.changes {
                f.changes += 1;
                *f.by_kind.entry(c.kind.name().into()).or_default() += 1;
                *f.by_action
                    .entry(action_name(c.action).to_owned())
                    .or_default() += 1;
                *f.by_source
                    .entry(source_name(c.source).to_owned())
                    .or_default() += 1;
                if !h.in_window(c.event_time) {
                    f.outside_window += 1;
                }
                if matches!(
                    c.kind,
                    ChangeKind::RogueUpgrade
                        | ChangeKind::RogueInstall
                        | ChangeKind::RogueRemove
                        | ChangeKind::RogueDowngrade
                ) {
                    f.rogue.push(RogueFact {
                        host: h.hostname.clone(),
                        kind: c.kind,
                        package: c.package.name.clone(),
                    });
                }
                let current = match state.get(&c.package.name) {
                    Some(s) => s.clone(),
                    None => fleet.initial(h, &c.package.name).map(|p| p.evr.clone()),
                };
                let next = match c.action {
                    // The sink's guarded delete: only the version it names goes.
                    Action::Remove | Action::Obsolete if current.as_ref() == Some(&c.evr) => None,
                    Action::Remove | Action::Obsolete => current.clone(),
                    _ => Some(c.evr.clone()),
                };
                docs += i64::from(next.is_some()) - i64::from(current.is_some());
                state.insert(c.package.name.clone(), next);
            }
        }
        overrides.push(state);
    }
    f.package_docs = docs.max(0) as u64;
    f.lagging_hosts.sort();

    // Version counts per (group, package), as the composite aggregation sees them.
    for (g, (group_name, _)) in GROUPS.iter().enumerate() {
        let members: Vec<&SimHost> = fleet.hosts.iter().filter(|h| h.group == g).collect();
        let Some(first) = members.first() else {
            continue;
        };
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for p in fleet.catalog.base.iter().chain(fleet.extras(first)) {
            counts
                .entry(p.name.clone())
                .or_default()
                .insert(p.evr.label(), members.len() as u64);
        }
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for h in &members {
            for (name, now) in &overrides[h.index] {
                touched.insert(name.clone());
                let versions = counts.entry(name.clone()).or_default();
                if let Some(p) = fleet.initial(h, name) {
                    let label = p.evr.label();
                    if let Some(n) = versions.get_mut(&label) {
                        *n -= 1;
                        if *n == 0 {
                            versions.remove(&label);
                        }
                    }
                }
                if let Some(evr) = now {
                    *versions.entry(evr.label()).or_default() += 1;
                }
            }
        }
        counts.retain(|_, v| !v.is_empty());
        f.checked += counts.len() as u64;
        for name in touched {
            let Some(versions) = counts.get(&name) else {
                continue;
            };
            let expected = majority(versions);
            let outliers = outlier_count(versions, &expected);
            if outliers == 0 {
                continue;
            }
            let mut outlier_hosts: Vec<String> = members
                .iter()
                .filter(|h| {
                    let evr = match overrides[h.index].get(&name) {
                        Some(s) => s.clone(),
                        None => fleet.initial(h, &name).map(|p| p.evr.clone()),
                    };
                    evr.is_some_and(|e| e.label() != expected)
                })
                .map(|h| h.hostname.clone())
                .collect();
            outlier_hosts.sort();
            f.drift.push(Drift {
                hostgroup: (*group_name).into(),
                package: name,
                versions: versions.clone(),
                expected,
                outliers,
                outlier_hosts,
            });
        }
    }
    f.drift
        .sort_by(|a, b| (&a.hostgroup, &a.package).cmp(&(&b.hostgroup, &b.package)));
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::simulate::fleet::tests::{fleet, NOW};

    #[test]
    fn the_wave_leaves_exactly_the_laggards_it_names() {
        let fl = fleet(300, 200, 11);
        let f = facts(&fl);
        assert!(!f.lagging_hosts.is_empty());
        let roles = roles(&fl);
        for (g, (group, _)) in GROUPS.iter().enumerate() {
            let members: Vec<&SimHost> = fl.hosts.iter().filter(|h| h.group == g).collect();
            let lagging: Vec<String> = {
                let mut v: Vec<String> = members
                    .iter()
                    .filter(|h| roles[h.index].lags)
                    .map(|h| h.hostname.clone())
                    .collect();
                v.sort();
                v
            };
            if members.len() >= 3 {
                assert!(!lagging.is_empty(), "group {}", group);
            }
            for pkg in names::WAVE {
                let d = f
                    .drift
                    .iter()
                    .find(|d| d.hostgroup == *group && d.package == pkg)
                    .unwrap_or_else(|| panic!("{} / {pkg} drifts", group));
                let p = fl.catalog.base_package(pkg).unwrap();
                assert_eq!(d.expected, patched(&p.evr).label());
                assert_eq!(d.outlier_hosts, lagging, "{} / {pkg}", group);
                assert_eq!(d.versions[&p.evr.label()], lagging.len() as u64);
            }
        }
        let all: usize = fl.hosts.iter().filter(|h| roles[h.index].lags).count();
        assert_eq!(f.lagging_hosts.len(), all);
    }

    #[test]
    fn traffic_is_deterministic_and_consistent() {
        let a = facts(&fleet(200, 150, 4));
        let b = facts(&fleet(200, 150, 4));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let c = facts(&fleet(200, 150, 5));
        assert_ne!(a.lagging_hosts, c.lagging_hosts);
        assert_eq!(a.changes, a.by_kind.values().sum::<u64>());
        assert_eq!(a.changes, a.by_action.values().sum::<u64>());
        assert_eq!(a.outside_window, a.rogue.len() as u64);
        assert!(!a.rogue.is_empty());
        // Docs: telnet cleanups and rogue removals go, rogue installs come.
        let kind = |k: &str| a.by_kind.get(k).copied().unwrap_or(0);
        assert_eq!(
            a.package_docs,
            a.package_docs_initial + kind("rogue-install") - kind("cleanup") - kind("rogue-remove")
        );
        let patched_hosts = a.hosts - a.lagging_hosts.len() as u64;
        assert_eq!(kind("patch"), patched_hosts * names::WAVE.len() as u64);
        assert_eq!(kind("kernel-install"), a.kernel_hosts * 2);
        assert_eq!(kind("kernel-remove"), a.kernel_hosts * 2);
    }

    #[test]
    fn changes_fall_where_they_should() {
        // Many seeds: a rogue change near a window's edge or the snapshot is rare.
        for seed in 1..=40 {
            changes_fall_where_they_should_with(seed);
        }
    }

    fn changes_fall_where_they_should_with(seed: u64) {
        let fl = fleet(120, 100, seed);
        for (h, role) in fl.hosts.iter().zip(roles(&fl)) {
            for t in host_traffic(&fl, h, role) {
                for c in &t.changes {
                    assert!(c.event_time > fl.taken_at(h) && c.event_time < NOW);
                    let rogue = c.source == Source::Rpm;
                    assert_eq!(
                        h.in_window(c.event_time),
                        !rogue,
                        "{} {:?}",
                        h.hostname,
                        c.kind
                    );
                }
                for input in t.inputs(h) {
                    let e = input.into_event(None);
                    let mut out = Vec::new();
                    pkgstream_schemas::Encoder::new()
                        .encode_change(&e, &mut out)
                        .unwrap();
                }
            }
        }
    }

    #[test]
    fn the_inventory_after_the_traffic_is_the_expected_state() {
        use pkgstream_sinks::search::documents::snapshot_state;
        let fl = fleet(80, 120, 3);
        let f = facts(&fl);
        let mut docs = 0u64;
        let mut openssl: BTreeMap<String, u64> = BTreeMap::new();
        for (h, role) in fl.hosts.iter().zip(roles(&fl)) {
            let inv = inventory_after(&fl, h, role);
            let taken = inv.taken_at.unwrap().0;
            let s = pkgstream_schemas::EnrichedSnapshot::new(
                inv.into_snapshot(None),
                pkgstream_schemas::sample::enrichment(1),
            );
            assert!(taken < NOW);
            let state = snapshot_state(&s);
            docs += state.len() as u64;
            if h.group_name() == "web" {
                let p = state
                    .iter()
                    .find(|(k, _)| k.ends_with("/openssl-libs.x86_64"))
                    .unwrap()
                    .1;
                *openssl
                    .entry(format!(
                        "{}:{}-{}",
                        p.epoch.unwrap_or(0),
                        p.version,
                        p.release
                    ))
                    .or_default() += 1;
            }
        }
        assert_eq!(docs, f.package_docs);
        let d = f
            .drift
            .iter()
            .find(|d| d.hostgroup == "web" && d.package == "openssl-libs")
            .unwrap();
        assert_eq!(d.versions, openssl);
    }

    #[test]
    fn tiny_fleets_work() {
        for n in 1..12 {
            let f = facts(&fleet(n, 64, 1));
            assert_eq!(f.hosts, n as u64);
        }
    }
}

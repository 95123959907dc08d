//! The fleet metrics (`pkgstream_fleet_*`) and the state behind the drift
//! gauges: for each host, its host group and the versions of the watched
//! packages it has.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pkgstream_schemas::{EnrichedChange, EnrichedSnapshot, Package};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::search::documents::{action_name, removes, source_name};

/// The series the metrics sink exposes.
pub struct FleetMetrics {
    /// Registry served on `/metrics` and pushed by remote write.
    pub registry: Registry,
    /// `pkgstream_fleet_package_changes_total{action,source,hostgroup,environment}`.
    pub changes: IntCounterVec,
    /// `pkgstream_fleet_changes_outside_window_total{hostgroup,environment}`.
    pub outside_window: IntCounterVec,
    /// `pkgstream_fleet_unexplained_rpm_changes_total{hostgroup,environment}`.
    pub unexplained_rpm: IntCounterVec,
    /// `pkgstream_fleet_watched_package_hosts{package,version,hostgroup}`.
    pub watched: IntGaugeVec,
    /// `pkgstream_fleet_hosts{hostgroup}`: hosts seen.
    pub hosts: IntGaugeVec,
    /// `pkgstream_metrics_sink_events_total{outcome}`.
    pub events: IntCounterVec,
    /// `pkgstream_metrics_sink_remote_write_requests_total{outcome}`.
    pub pushes: IntCounterVec,
    watch: BTreeSet<String>,
    state: HashMap<String, HostState>,
    /// Chunked snapshots in progress: machine id → the watched packages of
    /// the chunks so far (see [`FleetMetrics::snapshot`]).
    chunks: HashMap<String, ChunkState>,
    max_versions: usize,
}

/// Most hosts with a chunked snapshot in progress the metrics sink keeps
/// (an entry holds only the watched packages); beyond it the oldest is
/// forgotten, and its snapshot is not applied.
pub const MAX_CHUNKED_IN_FLIGHT: usize = 10_000;

/// The watched packages of a chunked snapshot's chunks so far.
struct ChunkState {
    whole: pkgstream_schemas::EventId,
    next: i32,
    seq: u64,
    /// Name → (install time, version label) of the newest installed.
    newest: BTreeMap<String, (i64, String)>,
}

/// The version label of the hosts beyond a group's [`FleetMetrics::set_max_versions`]
/// most common versions, and of versions longer than [`MAX_VERSION_LABEL`].
/// No real label is `other`: those are `V-R`.
pub const OTHER_VERSION: &str = "other";

/// Longest version label, in bytes; a longer version (hostile or broken
/// input, no real package) counts as [`OTHER_VERSION`].
pub const MAX_VERSION_LABEL: usize = 128;

/// Default of `metrics_sink.max_versions_per_group`.
pub const DEFAULT_MAX_VERSIONS: usize = 20;

#[derive(Default)]
struct HostState {
    hostgroup: String,
    /// Watched package name → the version installed last (for install-only
    /// packages such as the kernel, the newest of those kept: the same rule
    /// as the search sink's package state, so one host counts once).
    packages: BTreeMap<String, String>,
}

/// The version label: `V-R`, with `E:` in front when the epoch is not 0;
/// [`OTHER_VERSION`] when that is longer than [`MAX_VERSION_LABEL`] bytes
/// (so neither a label nor the per-host state grows with the input).
pub fn version_label(p: &Package<'_>) -> String {
    // Checked before formatting: a 100 KB version is not copied.
    if p.version.len() + 1 + p.release.len() > MAX_VERSION_LABEL {
        return OTHER_VERSION.to_owned();
    }
    let label = match p.epoch {
        Some(e) if e != 0 => format!("{e}:{}-{}", p.version, p.release),
        _ => format!("{}-{}", p.version, p.release),
    };
    if label.len() > MAX_VERSION_LABEL {
        return OTHER_VERSION.to_owned();
    }
    label
}

/// Adds the watched packages of `packages` to `newest` (name → install
/// time and version label of the one installed last).
fn collect_watched(
    watch: &BTreeSet<String>,
    packages: &[Package<'_>],
    newest: &mut BTreeMap<String, (i64, String)>,
) {
    for p in packages.iter().filter(|p| watch.contains(p.name.as_ref())) {
        let t = p.install_time.unwrap_or(0);
        match newest.get(p.name.as_ref()) {
            Some((prev, _)) if *prev > t => {}
            _ => {
                newest.insert(p.name.to_string(), (t, version_label(p)));
            }
        }
    }
}

impl FleetMetrics {
    /// Fresh metrics watching `watch` (package names).
    pub fn new(watch: &[String]) -> Result<FleetMetrics, prometheus::Error> {
        let registry = Registry::new();
        let changes = IntCounterVec::new(
            Opts::new(
                "pkgstream_fleet_package_changes_total",
                "Package changes, by action, source, host group and environment",
            ),
            &["action", "source", "hostgroup", "environment"],
        )?;
        let outside_window = IntCounterVec::new(
            Opts::new(
                "pkgstream_fleet_changes_outside_window_total",
                "Package changes made outside the host's maintenance windows",
            ),
            &["hostgroup", "environment"],
        )?;
        let unexplained_rpm = IntCounterVec::new(
            Opts::new(
                "pkgstream_fleet_unexplained_rpm_changes_total",
                "Changes made by plain rpm that no dnf/yum transaction explains",
            ),
            &["hostgroup", "environment"],
        )?;
        let watched = IntGaugeVec::new(
            Opts::new(
                "pkgstream_fleet_watched_package_hosts",
                "Hosts that have a watched package at a version, per host group (the drift signal)",
            ),
            &["package", "version", "hostgroup"],
        )?;
        let hosts = IntGaugeVec::new(
            Opts::new(
                "pkgstream_fleet_hosts",
                "Hosts the metrics sink has seen, per host group",
            ),
            &["hostgroup"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "pkgstream_metrics_sink_events_total",
                "Enriched events read, by outcome (counted, state_only, undecodable)",
            ),
            &["outcome"],
        )?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "pkgstream_metrics_sink_remote_write_requests_total",
                "Remote-write pushes, by outcome",
            ),
            &["outcome"],
        )?;
        for c in [
            &changes,
            &outside_window,
            &unexplained_rpm,
            &events,
            &pushes,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(watched.clone()))?;
        registry.register(Box::new(hosts.clone()))?;
        Ok(FleetMetrics {
            registry,
            changes,
            outside_window,
            unexplained_rpm,
            watched,
            hosts,
            events,
            pushes,
            watch: watch.iter().cloned().collect(),
            state: HashMap::new(),
            chunks: HashMap::new(),
            max_versions: DEFAULT_MAX_VERSIONS,
        })
    }

    /// At most `n` (at least 1) version series per watched package and
    /// host group: the `n` versions most hosts run; the hosts running any
    /// other count under [`OTHER_VERSION`]. Bounds the series whatever
    /// versions hosts report (a broken agent inventing one per host or per
    /// report would otherwise make one series each, churning).
    pub fn set_max_versions(&mut self, n: usize) {
        self.max_versions = n.max(1);
    }

    fn host(&mut self, machine_id: &str, hostgroup: &str) -> &mut HostState {
        let h = self.state.entry(machine_id.to_owned()).or_default();
        if h.hostgroup != hostgroup {
            h.hostgroup = hostgroup.to_owned();
        }
        h
    }

    /// Applies one change: counters when `count` (events the sink had not
    /// counted before), the watch-list state always.
    pub fn change(&mut self, c: &EnrichedChange<'_>, count: bool) {
        let e = &c.enrichment;
        if count {
            let group = [e.hostgroup.as_ref(), e.environment.as_ref()];
            self.changes
                .with_label_values(&[
                    action_name(c.action),
                    source_name(c.source),
                    group[0],
                    group[1],
                ])
                .inc();
            if e.outside_maintenance_window {
                self.outside_window.with_label_values(&group).inc();
            }
            if e.unexplained_rpm {
                self.unexplained_rpm.with_label_values(&group).inc();
            }
        }
        let watched = self.watch.contains(c.package.name.as_ref());
        let h = self.host(&c.host.machine_id, &e.hostgroup);
        if !watched {
            return;
        }
        let v = version_label(&c.package);
        if removes(c.action) {
            if h.packages.get(c.package.name.as_ref()) == Some(&v) {
                h.packages.remove(c.package.name.as_ref());
            }
        } else {
            h.packages.insert(c.package.name.to_string(), v);
        }
    }

    /// Applies a snapshot: the host's watched packages become the
    /// snapshot's. A chunked snapshot's chunks are collected (watched
    /// packages only) and applied at the last chunk, when every chunk came
    /// in order; an incomplete one (a chunk missing, a restart in the
    /// middle) changes nothing. Returns false for such a chunk.
    pub fn snapshot(&mut self, s: &EnrichedSnapshot<'_>) -> bool {
        let mut newest = match s.chunk {
            None => BTreeMap::new(),
            Some(c) => {
                let machine = s.host.machine_id.as_ref();
                if c.index == 0 {
                    if self.chunks.len() >= MAX_CHUNKED_IN_FLIGHT {
                        if let Some(oldest) = self
                            .chunks
                            .iter()
                            .min_by_key(|(_, st)| st.seq)
                            .map(|(k, _)| k.clone())
                        {
                            self.chunks.remove(&oldest);
                        }
                    }
                    let seq = self.chunks.values().map(|st| st.seq).max().unwrap_or(0) + 1;
                    self.chunks.insert(
                        machine.to_owned(),
                        ChunkState {
                            whole: c.snapshot_id,
                            next: 0,
                            seq,
                            newest: BTreeMap::new(),
                        },
                    );
                }
                match self.chunks.get_mut(machine) {
                    Some(st) if st.whole == c.snapshot_id && st.next == c.index => st.next += 1,
                    _ => {
                        self.chunks.remove(machine);
                        return false;
                    }
                }
                if !c.is_last() {
                    if let Some(st) = self.chunks.get_mut(machine) {
                        collect_watched(&self.watch, &s.packages, &mut st.newest);
                    }
                    return true;
                }
                self.chunks
                    .remove(machine)
                    .map(|st| st.newest)
                    .unwrap_or_default()
            }
        };
        collect_watched(&self.watch, &s.packages, &mut newest);
        let packages = newest.into_iter().map(|(n, (_, v))| (n, v)).collect();
        self.host(&s.host.machine_id, &s.enrichment.hostgroup)
            .packages = packages;
        true
    }

    /// Recomputes the gauges from the state (series that fell to 0 vanish),
    /// at most `max_versions` + 1 per package and host group.
    pub fn refresh_gauges(&self) {
        // (package, host group) → version → hosts.
        let mut counts: BTreeMap<(&str, &str), BTreeMap<&str, i64>> = BTreeMap::new();
        let mut hosts: BTreeMap<&str, i64> = BTreeMap::new();
        for h in self.state.values() {
            *hosts.entry(&h.hostgroup).or_default() += 1;
            for (name, v) in &h.packages {
                *counts
                    .entry((name, &h.hostgroup))
                    .or_default()
                    .entry(v)
                    .or_default() += 1;
            }
        }
        self.watched.reset();
        for ((p, g), versions) in counts {
            let mut by_hosts: Vec<(&str, i64)> = versions.into_iter().collect();
            // Most hosts first; equal counts in version-label order, so the
            // cut is the same on every push.
            by_hosts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let mut other = 0;
            for (i, (v, n)) in by_hosts.into_iter().enumerate() {
                if i < self.max_versions && v != OTHER_VERSION {
                    self.watched.with_label_values(&[p, v, g]).set(n);
                } else {
                    other += n;
                }
            }
            if other > 0 {
                self.watched
                    .with_label_values(&[p, OTHER_VERSION, g])
                    .set(other);
            }
        }
        self.hosts.reset();
        for (g, n) in hosts {
            self.hosts.with_label_values(&[g]).set(n);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::{sample, Action, Source};
    use prometheus::core::Collector;

    fn change(
        host: u64,
        name: &str,
        vr: (&str, &str),
        action: Action,
        replaced: Option<(&str, &str)>,
        group: &str,
    ) -> EnrichedChange<'static> {
        let mut c = EnrichedChange::new(sample::change(host), sample::enrichment(host));
        c.host = sample::host(host);
        c.package.name = name.to_owned().into();
        c.package.epoch = Some(0);
        c.package.version = vr.0.to_owned().into();
        c.package.release = vr.1.to_owned().into();
        c.action = action;
        c.source = Source::Dnf;
        c.replaced = replaced.map(|(v, r)| {
            let mut p = c.package.clone();
            p.version = v.to_owned().into();
            p.release = r.to_owned().into();
            p
        });
        c.enrichment.hostgroup = group.to_owned().into();
        c.enrichment.environment = "prod".into();
        c.enrichment.outside_maintenance_window = false;
        c
    }

    fn gauge(m: &FleetMetrics, p: &str, v: &str, g: &str) -> i64 {
        m.watched
            .get_metric_with_label_values(&[p, v, g])
            .map(|g| g.get())
            .unwrap_or(0)
    }

    #[test]
    fn drift_gauges_follow_installs_upgrades_and_removals() {
        let mut m = FleetMetrics::new(&["openssl".to_owned()]).unwrap();
        for h in 0..3 {
            m.change(
                &change(h, "openssl", ("3.0.7", "1"), Action::Install, None, "web"),
                true,
            );
        }
        m.change(
            &change(
                0,
                "openssl",
                ("3.0.7", "2"),
                Action::Upgrade,
                Some(("3.0.7", "1")),
                "web",
            ),
            true,
        );
        m.change(
            &change(1, "openssl", ("3.0.7", "1"), Action::Remove, None, "web"),
            true,
        );
        m.change(
            &change(1, "bash", ("5", "1"), Action::Install, None, "web"),
            false,
        );
        // Another version installed beside the first (install-only): the
        // host counts once, at the newest.
        m.change(
            &change(2, "openssl", ("3.0.8", "1"), Action::Install, None, "web"),
            true,
        );
        m.refresh_gauges();
        assert_eq!(
            m.watched.collect()[0].get_metric().len(),
            2,
            "no series for removed versions or unwatched packages"
        );
        assert_eq!(gauge(&m, "openssl", "3.0.7-1", "web"), 0);
        assert_eq!(gauge(&m, "openssl", "3.0.7-2", "web"), 1);
        assert_eq!(gauge(&m, "openssl", "3.0.8-1", "web"), 1);
        assert_eq!(
            m.changes
                .with_label_values(&["install", "dnf", "web", "prod"])
                .get(),
            4
        );
        assert_eq!(
            m.changes
                .with_label_values(&["upgrade", "dnf", "web", "prod"])
                .get(),
            1
        );
        assert_eq!(
            m.changes
                .with_label_values(&["remove", "dnf", "web", "prod"])
                .get(),
            1
        );
        // `count = false` touched no counter.
        assert_eq!(
            m.changes
                .get_metric_with_label_values(&["install", "dnf", "web", "prod"])
                .unwrap()
                .get(),
            4
        );
        assert_eq!(m.hosts.with_label_values(&["web"]).get(), 3);
    }

    #[test]
    fn versions_beyond_the_most_common_and_overlong_ones_count_as_other() {
        let mut m = FleetMetrics::new(&["openssl".to_owned()]).unwrap();
        m.set_max_versions(3);
        // 1,000 hosts, each with a version of its own, except 30 hosts on
        // 3.0.7-1, 20 on 3.0.7-2 and 10 on 3.0.8-1.
        for h in 0..1000u64 {
            let (version, release) = match h {
                0..30 => ("3.0.7", "1".to_owned()),
                30..50 => ("3.0.7", "2".to_owned()),
                50..60 => ("3.0.8", "1".to_owned()),
                _ => ("3.0.7", format!("x{h}")),
            };
            m.change(
                &change(
                    h,
                    "openssl",
                    (version, &release),
                    Action::Install,
                    None,
                    "web",
                ),
                true,
            );
        }
        // One more host with a 100 KB release: no copy, no series of its own.
        let huge = "9".repeat(100_000);
        m.change(
            &change(
                1000,
                "openssl",
                ("3.0.7", &huge),
                Action::Install,
                None,
                "web",
            ),
            true,
        );
        m.refresh_gauges();
        assert_eq!(
            m.watched.collect()[0].get_metric().len(),
            4,
            "3 versions + other"
        );
        assert_eq!(gauge(&m, "openssl", "3.0.7-1", "web"), 30);
        assert_eq!(gauge(&m, "openssl", "3.0.7-2", "web"), 20);
        assert_eq!(gauge(&m, "openssl", "3.0.8-1", "web"), 10);
        assert_eq!(gauge(&m, "openssl", OTHER_VERSION, "web"), 941);
        let longest = m
            .state
            .values()
            .flat_map(|h| h.packages.values())
            .map(String::len)
            .max();
        assert!(longest <= Some(MAX_VERSION_LABEL));
        // The cut is per host group: another group has its own three.
        m.change(
            &change(2000, "openssl", ("1", "x"), Action::Install, None, "db"),
            true,
        );
        m.refresh_gauges();
        assert_eq!(gauge(&m, "openssl", "1-x", "db"), 1);
    }

    #[test]
    fn a_chunked_snapshot_replaces_the_state_at_its_last_chunk_only_when_complete() {
        use pkgstream_schemas::{chunk_id, SnapshotChunk};
        let mut m = FleetMetrics::new(&["openssl-libs".to_owned(), "bash".to_owned()]).unwrap();
        let mut whole = sample::snapshot(2, 4);
        whole.packages[0].name = "openssl-libs".into();
        whole.packages[3].name = "bash".into();
        let part = |i: i32, range: std::ops::Range<usize>| {
            let mut s = EnrichedSnapshot::new(whole.clone(), sample::enrichment(2));
            s.snapshot_id = chunk_id(&whole.snapshot_id, i);
            s.packages = whole.packages[range].to_vec();
            s.chunk = Some(SnapshotChunk {
                snapshot_id: whole.snapshot_id,
                index: i,
                count: 2,
                package_count: 4,
            });
            s
        };
        let (a, b) = (part(0, 0..2), part(1, 2..4));
        let group = a.enrichment.hostgroup.to_string();
        // The last chunk alone (a restart in the middle): nothing applied.
        assert!(!m.snapshot(&b));
        m.refresh_gauges();
        assert_eq!(gauge(&m, "bash", &version_label(&b.packages[1]), &group), 0);
        // Both in order: both chunks' watched packages, at the last one.
        assert!(m.snapshot(&a));
        m.refresh_gauges();
        assert_eq!(
            gauge(&m, "openssl-libs", &version_label(&a.packages[0]), &group),
            0
        );
        assert!(m.snapshot(&b));
        m.refresh_gauges();
        assert_eq!(
            gauge(&m, "openssl-libs", &version_label(&a.packages[0]), &group),
            1
        );
        assert_eq!(gauge(&m, "bash", &version_label(&b.packages[1]), &group), 1);
    }

    #[test]
    fn a_snapshot_replaces_the_hosts_watched_state() {
        let mut m = FleetMetrics::new(&["openssl-libs".to_owned()]).unwrap();
        let mut s = EnrichedSnapshot::new(sample::snapshot(1, 3), sample::enrichment(1));
        s.packages[0].name = "openssl-libs".into();
        s.packages[0].epoch = Some(1);
        m.snapshot(&s);
        m.refresh_gauges();
        let v = version_label(&s.packages[0]);
        assert!(v.starts_with("1:"));
        assert_eq!(gauge(&m, "openssl-libs", &v, &s.enrichment.hostgroup), 1);
    }
}

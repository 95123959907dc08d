//! The simulated fleet: hosts (name, machine id, group, environment,
//! datacenter, maintenance windows), their host metadata as the router
//! reads it from `pkgstream.hosts`, and each host's initial inventory.
//! Everything is a pure function of the [`FleetSpec`] (seed, sizes, the
//! simulated "now"), so two runs with the same spec produce the same fleet.
//!
//! Hosts are generated lazily where it matters: a fleet of 10,000 hosts
//! holds 10,000 small [`SimHost`]s and one [`Catalog`]; the 15 million
//! package entries of their snapshots are built one host at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pkgstream_producer::input::{HostInput, InventoryInput, PackageInput, Timestamp};
use pkgstream_router::hosts::Window;
use pkgstream_schemas::InventorySnapshot;
use serde_json::json;

use super::catalog::{Catalog, CatalogPackage, Evr, GROUPS, MAX_PACKAGES, MIN_PACKAGES};
use super::rng::Rng;
use crate::CliError;

/// Environments and their share of each group (per mille).
pub const ENVIRONMENTS: [(&str, u64); 3] = [("prod", 600), ("staging", 250), ("dev", 150)];
const DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
/// The initial snapshot is taken this long before "now" (within the
/// default `pkgstream drift --stale 2d`, before every window the traffic uses).
pub const SNAPSHOT_AGE_SECS: i64 = 26 * 3600;
/// The most hosts a run simulates.
pub const MAX_HOSTS: usize = 1_000_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Number of hosts.
    pub hosts: usize,
    /// Packages per host (package documents per host in the search engine).
    pub packages: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The simulated present, µs since the epoch: the snapshot is taken
    /// [`SNAPSHOT_AGE_SECS`] before it, all traffic happens before it.
    pub now: i64,
}

impl FleetSpec {
    /// Checks the sizes without I/O.
    pub fn validate(&self) -> Result<(), CliError> {
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(CliError::BadInput(format!(
                "--hosts {}: between 1 and {MAX_HOSTS}",
                self.hosts
            )));
        }
        if !(MIN_PACKAGES..=MAX_PACKAGES).contains(&self.packages) {
            return Err(CliError::BadInput(format!(
                "--packages {}: between {MIN_PACKAGES} (the packages the traffic touches plus a group's extras) and {MAX_PACKAGES} (a snapshot must stay under Kafka's 1 MiB message limit)",
                self.packages
            )));
        }
        if DateTime::from_timestamp_micros(self.now - SNAPSHOT_AGE_SECS * 1_000_000).is_none()
            || self.now < SNAPSHOT_AGE_SECS * 2_000_000
        {
            return Err(CliError::BadInput("--at: not a usable time".into()));
        }
        Ok(())
    }
}

/// One simulated host.
#[derive(Clone, Debug)]
pub struct SimHost {
    /// Position in the fleet (0-based).
    pub index: usize,
    /// 32 hex digits, like /etc/machine-id.
    pub machine_id: String,
    /// `web-0042.dc1.example`.
    pub hostname: String,
    /// Index into [`GROUPS`].
    pub group: usize,
    /// `prod`, `staging` or `dev`.
    pub environment: &'static str,
    /// `dc1`..`dc3`.
    pub datacenter: &'static str,
    /// Maintenance windows as written in the host metadata.
    pub maintenance: Vec<String>,
    /// The same, parsed with the router's own parser.
    pub windows: Vec<Window>,
}

impl SimHost {
    /// Host group name.
    pub fn group_name(&self) -> &'static str {
        GROUPS[self.group].0
    }

    /// The host identity the hooks would read from the host.
    pub fn identity(&self) -> HostInput {
        HostInput {
            machine_id: Some(self.machine_id.clone()),
            hostname: Some(self.hostname.clone()),
            os_id: Some("rhel".into()),
            os_version: Some("9.4".into()),
            arch: Some("x86_64".into()),
        }
    }

    /// The `pkgstream.hosts` value for this host (JSON read by the router's
    /// `HostMeta`; see `config/pkgstream.example.toml`).
    pub fn meta_json(&self) -> String {
        let group = self.group_name();
        json!({
            "hostgroup": group,
            "environment": self.environment,
            "owner": format!("team-{group}"),
            "datacenter": self.datacenter,
            "tags": {"simulated": "true", "tier": if self.environment == "prod" { "1" } else { "3" }},
            "maintenance": self.maintenance,
        })
        .to_string()
    }

    /// Whether `micros` falls in one of the host's maintenance windows.
    pub fn in_window(&self, micros: i64) -> bool {
        DateTime::from_timestamp_micros(micros)
            .is_some_and(|t| self.windows.iter().any(|w| w.contains(t)))
    }
}

/// The maintenance windows of a (group, environment): every host has at
/// least one window every day, so a patch wave in the last day always
/// finds one.
fn window_specs(group: usize, environment: &str) -> Vec<String> {
    match environment {
        "prod" => vec![
            format!("daily {:02}:00-{:02}:00", 1 + group % 4, 3 + group % 4),
            "sun 04:00-08:00".into(),
        ],
        "staging" => vec!["daily 22:00-01:00".into()],
        _ => vec!["mon-fri 09:00-18:00".into(), "sat,sun 10:00-12:00".into()],
    }
}

/// The whole fleet.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// What it was built from.
    pub spec: FleetSpec,
    /// Packages and versions.
    pub catalog: Catalog,
    /// Hosts, in index order.
    pub hosts: Vec<SimHost>,
    /// When the initial snapshots are taken (µs).
    pub snapshot_at: i64,
    /// Per (group, environment): the latest window start the traffic can use (µs).
    window_starts: HashMap<(usize, &'static str), i64>,
}

fn pick_weighted(rng: &mut Rng, weights: &[u64]) -> usize {
    let total: u64 = weights.iter().sum();
    let mut x = rng.below(total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

impl Fleet {
    /// Builds the fleet (validating the spec first).
    pub fn new(spec: FleetSpec) -> Result<Fleet, CliError> {
        spec.validate()?;
        let catalog = Catalog::new(spec.seed, spec.packages);
        let mut per_group = [0usize; GROUPS.len()];
        let group_weights: Vec<u64> = GROUPS.iter().map(|g| g.1).collect();
        let env_weights: Vec<u64> = ENVIRONMENTS.iter().map(|e| e.1).collect();
        let mut hosts = Vec::with_capacity(spec.hosts);
        for index in 0..spec.hosts {
            let mut rng = Rng::stream(spec.seed, 0x4057_0000 + index as u64);
            // The first hosts cover every group, so small fleets have them all.
            let group = if spec.hosts >= 2 * GROUPS.len() && index < GROUPS.len() {
                index
            } else {
                pick_weighted(&mut rng, &group_weights)
            };
            let environment = ENVIRONMENTS[pick_weighted(&mut rng, &env_weights)].0;
            let datacenter = DATACENTERS[rng.below(DATACENTERS.len() as u64) as usize];
            per_group[group] += 1;
            let machine_id = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
            let hostname = format!(
                "{}-{:04}.{datacenter}.example",
                GROUPS[group].0, per_group[group]
            );
            let maintenance = window_specs(group, environment);
            let windows = maintenance
                .iter()
                .map(|w| Window::parse(w).map_err(CliError::BadInput))
                .collect::<Result<Vec<_>, _>>()?;
            hosts.push(SimHost {
                index,
                machine_id,
                hostname,
                group,
                environment,
                datacenter,
                maintenance,
                windows,
            });
        }
        let snapshot_at = spec.now - SNAPSHOT_AGE_SECS * 1_000_000;
        let mut fleet = Fleet {
            spec,
            catalog,
            hosts,
            snapshot_at,
            window_starts: HashMap::new(),
        };
        for g in 0..GROUPS.len() {
            for (env, _) in ENVIRONMENTS {
                let probe = SimHost {
                    index: 0,
                    machine_id: String::new(),
                    hostname: String::new(),
                    group: g,
                    environment: env,
                    datacenter: "",
                    maintenance: Vec::new(),
                    windows: window_specs(g, env)
                        .iter()
                        .filter_map(|w| Window::parse(w).ok())
                        .collect(),
                };
                let start = fleet.latest_window_start(&probe)?;
                fleet.window_starts.insert((g, env), start);
            }
        }
        Ok(fleet)
    }

    /// The start (µs, on a minute) of the latest maintenance window that
    /// began at least 40 minutes before "now" and after the snapshot.
    fn latest_window_start(&self, h: &SimHost) -> Result<i64, CliError> {
        const MIN: i64 = 60_000_000;
        let mut t = (self.spec.now / MIN) * MIN - 40 * MIN;
        while t > self.snapshot_at + 30 * MIN {
            if h.in_window(t) && !h.in_window(t - MIN) {
                return Ok(t);
            }
            t -= MIN;
        }
        Err(CliError::BadInput(format!(
            "no maintenance window of group {} ({}) in the simulated day",
            h.group_name(),
            h.environment
        )))
    }

    /// The window start the traffic of `h` uses (µs).
    pub fn window_start(&self, h: &SimHost) -> i64 {
        self.window_starts
            .get(&(h.group, h.environment))
            .copied()
            .unwrap_or(self.snapshot_at)
    }

    /// The packages of `h`'s group, after the base set.
    pub fn extras(&self, h: &SimHost) -> &[CatalogPackage] {
        self.catalog
            .extras
            .get(h.group)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The version `h` starts with for `name` (base or its group's extras).
    pub fn initial(&self, h: &SimHost, name: &str) -> Option<&CatalogPackage> {
        self.catalog
            .base_package(name)
            .or_else(|| self.extras(h).iter().find(|p| p.name == name))
    }

    /// When `h`'s snapshot is taken (µs): spread over ten minutes.
    pub fn taken_at(&self, h: &SimHost) -> i64 {
        self.snapshot_at + (h.index as i64 % 600) * 1_000_000
    }

    /// The first inventory of `h`, as `pkgstream-emit inventory` would
    /// report it: every base and group package, the install-only kernel
    /// packages twice (the running and the previous kernel).
    pub fn inventory(&self, h: &SimHost) -> InventoryInput {
        // Provisioned ~200 days ago; the current kernel a month ago.
        let provisioned = self.snapshot_at / 1_000_000 - 200 * 86_400 - h.index as i64 * 7;
        let mut packages = Vec::with_capacity(self.spec.packages + 2);
        for p in self.catalog.base.iter().chain(self.extras(h)) {
            if let Some(prev) = &p.previous {
                packages.push(package_input(p, prev, provisioned));
                packages.push(package_input(p, &p.evr, provisioned + 170 * 86_400));
            } else {
                packages.push(package_input(p, &p.evr, provisioned));
            }
        }
        InventoryInput {
            packages,
            taken_at: Some(Timestamp(self.taken_at(h))),
            host: Some(h.identity()),
        }
    }

    /// The first snapshot of `h`, through the producer's own conversion.
    pub fn snapshot(&self, h: &SimHost) -> InventorySnapshot<'static> {
        self.inventory(h).into_snapshot(None)
    }
}

/// FNV-1a, for digests that are stable per package build.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A hook-input package of `p` at `evr`, installed at `installed` (Unix s).
pub fn package_input(p: &CatalogPackage, evr: &Evr, installed: i64) -> PackageInput {
    let mut r = Rng::new(fnv(
        format!("{}-{}.{}", p.name, evr.label(), p.arch).as_bytes()
    ));
    let digest = format!(
        "sha256:{:016x}{:016x}{:016x}{:016x}",
        r.next_u64(),
        r.next_u64(),
        r.next_u64(),
        r.next_u64()
    );
    PackageInput {
        name: p.name.clone(),
        epoch: evr.epoch,
        version: evr.version.clone(),
        release: evr.release.clone(),
        arch: p.arch.to_owned(),
        repo: Some(p.repo.to_owned()),
        vendor: Some(p.vendor.to_owned()),
        buildtime: Some(Timestamp(p.buildtime * 1_000_000)),
        install_time: Some(Timestamp(installed * 1_000_000)),
        size: Some(p.size + (r.below(4096) as i64)),
        digest: Some(digest),
    }
}

/// `--at` default: now, to the second.
pub fn now_micros() -> i64 {
    Utc::now().timestamp() * 1_000_000
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use pkgstream_router::hosts::HostMeta;
    use pkgstream_sinks::search::documents::snapshot_state;

    /// Saturday 2026-11-28 12:00:00 UTC.
    pub const NOW: i64 = 1_795_867_200_000_000;

    pub fn fleet(hosts: usize, packages: usize, seed: u64) -> Fleet {
        Fleet::new(FleetSpec {
            hosts,
            packages,
            seed,
            now: NOW,
        })
        .unwrap()
    }

    #[test]
    fn deterministic_from_the_seed() {
        let a = fleet(50, 200, 1);
        let b = fleet(50, 200, 1);
        let c = fleet(50, 200, 2);
        let names = |f: &Fleet| {
            f.hosts
                .iter()
                .map(|h| h.hostname.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b));
        assert_eq!(a.snapshot(&a.hosts[7]), b.snapshot(&b.hosts[7]));
        assert_ne!(
            a.hosts.iter().map(|h| &h.machine_id).collect::<Vec<_>>(),
            c.hosts.iter().map(|h| &h.machine_id).collect::<Vec<_>>()
        );
        // A host is the same whatever the fleet size.
        let big = fleet(500, 200, 1);
        assert_eq!(big.hosts[20].machine_id, a.hosts[20].machine_id);
        assert_eq!(big.hosts[20].hostname, a.hosts[20].hostname);
    }

    #[test]
    fn every_host_has_exactly_the_package_count() {
        for packages in [MIN_PACKAGES, 1500] {
            let f = fleet(40, packages, 3);
            for h in &f.hosts {
                let s = f.snapshot(h);
                // rpm entries: one more per install-only package.
                assert_eq!(s.packages.len(), packages + 2);
                let enriched = pkgstream_schemas::EnrichedSnapshot::new(
                    s,
                    pkgstream_schemas::sample::enrichment(1),
                );
                // Package documents, as the sink keys them.
                assert_eq!(snapshot_state(&enriched).len(), packages);
                let mut out = Vec::new();
                pkgstream_schemas::Encoder::new()
                    .encode_snapshot(&f.snapshot(h), &mut out)
                    .unwrap();
                assert!(out.len() < 1 << 20);
            }
        }
    }

    #[test]
    fn the_newest_kernel_is_the_package_state() {
        let f = fleet(10, 100, 3);
        let s = f.snapshot(&f.hosts[0]);
        let enriched =
            pkgstream_schemas::EnrichedSnapshot::new(s, pkgstream_schemas::sample::enrichment(1));
        let state = snapshot_state(&enriched);
        let k = state
            .iter()
            .find(|(k, _)| k.ends_with("/kernel-core.x86_64"))
            .unwrap()
            .1;
        assert_eq!(k.release, "427.16.1.el9_4");
    }

    #[test]
    fn host_metadata_is_what_the_router_reads() {
        let f = fleet(30, 100, 5);
        let groups: std::collections::BTreeSet<&str> =
            f.hosts.iter().map(|h| h.group_name()).collect();
        assert_eq!(groups.len(), GROUPS.len(), "every group in a 30-host fleet");
        for h in &f.hosts {
            let meta: HostMeta = serde_json::from_str(&h.meta_json()).unwrap();
            assert_eq!(meta.hostgroup, h.group_name());
            assert_eq!(meta.environment, h.environment);
            assert_eq!(meta.maintenance, h.windows);
            assert!(h.hostname.starts_with(h.group_name()));
            let start = f.window_start(h);
            assert!(h.in_window(start) && !h.in_window(start - 60_000_000));
            assert!(start > f.snapshot_at && start < NOW);
        }
        assert_eq!(f.hosts[0].hostname.len(), "web-0001.dc1.example".len());
    }

    #[test]
    fn bad_sizes_are_errors() {
        let spec = |hosts, packages| FleetSpec {
            hosts,
            packages,
            seed: 1,
            now: NOW,
        };
        for (h, p) in [(0, 200), (10, 10), (10, 100_000)] {
            let e = Fleet::new(spec(h, p)).unwrap_err().to_string();
            assert!(e.contains("--hosts") || e.contains("--packages"), "{e}");
        }
    }
}

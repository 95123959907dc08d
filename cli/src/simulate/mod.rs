//! `pkgstream simulate`: a fleet simulator for demos and load.
//!
//! It builds a fleet deterministically from a seed ([`fleet`]: hosts in
//! groups × environments with maintenance windows, ~1,500 realistic RHEL
//! packages each from the [`catalog`]) and a day of change traffic
//! ([`traffic`]: a patch wave with laggards, kernel updates, a cleanup,
//! rogue plain-rpm changes), then writes it the way real hosts do: host
//! metadata to the compacted hosts topic (the router's enrichment), then
//! every host's inventory snapshot, then its changes — each built with the
//! producer's hook-input types (`InventoryInput::into_snapshot`,
//! `ChangeInput::into_event`), encoded with the contract, appended durably
//! to a spool (`pkgstream_producer::Spool`, one append per package-manager
//! run as a hook does) and shipped by `pkgstream_producer::emitter::flush`,
//! the code of `pkgstream-emit flush`.
//!
//! One spool per host is the honest model and what runs up to `--spools`
//! hosts (default 256); beyond that hosts share spools round-robin (each
//! event carries its own host identity and key, so Kafka sees the same
//! messages): a flush opens a Kafka producer, and 10,000 of them would
//! measure connection set-up, not the pipeline.
//!
//! Snapshots are all flushed before the first change is recorded; start
//! the router and the sink first (or run `--no-traffic`, wait, then
//! `--no-snapshots` with the same `--seed` and `--at`) so that every
//! host's snapshot is indexed before its changes.
//!
//! [`traffic::facts`] is what the pipeline must then show (changes by
//! kind, package documents, the exact drift report); `--facts FILE` writes
//! it as JSON for tests and demos.

pub mod catalog;
pub mod fleet;
mod rng;
pub mod traffic;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pkgstream_producer::emitter::{flush, record_events};
use pkgstream_producer::input::HookEvent;
use pkgstream_producer::{EmitConfig, Spool};
use pkgstream_runtime::config::TopicsConfig;
use pkgstream_runtime::delivery::DeliveryFailures;
use pkgstream_runtime::topics::{create_missing, TopicSpec};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tracing::{info, warn};

pub use fleet::{Fleet, FleetSpec};
pub use rng::Rng;
pub use traffic::Facts;

use crate::config::PipelineConfig;
use crate::CliError;

/// `pkgstream simulate` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateArgs {
    /// Hosts to simulate.
    #[arg(long, default_value_t = 200)]
    pub hosts: usize,
    /// Packages per host (package documents per host).
    #[arg(long, default_value_t = 1500)]
    pub packages: usize,
    /// Seed of the fleet and its traffic (same seed and --at: same events).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The simulated present (RFC 3339, not in the future) [default: now]; snapshots are taken 26 h before, the traffic in the day before.
    #[arg(long)]
    pub at: Option<String>,
    /// Where the spools go [default: a temporary directory, removed at the end].
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Spools at most: one per host up to this many hosts, shared beyond.
    #[arg(long, default_value_t = 256)]
    pub spools: usize,
    /// Spools recorded and flushed at once (a flush waits on Kafka more than it computes).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Only the host metadata and the snapshots.
    #[arg(long, conflicts_with = "no_snapshots")]
    pub no_traffic: bool,
    /// Only the host metadata and the changes (snapshots sent by an earlier run).
    #[arg(long)]
    pub no_snapshots: bool,
    /// Write the expected facts (changes, package documents, drift) as JSON to this file.
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// A flush gives up after this many seconds without Kafka.
    #[arg(long, default_value_t = 60)]
    pub flush_timeout_secs: u64,
}

/// What one phase did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    /// Hosts written.
    pub hosts: u64,
    /// Events acknowledged by Kafka.
    pub events: u64,
    /// Bytes of encoded events.
    pub bytes: u64,
    /// Wall time, seconds.
    pub secs: f64,
}

impl PhaseReport {
    fn rate(&self, n: u64) -> f64 {
        if self.secs > 0.0 {
            n as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// The one-line summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<'a> {
    /// Seed.
    pub seed: u64,
    /// `--at` used (RFC 3339).
    pub at: String,
    /// Hosts.
    pub hosts: u64,
    /// Packages per host.
    pub packages: usize,
    /// Spools used.
    pub spools: usize,
    /// Snapshots shipped.
    pub snapshots: u64,
    /// Changes shipped.
    pub changes: u64,
    /// Changes by kind.
    pub by_kind: &'a std::collections::BTreeMap<String, u64>,
    /// Changes outside the host's maintenance windows.
    pub outside_window: u64,
    /// Package documents expected after the traffic.
    pub package_docs: u64,
    /// Hosts that missed the patch wave.
    pub lagging_hosts: usize,
    /// Drifted (group, package) pairs expected.
    pub drift_pairs: usize,
    /// Snapshot phase.
    pub snapshot_phase: &'a PhaseReport,
    /// Traffic phase.
    pub traffic_phase: &'a PhaseReport,
    /// Hosts per second over both phases.
    pub hosts_per_s: f64,
    /// Events per second over both phases.
    pub events_per_s: f64,
    /// Wall time, seconds (including host metadata).
    pub secs: f64,
}

/// Runs `pkgstream simulate`.
pub fn command(args: &SimulateArgs, cfg: &PipelineConfig) -> Result<(), CliError> {
    let now = fleet::now_micros();
    let at = match &args.at {
        Some(t) => crate::query::parse_time(t, chrono::Utc::now())?,
        None => now,
    };
    if args.spools == 0 || args.threads == 0 {
        return Err(CliError::BadInput(
            "--spools and --threads must be at least 1".into(),
        ));
    }
    let spec = FleetSpec {
        hosts: args.hosts,
        packages: args.packages,
        seed: args.seed,
        now: at,
    };
    let started = Instant::now();
    let fleet = Fleet::new(spec)?;
    let facts = traffic::facts(&fleet);
    info!(
        hosts = facts.hosts,
        changes = facts.changes,
        secs = started.elapsed().as_secs_f64(),
        "fleet and traffic built"
    );
    if let Some(path) = &args.facts {
        let text =
            serde_json::to_string_pretty(&facts).map_err(|e| CliError::BadInput(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| CliError::BadInput(format!("--facts {}: {e}", path.display())))?;
    }
    let sim = Simulator::new(&fleet, args, cfg)?;
    sim.publish_hosts()?;
    let terminal = std::io::stderr().is_terminal();
    let snapshots = if args.no_snapshots {
        PhaseReport::default()
    } else {
        sim.phase(Phase::Snapshots, terminal)?
    };
    let changes = if args.no_traffic {
        PhaseReport::default()
    } else {
        sim.phase(Phase::Traffic, terminal)?
    };
    let secs = started.elapsed().as_secs_f64();
    let phase_secs = snapshots.secs + changes.secs;
    let hosts_done = snapshots.hosts.max(changes.hosts);
    let summary = Summary {
        seed: args.seed,
        at: chrono::DateTime::from_timestamp_micros(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        hosts: facts.hosts,
        packages: args.packages,
        spools: sim.spools,
        snapshots: snapshots.events,
        changes: changes.events,
        by_kind: &facts.by_kind,
        outside_window: facts.outside_window,
        package_docs: facts.package_docs,
        lagging_hosts: facts.lagging_hosts.len(),
        drift_pairs: facts.drift.len(),
        snapshot_phase: &snapshots,
        traffic_phase: &changes,
        hosts_per_s: if phase_secs > 0.0 {
            hosts_done as f64 / phase_secs
        } else {
            0.0
        },
        events_per_s: if phase_secs > 0.0 {
            (snapshots.events + changes.events) as f64 / phase_secs
        } else {
            0.0
        },
        secs,
    };
    if std::io::stdout().is_terminal() {
        print_human(&summary, &facts);
    } else {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| CliError::BadInput(e.to_string()))?
        );
    }
    Ok(())
}

fn print_human(s: &Summary<'_>, f: &Facts) {
    println!(
        "pkgstream simulate: {} hosts × {} packages (seed {}, at {}), {} spool(s)",
        s.hosts, s.packages, s.seed, s.at, s.spools
    );
    let line = |name: &str, p: &PhaseReport| {
        if p.events > 0 {
            println!(
                "  {name}: {} events from {} hosts, {:.1} MiB in {:.1} s ({:.0} hosts/s, {:.0} events/s)",
                p.events,
                p.hosts,
                p.bytes as f64 / (1 << 20) as f64,
                p.secs,
                p.rate(p.hosts),
                p.rate(p.events)
            );
        }
    };
    line("snapshots", s.snapshot_phase);
    line("changes", s.traffic_phase);
    let kinds: Vec<String> = s.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("  changes by kind: {}", kinds.join(", "));
    println!(
        "  expected: {} package documents, {} change(s) outside a maintenance window, {} host(s) lagging the patch wave, {} drifted (group, package) pair(s)",
        s.package_docs, s.outside_window, s.lagging_hosts, s.drift_pairs
    );
    // The patch wave's laggards per group, then every other drifted pair.
    let wave = catalog::names::WAVE;
    let mut per_group: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for d in f.drift.iter().filter(|d| d.package == "openssl-libs") {
        per_group.insert(
            &d.hostgroup,
            d.outlier_hosts.iter().map(String::as_str).collect(),
        );
    }
    for (group, hosts) in &per_group {
        let shown: Vec<&str> = hosts.iter().take(6).copied().collect();
        println!(
            "    {group}: {} host(s) missed the patch wave ({} packages behind): {}{}",
            hosts.len(),
            wave.len(),
            shown.join(", "),
            if hosts.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    for d in f
        .drift
        .iter()
        .filter(|d| !wave.contains(&d.package.as_str()))
        .take(20)
    {
        let shown: Vec<&str> = d.outlier_hosts.iter().take(4).map(String::as_str).collect();
        println!(
            "    {} / {}: expected {}, {} outlier(s): {}{}",
            d.hostgroup,
            d.package,
            d.expected,
            d.outliers,
            shown.join(", "),
            if d.outlier_hosts.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    for r in &f.rogue {
        println!("  rogue: {} on {} ({})", r.kind.name(), r.host, r.package);
    }
}

/// Which events a phase writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Snapshots,
    Traffic,
}

struct Simulator<'a> {
    fleet: &'a Fleet,
    roles: Vec<traffic::HostRole>,
    emit: EmitConfig,
    hosts_topic: String,
    spool_root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    spools: usize,
    threads: usize,
    flush_timeout: Duration,
}

fn spool_err(dir: &std::path::Path, e: impl std::fmt::Display) -> CliError {
    CliError::Spool {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    }
}

impl<'a> Simulator<'a> {
    fn new(fleet: &'a Fleet, args: &SimulateArgs, cfg: &PipelineConfig) -> Result<Self, CliError> {
        let TopicsConfig {
            changes_raw,
            inventory_raw,
            hosts,
            ..
        } = cfg.topics.clone();
        let mut emit = EmitConfig {
            kafka: pkgstream_runtime::config::KafkaConfig {
                client_id: Some("pkgstream-simulate".into()),
                ..cfg.kafka.clone()
            },
            ..EmitConfig::default()
        };
        emit.topics.changes_raw = changes_raw;
        emit.topics.inventory_raw = inventory_raw;
        emit.flush.timeout_secs = args.flush_timeout_secs.max(1);
        // A shared spool holds many hosts' snapshots at once.
        emit.spool.max_bytes = 4 << 30;
        emit.validate()
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        let (root, tmp) = match &args.spool_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| spool_err(d, e))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("pkgstream-simulate-")
                    .tempdir()
                    .map_err(|e| CliError::BadInput(format!("temporary spool directory: {e}")))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let spools = args.spools.min(fleet.hosts.len()).max(1);
        Ok(Simulator {
            fleet,
            roles: traffic::roles(fleet),
            emit,
            hosts_topic: hosts,
            spool_root: root,
            _tmp: tmp,
            spools,
            threads: args.threads.min(spools).max(1),
            flush_timeout: Duration::from_secs(args.flush_timeout_secs.max(1)),
        })
    }

    /// Publishes every host's metadata to the compacted hosts topic
    /// (created compacted when missing: a table keyed by machine id).
    fn publish_hosts(&self) -> Result<(), CliError> {
        let brokers = &self.emit.kafka.brokers;
        let kafka = |reason: String| CliError::Kafka {
            brokers: brokers.clone(),
            reason,
        };
        create_missing(
            &self.emit.kafka,
            &[TopicSpec {
                name: &self.hosts_topic,
                partitions: 1,
                compact: true,
            }],
        )
        .map_err(|e| match e {
            pkgstream_runtime::RuntimeError::Kafka { reason, .. } => kafka(reason),
            e => kafka(e.to_string()),
        })?;
        let producer: BaseProducer<DeliveryFailures> = self
            .emit
            .kafka
            .client_config()
            .map_err(|e| kafka(e.to_string()))?
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            .set("linger.ms", "20")
            .set(
                "message.timeout.ms",
                self.flush_timeout.as_millis().to_string(),
            )
            .create_with_context(DeliveryFailures::default())
            .map_err(|e| kafka(e.to_string()))?;
        producer
            .client()
            .fetch_metadata(
                Some(&self.hosts_topic),
                self.flush_timeout.min(Duration::from_secs(10)),
            )
            .map_err(|e| kafka(e.to_string()))?;
        let started = Instant::now();
        for h in &self.fleet.hosts {
            let value = h.meta_json();
            let mut record = BaseRecord::to(&self.hosts_topic)
                .key(h.machine_id.as_str())
                .payload(value.as_str());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) if started.elapsed() < self.flush_timeout => {
                        record = r;
                        producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => return Err(kafka(format!("{}: {e}", self.hosts_topic))),
                }
            }
        }
        producer
            .flush(self.flush_timeout)
            .map_err(|e| kafka(format!("{}: {e}", self.hosts_topic)))?;
        if let Some((failed, reason)) = producer.context().take() {
            return Err(kafka(format!(
                "{failed} host metadata record(s) to {} not delivered: {reason}",
                self.hosts_topic
            )));
        }
        info!(topic = %self.hosts_topic, hosts = self.fleet.hosts.len(), "host metadata published");
        Ok(())
    }

    /// Records and flushes one phase over all spools, `threads` at a time.
    fn phase(&self, phase: Phase, terminal: bool) -> Result<PhaseReport, CliError> {
        let hosts_done = AtomicU64::new(0);
        let events_done = AtomicU64::new(0);
        let bytes_done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let error: Mutex<Option<CliError>> = Mutex::new(None);
        let finished = AtomicU64::new(0);
        let started = Instant::now();
        let name = match phase {
            Phase::Snapshots => "snapshots",
            Phase::Traffic => "changes",
        };
        std::thread::scope(|scope| {
            for w in 0..self.threads {
                let (hosts_done, events_done, bytes_done, stop, error, finished) = (
                    &hosts_done,
                    &events_done,
                    &bytes_done,
                    &stop,
                    &error,
                    &finished,
                );
                scope.spawn(move || {
                    for s in (w..self.spools).step_by(self.threads) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match self.spool_run(phase, s, hosts_done, bytes_done) {
                            Ok(n) => {
                                events_done.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = error.lock() {
                                    slot.get_or_insert(e);
                                }
                                break;
                            }
                        }
                    }
                    finished.fetch_add(1, Ordering::Relaxed);
                });
            }
            let mut last = Instant::now();
            while finished.load(Ordering::Relaxed) < self.threads as u64 {
                std::thread::sleep(Duration::from_millis(100));
                if terminal && last.elapsed() >= Duration::from_millis(500) {
                    last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let h = hosts_done.load(Ordering::Relaxed);
                    let e = events_done.load(Ordering::Relaxed);
                    eprint!(
                        "\r\x1b[K{name}: {h}/{} hosts recorded ({:.0} hosts/s), {e} events shipped ({:.0} events/s)",
                        self.fleet.hosts.len(),
                        h as f64 / secs,
                        e as f64 / secs
                    );
                }
            }
        });
        if terminal {
            eprint!("\r\x1b[K");
        }
        if let Some(e) = error.into_inner().ok().flatten() {
            return Err(e);
        }
        let report = PhaseReport {
            hosts: hosts_done.into_inner(),
            events: events_done.into_inner(),
            bytes: bytes_done.into_inner(),
            secs: started.elapsed().as_secs_f64(),
        };
        info!(
            phase = name,
            hosts = report.hosts,
            events = report.events,
            secs = report.secs,
            "phase shipped"
        );
        Ok(report)
    }

    /// Records the phase's events of the hosts of spool `s`, then flushes
    /// it; returns the events Kafka acknowledged.
    fn spool_run(
        &self,
        phase: Phase,
        s: usize,
        hosts_done: &AtomicU64,
        bytes_done: &AtomicU64,
    ) -> Result<u64, CliError> {
        let dir = self.spool_root.join(format!("spool-{s:05}"));
        let spool = Spool::open(&dir, self.emit.spool_limits()).map_err(|e| spool_err(&dir, e))?;
        let mut recorded = 0u64;
        for h in self.fleet.hosts.iter().skip(s).step_by(self.spools) {
            // One `record` per package-manager run (one append, one fsync),
            // as one hook call does; snapshots one per host.
            let runs: Vec<Vec<HookEvent>> = match phase {
                Phase::Snapshots => vec![vec![HookEvent::Inventory(self.fleet.inventory(h))]],
                Phase::Traffic => traffic::host_traffic(self.fleet, h, self.roles[h.index])
                    .iter()
                    .map(|t| {
                        t.inputs(h)
                            .into_iter()
                            .map(|c| HookEvent::Change(Box::new(c)))
                            .collect()
                    })
                    .collect(),
            };
            for run in runs {
                let source = format!("simulated host {}", h.hostname);
                let r = record_events(&self.emit, &spool, run.into_iter().enumerate(), &source)
                    .map_err(|e| spool_err(&dir, e))?;
                if let Some(e) = r.rejected.first() {
                    return Err(CliError::BadInput(format!("{source}: {e}")));
                }
                if r.evicted_snapshots > 0 || r.over_budget {
                    return Err(spool_err(
                        &dir,
                        format!(
                            "spool budget exceeded ({} snapshot(s) evicted); use more --spools or a larger [spool] budget",
                            r.evicted_snapshots
                        ),
                    ));
                }
                recorded += (r.changes + r.snapshots) as u64;
            }
            hosts_done.fetch_add(1, Ordering::Relaxed);
        }
        // What the spool holds now is what this run recorded (plus what an
        // earlier, interrupted run left).
        let held = spool.stats().map_err(|e| spool_err(&dir, e))?;
        bytes_done.fetch_add(held.change_bytes + held.inventory_bytes, Ordering::Relaxed);
        let report =
            flush(&self.emit, &spool, self.flush_timeout).map_err(|e| CliError::Kafka {
                brokers: self.emit.kafka.brokers.clone(),
                reason: format!("{e} (spool {})", dir.display()),
            })?;
        let shipped = report.changes + report.snapshots;
        if shipped != recorded {
            warn!(spool = %dir.display(), recorded, shipped, "the spool held events of an earlier run; shipped them too");
        }
        Ok(shipped)
    }
}

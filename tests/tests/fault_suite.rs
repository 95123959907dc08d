//! The whole pipeline under a seeded fault schedule, nothing mocked: a
//! simulated fleet (one spool per host; hook lines into `pkgstream-emit
//! record`, shipped by `pkgstream-emit flush`) → a private Kafka →
//! `pkgstream router` (hosts CSV) → `pkgstream sink search` (through a
//! loopback proxy to a private OpenSearch) and `pkgstream sink metrics`
//! (remote write to the shared Prometheus).
//!
//! The schedule is a block of eight rounds; each round every host records
//! and ships one or two transactions, some rounds end with an inventory
//! snapshot of every host, and each round throws a fault at the pipeline:
//! kill -9 of the router, the search sink, the metrics sink and of an
//! emitter mid-flush (each twice per block), a SIGKILL of the broker right
//! after the hosts shipped snapshots that reveal lost changes (the
//! router's transaction open; the broker away longer than the router's
//! transaction timeout, shortened to 10 s here, while a host's flush must
//! exit 75 with everything kept), the engine stopped (20 s; a minute in
//! the long mode), 429s for every third bulk item and dropped connections
//! at the proxy, and poison: a package-state `_id` over the engine's 512
//! bytes (DLQ `index_rejected`), an empty snapshot (DLQ `empty_snapshot`),
//! invalid UTF-8 and a line over the limit at `record` (the spool's
//! dead letters; the good lines around them shipped).
//!
//! It asserts, exactly, against an oracle computed from the generated
//! traffic alone: the history holds one document per distinct change plus
//! one per synthetic "lost change" the snapshots reveal (a package that
//! rpm changed with no hook reporting it), the package state equals the
//! model of every host's rpmdb, Prometheus got exactly the change counters
//! (summed over the metrics sink's lives: each restart is a counter reset),
//! each poison event is in the DLQ with its reason code (and nothing else
//! is), and the peak RSS (VmHWM) of every stage stayed under its bound.
//!
//! - Short mode (CI): one block, about 3.5 minutes here (8–9 while other
//!   builds and tests loaded the VM; see BENCHMARKS.md).
//! - Long mode: `PKGSTREAM_FAULT_MINUTES=N` repeats blocks for N minutes
//!   (the engine then stays down a minute each time); figures in
//!   BENCHMARKS.md.
//! - `PKGSTREAM_FAULT_SEED=S` changes the seed (traffic, timings, hosts).
//! - The router's poison is in the schedule by default
//!   (`PKGSTREAM_FAULT_ROUTER_FIXES=0` leaves it out): an enriched snapshot
//!   over the enriched topic's `max.message.bytes` (router DLQ
//!   `too_large`) and a change from a clock five years ahead (router DLQ
//!   `clock_ahead`).
//! - An empty snapshot of a host the router has a baseline for is in the
//!   schedule by default (`PKGSTREAM_FAULT_EMPTY_AFTER_BASELINE=0` leaves it
//!   out): no synthetic removal may come of it, the baseline stays, and the
//!   search sink sets it aside as `empty_snapshot`.
//!
//! The broker and the engine it kills are its own (scripts/services.sh on
//! free ports with their own run directories), never the shared ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_schemas::{change_event_id, Action};
use pkgstream_tests::fault::*;
use pkgstream_tests::pipeline::write_hosts_csv;
use pkgstream_tests::router::{read_all, RouterEnv};
use pkgstream_tests::services::peak_rss_kib;
use pkgstream_tests::sinks::*;
use pkgstream_tests::{set_topic_config, EmitEnv, PrivateEngine, PrivateKafka, Running};
use serde_json::{json, Value};

const HOSTS: usize = 12;
const LIMIT: Duration = Duration::from_secs(240);
/// The router's transaction timeout in this suite (the broker stays away longer).
const TXN_TIMEOUT_MS: u64 = 10_000;

/// Peak RSS bounds, KiB: what each stage may reach at most.
const ROUTER_RSS_KIB: u64 = 128 << 10;
const SEARCH_RSS_KIB: u64 = 128 << 10;
const METRICS_RSS_KIB: u64 = 64 << 10;
/// `record` reads a line up to its limit before it refuses it.
const RECORD_RSS_KIB: u64 = (pkgstream_producer::limits::MAX_LINE_BYTES as u64 >> 10) + (24 << 10);
const FLUSH_RSS_KIB: u64 = 48 << 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{name}={v} is not a number: {e}"))
        })
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stage that can be killed and started again; remembers its lives and
/// its peak RSS over all of them.
struct Stage {
    name: &'static str,
    start: Box<dyn Fn() -> Running + Send + Sync>,
    proc: Option<Running>,
    peak_kib: u64,
    /// (start, end) of each life, ms since the epoch (end: now while running).
    lives: Vec<(i64, Option<i64>)>,
    kills: u32,
}

impl Stage {
    fn new(name: &'static str, start: Box<dyn Fn() -> Running + Send + Sync>) -> Stage {
        let mut s = Stage {
            name,
            start,
            proc: None,
            peak_kib: 0,
            lives: Vec::new(),
            kills: 0,
        };
        s.restart();
        s
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }

    fn restart(&mut self) {
        self.lives.push((now_ms(), None));
        self.proc = Some((self.start)());
    }

    fn note_rss(&mut self) {
        self.peak_kib = self.peak_kib.max(peak_rss_kib(self.pid()));
    }

    /// kill -9, as a crash or an OOM kill.
    fn kill9(&mut self) {
        self.note_rss();
        let mut p = self.proc.take().expect("running");
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!("{} had exited before its kill: {s}", self.name);
        }
        let _ = Command::new("kill")
            .args(["-KILL", &p.0.id().to_string()])
            .status();
        let _ = p.0.wait();
        self.lives.last_mut().unwrap().1 = Some(now_ms());
        self.kills += 1;
    }

    /// Fails at once if it exited by itself.
    fn check_alive(&mut self) {
        let p = self.proc.as_mut().expect("running");
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!("{} exited by itself: {s}", self.name);
        }
    }

    /// SIGTERM: exit 0 expected.
    fn stop(&mut self) {
        self.note_rss();
        let p = self.proc.take().expect("running");
        let status = p.stop();
        assert!(status.success(), "{}: SIGTERM, exit 0: {status}", self.name);
        self.lives.last_mut().unwrap().1 = Some(now_ms());
    }
}

/// What a round throws at the pipeline while the hosts ship their traffic.
#[derive(Clone, Copy, Debug)]
enum During {
    Nothing,
    KillRouter,
    KillSearch,
    KillMetrics,
    Reject429,
    DropConnections,
    StopEngine,
}

struct Suite {
    tag: String,
    fixes: bool,
    empty_after_baseline: bool,
    long: bool,
    rng: Rng,
    kafka: PrivateKafka,
    engine: Arc<PrivateEngine>,
    proxy: RejectingProxy,
    router_env: RouterEnv,
    sinks_env: SinkEnv,
    router: Stage,
    search: Stage,
    metrics: Stage,
    hosts: Vec<FaultHost>,
    oracle: Oracle,
    /// Peak RSS of `record` and of `flush`.
    emit_peak: EmitPeaks,
    /// The engine's first start, running while the pipeline starts.
    engine_up: Option<std::thread::JoinHandle<()>>,
    /// A snapshot of every host went out, and no router kill since.
    baseline: bool,
    /// Fault name → times injected.
    faults: BTreeMap<&'static str, u64>,
    /// (code, id) the search sink's DLQ must hold; id: event id in hex or
    /// the machine id of a snapshot.
    sink_dlq: Vec<(String, String)>,
    /// Codes the router's DLQ must hold.
    router_dlq: Vec<String>,
    /// Machine ids of the poison hosts.
    poison_seq: u64,
    flushes_unreachable: u64,
}

impl Suite {
    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }

    /// Every host: one or two transactions recorded and flushed, all hosts
    /// at once; `during` happens meanwhile; `emitter_kill` crashes that
    /// host's first flush.
    fn traffic(&mut self, during: During, emitter_kill: Option<usize>) {
        for i in 0..self.hosts.len() {
            let n = 1 + self.rng.below(2);
            for _ in 0..n {
                self.hosts[i].transaction(&mut self.rng, &mut self.oracle);
            }
        }
        let delay = Duration::from_millis(100 + self.rng.below(500));
        let kill_after = Duration::from_millis(self.rng.below(80));
        if emitter_kill.is_some() {
            self.fault("emitter kill -9 mid-flush");
        }
        let name = match during {
            During::Nothing => None,
            During::KillRouter => Some("router kill -9"),
            During::KillSearch => Some("search sink kill -9"),
            During::KillMetrics => Some("metrics sink kill -9"),
            During::Reject429 => Some("429 on every 3rd bulk item"),
            During::DropConnections => Some("engine connections dropped (4 s)"),
            During::StopEngine => Some("engine stopped"),
        };
        if let Some(n) = name {
            self.fault(n);
        }
        if matches!(during, During::StopEngine) {
            if let Some(up) = self.engine_up.take() {
                up.join().expect("the engine's first start");
            }
        }
        if matches!(during, During::Reject429) {
            self.proxy
                .every
                .store(3, std::sync::atomic::Ordering::Relaxed);
        }
        let engine_down = if self.long { 60 } else { 20 };
        let Suite {
            hosts,
            emit_peak,
            router,
            search,
            metrics,
            proxy,
            engine,
            router_env,
            ..
        } = self;
        let unreachable = std::thread::scope(|scope| {
            let fault = scope.spawn(move || {
                std::thread::sleep(delay);
                match during {
                    During::KillRouter => {
                        router.kill9();
                        std::thread::sleep(Duration::from_secs(1));
                        router.restart();
                        router_env.wait_ready(LIMIT);
                    }
                    During::KillSearch => {
                        search.kill9();
                        std::thread::sleep(Duration::from_secs(1));
                        search.restart();
                    }
                    During::KillMetrics => {
                        metrics.kill9();
                        std::thread::sleep(Duration::from_secs(1));
                        metrics.restart();
                    }
                    During::DropConnections => {
                        use std::sync::atomic::Ordering;
                        proxy.drop_connections.store(true, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs(4));
                        proxy.drop_connections.store(false, Ordering::Relaxed);
                    }
                    During::StopEngine => {
                        engine.stop();
                        std::thread::sleep(Duration::from_secs(engine_down));
                        engine.start();
                    }
                    During::Nothing | During::Reject429 => {}
                }
            });
            let shippers: Vec<_> = hosts
                .iter_mut()
                .enumerate()
                .map(|(i, h)| {
                    let lines = std::mem::take(&mut h.pending);
                    let h = &*h;
                    let peak = &*emit_peak;
                    let kill = (emitter_kill == Some(i)).then_some(kill_after);
                    scope.spawn(move || {
                        let mut input = lines.join("\n").into_bytes();
                        input.push(b'\n');
                        let s = record(&h.emit, input, &peak.record);
                        assert!(s.success(), "record on {}: {s}", h.hostname);
                        flush_all(&h.emit, &peak.flush, kill, LIMIT)
                    })
                })
                .collect();
            let unreachable: u32 = shippers.into_iter().map(|s| s.join().unwrap()).sum();
            fault.join().unwrap();
            unreachable
        });
        self.flushes_unreachable += u64::from(unreachable);
        self.proxy
            .every
            .store(0, std::sync::atomic::Ordering::Relaxed);
        for s in [&mut self.router, &mut self.search, &mut self.metrics] {
            s.check_alive();
        }
    }

    /// Waits until the enriched topic holds every change and snapshot of
    /// the fleet shipped so far, so that the router has seen a host's
    /// changes before its snapshot (they travel in two topics).
    fn wait_router_caught_up(&self) {
        self.wait_router_caught_up_but(0);
    }

    /// [`Suite::wait_router_caught_up`], but `unshipped` changes of the
    /// oracle are still in a spool.
    fn wait_router_caught_up_but(&self, unshipped: u64) {
        let (changes, snapshots) = (
            self.oracle.changes.len() as u64 - unshipped,
            self.oracle.snapshots,
        );
        let fleet = |m: &str| m.starts_with("fa");
        let started = Instant::now();
        loop {
            let msgs = read_all(
                &self.kafka.brokers(),
                &self.router_env.enriched,
                0,
                Duration::ZERO,
                Duration::from_secs(3),
            );
            let (mut c, mut s) = (0, 0);
            for m in &msgs {
                if let Ok(e) = pkgstream_schemas::decode_enriched_change(&m.value) {
                    if fleet(&e.host.machine_id) && e.source != pkgstream_schemas::Source::Inventory
                    {
                        c += 1;
                    }
                } else if let Ok(e) = pkgstream_schemas::decode_enriched_snapshot(&m.value) {
                    if fleet(&e.host.machine_id) && !e.packages.is_empty() {
                        s += 1;
                    }
                }
            }
            assert!(
                c <= changes && s <= snapshots,
                "enriched holds {c} changes and {s} snapshots of the fleet, more than the {changes} and {snapshots} shipped"
            );
            if c == changes && s == snapshots {
                return;
            }
            assert!(
                started.elapsed() < LIMIT,
                "the router did not catch up within {LIMIT:?}: {c} of {changes} changes, {s} of {snapshots} snapshots"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A snapshot of every host, after the router has seen their changes;
    /// lost changes first where the router holds a baseline to reveal them
    /// against (a router that restarts forgets its baselines: the next
    /// snapshot is a new baseline, by design). Records them (not shipped).
    fn snapshots(&mut self) {
        self.wait_router_caught_up();
        let reveal = self.baseline;
        for i in 0..self.hosts.len() {
            let lost = if reveal {
                self.hosts[i].lose_changes(&mut self.rng)
            } else {
                Vec::new()
            };
            self.hosts[i].snapshot(&lost, reveal, &mut self.oracle);
        }
        if reveal {
            self.fault("snapshots revealing lost changes");
        }
        self.baseline = true;
    }

    /// Records and ships what the hosts hold pending, nothing else meanwhile.
    fn ship(&mut self) {
        std::thread::scope(|scope| {
            for h in self.hosts.iter_mut() {
                let lines = std::mem::take(&mut h.pending);
                let h = &*h;
                let peak = &self.emit_peak;
                scope.spawn(move || {
                    let mut input = lines.join("\n").into_bytes();
                    input.push(b'\n');
                    let s = record(&h.emit, input, &peak.record);
                    assert!(s.success(), "record on {}: {s}", h.hostname);
                    flush_all(&h.emit, &peak.flush, None, LIMIT);
                });
            }
        });
    }

    fn kill_router_now(&mut self) {
        self.wait_router_caught_up();
        self.router.kill9();
        self.fault("router kill -9");
        self.router.restart();
        self.router_env.wait_ready(LIMIT);
        self.baseline = false;
    }

    /// A poison host's identity block.
    fn poison_host(&mut self, kind: &str, machine_id_len: usize) -> (String, Value) {
        self.poison_seq += 1;
        let mut machine_id = format!("p{:03x}{kind}", self.poison_seq);
        while machine_id.len() < machine_id_len {
            machine_id.push('0');
        }
        let host = json!({"machine_id": machine_id, "hostname": format!("poison-{kind}-{}", self.poison_seq), "os_id": "rocky", "os_version": "9.4", "arch": "x86_64"});
        (machine_id, host)
    }

    /// Host `h` records a batch in which an invalid UTF-8 line and a line
    /// over `record`'s limit sit between good ones, and a change whose
    /// package-state `_id` is over the engine's 512 bytes (a 256-byte
    /// machine id, a 250-byte package name: within the host side's limits).
    fn poison_at_record(&mut self, h: usize) {
        self.hosts[h].transaction(&mut self.rng, &mut self.oracle);
        let good_a = std::mem::take(&mut self.hosts[h].pending);
        self.hosts[h].transaction(&mut self.rng, &mut self.oracle);
        let good_b = std::mem::take(&mut self.hosts[h].pending);
        let (machine_id, host) = self.poison_host("longid", 256);
        let name = "n".repeat(250);
        let tid = 7_000_000 + self.poison_seq as i64;
        let long_id = json!({"kind": "change", "source": "dnf", "action": "install",
            "event_time": self.hosts[h].clock, "host": host,
            "package": {"name": name, "version": "1.0", "release": "1.el9", "arch": "x86_64"},
            "transaction": {"rpm_tid": tid, "history_id": 1}});
        let id = change_event_id(
            &machine_id,
            Action::Install,
            &name,
            None,
            "1.0",
            "1.el9",
            "x86_64",
            tid,
        );
        self.sink_dlq.push(("index_rejected".into(), id.to_hex()));
        let mut input = Vec::new();
        for l in &good_a {
            input.extend_from_slice(l.as_bytes());
            input.push(b'\n');
        }
        // Invalid UTF-8 inside a JSON string.
        input.extend_from_slice(b"{\"kind\":\"change\",\"source\":\"dnf\",\"action\":\"install\",\"package\":{\"name\":\"bad-\xff\xfe\",\"version\":\"1\",\"release\":\"1\",\"arch\":\"x86_64\"},\"transaction\":{\"rpm_tid\":1}}\n");
        input.extend_from_slice(long_id.to_string().as_bytes());
        input.push(b'\n');
        // A line one byte over the limit.
        let mut huge = br#"{"kind":"change","source":"dnf","action":"install","transaction":{"command_line":""#.to_vec();
        huge.resize(pkgstream_producer::limits::MAX_LINE_BYTES + 1 - 3, b'x');
        huge.extend_from_slice(b"\"}}\n");
        input.extend_from_slice(&huge);
        drop(huge);
        for l in &good_b {
            input.extend_from_slice(l.as_bytes());
            input.push(b'\n');
        }
        let before = dead_inputs(&self.hosts[h].emit);
        let s = record(&self.hosts[h].emit, input, &self.emit_peak.record);
        assert_eq!(s.code(), Some(65), "record with two bad lines: exit 65");
        assert_eq!(
            dead_inputs(&self.hosts[h].emit),
            before + 2,
            "the two bad lines in {}/dead",
            self.hosts[h].emit.spool_dir().display()
        );
        self.oracle.dead_letters += 2;
        self.fault("invalid UTF-8 line at record");
        self.fault("oversized line at record");
        self.fault("poison: _id over 512 bytes");
    }

    /// An empty snapshot of a host nothing else is known of.
    fn poison_empty(&mut self, via: usize) {
        let (machine_id, host) = self.poison_host("empty", 32);
        let line = json!({"kind": "inventory", "taken_at": self.hosts[via].clock, "host": host, "packages": []});
        self.hosts[via].pending.push(line.to_string());
        self.sink_dlq.push(("empty_snapshot".into(), machine_id));
        self.fault("poison: empty snapshot");
    }

    /// Poison whose fixes are on branch wt-router (flag).
    fn poison_too_large(&mut self, via: usize) {
        let (_, host) = self.poison_host("big", 32);
        let packages: Vec<Value> = (0..4000)
            .map(|i| {
                let r = self.rng.next_u64();
                json!({"name": format!("big-{i}-{r:x}"), "version": "1.0", "release": "1", "arch": "x86_64",
                       "digest": format!("sha256:{:016x}{:016x}{:016x}{:016x}", r, self.rng.next_u64(), self.rng.next_u64(), self.rng.next_u64())})
            })
            .collect();
        let line = json!({"kind": "inventory", "taken_at": self.hosts[via].clock, "host": host, "packages": packages});
        self.hosts[via].pending.push(line.to_string());
        self.router_dlq.push("too_large".into());
        self.fault("poison: enriched snapshot over the topic's limit");
    }

    fn poison_clock_ahead(&mut self, via: usize) {
        let (_, host) = self.poison_host("clock", 32);
        let ahead = chrono::Utc::now().timestamp() + 5 * 365 * 86_400;
        let line = json!({"kind": "change", "source": "dnf", "action": "install",
            "event_time": ahead, "host": host,
            "package": {"name": "future", "version": "1.0", "release": "1.el9", "arch": "x86_64"},
            "transaction": {"rpm_tid": 8_000_000 + self.poison_seq, "history_id": 1}});
        self.hosts[via].pending.push(line.to_string());
        self.router_dlq.push("clock_ahead".into());
        self.fault("poison: clock five years ahead");
    }

    /// An empty snapshot of a fleet host the router has a baseline for
    /// (flag): no removals may come of it, and the next snapshot is
    /// compared with the last real one.
    fn poison_empty_after_baseline(&mut self, h: usize) {
        let host = self.hosts[h].host_json();
        let line = json!({"kind": "inventory", "taken_at": self.hosts[h].clock + 1, "host": host, "packages": []});
        self.hosts[h].pending.push(line.to_string());
        self.sink_dlq
            .push(("empty_snapshot".into(), self.hosts[h].machine_id.clone()));
        self.fault("poison: empty snapshot after a baseline");
    }

    /// The broker SIGKILLed right after the hosts shipped their snapshots
    /// (the router's transaction with them open), away longer than the
    /// router's transaction timeout; meanwhile a host's flush exits 75 and
    /// keeps its events. Returns how many changes that host holds.
    fn broker_outage(&mut self, h: usize) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.kafka.kill();
        self.fault("broker SIGKILL mid-transaction");
        let down = Instant::now();
        let before = self.oracle.changes.len();
        self.hosts[h].transaction(&mut self.rng, &mut self.oracle);
        let held = (self.oracle.changes.len() - before) as u64;
        let lines = std::mem::take(&mut self.hosts[h].pending);
        let mut input = lines.join("\n").into_bytes();
        input.push(b'\n');
        assert!(record(&self.hosts[h].emit, input, &self.emit_peak.record).success());
        let out = self.hosts[h].emit.flush(&["--timeout", "3"]);
        assert_eq!(
            out.status.code(),
            Some(75),
            "flush without a broker: exit 75, {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !spool_empty(&self.hosts[h].emit),
            "the events stay in the spool"
        );
        let away = Duration::from_millis(TXN_TIMEOUT_MS + 2_000);
        if let Some(rest) = away.checked_sub(down.elapsed()) {
            std::thread::sleep(rest);
        }
        self.kafka.start();
        self.flushes_unreachable += 1;
        held
    }

    /// One block of eight rounds.
    fn block(&mut self, b: u64) {
        let n = self.hosts.len();
        let pick = |rng: &mut Rng| rng.below(n as u64) as usize;
        let t = Instant::now();
        let round = |r: u32| eprintln!("fault suite: block {b} round {r} from {:?}", t.elapsed());
        // 0: 429s; poison at record; snapshots (the first: baselines).
        let h = pick(&mut self.rng);
        self.poison_at_record(h);
        if self.fixes {
            let v = pick(&mut self.rng);
            self.poison_too_large(v);
        }
        self.traffic(During::Reject429, None);
        self.snapshots();
        self.ship();
        round(1);
        // 1: the search sink killed, an emitter killed mid-flush.
        let e = pick(&mut self.rng);
        self.traffic(During::KillSearch, Some(e));
        round(2);
        // 2: the metrics sink killed, the engine's connections dropped.
        if self.fixes {
            let v = pick(&mut self.rng);
            self.poison_clock_ahead(v);
        }
        self.traffic(During::KillMetrics, None);
        self.traffic(During::DropConnections, None);
        round(3);
        // 3: snapshots revealing lost changes, then the broker killed.
        self.traffic(During::Nothing, None);
        self.snapshots();
        self.ship();
        let h = pick(&mut self.rng);
        let held = self.broker_outage(h);
        // The router must commit those snapshots before that host's
        // changes come (they travel in the other topic) and before it is
        // killed.
        self.wait_router_caught_up_but(held);
        flush_all(&self.hosts[h].emit, &self.emit_peak.flush, None, LIMIT);
        round(4);
        // 4: the router killed mid-traffic, an emitter killed mid-flush.
        self.wait_router_caught_up();
        let e = pick(&mut self.rng);
        self.traffic(During::KillRouter, Some(e));
        self.baseline = false;
        round(5);
        // 5: the router killed again, then new baselines; the search sink
        // killed; an empty snapshot.
        self.kill_router_now();
        let v = pick(&mut self.rng);
        self.poison_empty(v);
        self.traffic(During::KillSearch, None);
        self.snapshots();
        self.ship();
        round(6);
        // 6: the engine stopped, the metrics sink killed.
        if self.empty_after_baseline {
            let v = pick(&mut self.rng);
            self.poison_empty_after_baseline(v);
        }
        self.traffic(During::StopEngine, None);
        self.traffic(During::KillMetrics, None);
        round(7);
        // 7: snapshots revealing lost changes.
        self.traffic(During::Nothing, None);
        self.snapshots();
        self.ship();
        round(8);
        println!("fault suite: block {b} done");
    }
}

/// Sum over the metrics sink's lives of each series' last value in that
/// life (a restart starts its counters at 0: a counter reset).
fn counters_over_lives(
    query: &str,
    labels: &[&str],
    lives: &[(i64, Option<i64>)],
    range_secs: u64,
) -> BTreeMap<Vec<String>, u64> {
    let mut out: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for s in prom_query(&format!("{query}[{range_secs}s]")) {
        let key: Vec<String> = labels
            .iter()
            .map(|l| s["metric"][*l].as_str().unwrap_or_default().to_owned())
            .collect();
        let samples: Vec<(i64, f64)> = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    (v[0].as_f64().unwrap() * 1000.0) as i64,
                    v[1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect();
        for (start, end) in lives {
            let end = end.unwrap_or(i64::MAX);
            if let Some((_, v)) = samples.iter().rfind(|(t, _)| *t >= *start && *t <= end) {
                *out.entry(key.clone()).or_default() += *v as u64;
            }
        }
    }
    out.retain(|_, v| *v > 0);
    out
}

/// Every document of `index` by `_id` (a scroll: history ids sort nowhere).
fn all_by_id(base: &str, index: &str) -> BTreeMap<String, Value> {
    let _ = ureq::post(&format!("{base}/{index}/_refresh")).call();
    let mut out = BTreeMap::new();
    let mut r: Value = ureq::post(&format!("{base}/{index}/_search?scroll=1m"))
        .send_json(json!({"size": 5000, "sort": ["_doc"]}))
        .expect("search")
        .into_json()
        .unwrap();
    loop {
        let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return out;
        }
        for h in hits {
            out.insert(h["_id"].as_str().unwrap().to_owned(), h["_source"].clone());
        }
        let id = r["_scroll_id"].as_str().unwrap().to_owned();
        r = ureq::post(&format!("{base}/_search/scroll"))
            .send_json(json!({"scroll": "1m", "scroll_id": id}))
            .expect("scroll")
            .into_json()
            .unwrap();
    }
}

fn diff<V: PartialEq + std::fmt::Debug>(
    want: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
) -> String {
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(8)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(v))
        .take(8)
        .collect();
    format!(
        "{} expected, {} found; expected but not found ({}): {missing:?}; found but not expected ({}): {extra:?}",
        want.len(),
        got.len(),
        want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count(),
        got.iter().filter(|(k, v)| want.get(*k) != Some(v)).count()
    )
}

#[test]
fn seeded_faults_at_every_stage_lose_nothing_and_duplicate_nothing() {
    let started = Instant::now();
    let minutes = env_u64("PKGSTREAM_FAULT_MINUTES", 0);
    let seed = env_u64("PKGSTREAM_FAULT_SEED", 0x5eed_fa17);
    let fixes = env_u64("PKGSTREAM_FAULT_ROUTER_FIXES", 1) == 1;
    let empty_after_baseline = env_u64("PKGSTREAM_FAULT_EMPTY_AFTER_BASELINE", 1) == 1;

    // The broker and the engine this suite kills are its own.
    let kafka = PrivateKafka::new();
    // The engine boots while the pipeline starts (the search sink waits for it).
    let engine = Arc::new(PrivateEngine::new());
    let engine_up = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.start())
    };
    kafka.start();
    use_engine(&engine.url());
    let brokers = kafka.brokers();
    let mut router_env = RouterEnv::new(&brokers, "fault");
    kafka.wait_for_coordinator(&router_env.enriched);
    let mut sinks_env = SinkEnv::new(&brokers, "fault");
    sinks_env
        .vars
        .retain(|(k, _)| k != "PKGSTREAM__TOPICS__CHANGES_ENRICHED");
    sinks_env.vars.push((
        "PKGSTREAM__TOPICS__CHANGES_ENRICHED".into(),
        router_env.enriched.clone(),
    ));
    let tag = sinks_env.prefix.clone();
    if fixes {
        // Small enough for the too-large snapshot (incompressible), large
        // enough for every batch of ordinary events.
        set_topic_config(
            &brokers,
            &router_env.enriched,
            &[("max.message.bytes", "131072")],
        );
    }

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let clock = chrono::Utc::now().timestamp() - 6 * 3600;
    let hosts: Vec<FaultHost> = (0..HOSTS)
        .map(|i| {
            let mut emit = EmitEnv::new(&brokers, "fault");
            emit.vars
                .retain(|(k, _)| !k.starts_with("PKGSTREAM_EMIT__TOPICS__"));
            emit.vars.push((
                "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW".into(),
                router_env.changes_raw.clone(),
            ));
            emit.vars.push((
                "PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW".into(),
                router_env.inventory_raw.clone(),
            ));
            FaultHost::new(i, &tag, run, emit, clock)
        })
        .collect();
    let csv_dir = tempfile::tempdir().unwrap();
    let csv = csv_dir.path().join("hosts.csv");
    let rows: Vec<(&str, &str, &str, String)> = hosts
        .iter()
        .map(|h| {
            (
                h.hostname.as_str(),
                h.hostgroup.as_str(),
                h.environment.as_str(),
                String::new(),
            )
        })
        .collect();
    write_hosts_csv(&csv, &rows);
    router_env.vars.extend([
        (
            "PKGSTREAM__ROUTER__HOSTS_FILE".to_owned(),
            csv.display().to_string(),
        ),
        (
            "PKGSTREAM__ROUTER__TRANSACTION_TIMEOUT_MS".to_owned(),
            TXN_TIMEOUT_MS.to_string(),
        ),
        // Transactions stay open long enough for the broker to die in one.
        ("PKGSTREAM__ROUTER__BATCH_MS".to_owned(), "1500".to_owned()),
    ]);

    let proxy = RejectingProxy::start(&engine.url(), 0);
    let router_start = {
        let env = router_env.clone();
        move || Running(env.start())
    };
    let search_start = {
        let env = sinks_env.clone();
        let url = proxy.url.clone();
        move || {
            env.start("search", &[("PKGSTREAM__SEARCH_SINK__URL", url.clone())])
                .child
        }
    };
    let metrics_start = {
        let env = sinks_env.clone();
        move || env.start("metrics", &[]).child
    };
    let router = Stage::new("router", Box::new(router_start));
    router_env.wait_ready(LIMIT);
    let search = Stage::new("search sink", Box::new(search_start));
    let metrics = Stage::new("metrics sink", Box::new(metrics_start));

    let mut suite = Suite {
        tag,
        fixes,
        empty_after_baseline,
        long: minutes > 0,
        rng: Rng::new(seed),
        kafka,
        engine,
        proxy,
        router_env,
        sinks_env,
        router,
        search,
        metrics,
        hosts,
        oracle: Oracle::default(),
        emit_peak: EmitPeaks::default(),
        engine_up: Some(engine_up),
        baseline: false,
        faults: BTreeMap::new(),
        sink_dlq: Vec::new(),
        router_dlq: Vec::new(),
        poison_seq: 0,
        flushes_unreachable: 0,
    };
    let t_setup = started.elapsed();
    let mut blocks = 0;
    loop {
        suite.block(blocks);
        blocks += 1;
        if started.elapsed() >= Duration::from_secs(minutes * 60) {
            break;
        }
    }
    let t_faults = started.elapsed();

    if let Some(up) = suite.engine_up.take() {
        up.join().expect("the engine's first start");
    }
    // Every check runs, and the test fails with all that did not hold.
    let mut failed: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            eprintln!("fault suite: FAILED: {what}");
            failed.push(what);
        }
    };
    let settle = Duration::from_secs(if minutes > 0 { 300 } else { 120 });

    // 1. The history: one document per distinct change, one per synthetic.
    let want_history = suite.oracle.history();
    let changes_index = suite.sinks_env.changes();
    let engine_url = suite.engine.url();
    let history = || -> BTreeMap<String, HistoryDoc> {
        all_by_id(&engine_url, &changes_index)
            .iter()
            .map(|(k, v)| (k.clone(), HistoryDoc::of(v)))
            .collect()
    };
    // Until the whole history is there, or it stops changing for 15 s.
    let t = Instant::now();
    let (mut got, mut since) = (history(), Instant::now());
    while got != want_history && t.elapsed() < settle && since.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_secs(1));
        let now = history();
        if now != got {
            since = Instant::now();
        }
        got = now;
    }
    let reported: BTreeMap<String, HistoryDoc> = got
        .iter()
        .filter(|(_, d)| d.source != "inventory")
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    check(
        reported == suite.oracle.changes,
        format!(
            "history of the reported changes: one document per distinct change: {}",
            diff(&suite.oracle.changes, &reported)
        ),
    );
    let synthetic: BTreeMap<String, HistoryDoc> = got
        .iter()
        .filter(|(_, d)| d.source == "inventory")
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    check(
        synthetic == suite.oracle.synthetic,
        format!(
            "synthetic lost-change events (on main, issue 10 #0 loses those of the snapshots whose transaction the broker kill aborted): {}",
            diff(&suite.oracle.synthetic, &synthetic)
        ),
    );

    // 2. The package state: the model of every host's rpmdb.
    let want_state: State = suite.hosts.iter().flat_map(FaultHost::state).collect();
    let t = Instant::now();
    let mut state = indexed_state(&suite.sinks_env.packages());
    while state != want_state && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        state = indexed_state(&suite.sinks_env.packages());
    }
    check(
        state == want_state,
        format!("package state: {}", diff(&want_state, &state)),
    );

    // 3. The DLQs: exactly the poison, each with its reason code.
    let sink_dlq = read_all(
        &suite.kafka.brokers(),
        &suite.sinks_env.dlq,
        suite.sink_dlq.len(),
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let mut got_dlq: Vec<(String, String)> = sink_dlq
        .iter()
        .map(|m| {
            let code = m.headers["pkgstream.error.code"].clone();
            let id = if let Ok(c) = pkgstream_schemas::decode_enriched_change(&m.value) {
                c.event_id.to_hex()
            } else if let Ok(s) = pkgstream_schemas::decode_enriched_snapshot(&m.value) {
                s.host.machine_id.to_string()
            } else {
                "undecodable".into()
            };
            (code, id)
        })
        .collect();
    let router_dlq = read_all(
        &suite.kafka.brokers(),
        &suite.router_env.dlq,
        suite.router_dlq.len(),
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let mut router_codes: Vec<String> = Vec::new();
    for m in &router_dlq {
        let code = m.headers["pkgstream.error.code"].clone();
        // An empty snapshot the router sets aside itself counts as well.
        if code == "empty_snapshot" {
            if let Ok(s) = pkgstream_schemas::decode_snapshot(&m.value) {
                got_dlq.push((code, s.host.machine_id.to_string()));
                continue;
            }
        }
        router_codes.push(code);
    }
    // Dead letters are written at least once: a sink killed after writing
    // one and before committing its offset writes it again.
    got_dlq.sort();
    let dlq_written = got_dlq.len();
    got_dlq.dedup();
    let dlq_again = dlq_written - got_dlq.len();
    let mut want_dlq = suite.sink_dlq.clone();
    want_dlq.sort();
    check(
        got_dlq == want_dlq,
        format!("the search sink's DLQ: exactly the poison: got {got_dlq:?}, want {want_dlq:?}"),
    );
    router_codes.sort();
    let mut want_router = suite.router_dlq.clone();
    want_router.sort();
    check(
        router_codes == want_router,
        format!("the router's DLQ: exactly the poison: got {router_codes:?}, want {want_router:?}"),
    );

    // 4. Prometheus: the change counters, summed over the metrics sink's
    // lives (the counters the sink pushes count what its life counted).
    let range = started.elapsed().as_secs() + 120;
    let g = format!("hostgroup=~\"{}-g.*\"", suite.tag);
    let q_changes = format!("pkgstream_fleet_package_changes_total{{{g}}}");
    let q_rpm = format!("pkgstream_fleet_unexplained_rpm_changes_total{{{g}}}");
    let lives = suite.metrics.lives.clone();
    let counters = || {
        counters_over_lives(
            &q_changes,
            &["action", "source", "hostgroup", "environment"],
            &lives,
            range,
        )
    };
    let t = Instant::now();
    let mut got_counters = counters();
    while got_counters != suite.oracle.counters && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        got_counters = counters();
    }
    check(
        got_counters == suite.oracle.counters,
        format!(
            "{q_changes} (the synthetic changes #0 loses are missing here too, source=\"inventory\"): {}",
            diff_counts(&suite.oracle.counters, &got_counters)
        ),
    );
    let got_rpm = counters_over_lives(&q_rpm, &["hostgroup", "environment"], &lives, range);
    check(
        got_rpm == suite.oracle.rpm_counters,
        format!(
            "{q_rpm}: {}",
            diff_counts(&suite.oracle.rpm_counters, &got_rpm)
        ),
    );

    // 5. Peak RSS of every stage under its bound; clean stops.
    for s in [&mut suite.router, &mut suite.search, &mut suite.metrics] {
        s.stop();
    }
    let broker_rss = peak_rss_kib(suite.kafka.pid().parse().unwrap_or(0));
    let rss = [
        ("router", suite.router.peak_kib, ROUTER_RSS_KIB),
        ("search sink", suite.search.peak_kib, SEARCH_RSS_KIB),
        ("metrics sink", suite.metrics.peak_kib, METRICS_RSS_KIB),
        (
            "emitter: record",
            suite.emit_peak.record.get(),
            RECORD_RSS_KIB,
        ),
        ("emitter: flush", suite.emit_peak.flush.get(), FLUSH_RSS_KIB),
    ];
    for (name, kib, bound) in rss {
        check(
            kib > 0 && kib < bound,
            format!("{name}: peak RSS {kib} KiB, bound {bound} KiB"),
        );
    }
    let faults: Vec<String> = suite
        .faults
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    println!(
        "fault suite (seed {seed:#x}, {blocks} blocks, {HOSTS} hosts, router fixes flag {fixes}): {} distinct changes + {} synthetic = {} history documents ({} found), {} package documents, {} snapshots, {} dead letters at record, {} poison events in the DLQs ({dlq_again} dead letters written twice), {} flushes without a broker; faults: {}; peak RSS: {}, broker {} MiB; set-up {t_setup:?}, faults {:?}, total {:?}",
        suite.oracle.changes.len(),
        suite.oracle.synthetic.len(),
        want_history.len(),
        got.len(),
        want_state.len(),
        suite.oracle.snapshots,
        suite.oracle.dead_letters,
        want_dlq.len() + want_router.len(),
        suite.flushes_unreachable,
        faults.join(", "),
        rss.iter()
            .map(|(n, k, _)| format!("{n} {} MiB", k >> 10))
            .collect::<Vec<_>>()
            .join(", "),
        broker_rss >> 10,
        t_faults - t_setup,
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} checks failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The series whose value differs: `labels: want → got`.
fn diff_counts(want: &BTreeMap<Vec<String>, u64>, got: &BTreeMap<Vec<String>, u64>) -> String {
    let keys: std::collections::BTreeSet<&Vec<String>> = want.keys().chain(got.keys()).collect();
    let wrong: Vec<String> = keys
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{}: want {}, got {}",
                k.join(","),
                want.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    format!("{} series differ: {}", wrong.len(), wrong.join("; "))
}

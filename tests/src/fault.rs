//! Helpers for the whole-pipeline fault suite (`tests/tests/fault_suite.rs`):
//! a seeded generator of host traffic written as hook lines for
//! `pkgstream-emit record`, the model of every host's rpmdb it keeps, and
//! the oracle computed from it alone — the history documents, the package
//! state, the synthetic "lost change" events the router must derive from
//! snapshots, and the counters the metrics sink must push.

#![allow(clippy::expect_used)] // test set-up: a failed step is a failed test, with its message

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pkgstream_schemas::{change_event_id, Action};
use serde_json::{json, Value};

use crate::services::peak_rss_kib;
use crate::EmitEnv;

/// splitmix64, the fleet simulator's deterministic generator: the suite's
/// only source of randomness, from its seed.
pub use pkgstream::simulate::Rng;

/// One history document the changes index must hold, by its `_id` (the
/// event id in hex).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryDoc {
    /// `host.id`.
    pub machine_id: String,
    /// `event.action`: `install`, `upgrade`, ...
    pub action: String,
    /// `package.name`.
    pub name: String,
    /// `package.evr`: `0:V-R`.
    pub evr: String,
    /// `pkgstream.source`: `dnf`, `rpm` or `inventory` (synthetic).
    pub source: String,
}

impl HistoryDoc {
    /// The same fields of an indexed document.
    pub fn of(doc: &Value) -> HistoryDoc {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        HistoryDoc {
            machine_id: s(&doc["host"]["id"]),
            action: s(&doc["event"]["action"]),
            name: s(&doc["package"]["name"]),
            evr: s(&doc["package"]["evr"]),
            source: s(&doc["pkgstream"]["source"]),
        }
    }
}

/// What the pipeline must show in the end, computed from the generated
/// traffic only.
#[derive(Default)]
pub struct Oracle {
    /// Every distinct reported change: event id (hex) → its document.
    pub changes: BTreeMap<String, HistoryDoc>,
    /// Every synthetic change the router must derive from a snapshot.
    pub synthetic: BTreeMap<String, HistoryDoc>,
    /// Changes counted by the metrics sink: (action, source, hostgroup,
    /// environment) → count (poison the search sink refuses included: it is
    /// a valid enriched change for the metrics sink).
    pub counters: BTreeMap<Vec<String>, u64>,
    /// Unexplained rpm changes: (hostgroup, environment) → count.
    pub rpm_counters: BTreeMap<Vec<String>, u64>,
    /// Snapshots the router must pass on (non-poison).
    pub snapshots: u64,
    /// Hook lines `record` must refuse into the spool's dead letters.
    pub dead_letters: u64,
}

impl Oracle {
    /// The whole history: reported and synthetic changes.
    pub fn history(&self) -> BTreeMap<String, HistoryDoc> {
        let mut all = self.changes.clone();
        all.extend(self.synthetic.clone());
        all
    }

    fn count(&mut self, doc: &HistoryDoc, group: &str, env: &str) {
        *self
            .counters
            .entry(vec![
                doc.action.clone(),
                doc.source.clone(),
                group.to_owned(),
                env.to_owned(),
            ])
            .or_default() += 1;
        if doc.source == "rpm" {
            *self
                .rpm_counters
                .entry(vec![group.to_owned(), env.to_owned()])
                .or_default() += 1;
        }
    }
}

/// Packages every host chooses from (plus those it gets by "lost" installs).
pub const PACKAGE_NAMES: usize = 40;

/// One simulated host: its identity, its spool, and the model of its rpmdb.
pub struct FaultHost {
    /// Machine id (32 hex digits).
    pub machine_id: String,
    /// Host name, in the router's hosts CSV.
    pub hostname: String,
    /// Host group the CSV gives it.
    pub hostgroup: String,
    /// Environment the CSV gives it.
    pub environment: String,
    /// Its spool and the environment of its `pkgstream-emit`.
    pub emit: EmitEnv,
    /// name → (version, release) installed now.
    pub installed: BTreeMap<String, (u32, u32)>,
    /// Host clock (Unix seconds) of its next event.
    pub clock: i64,
    /// Next rpm transaction id.
    tid: i64,
    /// Packages a reported change touched since the last snapshot.
    touched: BTreeSet<String>,
    /// Hook lines recorded but not yet given to `record`.
    pub pending: Vec<String>,
    /// Lost installs so far (their package names are new).
    lost_installs: u32,
}

fn vr((v, r): (u32, u32)) -> (String, String) {
    (format!("1.{v}"), format!("{r}.el9"))
}

impl FaultHost {
    /// Host `i` of the fleet `tag`, spooling for `emit`.
    pub fn new(i: usize, tag: &str, run: u64, emit: EmitEnv, clock: i64) -> FaultHost {
        FaultHost {
            machine_id: format!("fa{:06x}{:024x}", i, run),
            hostname: format!("h{i:03}.{tag}"),
            hostgroup: format!("{tag}-g{}", i % 3),
            environment: (if i.is_multiple_of(4) {
                "staging"
            } else {
                "prod"
            })
            .to_owned(),
            emit,
            installed: BTreeMap::new(),
            clock: clock + i as i64,
            tid: 1_000_000 * (i as i64 + 1),
            touched: BTreeSet::new(),
            pending: Vec::new(),
            lost_installs: 0,
        }
    }

    /// The `host` block of this host's hook lines.
    pub fn host_json(&self) -> Value {
        json!({"machine_id": self.machine_id, "hostname": self.hostname, "os_id": "rocky", "os_version": "9.4", "arch": "x86_64"})
    }

    /// One transaction of 1-2 changes chosen by `rng`, recorded as hook
    /// lines and in `oracle`.
    pub fn transaction(&mut self, rng: &mut Rng, oracle: &mut Oracle) {
        self.tid += 1;
        self.clock += 5;
        let rpm = rng.below(7) == 0;
        let n = 1 + rng.below(2) as usize;
        let mut names = BTreeSet::new();
        while names.len() < n {
            names.insert(format!("pkg-{}", rng.below(PACKAGE_NAMES as u64)));
        }
        for name in names {
            let (action, new, old) = match self.installed.get(&name).copied() {
                None => (Action::Install, (1, 1), None),
                Some((v, r)) => match rng.below(10) {
                    0..=4 => (Action::Upgrade, (v + 1, 1), Some((v, r))),
                    5 => (Action::Downgrade, (v.max(2) - 1, r + 1), Some((v, r))),
                    6 => (Action::Reinstall, (v, r), None),
                    _ => (Action::Remove, (v, r), None),
                },
            };
            self.change(rpm, action, &name, new, old, oracle);
        }
    }

    /// A change of `name` to `new` (the removed version for a removal),
    /// recorded as a hook line and in `oracle`.
    fn change(
        &mut self,
        rpm: bool,
        action: Action,
        name: &str,
        new: (u32, u32),
        old: Option<(u32, u32)>,
        oracle: &mut Oracle,
    ) {
        let (v, r) = vr(new);
        let source = if rpm { "rpm" } else { "dnf" };
        let mut line = json!({
            "kind": "change",
            "source": source,
            "action": action.symbol().to_lowercase(),
            "event_time": self.clock,
            "host": self.host_json(),
            "package": {"name": name, "version": v, "release": r, "arch": "x86_64", "repo": "baseos", "size": 1000 + new.0},
            "transaction": {"rpm_tid": self.tid, "command_line": format!("{} {name}", if rpm { "rpm -U" } else { "dnf -y upgrade" }), "login_user": "alice"}
        });
        if !rpm {
            line["transaction"]["history_id"] = json!(self.tid);
        }
        if let Some(o) = old {
            let (ov, or) = vr(o);
            line["replaced"] =
                json!({"name": name, "version": ov, "release": or, "arch": "x86_64"});
        }
        let id = change_event_id(
            &self.machine_id,
            action,
            name,
            None,
            &v,
            &r,
            "x86_64",
            self.tid,
        );
        let doc = HistoryDoc {
            machine_id: self.machine_id.clone(),
            action: action.symbol().to_lowercase(),
            name: name.to_owned(),
            evr: format!("0:{v}-{r}"),
            source: source.to_owned(),
        };
        oracle.count(&doc, &self.hostgroup, &self.environment);
        oracle.changes.insert(id.to_hex(), doc);
        self.pending.push(line.to_string());
        self.touched.insert(name.to_owned());
        match action {
            Action::Remove | Action::Obsolete => {
                self.installed.remove(name);
            }
            _ => {
                self.installed.insert(name.to_owned(), new);
            }
        }
    }

    /// Changes rpm committed that no hook reported (a package manager run
    /// without the hooks): one lost upgrade, one lost removal and one lost
    /// install, on packages no reported change touched since the last
    /// snapshot, so that the next snapshot must reveal each as a synthetic
    /// change of its own. Returns them.
    pub fn lose_changes(&mut self, rng: &mut Rng) -> Vec<(Action, String, (u32, u32))> {
        let mut lost = Vec::new();
        let mut untouched: Vec<String> = self
            .installed
            .keys()
            .filter(|n| !self.touched.contains(*n))
            .cloned()
            .collect();
        let mut pick = |rng: &mut Rng| -> Option<String> {
            (!untouched.is_empty())
                .then(|| untouched.swap_remove(rng.below(untouched.len() as u64) as usize))
        };
        if let Some(name) = pick(rng) {
            let (v, _) = self.installed[&name];
            let new = (v + 10, 1);
            self.installed.insert(name.clone(), new);
            lost.push((Action::Upgrade, name, new));
        }
        if let Some(name) = pick(rng) {
            let old = self.installed.remove(&name).expect("installed");
            lost.push((Action::Remove, name, old));
        }
        self.lost_installs += 1;
        let name = format!("lost-{}", self.lost_installs);
        self.installed.insert(name.clone(), (1, 1));
        lost.push((Action::Install, name, (1, 1)));
        lost
    }

    /// The inventory snapshot of the model as a hook line; when
    /// `synthetic`, the changes it reveals (`lost`) go into `oracle` as the
    /// synthetic changes the router must derive (they carry the snapshot's
    /// time as their transaction).
    pub fn snapshot(
        &mut self,
        lost: &[(Action, String, (u32, u32))],
        synthetic: bool,
        oracle: &mut Oracle,
    ) {
        self.clock += 5;
        let taken_at = self.clock;
        let packages: Vec<Value> = self
            .installed
            .iter()
            .map(|(n, p)| {
                let (v, r) = vr(*p);
                json!({"name": n, "version": v, "release": r, "arch": "x86_64", "install_time": taken_at - 1})
            })
            .collect();
        self.pending.push(
            json!({"kind": "inventory", "taken_at": taken_at, "host": self.host_json(), "packages": packages})
                .to_string(),
        );
        oracle.snapshots += 1;
        self.touched.clear();
        if !synthetic {
            return;
        }
        for (action, name, p) in lost {
            let (v, r) = vr(*p);
            let id = change_event_id(
                &self.machine_id,
                *action,
                name,
                None,
                &v,
                &r,
                "x86_64",
                taken_at,
            );
            let doc = HistoryDoc {
                machine_id: self.machine_id.clone(),
                action: action.symbol().to_lowercase(),
                name: name.clone(),
                evr: format!("0:{v}-{r}"),
                source: "inventory".into(),
            };
            oracle.count(&doc, &self.hostgroup, &self.environment);
            oracle.synthetic.insert(id.to_hex(), doc);
        }
    }

    /// The package state its documents must show: `_id` → `0:V-R`.
    pub fn state(&self) -> BTreeMap<String, String> {
        self.installed
            .iter()
            .map(|(n, p)| {
                let (v, r) = vr(*p);
                (
                    format!("{}/{n}.x86_64", self.machine_id),
                    format!("0:{v}-{r}"),
                )
            })
            .collect()
    }
}

/// Peak RSS of short-lived processes (each `record` and `flush`), KiB.
#[derive(Default)]
pub struct PeakRss(std::sync::atomic::AtomicU64);

impl PeakRss {
    /// Notes `kib`.
    pub fn note(&self, kib: u64) {
        self.0.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
    }

    /// The highest noted.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Peak RSS of `record` and of `flush` processes.
#[derive(Default)]
pub struct EmitPeaks {
    /// Of every `pkgstream-emit record`.
    pub record: PeakRss,
    /// Of every `pkgstream-emit flush`.
    pub flush: PeakRss,
}

/// Waits for `child` (a `pkgstream-emit`), sampling its VmHWM every 5 ms
/// into `peak` once it runs that binary; kills it
/// with SIGKILL after `kill_after` if given (then returns `None`).
pub fn wait_sampled(
    mut child: Child,
    peak: &PeakRss,
    kill_after: Option<Duration>,
) -> Option<ExitStatus> {
    let started = Instant::now();
    let exe = std::fs::canonicalize(crate::binary("pkgstream-emit")).ok();
    loop {
        // Until it has exec'ed, the child (vfork) shows the test's own memory.
        let pid = child.id();
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok() == exe {
            peak.note(peak_rss_kib(pid));
        }
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if kill_after.is_some_and(|k| started.elapsed() >= k) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `pkgstream-emit record` of `env` with `input` on stdin (written
/// from a thread: it may be larger than a pipe); returns its exit status.
pub fn record(env: &EmitEnv, input: Vec<u8>, peak: &PeakRss) -> ExitStatus {
    use std::io::Write;
    let mut child = env
        .command(&["record"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn record");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let status = wait_sampled(child, peak, None).expect("record ran");
    writer.join().expect("stdin writer");
    status
}

/// Dead letters (`.input` files: refused hook lines) in `env`'s spool.
pub fn dead_inputs(env: &EmitEnv) -> u64 {
    std::fs::read_dir(env.spool_dir().join("dead"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "input"))
                .count() as u64
        })
        .unwrap_or(0)
}

/// Bytes waiting in `env`'s spool are none.
pub fn spool_empty(env: &EmitEnv) -> bool {
    let status = env.command(&["status"]).output().expect("status");
    String::from_utf8_lossy(&status.stdout)
        .contains(": 0 bytes of change events, 0 bytes of inventory snapshots")
}

/// Flushes `env`'s spool until it is empty, retrying while Kafka is away
/// (exit 75), for up to `limit`; `kill_after` kills the first flush with
/// SIGKILL that long after its start (an emitter crash mid-flush).
/// Returns how many flushes exited 75.
pub fn flush_all(
    env: &EmitEnv,
    peak: &PeakRss,
    mut kill_after: Option<Duration>,
    limit: Duration,
) -> u32 {
    let started = Instant::now();
    let mut unreachable = 0;
    loop {
        let child = env
            .command(&["flush", "--timeout", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn flush");
        match wait_sampled(child, peak, kill_after.take()) {
            None => {}
            Some(s) if s.success() && spool_empty(env) => return unreachable,
            Some(s) if s.success() => {}
            Some(s) if s.code() == Some(75) => unreachable += 1,
            Some(s) => panic!("flush of {}: {s}", env.spool_dir().display()),
        }
        assert!(
            started.elapsed() < limit,
            "spool {} not empty after {limit:?}",
            env.spool_dir().display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

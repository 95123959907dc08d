//! Helpers for the sinks' end-to-end tests: a deterministic fleet scenario
//! and the package state computed from it independently of the sink, sink
//! processes, the engine's REST API, Prometheus queries, and a proxy that
//! answers 429 for part of every bulk.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_schemas::{
    change_event_id, sample, snapshot_id, Action, Encoder, EnrichedChange, EnrichedSnapshot,
    InventorySnapshot, Package, Source,
};
use serde_json::{json, Value};

use crate::router::free_port;
use crate::{binary, create_topics, unique};

/// Base URL of the test engine (`PKGSTREAM_TEST_OPENSEARCH`, default
/// `http://127.0.0.1:9200`, what `scripts/services.sh start opensearch` runs).
/// A test binary that runs its own engine ([`crate::PrivateEngine`]) names
/// it once with [`use_engine`] instead.
pub fn engine_url() -> String {
    if let Some(url) = ENGINE.get() {
        return url.clone();
    }
    std::env::var("PKGSTREAM_TEST_OPENSEARCH").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

static ENGINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes `url` the engine of every helper here (and of [`SinkEnv`]) for
/// the rest of this test process: for a test binary whose one test runs a
/// private engine. Panics if another engine was named before.
pub fn use_engine(url: &str) {
    let set = ENGINE.get_or_init(|| url.to_owned());
    assert_eq!(set, url, "this test process already uses the engine {set}");
}

/// Base URL of the test Prometheus (`PKGSTREAM_TEST_PROMETHEUS`).
pub fn prometheus_url() -> String {
    std::env::var("PKGSTREAM_TEST_PROMETHEUS").unwrap_or_else(|_| "http://127.0.0.1:9090".into())
}

/// Where [`engine`] (and so [`count`], [`wait_state`], ...) and
/// [`prom_query`] send their requests: the plaintext services by default;
/// the tests of the secured ones set theirs first ([`crate::secure::init`]).
pub struct Target {
    /// Base URL.
    pub url: String,
    /// Agent (with the CA of a TLS service).
    pub agent: ureq::Agent,
    /// `Authorization` header value, if any.
    pub auth: Option<String>,
}

impl Target {
    fn plain(url: String) -> Target {
        Target {
            url,
            agent: ureq::Agent::new(),
            auth: None,
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.auth {
            Some(a) => r.set("Authorization", a),
            None => r,
        }
    }
}

/// The engine the helpers inspect (set once per test binary).
pub static ENGINE_TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();
/// The Prometheus the helpers query (set once per test binary).
pub static PROMETHEUS_TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();

fn engine_target() -> &'static Target {
    ENGINE_TARGET.get_or_init(|| Target::plain(engine_url()))
}

fn prometheus_target() -> &'static Target {
    PROMETHEUS_TARGET.get_or_init(|| Target::plain(prometheus_url()))
}

/// Event time base of the scenarios: 2026-10-31T22:00:00Z, so a scenario
/// spans the October and November change indices.
pub const T0_US: i64 = 1_793_484_000_000_000;

/// A scenario: enriched events in the order a partition would hold them.
pub struct Scenario {
    /// Host groups are `<tag>-g0`, `<tag>-g1`, `<tag>-g2`.
    pub tag: String,
    /// Changes, per host in time order.
    pub changes: Vec<EnrichedChange<'static>>,
    /// Snapshots, each after all changes of its host.
    pub snapshots: Vec<EnrichedSnapshot<'static>>,
}

/// The package state key → `E:V-R` the sink must leave in `<p>-packages`,
/// computed here from the events with the rules of `sinks/README.md`.
pub type State = BTreeMap<String, String>;

fn pkg(name: &str, version: u32, release: u32) -> Package<'static> {
    Package {
        name: name.to_owned().into(),
        epoch: Some(0),
        version: format!("1.{version}").into(),
        release: format!("{release}.el9").into(),
        arch: "x86_64".into(),
        repo: Some("baseos".into()),
        vendor: Some("Rocky".into()),
        buildtime: Some(1_750_000_000_000_000),
        install_time: None,
        size: Some(1000 + version as i64),
        digest: Some(format!("sha256:{:064x}", version * 31 + release).into()),
    }
}

/// Tiny deterministic generator (no test depends on a seed's luck).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `hosts` hosts with `per_host` changes each over `packages` package names
/// (plus `openssl-libs` and `kernel-core`): installs first, then upgrades,
/// downgrades, reinstalls and removals; every 7th change is a plain rpm
/// change no transaction explains, every 5th outside the maintenance
/// window. The first `snapshots` hosts end with a snapshot that reveals
/// one lost removal, one lost upgrade and one lost install.
pub fn scenario(
    tag: &str,
    hosts: u64,
    per_host: usize,
    packages: usize,
    snapshots: u64,
) -> Scenario {
    let mut names: Vec<String> = (0..packages).map(|i| format!("pkg-{i}")).collect();
    names.push("openssl-libs".into());
    names.push("kernel-core".into());
    let mut rng = Lcg(0x5eed ^ hosts);
    let mut changes = Vec::new();
    let mut snaps = Vec::new();
    let mut tid = 1_793_000_000i64;
    for h in 0..hosts {
        let host = sample::host(h);
        let mut enrichment = sample::enrichment(h);
        enrichment.hostgroup = format!("{tag}-g{}", h % 3).into();
        enrichment.environment = (if h % 4 == 0 { "staging" } else { "prod" }).into();
        let mut installed: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        let mut t = T0_US + h as i64;
        for k in 0..per_host {
            t += 150_000_000;
            tid += 1;
            let name = if k < names.len() {
                names[k].clone()
            } else {
                names[rng.next(names.len() as u64) as usize].clone()
            };
            let (action, new, old) = match installed.get(&name).copied() {
                None => (Action::Install, (1, 1), None),
                Some((v, r)) => match rng.next(10) {
                    0..=4 => (Action::Upgrade, (v + 1, 1), Some((v, r))),
                    5 => (Action::Downgrade, (v.max(2) - 1, 9), Some((v, r))),
                    6 => (Action::Reinstall, (v, r), None),
                    7 => (Action::Obsolete, (v, r), None),
                    _ => (Action::Remove, (v, r), None),
                },
            };
            let mut package = pkg(&name, new.0, new.1);
            package.install_time = Some(t);
            let rpm = k % 7 == 3;
            let mut e = enrichment.clone();
            e.outside_maintenance_window = k % 5 == 1;
            e.unexplained_rpm = rpm;
            e.routed_at = t + 1000;
            let c = EnrichedChange {
                event_id: change_event_id(
                    &host.machine_id,
                    action,
                    &name,
                    package.epoch,
                    &package.version,
                    &package.release,
                    "x86_64",
                    tid,
                ),
                event_time: t,
                host: host.clone(),
                source: if rpm { Source::Rpm } else { Source::Dnf },
                action,
                replaced: old.map(|(v, r)| pkg(&name, v, r)),
                transaction: pkgstream_schemas::Transaction {
                    rpm_tid: tid,
                    history_id: (!rpm).then_some(tid - 1_793_000_000),
                    command_line: Some(
                        if rpm {
                            format!("rpm -U {name}.rpm")
                        } else {
                            format!("dnf -y {} {name}", action.symbol().to_lowercase())
                        }
                        .into(),
                    ),
                    login_user: Some("alice".into()),
                    start_time: Some(t - 500_000),
                },
                package,
                enrichment: e,
            };
            if matches!(action, Action::Remove | Action::Obsolete) {
                installed.remove(&name);
            } else {
                installed.insert(name, new);
            }
            changes.push(c);
        }
        if h < snapshots {
            // Lost events: the first package removed, the second upgraded,
            // a new one installed, none of them reported.
            let mut state: Vec<(String, (u32, u32))> = installed.into_iter().collect();
            state.remove(0);
            state[0].1 .0 += 100;
            state.push(("lost-install".into(), (1, 1)));
            let taken_at = t + 3_600_000_000;
            let packages = state
                .iter()
                .map(|(n, (v, r))| {
                    let mut p = pkg(n, *v, *r);
                    p.install_time = Some(taken_at - 1);
                    p
                })
                .collect();
            snaps.push(EnrichedSnapshot::new(
                InventorySnapshot {
                    snapshot_id: snapshot_id(&host.machine_id, taken_at),
                    taken_at,
                    host: host.clone(),
                    packages,
                    chunk: None,
                },
                {
                    let mut e = enrichment.clone();
                    e.routed_at = taken_at + 1000;
                    e
                },
            ));
        }
    }
    Scenario {
        tag: tag.to_owned(),
        changes,
        snapshots: snaps,
    }
}

fn key(machine_id: &str, p: &Package<'_>) -> String {
    format!("{machine_id}/{}.{}", p.name, p.arch)
}

fn evr(p: &Package<'_>) -> String {
    format!("{}:{}-{}", p.epoch.unwrap_or(0), p.version, p.release)
}

impl Scenario {
    /// The expected package state, computed from the events: an install,
    /// upgrade, downgrade or reinstall sets `name.arch` to its version; a
    /// removal clears it if it held the removed version; a snapshot
    /// replaces everything older than itself.
    pub fn expected_state(&self) -> State {
        let mut state: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for c in &self.changes {
            let k = key(&c.host.machine_id, &c.package);
            match c.action {
                Action::Remove | Action::Obsolete => {
                    if state
                        .get(&k)
                        .is_some_and(|(v, t)| *v == evr(&c.package) && *t <= c.event_time)
                    {
                        state.remove(&k);
                    }
                }
                _ => {
                    state.insert(k, (evr(&c.package), c.event_time));
                }
            }
        }
        for s in &self.snapshots {
            let prefix = format!("{}/", s.host.machine_id);
            state.retain(|k, (_, t)| !k.starts_with(&prefix) || *t > s.taken_at);
            for p in &s.packages {
                state.insert(key(&s.host.machine_id, p), (evr(p), s.taken_at));
            }
        }
        state.into_iter().map(|(k, (v, _))| (k, v)).collect()
    }

    /// Every event encoded, keyed by machine id: changes, then snapshots.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        for c in &self.changes {
            let mut v = Vec::new();
            enc.encode_enriched_change(c, &mut v)
                .expect("encode change");
            out.push((c.host.machine_id.as_bytes().to_vec(), v));
        }
        for s in &self.snapshots {
            let mut v = Vec::new();
            enc.encode_enriched_snapshot(s, &mut v)
                .expect("encode snapshot");
            out.push((s.host.machine_id.as_bytes().to_vec(), v));
        }
        out
    }
}

/// One test's topics and index prefix, and the sink processes on them.
#[derive(Clone)]
pub struct SinkEnv {
    /// Bootstrap servers.
    pub brokers: String,
    /// Enriched topic (3 partitions).
    pub enriched: String,
    /// DLQ topic.
    pub dlq: String,
    /// Index prefix of this test.
    pub prefix: String,
    /// Environment for every sink process.
    pub vars: Vec<(String, String)>,
}

impl SinkEnv {
    /// Fresh topics and a fresh index prefix.
    pub fn new(brokers: &str, name: &str) -> SinkEnv {
        let enriched = unique(&format!("{name}-enriched"));
        let dlq = unique(&format!("{name}-dlq"));
        create_topics(brokers, &[&enriched, &dlq]);
        let prefix = unique(&format!("t-{name}")).to_lowercase();
        let vars = vec![
            ("PKGSTREAM__KAFKA__BROKERS".into(), brokers.to_owned()),
            (
                "PKGSTREAM__TOPICS__CHANGES_ENRICHED".into(),
                enriched.clone(),
            ),
            ("PKGSTREAM__TOPICS__DLQ".into(), dlq.clone()),
            ("PKGSTREAM__SEARCH_SINK__URL".into(), engine_url()),
            (
                "PKGSTREAM__SEARCH_SINK__INDEX_PREFIX".into(),
                prefix.clone(),
            ),
            (
                "PKGSTREAM__SEARCH_SINK__GROUP_ID".into(),
                unique(&format!("{name}-search")),
            ),
            ("PKGSTREAM__SEARCH_SINK__BATCH_MS".into(), "200".into()),
            ("PKGSTREAM__SEARCH_SINK__RETRY_MAX_MS".into(), "2000".into()),
            (
                "PKGSTREAM__METRICS_SINK__GROUP_ID".into(),
                unique(&format!("{name}-metrics")),
            ),
            (
                "PKGSTREAM__METRICS_SINK__PUSH_INTERVAL_SECS".into(),
                "1".into(),
            ),
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL".into(),
                format!("{}/api/v1/write", prometheus_url()),
            ),
        ];
        SinkEnv {
            brokers: brokers.to_owned(),
            enriched,
            dlq,
            prefix,
            vars,
        }
    }

    /// The same topics with the index prefix `prefix` instead.
    pub fn with_prefix(mut self, prefix: &str) -> SinkEnv {
        self.prefix = prefix.to_owned();
        for (k, v) in &mut self.vars {
            if k == "PKGSTREAM__SEARCH_SINK__INDEX_PREFIX" {
                *v = prefix.to_owned();
            }
        }
        self
    }

    /// Produces `records` to the enriched topic (keyed, default partitioner).
    pub fn produce(&self, records: &[(Vec<u8>, Vec<u8>)]) {
        let producer: rdkafka::producer::BaseProducer = crate::client_config(&self.brokers)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        crate::router::send(&producer, &self.enriched, records);
    }

    /// Starts `pkgstream sink KIND` with this environment plus `extra`;
    /// returns the process and its /metrics port.
    pub fn start(&self, kind: &str, extra: &[(&str, String)]) -> SinkProcess {
        self.start_logged(kind, extra, Stdio::inherit())
    }

    /// [`SinkEnv::start`] with the sink's log (stderr) going to `stderr`.
    pub fn start_logged(
        &self,
        kind: &str,
        extra: &[(&str, String)],
        stderr: impl Into<Stdio>,
    ) -> SinkProcess {
        let port = free_port();
        let listen_var = format!("PKGSTREAM__{}_SINK__METRICS_LISTEN", kind.to_uppercase());
        let child = Command::new(binary("pkgstream"))
            .args(["sink", kind])
            .env_remove("PKGSTREAM_CONFIG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env(listen_var, format!("127.0.0.1:{port}"))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn pkgstream sink");
        SinkProcess {
            child: crate::Running(child),
            port,
        }
    }

    /// The changes index pattern of this test.
    pub fn changes(&self) -> String {
        format!("{}-changes-*", self.prefix)
    }

    /// The package state index of this test.
    pub fn packages(&self) -> String {
        format!("{}-packages", self.prefix)
    }

    /// The host index of this test.
    pub fn hosts(&self) -> String {
        format!("{}-hosts", self.prefix)
    }
}

/// A running sink; killed when dropped still running (a failed test).
pub struct SinkProcess {
    /// The process.
    pub child: crate::Running,
    /// Its /metrics port.
    pub port: u16,
}

impl SinkProcess {
    /// A metric's value on /metrics (exact series text), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        crate::scrape_metric(self.port, series)
    }

    /// SIGTERM, then the exit status (killed after 60 s).
    pub fn stop(self) -> std::process::ExitStatus {
        self.child.stop()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        crate::services::peak_rss_kib(self.child.0.id())
    }
}

/// A mapping conflict: every change of `sc` tagged `rack` (so
/// `labels.rack` becomes a keyword), and a copy of change `i` tagged
/// `rack.unit` (which needs `labels.rack` to be an object) with event id
/// `bb…bb`: returns that change's key and encoded bytes.
pub fn rack_conflict(sc: &mut Scenario, i: usize) -> (Vec<u8>, Vec<u8>) {
    for c in &mut sc.changes {
        c.enrichment.tags = std::borrow::Cow::Owned([("rack".to_owned(), "r12".to_owned())].into());
    }
    let mut bad = sc.changes[i].clone();
    bad.enrichment.tags =
        std::borrow::Cow::Owned([("rack.unit".to_owned(), "7".to_owned())].into());
    bad.event_id = pkgstream_schemas::EventId([0xbb; 16]);
    let mut bytes = Vec::new();
    pkgstream_schemas::Encoder::new()
        .encode_enriched_change(&bad, &mut bytes)
        .expect("encode");
    (bad.host.machine_id.as_bytes().to_vec(), bytes)
}

/// `METHOD path` with an optional JSON body against the test engine.
/// A 503 (a shard of an index the sink has just created is not active
/// yet) is asked again for up to 30 s.
pub fn engine(method: &str, path: &str, body: Option<Value>) -> Value {
    let started = Instant::now();
    loop {
        let req = engine_target().request(method, path);
        let r = match &body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        match r {
            Ok(r) => return r.into_json().expect("engine JSON"),
            Err(ureq::Error::Status(404, r)) => {
                return r.into_json().unwrap_or(json!({"status": 404}))
            }
            Err(ureq::Error::Status(503, _)) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
}

/// Document count of `index` (refreshed first), 0 if it does not exist.
pub fn count(index: &str) -> u64 {
    engine(
        "POST",
        &format!("/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true"),
        None,
    );
    engine(
        "GET",
        &format!("/{index}/_count?ignore_unavailable=true&allow_no_indices=true"),
        None,
    )["count"]
        .as_u64()
        .unwrap_or(0)
}

/// Every document of `index` as `_id → _source` (search_after paging).
pub fn all_docs(index: &str) -> BTreeMap<String, Value> {
    engine("POST", &format!("/{index}/_refresh"), None);
    let mut out = BTreeMap::new();
    let mut after: Option<Value> = None;
    loop {
        let mut q = json!({"size": 5000, "sort": [{"host.id": "asc"}, {"package.name": {"order": "asc", "unmapped_type": "keyword"}}, {"package.architecture": {"order": "asc", "unmapped_type": "keyword"}}]});
        if let Some(a) = &after {
            q["search_after"] = a.clone();
        }
        let r = engine("POST", &format!("/{index}/_search"), Some(q));
        let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
        for h in &hits {
            out.insert(
                h["_id"].as_str().unwrap_or_default().to_owned(),
                h["_source"].clone(),
            );
        }
        if hits.len() < 5000 {
            return out;
        }
        after = hits.last().map(|h| h["sort"].clone());
    }
}

/// The package state the index holds: `_id → package.evr`.
pub fn indexed_state(index: &str) -> State {
    all_docs(index)
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v["package"]["evr"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until `index` holds exactly `expected`; on timeout the panic
/// lists the first differences.
pub fn wait_state(index: &str, expected: &State, limit: Duration) {
    let started = Instant::now();
    loop {
        let got = indexed_state(index);
        if &got == expected {
            return;
        }
        if started.elapsed() > limit {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(10)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, v)| expected.get(*k) != Some(v))
                .take(10)
                .collect();
            panic!("{index}: {} docs, expected {}; expected but not found: {missing:?}; found but not expected: {extra:?}", got.len(), expected.len());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls `f` until it returns true, or panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `index` holds `n` documents and stays there for `quiet`.
pub fn wait_count(index: &str, n: u64, limit: Duration) {
    wait_for(&format!("{n} documents in {index}"), limit, || {
        count(index) == n
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(index), n, "{index} grew past {n}");
}

/// Instant query against the test Prometheus: the result vector.
pub fn prom_query(q: &str) -> Vec<Value> {
    let r: Value = prometheus_target()
        .request("GET", "/api/v1/query")
        .query("query", q)
        .call()
        .unwrap_or_else(|e| panic!("Prometheus query {q}: {e}"))
        .into_json()
        .expect("Prometheus JSON");
    assert_eq!(r["status"], "success", "query {q}: {r}");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Sum of the values of an instant query (0 for an empty result).
pub fn prom_value(q: &str) -> f64 {
    prom_query(q)
        .iter()
        .filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A proxy in front of the engine that answers 429 for every `every`-th
/// item of each bulk (those items never reach the engine) and forwards
/// everything else unchanged; `every` can be changed while it runs (0: no
/// 429s), and [`RejectingProxy::drop_connections`] makes it close every
/// connection on a request without answering it (a connection reset).
pub struct RejectingProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Items answered with 429 so far.
    pub rejected: Arc<AtomicU64>,
    /// Bulk requests seen.
    pub bulks: Arc<AtomicU64>,
    /// Every this many bulk items one is answered 429 (0: none).
    pub every: Arc<AtomicU64>,
    /// While true, requests are read and their connection closed unanswered.
    pub drop_connections: Arc<AtomicBool>,
    /// Requests whose connection was closed unanswered so far.
    pub dropped: Arc<AtomicU64>,
}

impl RejectingProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: &str, every: u64) -> RejectingProxy {
        let rejected = Arc::new(AtomicU64::new(0));
        let bulks = Arc::new(AtomicU64::new(0));
        let every = Arc::new(AtomicU64::new(every));
        let drop_connections = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = AtomicU64::new(0);
        let (up, rj, bk, ev, dc, dr) = (
            upstream.to_owned(),
            rejected.clone(),
            bulks.clone(),
            every.clone(),
            drop_connections.clone(),
            dropped.clone(),
        );
        let url = relay(move |req| {
            if dc.load(Ordering::Relaxed) {
                dr.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let every = ev.load(Ordering::Relaxed);
            Some(
                if req.method == "POST" && req.path.starts_with("/_bulk") && every > 0 {
                    bk.fetch_add(1, Ordering::Relaxed);
                    proxy_bulk(&up, &req.path, &req.body, every, &counter, &rj)
                } else {
                    if req.method == "POST" && req.path.starts_with("/_bulk") {
                        bk.fetch_add(1, Ordering::Relaxed);
                    }
                    req.forward(&up)
                },
            )
        });
        RejectingProxy {
            url,
            rejected,
            bulks,
            every,
            drop_connections,
            dropped,
        }
    }
}

/// One HTTP request as a [`relay`] read it.
pub struct RelayRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Vec<u8>,
}

impl RelayRequest {
    /// Sends it to `upstream` unchanged: the status and body answered.
    pub fn forward(&self, upstream: &str) -> (u16, Vec<u8>) {
        forward(
            upstream,
            &self.method,
            &self.path,
            (!self.body.is_empty()).then_some(&self.body[..]),
            self.content_type.as_ref(),
        )
    }
}

/// What a [`relay`] does with a request: `Some((status, body))` to answer,
/// `None` to close the connection unanswered.
pub type RelayHandler = dyn Fn(&RelayRequest) -> Option<(u16, Vec<u8>)> + Send + Sync;

/// A loopback HTTP/1.1 relay on a free port: every request (keep-alive
/// connections, `Content-Length` bodies) is given to `handle`, which
/// answers `Some((status, body))`, or `None` to close the connection
/// unanswered. Returns `http://127.0.0.1:PORT`.
pub fn relay(
    handle: impl Fn(&RelayRequest) -> Option<(u16, Vec<u8>)> + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let _ = serve_relay(stream, &*handle);
            });
        }
    });
    url
}

fn serve_relay(stream: TcpStream, handle: &RelayHandler) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("GET").to_owned(),
            parts.next().unwrap_or("/").to_owned(),
        );
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let req = RelayRequest {
            method,
            path,
            content_type: headers.remove("content-type"),
            body,
        };
        let Some((status, resp)) = handle(&req) else {
            return out.shutdown(std::net::Shutdown::Both);
        };
        write!(
            out,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            resp.len()
        )?;
        out.write_all(&resp)?;
        out.flush()?;
    }
}

fn forward(
    upstream: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    ctype: Option<&String>,
) -> (u16, Vec<u8>) {
    let req = ureq::request(method, &format!("{upstream}{path}"));
    let r = match body {
        Some(b) => req
            .set(
                "Content-Type",
                ctype.map_or("application/json", |c| c.as_str()),
            )
            .send_bytes(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return (502, format!("{{\"error\":\"{e}\"}}").into_bytes()),
    };
    let status = resp.status();
    let mut out = Vec::new();
    let _ = resp.into_reader().read_to_end(&mut out);
    (status, out)
}

fn proxy_bulk(
    upstream: &str,
    path: &str,
    body: &[u8],
    every: u64,
    counter: &AtomicU64,
    rejected: &AtomicU64,
) -> (u16, Vec<u8>) {
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut items: Vec<(String, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let action: Value = serde_json::from_slice(lines[i]).expect("bulk action line");
        let op = action
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        let n = if op == "delete" { 1 } else { 2 };
        let mut item = Vec::new();
        for l in &lines[i..(i + n).min(lines.len())] {
            item.extend_from_slice(l);
            item.push(b'\n');
        }
        items.push((op, item));
        i += n;
    }
    let reject: Vec<bool> = items
        .iter()
        .map(|_| {
            counter
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(every)
        })
        .collect();
    let forwarded: Vec<u8> = items
        .iter()
        .zip(&reject)
        .filter(|(_, r)| !**r)
        .flat_map(|((_, b), _)| b.clone())
        .collect();
    let mut answers: Vec<Value> = Vec::new();
    let mut errors = false;
    if !forwarded.is_empty() {
        let (status, resp) = forward(
            upstream,
            "POST",
            path,
            Some(&forwarded),
            Some(&"application/x-ndjson".to_owned()),
        );
        if status != 200 {
            return (status, resp);
        }
        let v: Value = serde_json::from_slice(&resp).expect("upstream bulk JSON");
        errors = v["errors"].as_bool().unwrap_or(false);
        answers = v["items"].as_array().cloned().unwrap_or_default();
    }
    let mut answers = answers.into_iter();
    let mut merged = Vec::new();
    for ((op, _), r) in items.iter().zip(&reject) {
        if *r {
            rejected.fetch_add(1, Ordering::Relaxed);
            errors = true;
            merged.push(json!({op.as_str(): {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected by the test proxy"}}}));
        } else {
            merged.push(
                answers
                    .next()
                    .unwrap_or(json!({op.as_str(): {"status": 200}})),
            );
        }
    }
    (
        200,
        serde_json::to_vec(&json!({"errors": errors, "items": merged})).expect("json"),
    )
}

/// What a [`GatewayProxy`] rule sees of one request: method, path and
/// body length in bytes. The rule answers `Some((status, body))` itself,
/// or `None` to forward the request to the engine unchanged.
pub type GatewayRule = dyn Fn(&str, &str, usize) -> Option<(u16, Vec<u8>)> + Send + Sync;

/// A proxy in front of the engine that forwards every request unchanged
/// except those its rule answers itself, as a gateway in front of a
/// cluster does (nginx's `client_max_body_size` answering 413, an auth
/// proxy answering 403).
pub struct GatewayProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Requests the rule answered.
    pub answered: Arc<AtomicU64>,
    /// Requests forwarded.
    pub forwarded: Arc<AtomicU64>,
}

impl GatewayProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: &str, rule: Arc<GatewayRule>) -> GatewayProxy {
        let answered = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (up, an, fw) = (upstream.to_owned(), answered.clone(), forwarded.clone());
        let url = relay(move |req| {
            Some(match rule(&req.method, &req.path, req.body.len()) {
                Some(answer) => {
                    an.fetch_add(1, Ordering::Relaxed);
                    answer
                }
                None => {
                    fw.fetch_add(1, Ordering::Relaxed);
                    req.forward(&up)
                }
            })
        });
        GatewayProxy {
            url,
            answered,
            forwarded,
        }
    }
}

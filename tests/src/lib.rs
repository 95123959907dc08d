//! Helpers for pkgstream's end-to-end tests (`tests/tests/*.rs`): where the
//! real services are (env vars defaulting to localhost), unique topics per
//! test, running the built binaries, and reading topics back.
//!
//! The binaries are the ones `cargo build --workspace --bins` put next to
//! the test executable; `scripts/test.sh` builds them first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

pub mod fault;
pub mod fleet;
pub mod hooks;
pub mod pipeline;
pub mod router;
pub mod secure;
pub mod secure_kafka;
pub mod services;
pub mod sinks;

pub use services::PrivateEngine;

/// librdkafka properties, (key, value).
type Properties = Vec<(String, String)>;

/// Client properties registered per bootstrap address (a secured broker's
/// credentials, see [`secure_kafka`]).
static CLIENT_PROPERTIES: std::sync::Mutex<Vec<(String, Properties)>> =
    std::sync::Mutex::new(Vec::new());

/// Every client the helpers make for `brokers` uses `properties` too (the
/// security settings of a secured broker).
pub fn register_client_properties(brokers: &str, properties: &[(&str, String)]) {
    let mut all = CLIENT_PROPERTIES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(b, _)| b != brokers);
    all.push((
        brokers.to_owned(),
        properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    ));
}

/// The one client configuration of the test helpers: `bootstrap.servers`
/// plus whatever was registered for `brokers`.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    let all = CLIENT_PROPERTIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, props)) = all.iter().find(|(b, _)| b == brokers) {
        for (k, v) in props {
            c.set(k, v);
        }
    }
    c
}

/// Bootstrap address of the test Kafka (`PKGSTREAM_TEST_KAFKA`, default
/// `127.0.0.1:9092`, the broker `scripts/services.sh start` runs).
pub fn kafka_brokers() -> String {
    std::env::var("PKGSTREAM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates `topics` with 3 partitions each on `brokers`.
pub fn create_topics(brokers: &str, topics: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    let results = rt
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t} on {brokers}: {e} (is Kafka running? scripts/services.sh start)"));
    }
}

/// Value of one series (exact name with labels) on the `/metrics` endpoint
/// at `127.0.0.1:port`; 0 when absent or unreachable.
pub fn scrape_metric(port: u16, series: &str) -> f64 {
    use std::io::{Read, Write};
    let text = (|| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    })();
    text.and_then(|m| {
        m.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    })
    .unwrap_or(0.0)
}

/// Path of a workspace binary built next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A host spool plus the environment that points `pkgstream-emit` at it,
/// at a Kafka and at per-test topics.
pub struct EmitEnv {
    /// Keeps the temporary directory alive.
    pub dir: tempfile::TempDir,
    /// Environment variables for the child process.
    pub vars: Vec<(String, String)>,
    /// Topic for change events.
    pub changes_topic: String,
    /// Topic for inventory snapshots.
    pub inventory_topic: String,
}

impl EmitEnv {
    /// A fresh spool and fresh topics on `brokers`.
    pub fn new(brokers: &str, name: &str) -> EmitEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).expect("mkdir");
        std::fs::write(etc.join("machine-id"), "0123456789abcdef0123456789abcdef\n")
            .expect("write");
        std::fs::write(etc.join("hostname"), "test-host\n").expect("write");
        std::fs::write(etc.join("os-release"), "ID=\"rocky\"\nVERSION_ID=\"9.4\"\n")
            .expect("write");
        let changes_topic = unique(&format!("{name}-changes"));
        let inventory_topic = unique(&format!("{name}-inventory"));
        let p = |f: &str| etc.join(f).display().to_string();
        let vars = vec![
            ("PKGSTREAM_EMIT__KAFKA__BROKERS".into(), brokers.to_owned()),
            (
                "PKGSTREAM_EMIT__SPOOL__DIR".into(),
                dir.path().join("spool").display().to_string(),
            ),
            (
                "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW".into(),
                changes_topic.clone(),
            ),
            (
                "PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW".into(),
                inventory_topic.clone(),
            ),
            (
                "PKGSTREAM_EMIT__HOST__MACHINE_ID_FILE".into(),
                p("machine-id"),
            ),
            ("PKGSTREAM_EMIT__HOST__HOSTNAME_FILE".into(), p("hostname")),
            (
                "PKGSTREAM_EMIT__HOST__OS_RELEASE_FILE".into(),
                p("os-release"),
            ),
        ];
        EmitEnv {
            dir,
            vars,
            changes_topic,
            inventory_topic,
        }
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// `pkgstream-emit ARGS` with this environment (stdin, stdout and
    /// stderr as the caller sets them).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("pkgstream-emit"));
        cmd.args(args)
            .env_remove("PKGSTREAM_EMIT_CONFIG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `pkgstream-emit record` with `lines` on stdin.
    pub fn record(&self, lines: &[String]) -> Output {
        use std::io::Write;
        let mut child = self
            .command(&["record"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn record");
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write stdin");
        }
        drop(stdin);
        child.wait_with_output().expect("wait record")
    }

    /// Runs `pkgstream-emit flush` to completion.
    pub fn flush(&self, extra: &[&str]) -> Output {
        let mut args = vec!["flush"];
        args.extend_from_slice(extra);
        self.command(&args).output().expect("run flush")
    }
}

/// One message read back from Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    /// Partition it was in.
    pub partition: i32,
    /// Message key.
    pub key: Vec<u8>,
    /// Message value.
    pub value: Vec<u8>,
}

/// Reads every message of `topic` from the beginning until `expected`
/// messages arrived and then `quiet` passes with nothing new (so extra,
/// unexpected messages are also seen), or `limit` passes.
pub fn consume_all(
    brokers: &str,
    topic: &str,
    expected: usize,
    quiet: Duration,
    limit: Duration,
) -> Vec<Consumed> {
    router::read_all(brokers, topic, expected, quiet, limit)
        .into_iter()
        .map(|m| Consumed {
            partition: m.partition,
            key: m.key,
            value: m.value,
        })
        .collect()
}

/// Counts messages by event id: (distinct ids, messages per id).
pub fn by_event_id(messages: &[Consumed]) -> HashMap<[u8; 16], Vec<&Consumed>> {
    let mut map: HashMap<[u8; 16], Vec<&Consumed>> = HashMap::new();
    for m in messages {
        let change = pkgstream_schemas::decode_change(&m.value)
            .expect("a message in the changes topic does not decode");
        map.entry(change.event_id.0).or_default().push(m);
    }
    map
}

/// NDJSON change line number `i` for host `host` (a dnf upgrade).
pub fn change_line(i: usize, host: usize) -> String {
    serde_json::json!({
        "kind": "change",
        "source": "dnf",
        "action": "upgrade",
        "event_time": 1_764_000_000 + i as i64,
        "host": {"machine_id": format!("{host:032x}"), "hostname": format!("web-{host:04}"), "os_id": "rhel", "os_version": "9.4", "arch": "x86_64"},
        "package": {"name": format!("pkg-{}", i % 1500), "epoch": 0, "version": "1.2.3", "release": format!("{i}.el9"), "arch": "x86_64", "repo": "baseos", "vendor": "Example", "size": 123_456 + i, "digest": format!("sha256:{i:064x}")},
        "replaced": {"name": format!("pkg-{}", i % 1500), "version": "1.2.2", "release": "1.el9", "arch": "x86_64"},
        "transaction": {"rpm_tid": 1_764_000_000 + (i / 50) as i64, "history_id": i / 50, "command_line": "dnf -y upgrade", "login_user": "alice"}
    })
    .to_string()
}

/// What `pkgstream-emit record` must put on the wire for `line`: the
/// library's own conversion and encoding, used as the expected bytes.
pub fn expected_bytes(line: &str) -> (Vec<u8>, Vec<u8>) {
    let event = pkgstream_producer::input::HookEvent::parse(line).expect("test line parses");
    let mut enc = pkgstream_schemas::Encoder::new();
    let mut out = Vec::new();
    match event {
        pkgstream_producer::input::HookEvent::Change(c) => {
            let e = c.into_event(None);
            enc.encode_change(&e, &mut out).expect("encode");
            (e.host.machine_id.as_bytes().to_vec(), out)
        }
        pkgstream_producer::input::HookEvent::Inventory(s) => {
            let s = s.into_snapshot(None);
            enc.encode_snapshot(&s, &mut out).expect("encode");
            (s.host.machine_id.as_bytes().to_vec(), out)
        }
    }
}

/// A process that is killed when dropped still running (a failed test).
pub struct Running(pub Child);

impl Running {
    /// SIGTERM, then the exit status (killed after 60 s).
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.0.kill();
                panic!(
                    "process {} did not stop within 60 s of SIGTERM",
                    self.0.id()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Running {
    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return Some(s);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A TCP gate in front of a service: while open it forwards connections
/// both ways (TLS passes through untouched), while closed it cuts every
/// connection (those open included): the service "down" without stopping
/// a service other tests share.
pub struct Gate {
    /// `host:port` to connect to instead of the service.
    pub addr: String,
    /// `http://` + `addr`.
    pub url: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    /// A gate on a free local port forwarding to `upstream` (`host:port`).
    pub fn to(upstream: &str, open: bool) -> Gate {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gate");
        let addr = listener.local_addr().expect("addr").to_string();
        let flag = std::sync::Arc::new(AtomicBool::new(open));
        let (f, up) = (flag.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !f.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let f = f.clone();
                    std::thread::spawn(move || pipe(from, to, &f));
                }
            }
        });
        Gate {
            url: format!("http://{addr}"),
            addr,
            open: flag,
        }
    }

    /// Opens or closes the gate.
    pub fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side ends or the gate closes.
fn pipe(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    open: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while open.load(std::sync::atomic::Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A broker of a test's own (free ports, own run dir), driven by the
/// project's service script, so stopping, pausing or killing it disturbs no
/// other test. Stopped (and resumed first, if paused) when dropped.
pub struct PrivateKafka {
    run_dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl Default for PrivateKafka {
    fn default() -> Self {
        Self::new()
    }
}

impl PrivateKafka {
    /// Not started yet: nothing listens on its port.
    pub fn new() -> PrivateKafka {
        PrivateKafka {
            run_dir: tempfile::tempdir().expect("tempdir"),
            port: router::free_port(),
            controller_port: router::free_port(),
        }
    }

    /// A started one.
    pub fn started() -> PrivateKafka {
        let k = PrivateKafka::new();
        k.start();
        k
    }

    /// Its bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, action: &str) -> Output {
        Command::new("bash")
            .arg(hooks::repo_root().join("scripts/services.sh"))
            .args([action, "kafka"])
            .env("PKGSTREAM_RUN_DIR", self.run_dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .output()
            .expect("run services.sh")
    }

    /// Starts it (again: its data survives a kill) and waits until it answers.
    pub fn start(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "services.sh start kafka: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The broker's process id.
    pub fn pid(&self) -> String {
        std::fs::read_to_string(self.run_dir.path().join("kafka/kafka.pid"))
            .expect("broker pid file")
            .trim()
            .to_owned()
    }

    /// Sends `sig` (e.g. `-STOP`, `-CONT`) to the broker.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    }

    /// Waits until the broker's group coordinator answers (a fresh broker
    /// loads its offsets topic for seconds), for tests of something else.
    pub fn wait_for_coordinator(&self, topic: &str) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = client_config(&self.brokers())
            .set("group.id", unique("coordinator-probe"))
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let started = Instant::now();
        while consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the group coordinator of {} does not answer",
                self.brokers()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Kills the broker outright (SIGKILL), as a crash or a pulled cable
    /// looks to its clients, and waits until its port is closed.
    pub fn kill(&self) {
        self.signal("-KILL");
        let started = Instant::now();
        while std::net::TcpStream::connect(self.brokers()).is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "broker still answers"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if self.run_dir.path().join("kafka/kafka.pid").exists() {
            // A paused broker (a failed stall test) must run to stop.
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        let _ = self.script("stop");
    }
}

/// Sets topic-level configs of `topic` (e.g. `max.message.bytes`), as
/// `kafka-configs --alter` would; waits until the broker applied them.
pub fn set_topic_config(brokers: &str, topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().expect("admin client");
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let results = rt
        .block_on(admin.alter_configs(
            &[alter],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("alter configs");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot configure {t:?} on {brokers}: {e}"));
    }
}

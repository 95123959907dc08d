//! A test's own broker and search engine, driven by the project's service
//! script (`scripts/services.sh`) with their own run directory and free
//! ports, so that a test can kill, pause or stop them without disturbing
//! the shared instances other tests use (Kafka on 9092, OpenSearch on 9200).

#![allow(clippy::expect_used)] // test set-up: a failed step is a failed test, with its message

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

use crate::hooks::repo_root;
use crate::router::free_port;
use crate::sinks::wait_for;
use crate::unique;

/// `scripts/services.sh ARGS` with `PKGSTREAM_RUN_DIR=run_dir` and `env`.
pub fn services_script(run_dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/services.sh"))
        .args(args)
        .env("PKGSTREAM_RUN_DIR", run_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run services.sh")
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// A broker of this test's own (free ports, own run dir), so stopping or
/// pausing it disturbs no other test. Stopped when dropped.
pub struct PrivateKafka {
    run_dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl Default for PrivateKafka {
    fn default() -> Self {
        PrivateKafka::new()
    }
}

impl PrivateKafka {
    /// Not started yet: nothing listens on its port.
    pub fn new() -> PrivateKafka {
        PrivateKafka {
            run_dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            controller_port: free_port(),
        }
    }

    /// Its bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, action: &str) -> Output {
        services_script(
            self.run_dir.path(),
            &[
                ("KAFKA_PORT", self.port.to_string()),
                ("KAFKA_CONTROLLER_PORT", self.controller_port.to_string()),
            ],
            &[action, "kafka"],
        )
    }

    /// Starts it (again: with the data it had) and waits until it answers.
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

    /// Sends `sig` (`-STOP`, `-CONT`, ...) to the broker.
    pub fn signal(&self, sig: &str) {
        signal(&self.pid(), sig);
    }

    /// Waits until the broker's group coordinator answers (a fresh broker
    /// loads its offsets topic for seconds), for tests of something else.
    pub fn wait_for_coordinator(&self, topic: &str) {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", unique("coordinator-probe"))
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        wait_for("the group coordinator", Duration::from_secs(180), || {
            consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(5))
                .is_ok()
        });
    }

    /// Kills the broker outright (SIGKILL), as a crash looks to its clients.
    pub fn kill(&self) {
        self.signal("-KILL");
        let started = Instant::now();
        while TcpStream::connect(self.brokers()).is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "broker still answers"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory (VmHWM) of the broker process, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid().parse().unwrap_or(0))
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

/// A loopback port in 9250..=9299 (the search engine runners listen on
/// ports up to 9299 only) with nothing listening on it.
pub fn free_runner_port() -> u16 {
    (9250..=9299)
        .find(|p| {
            TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                Duration::from_millis(200),
            )
            .is_err()
                && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
        })
        .expect("a free port in 9250..9299")
}

/// An OpenSearch of this test's own (its own cluster, run dir and HTTP
/// port), so stopping it disturbs no other test. Stopped when dropped.
pub struct PrivateEngine {
    run_dir: tempfile::TempDir,
    port: u16,
}

impl Default for PrivateEngine {
    fn default() -> Self {
        PrivateEngine::new()
    }
}

impl PrivateEngine {
    /// Not started yet.
    pub fn new() -> PrivateEngine {
        PrivateEngine {
            run_dir: tempfile::tempdir().expect("tempdir"),
            port: free_runner_port(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn script(&self, action: &str) -> Output {
        services_script(
            self.run_dir.path(),
            &[
                ("OPENSEARCH_PORT", self.port.to_string()),
                ("OPENSEARCH_HEAP_OPTS", "-Xms512m -Xmx512m".to_owned()),
                ("OPENSEARCH_START_TIMEOUT", "240".to_owned()),
                ("OPENSEARCH_STOP_TIMEOUT", "60".to_owned()),
            ],
            &[action, "opensearch"],
        )
    }

    /// Starts it (again: with the data it had) and waits for its health.
    pub fn start(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "services.sh start opensearch (port {}): {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops it (SIGTERM, as an operator or an orchestrator does).
    pub fn stop(&self) {
        let out = self.script("stop");
        assert!(
            out.status.success(),
            "services.sh stop opensearch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// Peak resident memory (VmHWM) of process `pid`, KiB; 0 when it is gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

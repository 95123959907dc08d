//! A test's own search engine, driven by the project's service script
//! (`scripts/services.sh`) with its own run directory and a free port, so
//! that a test can stop it without disturbing the shared one other tests
//! use (on 9200); a test's own broker is [`crate::PrivateKafka`].

#![allow(clippy::expect_used)] // test set-up: a failed step is a failed test, with its message

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::hooks::repo_root;

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

/// A loopback port in 9250..=9299 (the search engine runners listen on
/// ports up to 9299 only) with nothing listening on it, tried from a
/// random one on: a stopped engine's port is free, and two tests that
/// each took the first free port would take each other's.
pub fn free_runner_port() -> u16 {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u16 ^ std::process::id() as u16)
        % 50;
    (0..50)
        .map(|i| 9250 + (start + i) % 50)
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

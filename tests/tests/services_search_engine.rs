//! `scripts/services.sh` and the search engines it runs: a port the
//! runner cannot honour (codelibs' runners listen on HTTP ports up to 9299
//! only) is refused at once with a message that says so, instead of a node
//! that exits without a word; and every instance is a cluster of its own,
//! named after its port and run dir, so a test's private engine never joins
//! the shared one through the default discovery seeds. Each test uses its
//! own `PKGSTREAM_RUN_DIR`; the shared engine on 9200 is never touched.
//!
//! Needs Java 17 and the OpenSearch runner that `scripts/services.sh
//! install opensearch` fetches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pkgstream_tests::hooks::repo_root;
use pkgstream_tests::services::free_runner_port;
use pkgstream_tests::sinks::engine_url;

fn services(run_dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("300")
        .arg("bash")
        .arg(repo_root().join("scripts/services.sh"))
        .args(args)
        .env("PKGSTREAM_RUN_DIR", run_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run services.sh")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn get(url: &str) -> serde_json::Value {
    ureq::get(url)
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_json()
        .expect("JSON")
}

#[test]
fn a_port_the_runner_cannot_honour_is_refused_loudly() {
    let shared_before = get(&engine_url())["cluster_uuid"].clone();
    for (service, var, port) in [
        ("opensearch", "OPENSEARCH_PORT", "9301"),
        ("opensearch", "OPENSEARCH_PORT", "10200"),
        ("elasticsearch", "ELASTICSEARCH_PORT", "9300"),
    ] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let out = services(
            run_dir.path(),
            &[(var, port.to_owned())],
            &["start", service],
        );
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{service} on {port}: {}",
            text(&out)
        );
        assert!(
            err.contains(&format!(
                "[services] ERROR: {service}: {var}={port} cannot be honoured"
            )) && err.contains("up to 9299"),
            "{service} on {port}: {}",
            text(&out)
        );
        // Refused before anything was fetched or launched.
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert!(
            !run_dir.path().join(service).exists(),
            "{service}: nothing started under the run dir"
        );
    }
    assert_eq!(
        get(&engine_url())["cluster_uuid"],
        shared_before,
        "the shared engine is the same"
    );
}

/// Stops the private engine even when the test fails half-way.
struct Private<'a> {
    run_dir: &'a Path,
    env: Vec<(&'static str, String)>,
}

impl Drop for Private<'_> {
    fn drop(&mut self) {
        let out = services(self.run_dir, &self.env, &["stop", "opensearch"]);
        if !out.status.success() {
            eprintln!("stopping the private engine: {}", text(&out));
        }
    }
}

#[test]
fn each_engine_instance_is_a_cluster_named_after_its_port_and_run_dir() {
    let run_dir = tempfile::tempdir().expect("tempdir");
    let port = free_runner_port();
    let env = vec![
        ("OPENSEARCH_PORT", port.to_string()),
        ("OPENSEARCH_HEAP_OPTS", "-Xms256m -Xmx256m".to_owned()),
        ("OPENSEARCH_START_TIMEOUT", "180".to_owned()),
    ];
    let private = Private {
        run_dir: run_dir.path(),
        env: env.clone(),
    };
    let out = services(run_dir.path(), &env, &["start", "opensearch"]);
    assert!(out.status.success(), "start: {}", text(&out));

    // pkgstream-<port>-<cksum of the canonical run dir>.
    let canonical = std::fs::canonicalize(run_dir.path().join("opensearch")).expect("run dir");
    let sum = Command::new("cksum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(canonical.to_string_lossy().as_bytes())?;
            c.wait_with_output()
        })
        .expect("cksum");
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("cksum output")
        .to_owned();
    let expected = format!("pkgstream-{port}-{sum}");

    let private_root = get(&format!("http://127.0.0.1:{port}"));
    let shared_root = get(&engine_url());
    assert_eq!(private_root["cluster_name"], expected.as_str());
    assert_ne!(private_root["cluster_name"], shared_root["cluster_name"]);
    assert_ne!(
        private_root["cluster_uuid"], shared_root["cluster_uuid"],
        "two clusters, not one"
    );
    let health = get(&format!("http://127.0.0.1:{port}/_cluster/health"));
    assert_eq!(health["number_of_nodes"], 1, "{health}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cluster {expected}")),
        "start logs the name: {}",
        text(&out)
    );
    drop(private);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the private engine stopped"
    );
    assert_eq!(
        get(&engine_url())["cluster_uuid"],
        shared_root["cluster_uuid"],
        "the shared engine still runs"
    );
}

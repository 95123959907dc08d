//! `pkgstream changes`, `history` and `drift` against an index prefix that
//! holds nothing on the real OpenSearch: a clear error that names the
//! missing index, the prefix and the engine URL, a non-zero exit, and no
//! table that looks like an answer. A prefix whose state indices exist but
//! that has indexed no change yet is not an error for `changes`: zero
//! changes is then the truth.
//!
//! Needs the engine of `scripts/services.sh start opensearch`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use pkgstream_tests::sinks::{engine, engine_url};
use pkgstream_tests::*;
use serde_json::json;

/// `pkgstream --config CFG ARGS`, with no `PKGSTREAM__` variable inherited.
fn pkgstream(cfg: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(binary("pkgstream"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PKGSTREAM__") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .expect("run pkgstream")
}

fn config(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{prefix}.toml"));
    std::fs::write(
        &path,
        format!(
            "[search_sink]\nurl = \"{}\"\nindex_prefix = \"{prefix}\"\n",
            engine_url()
        ),
    )
    .expect("write config");
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails with exit 1, nothing on stdout, and a message naming `index`,
/// the prefix and the engine URL.
fn assert_no_index(what: &str, out: &Output, prefix: &str, index: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {}", text(out));
    assert!(out.stdout.is_empty(), "{what}: no table: {}", text(out));
    let url = engine_url();
    let url = url.trim_end_matches('/');
    for needle in [
        format!("search engine at {url}"),
        format!("no index {index}"),
        format!("index prefix '{prefix}'"),
    ] {
        assert!(err.contains(&needle), "{what}: '{needle}' not in: {err}");
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_prefix_is_an_error_naming_it_and_the_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique("t-missing").to_lowercase();
    let cfg = config(dir.path(), &prefix);

    let out = pkgstream(&cfg, &["changes", "--since", "7d"]);
    assert_no_index("changes", &out, &prefix, &format!("{prefix}-changes-*"));
    let out = pkgstream(&cfg, &["changes", "--since", "7d", "--json"]);
    assert_no_index(
        "changes --json",
        &out,
        &prefix,
        &format!("{prefix}-changes-*"),
    );
    let out = pkgstream(&cfg, &["history", "web-01", "--since", "7d"]);
    assert_no_index("history", &out, &prefix, &format!("{prefix}-hosts"));
    let out = pkgstream(&cfg, &["drift"]);
    assert_no_index("drift", &out, &prefix, &format!("{prefix}-packages"));
    let out = pkgstream(&cfg, &["drift", "--format", "json"]);
    assert_no_index(
        "drift --format json",
        &out,
        &prefix,
        &format!("{prefix}-packages"),
    );
}

#[test]
fn a_prefix_with_no_change_yet_answers_zero_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique("t-empty").to_lowercase();
    let cfg = config(dir.path(), &prefix);
    // What a search sink that has indexed nothing yet leaves behind.
    for index in [format!("{prefix}-hosts"), format!("{prefix}-packages")] {
        let r = engine(
            "PUT",
            &format!("/{index}"),
            Some(json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
        );
        assert_eq!(r["acknowledged"], true, "create {index}: {r}");
    }

    let changes = pkgstream(&cfg, &["changes", "--since", "7d"]);
    let history = pkgstream(&cfg, &["history", "web-01"]);
    let drift = pkgstream(&cfg, &["drift"]);
    for index in [format!("{prefix}-hosts"), format!("{prefix}-packages")] {
        engine("DELETE", &format!("/{index}"), None);
    }

    assert_eq!(changes.status.code(), Some(0), "{}", text(&changes));
    assert!(
        stderr(&changes).contains("pkgstream changes: 0 change(s)"),
        "{}",
        text(&changes)
    );
    assert_eq!(
        String::from_utf8_lossy(&changes.stdout).lines().count(),
        1,
        "the header only: {}",
        text(&changes)
    );
    // The prefix exists, the host does not: the unknown-host error.
    assert_eq!(history.status.code(), Some(1), "{}", text(&history));
    assert!(
        stderr(&history).contains(&format!(
            "unknown host 'web-01': no host of that name or machine id in {prefix}-hosts (0 hosts known)"
        )),
        "{}",
        text(&history)
    );
    assert_eq!(drift.status.code(), Some(1), "{}", text(&drift));
    assert!(
        stderr(&drift).contains(&format!("{prefix}-packages holds no package state yet")),
        "{}",
        text(&drift)
    );
}

//! `pkgstream config check FILE`: the shipped example passes; a misspelt
//! key, a section that does not exist, a value of the wrong type and a value
//! that validation refuses each exit 1 with an error that names the key and
//! the file; a wrong `--config` does not stand in the way (only FILE is
//! checked); a password is never echoed. No service is needed: the check
//! does no I/O beyond reading FILE (the Helm chart's rendered ConfigMap is
//! checked with it by `helm/check.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use pkgstream_tests::binary;

/// `pkgstream [--config CFG] config check FILE`, with no `PKGSTREAM__`
/// variable inherited.
fn check(config: Option<&Path>, file: &Path) -> Output {
    let mut cmd = std::process::Command::new(binary("pkgstream"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PKGSTREAM__") {
            cmd.env_remove(k);
        }
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["config", "check"])
        .arg(file)
        .output()
        .expect("run pkgstream")
}

/// Writes `toml` to a file, checks it, and returns stderr after asserting
/// exit status 1 and that stderr names each of `named`.
fn refused(dir: &Path, name: &str, toml: &str, named: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    let out = check(None, &path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(out.stdout.is_empty(), "{name}: printed on stdout");
    for n in named.iter().chain([&name]) {
        assert!(
            stderr.contains(n),
            "{name}: error does not name {n}: {stderr}"
        );
    }
    stderr
}

#[test]
fn the_example_passes_and_each_mistake_names_its_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/pkgstream.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[nope]\n").unwrap();

    // --config points at a broken file: only FILE counts.
    let out = check(Some(&broken), &example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("pkgstream config check: {}: valid\n", example.display())
    );

    refused(
        dir.path(),
        "typo.toml",
        "[router]\nbatch_event = 5\n",
        &["unknown field `batch_event`", "router"],
    );
    refused(
        dir.path(),
        "section.toml",
        "[routr]\nbatch_ms = 5\n",
        &["unknown field `routr`"],
    );
    refused(
        dir.path(),
        "type.toml",
        "[search_sink]\nlanes = \"four\"\n",
        &["search_sink.lanes"],
    );
    refused(
        dir.path(),
        "zero.toml",
        "[router]\nbatch_ms = 0\n",
        &["router.batch_ms"],
    );
    refused(
        dir.path(),
        "url.toml",
        "[search_sink]\nurl = \"es.example.com:9200\"\n",
        &["search_sink.url"],
    );
    let stderr = refused(
        dir.path(),
        "secret.toml",
        "[search_sink]\npassword = \"hunter2\"\nurl = \"nope\"\n",
        &["search_sink.url"],
    );
    assert!(!stderr.contains("hunter2"), "password echoed: {stderr}");
    refused(dir.path(), "syntax.toml", "[router\n", &["line 1"]);

    let missing = dir.path().join("missing.toml");
    let out = check(None, &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

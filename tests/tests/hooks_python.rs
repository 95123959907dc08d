//! Runs the Python unit tests of the yum 3 plugin (against fakes of yum's
//! conduit API: no yum 3 runs on Debian) and of the dnf plugin's pure
//! logic, with the system python3 that dnf itself uses, so that
//! `cargo test --workspace` covers them. Asserts success and the exact
//! number of tests run, so a test silently not collected fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use pkgstream_tests::hooks::repo_root;

fn unittest(dir: &str, expected: usize) {
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-W",
            "error::ResourceWarning",
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            dir,
        ])
        .current_dir(repo_root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python unit tests in {dir} failed:\n{err}"
    );
    let ran = format!("Ran {expected} tests");
    assert!(err.contains(&ran), "expected `{ran}` in:\n{err}");
}

#[test]
fn yum3_plugin_unit_tests_pass() {
    unittest("producer/yum/tests", 10);
}

#[test]
fn dnf_plugin_logic_unit_tests_pass() {
    unittest("producer/dnf/tests", 6);
}

//! One digest per package: the header digest that the rpm plugin puts on a
//! change event is rpm's own `SHA256HEADER` (`rpm -q --qf
//! '%{SHA256HEADER}'`), the same one the inventory snapshot carries. Real
//! `rpm` transactions with the plugin in an install root, read back from the
//! real Kafka.
//!
//! Needs rpmbuild and createrepo_c (scripts/bootstrap.sh installs them) and
//! the broker of `scripts/services.sh start kafka`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use pkgstream_tests::hooks::*;
use pkgstream_tests::*;

fn ok(what: &str, out: &std::process::Output) {
    assert!(out.status.success(), "{what} failed: {}", text(out));
}

/// `sha256:<SHA256HEADER>` of installed package `name`, as rpm prints it.
fn rpm_header_digest(h: &HostRoot, name: &str) -> String {
    let out = h.rpm(&["-q", "--qf", "%{SHA256HEADER}", name]);
    ok(&format!("rpm -q {name}"), &out);
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "SHA256HEADER of {name}: '{hex}'"
    );
    format!("sha256:{}", hex.to_ascii_lowercase())
}

#[test]
fn change_events_and_snapshots_carry_rpm_s_sha256header() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hooks-digest");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let h = HostRoot::new(
        env,
        Hooks {
            rpm_plugin: true,
            dnf_plugin: true,
        },
    );
    let repo = TestRepo::shared();
    let p = |n: &str, v: &str| repo.rpm(n, v).display().to_string();

    // Plain rpm (source RPM) and dnf (source DNF): both go through the plugin.
    ok(
        "rpm -i",
        &h.rpm(&["-i", "--nodeps", &p("pa", "1.0"), &p("pb", "1.0")]),
    );
    ok("dnf install", &h.dnf(&["install", "pc"]));
    let rpm_says: BTreeMap<&str, String> = ["pa", "pb", "pc"]
        .into_iter()
        .map(|n| (n, rpm_header_digest(&h, n)))
        .collect();
    let distinct: std::collections::HashSet<&String> = rpm_says.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three packages, three digests: {rpm_says:?}"
    );

    // The snapshot of that root, taken while all three are installed.
    let inv = h
        .env
        .command(&[
            "inventory",
            "--root",
            &h.root.display().to_string(),
            "--dbpath",
            "/var/lib/rpm",
        ])
        .output()
        .expect("inventory");
    ok("inventory", &inv);
    // A removal: the event's digest is that of the header rpm erased.
    ok("rpm -e", &h.rpm(&["-e", "--nodeps", "pb"]));

    let events = read_changes(&h.env, 4);
    let mut got: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|e| (e.seen.action.clone(), e.seen.nvr.clone(), e.digest.clone()))
        .collect();
    got.sort();
    let want = |action: &str, name: &str| {
        (
            action.to_owned(),
            format!("{name}-1.0-1"),
            Some(rpm_says[name].clone()),
        )
    };
    assert_eq!(
        got,
        [
            want("INSTALL", "pa"),
            want("INSTALL", "pb"),
            want("INSTALL", "pc"),
            want("REMOVE", "pb"),
        ],
        "every event's digest is rpm -q --qf '%{{SHA256HEADER}}'"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.seen.source == "DNF")
            .map(|e| e.seen.nvr.as_str())
            .collect::<Vec<_>>(),
        ["pc-1.0-1"],
        "the dnf install went through the rpm plugin with dnf's context"
    );

    let snapshots = consume_all(
        &brokers,
        &h.env.inventory_topic,
        1,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(snapshots.len(), 1, "one snapshot");
    let s = pkgstream_schemas::decode_snapshot(&snapshots[0].value).expect("snapshot decodes");
    let in_snapshot: BTreeMap<&str, String> = s
        .packages
        .iter()
        .map(|p| {
            (
                &*p.name,
                p.digest.as_deref().map(str::to_owned).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        in_snapshot, rpm_says,
        "the snapshot carries the same digest per package"
    );
    println!(
        "digests agree for {} packages: {rpm_says:?}",
        rpm_says.len()
    );
}

//! Acceptance tests of the host hooks with the real dnf 4 and rpm of this
//! machine, in empty install roots, shipping through the real Kafka: exact
//! event lists for every kind of change, one event per change when the rpm
//! and dnf plugins are both active, plain `rpm` outside dnf, the dnf
//! plugin alone, Kafka down, and a missing, crashing or hanging emitter.
//!
//! Needs rpmbuild, createrepo_c and dnf (scripts/bootstrap.sh installs
//! them) and the broker of `scripts/services.sh start kafka`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pkgstream_tests::hooks::*;
use pkgstream_tests::*;

const BOTH: Hooks = Hooks {
    rpm_plugin: true,
    dnf_plugin: true,
};

fn host(name: &str, hooks: Hooks) -> HostRoot {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, name);
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    HostRoot::new(env, hooks)
}

fn ok(what: &str, out: &std::process::Output) {
    assert!(out.status.success(), "{what} failed: {}", text(out));
}

#[test]
fn dnf_changes_of_every_kind_arrive_once_each_with_dnf_context() {
    let h = host("hooks-dnf", BOTH);
    ok("install", &h.dnf(&["install", "pa-1.0"]));
    ok("upgrade", &h.dnf(&["upgrade", "pa"]));
    ok("downgrade", &h.dnf(&["downgrade", "pa"]));
    ok("reinstall", &h.dnf(&["reinstall", "pa"]));
    // pnew obsoletes pold: without obsoletes processing dnf installs pold itself.
    ok(
        "multi",
        &h.dnf(&["--setopt=obsoletes=False", "install", "pb", "pc", "pold"]),
    );
    ok("obsolete", &h.dnf(&["install", "pnew"]));
    ok("remove", &h.dnf(&["remove", "pc"]));
    let failed = h.dnf(&["install", "pfail"]);
    assert!(
        !failed.status.success(),
        "pfail must fail: {}",
        text(&failed)
    );
    assert!(
        String::from_utf8_lossy(&h.rpm(&["-qa"]).stdout)
            .lines()
            .all(|l| !l.starts_with("pfail")),
        "pfail got installed"
    );
    ok("install pd", &h.dnf(&["install", "pd"]));
    ok("history undo", &h.dnf(&["history", "undo", "last"]));

    let expected = vec![
        seen("DNF", "INSTALL", "pa-1.0-1", None),
        seen("DNF", "UPGRADE", "pa-3.0-1", Some("pa-1.0-1")),
        seen("DNF", "DOWNGRADE", "pa-2.0-1", Some("pa-3.0-1")),
        seen("DNF", "REINSTALL", "pa-2.0-1", Some("pa-2.0-1")),
        seen("DNF", "INSTALL", "pb-1.0-1", None),
        seen("DNF", "INSTALL", "pc-1.0-1", None),
        seen("DNF", "INSTALL", "pold-1.0-1", None),
        seen("DNF", "INSTALL", "pnew-1.0-1", None),
        seen("DNF", "OBSOLETE", "pold-1.0-1", Some("pnew-1.0-1")),
        seen("DNF", "REMOVE", "pc-1.0-1", None),
        seen("DNF", "INSTALL", "pd-1.0-1", None),
        seen("DNF", "REMOVE", "pd-1.0-1", None),
    ];
    let events = read_changes(&h.env, expected.len());
    let mut got: Vec<Seen> = events.iter().map(|e| e.seen.clone()).collect();
    // Within one transaction rpm orders elements its own way: compare the
    // multi-package transaction as a set, everything else in order.
    let mut want = expected.clone();
    got[4..7].sort();
    want[4..7].sort();
    assert_eq!(got, want, "exact event list");
    assert_one_per_change(&events);
    println!(
        "{} changes, {} events, {} distinct event ids",
        expected.len(),
        events.len(),
        events
            .iter()
            .map(|e| e.event_id)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );

    // dnf's context on every event: history id (one per dnf transaction,
    // increasing), the command line, the user; the repo on what was installed.
    let mut last_history = 0;
    for e in &events {
        let hid = e
            .history_id
            .unwrap_or_else(|| panic!("no history id: {e:?}"));
        assert!(hid >= last_history, "history ids go back: {events:#?}");
        last_history = hid;
        let cmd = e.command_line.as_deref().unwrap_or_default();
        assert!(
            cmd.starts_with("dnf ") && cmd.contains("--installroot="),
            "command line: {cmd}"
        );
        assert_eq!(e.login_user.as_deref(), Some("root"));
        assert_eq!(
            (e.machine_id.as_str(), e.hostname.as_str()),
            (MACHINE_ID, "test-host")
        );
        let forward = matches!(
            e.seen.action.as_str(),
            "INSTALL" | "UPGRADE" | "DOWNGRADE" | "REINSTALL"
        );
        assert_eq!(
            e.repo.as_deref(),
            if forward { Some("local") } else { None },
            "{e:?}"
        );
        assert_eq!(e.vendor.as_deref(), Some("Pkgstream Tests"));
        assert!(
            e.digest
                .as_deref()
                .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71),
            "{e:?}"
        );
        assert_eq!(e.size, Some(4));
    }
    assert!(events[0]
        .command_line
        .as_deref()
        .is_some_and(|c| c.ends_with("install pa-1.0")));
    assert!(events[11]
        .command_line
        .as_deref()
        .is_some_and(|c| c.ends_with("history undo last")));
    // Same transaction, same history id; the undo is its own transaction.
    assert_eq!(events[4].history_id, events[6].history_id);
    assert!(events[11].history_id > events[10].history_id);
    // The rpm transaction id is the one rpm stored in the rpmdb.
    assert_eq!(events[3].rpm_tid, h.installtid("pa"));
}

#[test]
fn rpm_by_hand_is_reported_with_source_rpm_and_no_dnf_context() {
    let h = host("hooks-rpm", BOTH);
    let repo = TestRepo::shared();
    let p = |n: &str, v: &str| repo.rpm(n, v).display().to_string();
    let mut h = h;
    h.extra_env.push(("SUDO_USER".into(), "alice".into()));
    ok("rpm -i", &h.rpm(&["-i", "--nodeps", &p("pa", "1.0")]));
    ok(
        "rpm -U",
        &h.rpm(&["-U", "--nodeps", &p("pa", "2.0"), &p("pb", "1.0")]),
    );
    ok(
        "rpm -U --oldpackage",
        &h.rpm(&["-U", "--nodeps", "--oldpackage", &p("pa", "1.0")]),
    );
    ok(
        "rpm --reinstall",
        &h.rpm(&["--reinstall", "--nodeps", &p("pa", "1.0")]),
    );
    ok("rpm -e", &h.rpm(&["-e", "--nodeps", "pb"]));
    let failed = h.rpm(&["-U", "--nodeps", &p("pfail", "1.0")]);
    assert!(
        !failed.status.success(),
        "pfail must fail: {}",
        text(&failed)
    );
    ok(
        "rpm --test",
        &h.rpm(&["-U", "--test", "--nodeps", &p("pc", "1.0")]),
    );

    let expected = vec![
        seen("RPM", "INSTALL", "pa-1.0-1", None),
        seen("RPM", "UPGRADE", "pa-2.0-1", Some("pa-1.0-1")),
        seen("RPM", "INSTALL", "pb-1.0-1", None),
        seen("RPM", "DOWNGRADE", "pa-1.0-1", Some("pa-2.0-1")),
        seen("RPM", "REINSTALL", "pa-1.0-1", Some("pa-1.0-1")),
        seen("RPM", "REMOVE", "pb-1.0-1", None),
    ];
    let events = read_changes(&h.env, expected.len());
    let mut got: Vec<Seen> = events.iter().map(|e| e.seen.clone()).collect();
    let mut want = expected.clone();
    got[1..3].sort();
    want[1..3].sort();
    assert_eq!(
        got, want,
        "exact event list (the failed install and the --test run report nothing)"
    );
    assert_one_per_change(&events);
    for e in &events {
        assert_eq!(e.history_id, None, "not via dnf: {e:?}");
        assert_eq!(e.repo, None);
        assert!(
            e.command_line
                .as_deref()
                .is_some_and(|c| c.starts_with("rpm --root")),
            "{e:?}"
        );
        assert_eq!(
            e.login_user.as_deref(),
            Some("alice"),
            "SUDO_USER when the login uid is unset"
        );
    }
}

#[test]
fn dnf_plugin_alone_records_the_same_changes_from_dnf_s_view() {
    let h = host(
        "hooks-dnfonly",
        Hooks {
            rpm_plugin: false,
            dnf_plugin: true,
        },
    );
    ok("install", &h.dnf(&["install", "pa-1.0", "pb"]));
    let tid_install = h.installtid("pa");
    ok("upgrade", &h.dnf(&["upgrade", "pa"]));
    let tid_upgrade = h.installtid("pa");
    ok("remove", &h.dnf(&["remove", "pb"]));
    let expected = [
        seen("DNF", "INSTALL", "pa-1.0-1", None),
        seen("DNF", "INSTALL", "pb-1.0-1", None),
        seen("DNF", "UPGRADE", "pa-3.0-1", Some("pa-1.0-1")),
        seen("DNF", "REMOVE", "pb-1.0-1", None),
    ];
    let events = read_changes(&h.env, expected.len());
    let mut got: Vec<Seen> = events.iter().map(|e| e.seen.clone()).collect();
    got[0..2].sort();
    assert_eq!(got, expected);
    assert_one_per_change(&events);
    // rpm_tid read back from the rpmdb: the same event id the rpm plugin would give.
    assert_eq!(
        (events[0].rpm_tid, events[2].rpm_tid),
        (tid_install, tid_upgrade)
    );
    let id = pkgstream_schemas::change_event_id(
        MACHINE_ID,
        pkgstream_schemas::Action::Upgrade,
        "pa",
        None,
        "3.0",
        "1",
        "noarch",
        tid_upgrade,
    );
    assert_eq!(events[2].event_id, id.0);
    assert!(events.iter().all(|e| e.history_id.is_some()
        && e.command_line
            .as_deref()
            .is_some_and(|c| c.starts_with("dnf "))));
}

#[test]
fn kafka_down_during_the_transaction_dnf_succeeds_and_events_ship_later() {
    let brokers = kafka_brokers();
    // Port 1: nothing listens. Short background flushes so they give up fast.
    let mut env = EmitEnv::new("127.0.0.1:1", "hooks-kafkadown");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    env.vars
        .push(("PKGSTREAM_EMIT__FLUSH__TIMEOUT_SECS".into(), "2".into()));
    let mut h = HostRoot::new(env, BOTH);
    let started = Instant::now();
    ok(
        "install with Kafka down",
        &h.dnf(&["install", "pa-1.0", "pb"]),
    );
    ok("upgrade with Kafka down", &h.dnf(&["upgrade", "pa"]));
    let took = started.elapsed();
    println!("two dnf transactions with Kafka down took {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "dnf stalled by the hooks: {took:?}"
    );
    let status = h.env.command(&["status"]).output().expect("status");
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains(" 0 bytes of change"),
        "events must wait in the spool: {}",
        String::from_utf8_lossy(&status.stdout)
    );

    // Kafka "comes back": the same spool now points at the real broker.
    h.env
        .vars
        .retain(|(k, _)| k != "PKGSTREAM_EMIT__KAFKA__BROKERS");
    h.env
        .vars
        .push(("PKGSTREAM_EMIT__KAFKA__BROKERS".into(), brokers));
    let events = read_changes(&h.env, 3);
    let mut got: Vec<Seen> = events.iter().map(|e| e.seen.clone()).collect();
    got[0..2].sort();
    assert_eq!(
        got,
        [
            seen("DNF", "INSTALL", "pa-1.0-1", None),
            seen("DNF", "INSTALL", "pb-1.0-1", None),
            seen("DNF", "UPGRADE", "pa-3.0-1", Some("pa-1.0-1"))
        ]
    );
    assert_one_per_change(&events);
}

/// A stand-in emitter script in the host's temp dir.
fn fake_emitter(h: &HostRoot, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = h.env.dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

fn set_emitter(h: &mut HostRoot, path: &str) {
    h.extra_env.retain(|(k, _)| k != "PKGSTREAM_EMIT");
    h.extra_env.push(("PKGSTREAM_EMIT".into(), path.into()));
}

#[test]
fn emitter_missing_crashing_or_hanging_never_fails_dnf_or_rpm() {
    let mut h = host("hooks-broken", BOTH);
    h.extra_env
        .push(("PKGSTREAM_HOOK_TIMEOUT_MS".into(), "1000".into()));
    let repo = TestRepo::shared();
    let crash = fake_emitter(&h, "crash.sh", "kill -SEGV $$");
    let hang = fake_emitter(&h, "hang.sh", "exec sleep 60");

    // Missing: dnf and rpm succeed and say why.
    set_emitter(&mut h, "/nonexistent/pkgstream-emit");
    let out = h.dnf(&["install", "pa-1.0"]);
    ok("dnf with the emitter missing", &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pkgstream: 1 change(s) of rpm transaction")
            && err.contains("cannot run /nonexistent/pkgstream-emit: No such file"),
        "dnf must say why: {}",
        text(&out)
    );
    let out = h.rpm(&[
        "-U",
        "--nodeps",
        &repo.rpm("pb", "1.0").display().to_string(),
    ]);
    ok("rpm with the emitter missing", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pkgstream: 1 change(s) of transaction"),
        "rpm must say why: {}",
        text(&out)
    );

    // Crashing (SIGSEGV): both succeed and name the signal.
    set_emitter(&mut h, &crash);
    let out = h.dnf(&["upgrade", "pa"]);
    ok("dnf with a crashing emitter", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signal: 11"),
        "{}",
        text(&out)
    );
    let out = h.rpm(&["-e", "--nodeps", "pb"]);
    ok("rpm with a crashing emitter", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signal: 11"),
        "{}",
        text(&out)
    );

    // Hanging: killed after the 1 s timeout, the package manager goes on.
    set_emitter(&mut h, &hang);
    let started = Instant::now();
    let out = h.dnf(&["remove", "pa"]);
    let took = started.elapsed();
    ok("dnf with a hanging emitter", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("did not finish within 1000 ms and was killed"),
        "{}",
        text(&out)
    );
    assert!(
        took < Duration::from_secs(15),
        "dnf took {took:?} with a hanging emitter"
    );
    let started = Instant::now();
    let out = h.rpm(&[
        "-i",
        "--nodeps",
        &repo.rpm("pc", "1.0").display().to_string(),
    ]);
    let took_rpm = started.elapsed();
    ok("rpm with a hanging emitter", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was killed"),
        "{}",
        text(&out)
    );
    assert!(took_rpm < Duration::from_secs(5), "rpm took {took_rpm:?}");
    println!(
        "hanging emitter: dnf remove took {took:?}, rpm -i took {took_rpm:?} (hook timeout 1 s)"
    );

    // The packages really changed.
    let installed =
        String::from_utf8_lossy(&h.rpm(&["-qa", "--qf", "%{NAME}-%{VERSION}\\n"]).stdout)
            .into_owned();
    let mut installed: Vec<&str> = installed.lines().collect();
    installed.sort();
    assert_eq!(installed, ["pc-1.0"]);
}

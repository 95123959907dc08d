//! The pipeline against the secured Kafka of `scripts/services.sh start
//! kafka-secure` (see `pkgstream_tests::secure_kafka`): hosts ship over mTLS as
//! the host principal, the router and both sinks run over SASL_SSL with
//! SCRAM-SHA-512 as their own principals, under least-privilege ACLs.
//!
//! - the events recorded into a host's spool reach the enriched topic, the
//!   search engine and Prometheus exactly once each;
//! - each denial (host principal writing the hosts topic or reading the
//!   enriched one, a wrong SCRAM password, an untrusted CA, plaintext to a
//!   TLS port) is one error line naming Kafka, the address and the cause,
//!   with a non-zero exit, and the spool keeps every event: a good flush
//!   afterwards ships them all;
//! - a distinctive password appears in no output of any failure path nor
//!   in `--help`;
//! - the ACLs the broker runs with are those `pkgstream acls --print
//!   --pattern prefixed` prints;
//! - plaintext to a broker off the loopback with no `security_protocol`
//!   set logs a warning (not when PLAINTEXT is chosen).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pkgstream_tests::pipeline::{daily_window, write_hosts_csv};
use pkgstream_tests::router::read_all;
use pkgstream_tests::secure_kafka::{override_vars, SecureKafka};
use pkgstream_tests::sinks::{count, prom_query, wait_count};
use pkgstream_tests::{binary, change_line, unique, EmitEnv, Running};

const LIMIT: Duration = Duration::from_secs(90);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The error line of a failed command (`pkgstream[-emit]: error: ...`):
/// exactly one.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pkgstream-emit: error:") || l.starts_with("pkgstream: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    lines[0].to_owned()
}

#[test]
fn spooled_changes_cross_mtls_and_sasl_ssl_and_reach_search_and_prometheus_exactly_once() {
    let k = SecureKafka::get();
    let mut router = k.router_env("e2e");
    let tag = unique("sec").to_lowercase();
    let group = format!("{tag}-web");
    let hosts = 3;
    let per_host = 12;
    let lines: Vec<String> = (0..hosts)
        .flat_map(|h| (0..per_host).map(move |i| change_line(h * 100 + i, h + 1)))
        .collect();
    let csv_dir = tempfile::tempdir().unwrap();
    let csv = csv_dir.path().join("hosts.csv");
    let window = daily_window(chrono::Utc::now() - chrono::Duration::hours(2), 4);
    let names: Vec<String> = (1..=hosts).map(|h| format!("web-{h:04}")).collect();
    let rows: Vec<(&str, &str, &str, String)> = names
        .iter()
        .map(|n| (n.as_str(), group.as_str(), "prod", window.clone()))
        .collect();
    write_hosts_csv(&csv, &rows);
    router.vars.push((
        "PKGSTREAM__ROUTER__HOSTS_FILE".into(),
        csv.display().to_string(),
    ));

    // The host: every change recorded, the first host's a second time (a
    // retried hook), then one flush over mTLS.
    let emit = k.host_env(&router, "e2e");
    let out = emit.record(&lines);
    assert!(out.status.success(), "record: {}", text(&out));
    let out = emit.record(&lines[..per_host]);
    assert!(out.status.success(), "record again: {}", text(&out));
    let out = emit.flush(&[]);
    assert!(out.status.success(), "flush over mTLS: {}", text(&out));
    let sent = lines.len() + per_host;
    let raw = read_all(
        &k.sasl,
        &router.changes_raw,
        sent,
        Duration::from_secs(2),
        LIMIT,
    );
    assert_eq!(raw.len(), sent, "raw topic after the mTLS flush");

    // Router and both sinks over SASL_SSL, each as its own principal.
    let router_proc = Running(router.start());
    router.wait_ready(LIMIT);
    let sinks = k.sink_env(&router, "sec");
    let search = sinks.start("search", &[]);
    let metrics = sinks.start("metrics", &[]);

    let distinct = lines.len();
    let enriched = read_all(
        &k.sasl,
        &router.enriched,
        distinct,
        Duration::from_secs(3),
        LIMIT,
    );
    assert_eq!(
        enriched.len(),
        distinct,
        "one enriched record per change (the retried ones dropped)"
    );
    wait_count(&sinks.changes(), distinct as u64, LIMIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&sinks.changes()), distinct as u64, "documents");

    let q = format!("pkgstream_fleet_package_changes_total{{hostgroup=\"{group}\"}}");
    let started = Instant::now();
    let total = loop {
        let total: f64 = prom_query(&q)
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            .sum();
        if total as usize == distinct || started.elapsed() > LIMIT {
            break total as usize;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(total, distinct, "change counters in Prometheus ({q})");

    assert!(metrics.stop().success(), "metrics sink exit");
    assert!(search.stop().success(), "search sink exit");
    assert!(router_proc.stop().success(), "router exit");
}

/// A flush that must fail: exit `code`, one error line naming Kafka,
/// `addr` and `cause`, nothing shipped.
fn assert_denied(emit: &EmitEnv, code: i32, addr: &str, cause: &str) -> String {
    let out = emit.flush(&["--timeout", "15"]);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    let line = error_line(&out);
    for want in ["Kafka at", addr, cause, "stay spooled"] {
        assert!(line.contains(want), "'{want}' missing from: {line}");
    }
    line
}

#[test]
fn denials_are_one_line_errors_naming_kafka_the_address_and_the_cause_and_lose_nothing() {
    let k = SecureKafka::get();
    let router = k.router_env("deny");
    let lines: Vec<String> = (0..5).map(|i| change_line(i, 7)).collect();

    // The host principal writing to the hosts topic: refused by the ACLs.
    let mut emit = k.host_env(&router, "deny");
    assert!(emit.record(&lines).status.success());
    let good = emit.vars.clone();
    override_vars(
        &mut emit.vars,
        vec![(
            "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW".into(),
            router.hosts.clone(),
        )],
    );
    assert_denied(&emit, 77, &k.mtls, "authorization failed");

    // A wrong SCRAM password.
    emit.vars = good.clone();
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-password\n").unwrap();
    override_vars(
        &mut emit.vars,
        vec![
            ("PKGSTREAM_EMIT__KAFKA__BROKERS".into(), k.sasl.clone()),
            (
                "PKGSTREAM_EMIT__KAFKA__SECURITY_PROTOCOL".into(),
                "SASL_SSL".into(),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SASL_MECHANISM".into(),
                "SCRAM-SHA-512".into(),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SASL_USERNAME".into(),
                "pkgstream-router".into(),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SASL_PASSWORD_FILE".into(),
                wrong.path().display().to_string(),
            ),
        ],
    );
    emit.vars
        .retain(|(k, _)| !k.contains("SSL_CERTIFICATE_FILE") && !k.contains("SSL_KEY_FILE"));
    assert_denied(&emit, 75, &k.sasl, "Authentication failed");

    // A CA that did not sign the broker's certificate.
    emit.vars = good.clone();
    override_vars(
        &mut emit.vars,
        vec![(
            "PKGSTREAM_EMIT__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    assert_denied(&emit, 75, &k.mtls, "certificate verify failed");

    // Plaintext to the TLS port.
    emit.vars = good.clone();
    emit.vars
        .retain(|(k, _)| !k.starts_with("PKGSTREAM_EMIT__KAFKA__") || k.ends_with("__BROKERS"));
    assert_denied(
        &emit,
        75,
        &k.mtls,
        "a TLS listener? kafka.security_protocol is PLAINTEXT",
    );

    // Nothing was lost: the right configuration ships every event once.
    emit.vars = good;
    let out = emit.flush(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = read_all(
        &k.sasl,
        &router.changes_raw,
        lines.len(),
        Duration::from_secs(2),
        LIMIT,
    );
    assert_eq!(raw.len(), lines.len(), "every spooled event, once");
    let hosts = read_all(
        &k.sasl,
        &router.hosts,
        0,
        Duration::ZERO,
        Duration::from_secs(3),
    );
    assert_eq!(
        hosts.len(),
        0,
        "the denied writes left nothing in the hosts topic"
    );

    // The host principal reading the enriched topic.
    let out = Command::new(binary("pkgstream"))
        .args(["tail", "--topic", &router.enriched, "--from-beginning"])
        .args(["--max", "1", "--idle-secs", "5"])
        .env_remove("PKGSTREAM_CONFIG")
        .envs(k.host_vars("PKGSTREAM"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let line = error_line(&out);
    for want in [
        "Kafka at",
        &k.mtls,
        &router.enriched,
        "authorization failed",
    ] {
        assert!(line.contains(want), "'{want}' missing from: {line}");
    }
}

/// `pkgstream ARGS` with `vars` (and nothing else of the environment's
/// pkgstream settings).
fn central(args: &[&str], vars: &[(String, String)]) -> Output {
    Command::new(binary("pkgstream"))
        .args(args)
        .env_remove("PKGSTREAM_CONFIG")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn tail_and_replay_as_the_query_principal_read_and_their_denials_are_one_line_naming_the_cause() {
    let k = SecureKafka::get();
    let router = k.router_env("cli");
    // Two enriched records (the admin writes them): read back by the
    // query principal, which holds no group ACL beyond finding its groups'
    // coordinator.
    let sc = pkgstream_tests::sinks::scenario("cli", 1, 2, 2, 0);
    pkgstream_tests::router::send(&router.producer(), &router.enriched, &sc.records());
    let good = k.central_vars("pkgstream-query");
    let tail = [
        "tail",
        "--topic",
        &router.enriched,
        "--from-beginning",
        "--max",
        "2",
        "--idle-secs",
        "10",
    ];
    let replay = ["replay", "--from", "1h", "--topic", &router.enriched];
    for args in [&tail[..], &replay[..]] {
        let out = central(args, &good);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            2,
            "{args:?}: {}",
            text(&out)
        );
    }

    // Each denial: a non-zero exit and one line on stderr, the error,
    // naming Kafka, the address and what was wrong.
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-password\n").unwrap();
    let mut wrong_password = good.clone();
    override_vars(
        &mut wrong_password,
        vec![(
            "PKGSTREAM__KAFKA__SASL_PASSWORD_FILE".into(),
            wrong.path().display().to_string(),
        )],
    );
    let mut untrusted_ca = good.clone();
    override_vars(
        &mut untrusted_ca,
        vec![(
            "PKGSTREAM__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    let plaintext = vec![("PKGSTREAM__KAFKA__BROKERS".to_owned(), k.sasl.clone())];
    let cases = [
        (
            "wrong SCRAM password",
            &wrong_password,
            "SASL authentication error: Authentication failed",
        ),
        ("untrusted CA", &untrusted_ca, "certificate verify failed"),
        (
            "plaintext to the TLS port",
            &plaintext,
            "a TLS listener? kafka.security_protocol is PLAINTEXT",
        ),
    ];
    // Each command waits out its metadata timeout: all at once.
    let outs: Vec<(&str, &str, &[&str], Output)> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .flat_map(|&(what, vars, cause)| {
                [&tail[..], &replay[..]]
                    .map(|args| scope.spawn(move || (what, cause, args, central(args, vars))))
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outs.len(), 6);
    for (what, cause, args, out) in outs {
        assert!(!out.status.success(), "{what} {args:?}: {}", text(&out));
        let line = error_line(&out);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().count(),
            1,
            "{what} {args:?}: one line only: {}",
            text(&out)
        );
        for want in ["Kafka at", &k.sasl, cause] {
            assert!(
                line.contains(want),
                "{what} {args:?}: '{want}' missing from: {line}"
            );
        }
    }
}

#[test]
fn a_distinctive_password_appears_in_no_output_of_any_failure_path() {
    let k = SecureKafka::get();
    let router = k.router_env("leak");
    let secret = format!("Leak-Canary-{}", unique("pw"));
    let mut seen = String::new();

    // The emitter with the password in the environment: wrong password,
    // then a conflicting configuration (password and password file).
    let mut emit = k.host_env(&router, "leak");
    assert!(emit.record(&[change_line(1, 9)]).status.success());
    emit.vars
        .retain(|(k, _)| !k.starts_with("PKGSTREAM_EMIT__KAFKA__"));
    let sasl = |password_var: &str| {
        vec![
            ("PKGSTREAM_EMIT__KAFKA__BROKERS".to_owned(), k.sasl.clone()),
            (
                "PKGSTREAM_EMIT__KAFKA__SECURITY_PROTOCOL".to_owned(),
                "SASL_SSL".to_owned(),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SSL_CA_FILE".to_owned(),
                k.file("ca.pem"),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SASL_MECHANISM".to_owned(),
                "SCRAM-SHA-512".to_owned(),
            ),
            (
                "PKGSTREAM_EMIT__KAFKA__SASL_USERNAME".to_owned(),
                "pkgstream-router".to_owned(),
            ),
            (password_var.to_owned(), secret.clone()),
        ]
    };
    override_vars(&mut emit.vars, sasl("PKGSTREAM_EMIT__KAFKA__SASL_PASSWORD"));
    emit.vars.push(("RUST_LOG".into(), "debug".into()));
    let out = emit.flush(&["--timeout", "10"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        text(&out).contains("Authentication failed"),
        "{}",
        text(&out)
    );
    seen += &text(&out);
    emit.vars.push((
        "PKGSTREAM_EMIT__KAFKA__SASL_PASSWORD_FILE".into(),
        "/nonexistent".into(),
    ));
    let out = emit.flush(&[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("not both"), "{}", text(&out));
    seen += &text(&out);
    let out = emit.command(&["--help"]).output().unwrap();
    seen += &text(&out);
    let out = emit.command(&["flush", "--help"]).output().unwrap();
    seen += &text(&out);

    // The router with the password in the environment: it retries; its
    // log shows the authentication failure, never the password.
    let mut vars = router.vars.clone();
    override_vars(
        &mut vars,
        vec![("PKGSTREAM__KAFKA__SASL_PASSWORD".into(), secret.clone())],
    );
    vars.retain(|(k, _)| k != "PKGSTREAM__KAFKA__SASL_PASSWORD_FILE");
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(binary("pkgstream"))
        .arg("router")
        .env_remove("PKGSTREAM_CONFIG")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let router_proc = Running(child);
    let started = Instant::now();
    while !std::fs::read_to_string(log.path())
        .unwrap()
        .contains("Authentication failed")
    {
        assert!(
            started.elapsed() < LIMIT,
            "the router never logged the authentication failure:\n{}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    router_proc.stop();
    seen += &std::fs::read_to_string(log.path()).unwrap();

    // tail with the password, and every --help.
    let out = Command::new(binary("pkgstream"))
        .args([
            "tail",
            "--topic",
            &router.enriched,
            "--max",
            "1",
            "--idle-secs",
            "3",
        ])
        .env_remove("PKGSTREAM_CONFIG")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!out.status.success());
    seen += &text(&out);
    for args in [
        &["--help"][..],
        &["router", "--help"],
        &["tail", "--help"],
        &["replay", "--help"],
        &["acls", "--help"],
        &["sink", "search", "--help"],
    ] {
        let out = Command::new(binary("pkgstream"))
            .args(args)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        seen += &text(&out);
    }
    assert!(seen.len() > 1000, "the failure paths said something");
    assert_eq!(
        seen.matches(&secret).count(),
        0,
        "the password leaked:\n{seen}"
    );
}

#[test]
fn the_broker_runs_with_the_acls_that_pkgstream_acls_prints() {
    let k = SecureKafka::get();
    let applied = std::fs::read_to_string(k.pki.join("../acls.applied")).expect("acls.applied");
    let out = Command::new(binary("pkgstream"))
        .args(["acls", "--print", "--pattern", "prefixed"])
        .env_remove("PKGSTREAM_CONFIG")
        .env("PKGSTREAM__KAFKA__BROKERS", &k.sasl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(" --add ")
                .map(|(_, rest)| format!("--add {rest}"))
        })
        .collect();
    let applied: Vec<&str> = applied.lines().collect();
    assert_eq!(printed, applied);
}

#[test]
fn plaintext_to_a_broker_off_the_loopback_is_warned_about_unless_chosen() {
    // TEST-NET-1: not the loopback, and nothing answers there.
    let emit = EmitEnv::new("192.0.2.1:9092", "plain");
    assert!(emit.record(&[change_line(1, 3)]).status.success());
    let warning = "plaintext to a broker off the loopback";
    let out = emit.flush(&["--timeout", "2"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert_eq!(text(&out).matches(warning).count(), 1, "{}", text(&out));
    let out = emit
        .command(&["flush", "--timeout", "2"])
        .env("PKGSTREAM_EMIT__KAFKA__SECURITY_PROTOCOL", "PLAINTEXT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(!text(&out).contains(warning), "{}", text(&out));
}

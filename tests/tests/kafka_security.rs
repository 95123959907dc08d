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

/// The router on `vars`, its log (debug) going to `log`.
fn router_logged(vars: &[(String, String)], log: &std::path::Path) -> Running {
    router_logged_at(vars, log, "debug")
}

/// The router on `vars`, its log at `level` going to `log`.
fn router_logged_at(vars: &[(String, String)], log: &std::path::Path, level: &str) -> Running {
    Running(
        Command::new(binary("pkgstream"))
            .arg("router")
            .env_remove("PKGSTREAM_CONFIG")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn wait_log(path: &std::path::Path, needles: &[&str]) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().any(|n| log.contains(n)) {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "none of {needles:?} in {}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_metric(port: u16, series: &str, want: f64) {
    let started = Instant::now();
    while pkgstream_tests::scrape_metric(port, series) != want {
        assert!(
            started.elapsed() < LIMIT,
            "{series} on :{port} is {}, not {want}",
            pkgstream_tests::scrape_metric(port, series)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The whole `/metrics` text on `port`.
fn scrape_all(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `vars` with the Kafka password in the environment instead of its file.
fn password_in_env(vars: &mut Vec<(String, String)>, password: String) {
    vars.retain(|(k, _)| k != "PKGSTREAM__KAFKA__SASL_PASSWORD_FILE");
    vars.push(("PKGSTREAM__KAFKA__SASL_PASSWORD".into(), password));
}

#[test]
fn no_password_leaks_when_kafka_presents_an_untrusted_ca_or_goes_down_mid_stream() {
    // A secured broker of this test's own: it is killed below.
    let private = pkgstream_tests::secure_kafka::PrivateSecureKafka::started();
    let k = &private.kafka;
    let engine = pkgstream_tests::secure::engine();
    let prom = pkgstream_tests::secure::prometheus();
    let secrets = [
        k.password("pkgstream-router"),
        k.password("pkgstream-sink"),
        k.password("pkgstream-query"),
        engine.password("pkgstream-sink"),
        prom.password(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut seen = String::new();

    // Every central stage with its passwords in the environment (where a
    // careless error would print them), over SASL_SSL to the private
    // broker, the search sink into the secured engine, the metrics sink
    // into the secured Prometheus.
    let router = k.router_env("down");
    let mut router_vars = router.vars.clone();
    password_in_env(&mut router_vars, k.password("pkgstream-router"));
    let sinks = k.sink_env(&router, "down");
    let prefix = format!("pkgstream-{}", sinks.prefix);
    let mut sinks = sinks.with_prefix(&prefix);
    password_in_env(&mut sinks.vars, k.password("pkgstream-sink"));
    let engine_vars: Vec<(String, String)> = vec![
        ("PKGSTREAM__SEARCH_SINK__URL".into(), engine.url.clone()),
        (
            "PKGSTREAM__SEARCH_SINK__USERNAME".into(),
            "pkgstream-sink".into(),
        ),
        (
            "PKGSTREAM__SEARCH_SINK__PASSWORD".into(),
            engine.password("pkgstream-sink"),
        ),
        ("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE".into(), engine.ca()),
    ];
    let mut prom_vars: Vec<(String, String)> = prom
        .vars()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("PASSWORD_FILE"))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    prom_vars.push((
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD".into(),
        prom.password(),
    ));
    override_vars(&mut sinks.vars, engine_vars);
    override_vars(&mut sinks.vars, prom_vars);
    let mut query_vars = k.central_vars("pkgstream-query");
    password_in_env(&mut query_vars, k.password("pkgstream-query"));

    // 1. A CA that did not sign the broker's certificate: each stage says
    // so, and nothing else.
    let mut rogue = router_vars.clone();
    override_vars(
        &mut rogue,
        vec![(
            "PKGSTREAM__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    let verify = ["certificate verify failed"];
    let r = router_logged(&rogue, &log("router-ca"));
    wait_log(&log("router-ca"), &verify);
    r.stop();
    let mut rogue_sinks = sinks.clone();
    override_vars(
        &mut rogue_sinks.vars,
        vec![(
            "PKGSTREAM__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    for kind in ["search", "metrics"] {
        let path = log(&format!("{kind}-ca"));
        let s = rogue_sinks.start_logged(kind, &[], std::fs::File::create(&path).unwrap());
        wait_log(&path, &verify);
        seen += &scrape_all(s.port);
        s.stop();
    }
    let mut rogue_query = query_vars.clone();
    override_vars(
        &mut rogue_query,
        vec![(
            "PKGSTREAM__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    let out = central(
        &["replay", "--from", "1h", "--topic", &router.enriched],
        &rogue_query,
    );
    assert!(text(&out).contains(verify[0]), "{}", text(&out));
    seen += &text(&out);

    // 2. The pipeline running: a host's changes reach both sinks.
    let emit = k.host_env(&router, "down");
    let lines: Vec<String> = (0..20).map(|i| change_line(i, 5)).collect();
    assert!(emit.record(&lines).status.success());
    let out = emit.flush(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let router_proc = router_logged(&router_vars, &log("router"));
    let search = sinks.start_logged("search", &[], std::fs::File::create(log("search")).unwrap());
    let metrics = sinks.start_logged(
        "metrics",
        &[],
        std::fs::File::create(log("metrics")).unwrap(),
    );
    let n = lines.len() as f64;
    wait_metric(
        search.port,
        "pkgstream_search_sink_events_total{outcome=\"indexed\"}",
        n,
    );
    wait_metric(
        metrics.port,
        "pkgstream_metrics_sink_events_total{outcome=\"counted\"}",
        n,
    );

    // 3. Kafka down mid-stream: every stage keeps trying and says why.
    private.kill();
    let refused = [
        "Connection refused",
        "Broker transport failure",
        "brokers are down",
    ];
    for name in ["router", "search", "metrics"] {
        wait_log(&log(name), &refused);
    }
    assert!(emit.record(&lines[..5]).status.success());
    let out = emit.flush(&["--timeout", "5"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    seen += &text(&out);
    let emit_sasl = {
        let mut v = emit.vars.clone();
        v.retain(|(k, _)| !k.starts_with("PKGSTREAM_EMIT__KAFKA__"));
        v.extend(
            query_vars
                .iter()
                .map(|(k, v)| (k.replace("PKGSTREAM__", "PKGSTREAM_EMIT__"), v.clone())),
        );
        v
    };
    let out = emit
        .command(&["flush", "--timeout", "5"])
        .env_clear()
        .envs(emit_sasl.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    seen += &text(&out);
    for args in [
        &["replay", "--from", "1h", "--topic", &router.enriched][..],
        &[
            "tail",
            "--topic",
            &router.enriched,
            "--max",
            "1",
            "--idle-secs",
            "3",
        ],
    ] {
        let out = central(args, &query_vars);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        seen += &text(&out);
    }
    seen += &scrape_all(router.metrics_port);
    seen += &scrape_all(search.port);
    seen += &scrape_all(metrics.port);
    search.stop();
    metrics.stop();
    router_proc.stop();
    for name in [
        "router-ca",
        "search-ca",
        "metrics-ca",
        "router",
        "search",
        "metrics",
    ] {
        let text = std::fs::read_to_string(log(name)).unwrap();
        assert!(!text.is_empty(), "{name} logged nothing");
        seen += &text;
    }
    assert!(seen.len() > 10_000, "the failure paths said something");
    for s in &secrets {
        assert_eq!(
            seen.matches(s.as_str()).count(),
            0,
            "a password leaked:\n{}",
            seen.lines()
                .filter(|l| l.contains(s.as_str()))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn the_router_says_which_kafka_refuses_it_and_why_at_the_default_log_level() {
    let k = SecureKafka::get();
    let router = k.router_env("why");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let mut wrong_password = router.vars.clone();
    override_vars(
        &mut wrong_password,
        vec![(
            "PKGSTREAM__KAFKA__SASL_PASSWORD_FILE".into(),
            wrong.display().to_string(),
        )],
    );
    let mut untrusted_ca = router.vars.clone();
    override_vars(
        &mut untrusted_ca,
        vec![(
            "PKGSTREAM__KAFKA__SSL_CA_FILE".into(),
            k.file("rogue-ca.pem"),
        )],
    );
    override_vars(
        &mut untrusted_ca,
        vec![(
            "PKGSTREAM__ROUTER__METRICS_LISTEN".into(),
            format!("127.0.0.1:{}", pkgstream_tests::router::free_port()),
        )],
    );
    let cases = [
        (
            "wrong SCRAM password",
            &wrong_password,
            "SASL authentication error: Authentication failed",
        ),
        ("untrusted CA", &untrusted_ca, "certificate verify failed"),
    ];
    // Both at once: a router refused by Kafka takes its time to stop.
    std::thread::scope(|scope| {
        for (what, vars, cause) in cases {
            let log = dir.path().join(format!("{}.log", what.replace(' ', "-")));
            let sasl = &k.sasl;
            scope.spawn(move || {
                let proc = router_logged_at(vars, &log, "info");
                wait_log(&log, &["hosts topic not readable"]);
                proc.stop();
                let text = std::fs::read_to_string(&log).unwrap();
                let line = text
                    .lines()
                    .find(|l| l.contains("hosts topic not readable"))
                    .unwrap();
                for want in ["WARN", &format!("brokers={sasl}"), cause] {
                    assert!(line.contains(want), "{what}: '{want}' missing from: {line}");
                }
            });
        }
    });
}

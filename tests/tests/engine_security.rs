//! The search sink, the metrics sink and the query CLI against the secured
//! OpenSearch (TLS, basic auth, client certificates, least-privilege roles)
//! and the secured Prometheus (TLS, basic auth): exact results; each denial
//! is a one-line error naming the service, its address and the cause, with a
//! non-zero exit and nothing lost; and no secret shows in any log line,
//! error, `/metrics` or `--help` output on any failure path.
//!
//! Needs `scripts/services.sh start kafka opensearch-secure
//! prometheus-secure` (scripts/test.sh starts them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pkgstream_sinks::config::Secret;
use pkgstream_sinks::http::basic_auth;
use pkgstream_tests::secure::{self, SecureEngine};
use pkgstream_tests::sinks::*;
use pkgstream_tests::{binary, kafka_brokers, unique, Gate};
use rdkafka::consumer::{BaseConsumer, Consumer};

const LIMIT: Duration = Duration::from_secs(120);

/// A sink env whose index prefix the engine's roles cover (`pkgstream*`).
fn env(name: &str) -> SinkEnv {
    let e = SinkEnv::new(&kafka_brokers(), name);
    let prefix = format!("pkgstream-{}", e.prefix);
    e.with_prefix(&prefix)
}

fn vars(v: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    v.to_vec()
}

/// `pkgstream ARGS` on `env`'s indices with `extra` settings.
fn cli(env: &SinkEnv, args: &[&str], extra: &[(&str, String)]) -> Output {
    Command::new(binary("pkgstream"))
        .args(args)
        .env_remove("PKGSTREAM_CONFIG")
        .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &env.prefix)
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last non-empty line of a log, ANSI colours removed.
fn last_line(log: &str) -> String {
    let plain: String = strip_ansi(log);
    plain
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a sink that must stop on its own; returns its exit code and log.
fn sink_must_stop(env: &SinkEnv, kind: &str, extra: &[(&str, String)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.log");
    let file = std::fs::File::create(&path).unwrap();
    let mut sink = env.start_logged(kind, extra, file);
    let status = sink
        .child
        .wait_exit(LIMIT)
        .unwrap_or_else(|| panic!("the {kind} sink did not stop: {}", read(&path)));
    (status.code().unwrap_or(-1), read(&path))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Messages in `topic` (the sum of its partitions' high watermarks).
fn messages_in(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = pkgstream_tests::client_config(brokers).create().unwrap();
    (0..3)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

/// Asserts the one-line error of a denial: it names `service` at `addr`
/// and says `cause`.
fn assert_denial(what: &str, code: i32, log: &str, service: &str, addr: &str, cause: &[&str]) {
    let line = last_line(log);
    assert_ne!(code, 0, "{what}: exit 0\n{log}");
    assert!(
        line.contains(service) && line.contains(addr),
        "{what}: the last line does not name {service} at {addr}: {line}\n{log}"
    );
    assert!(
        cause.iter().any(|c| line.contains(c)),
        "{what}: the last line does not say {cause:?}: {line}"
    );
}

#[test]
fn sink_and_queries_over_tls_with_least_privilege_give_exact_results() {
    let (engine, prom) = secure::init();
    let env = env("sec-exact");
    let sc = scenario(&env.prefix, 30, 20, 12, 5);
    env.produce(&sc.records());
    let distinct = sc.changes.len() as u64;

    // The search sink with its client certificate (mutual TLS), the metrics
    // sink with basic auth over TLS.
    let search = env.start("search", &engine.cert_vars("pkgstream-sink"));
    let mut metrics_vars = prom.vars();
    metrics_vars.push((
        "PKGSTREAM__METRICS_SINK__WATCH_PACKAGES",
        "openssl-libs,kernel-core".into(),
    ));
    let metrics = env.start("metrics", &metrics_vars);
    wait_count(&env.changes(), distinct, LIMIT);
    wait_state(&env.packages(), &sc.expected_state(), LIMIT);
    let g = format!("hostgroup=~\"{}-.*\"", env.prefix);
    wait_for("the counters in the secured Prometheus", LIMIT, || {
        prom_value(&format!(
            "sum(pkgstream_fleet_package_changes_total{{{g}}})"
        )) == distinct as f64
    });
    assert!(search.stop().success());
    assert!(metrics.stop().success());

    // history as the read-only user (basic auth from its password file).
    let host = &sc.changes[0].host;
    let want: Vec<String> = sc
        .changes
        .iter()
        .filter(|c| c.host.machine_id == host.machine_id)
        .map(|c| c.event_id.to_hex())
        .collect();
    let out = cli(
        &env,
        &[
            "history",
            &host.hostname,
            "--since",
            "2026-10-01T00:00:00Z",
            "--json",
        ],
        &engine.basic_vars("pkgstream-query"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, want);

    // drift as the read-only user with its client certificate: every
    // (group, watched package) pair of the expected state is checked.
    let group_of: BTreeMap<&str, &str> = sc
        .changes
        .iter()
        .map(|c| (c.host.machine_id.as_ref(), c.enrichment.hostgroup.as_ref()))
        .collect();
    let mut pairs: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
    for (key, evr) in sc.expected_state() {
        let (mid, rest) = key.split_once('/').unwrap();
        let name = rest.strip_suffix(".x86_64").unwrap();
        if name == "openssl-libs" || name == "kernel-core" {
            pairs
                .entry((group_of[mid].to_owned(), name.to_owned()))
                .or_default()
                .insert(evr);
        }
    }
    let out = cli(
        &env,
        &[
            "drift",
            "--package",
            "openssl-libs",
            "--package",
            "kernel-core",
            "--format",
            "json",
        ],
        &engine.cert_vars("pkgstream-query"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checked"], pairs.len(), "{r}");
    assert_eq!(
        r["drift"].as_array().unwrap().len(),
        pairs.values().filter(|v| v.len() > 1).count(),
        "{r}"
    );

    // Least privilege: the query user cannot write, the sink user cannot
    // read outside its prefix.
    let as_user = |user: &str, method: &str, path: &str| -> u16 {
        let t = pkgstream_sinks::http::TlsConfig {
            ca_file: engine.ca(),
            ..Default::default()
        }
        .agent("test", Duration::from_secs(5), Duration::from_secs(30))
        .unwrap();
        let auth = basic_auth(user, &Secret(engine.password(user))).0;
        match t
            .request(method, &format!("{}{path}", engine.url))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string("{\"query\":{\"match_all\":{}}}")
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        as_user(
            "pkgstream-query",
            "PUT",
            &format!("/{}/_doc/x", env.hosts())
        ),
        403
    );
    let other = unique("other").to_lowercase();
    engine_call("PUT", &format!("/{other}"));
    assert_eq!(
        as_user("pkgstream-sink", "POST", &format!("/{other}/_search")),
        403
    );
    assert_eq!(
        as_user(
            "pkgstream-query",
            "POST",
            &format!("/{}/_search", env.hosts())
        ),
        200
    );
    engine_call("DELETE", &format!("/{other}"));
}

/// `METHOD path` as the engine's admin.
fn engine_call(method: &str, path: &str) {
    pkgstream_tests::sinks::engine(method, path, None);
}

#[test]
fn denials_are_one_line_errors_naming_the_service_address_and_cause() {
    let (engine, prom) = secure::init();
    let env = env("sec-deny");
    let sc = scenario(&env.prefix, 10, 10, 8, 0);
    env.produce(&sc.records());
    let addr = "https://localhost:9250";
    assert_eq!(
        engine.url, addr,
        "the denial texts below expect the default address"
    );

    // Wrong password.
    let mut v = vars(&engine.basic_vars("pkgstream-sink"));
    v.retain(|(k, _)| !k.ends_with("PASSWORD_FILE"));
    v.push((
        "PKGSTREAM__SEARCH_SINK__PASSWORD",
        "not-the-password".into(),
    ));
    let (code, log) = sink_must_stop(&env, "search", &v);
    assert_denial(
        "wrong password",
        code,
        &log,
        "search engine",
        addr,
        &["HTTP 401"],
    );

    // Untrusted CA.
    let mut v = vars(&engine.basic_vars("pkgstream-sink"));
    v.push(("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", engine.other_ca()));
    let (code, log) = sink_must_stop(&env, "search", &v);
    assert_denial(
        "untrusted CA",
        code,
        &log,
        "search engine",
        addr,
        &["not trusted"],
    );

    // Plaintext to the TLS port.
    let mut v = vars(&engine.basic_vars("pkgstream-sink"));
    v.push((
        "PKGSTREAM__SEARCH_SINK__URL",
        "http://localhost:9250".into(),
    ));
    let (code, log) = sink_must_stop(&env, "search", &v);
    assert_denial(
        "plaintext to TLS",
        code,
        &log,
        "search engine",
        "http://localhost:9250",
        &["is this a TLS port"],
    );

    // A user without the privilege to write: HTTP 200, every item 403. The
    // sink stops with the engine's reason; nothing goes to the DLQ and no
    // offset is committed, so the right user then indexes everything.
    let (code, log) = sink_must_stop(&env, "search", &engine.basic_vars("pkgstream-nowrite"));
    assert_denial(
        "user without privileges",
        code,
        &log,
        "search engine",
        addr,
        &["security_exception"],
    );
    assert!(last_line(&log).contains("HTTP 403"), "{log}");
    assert_eq!(
        messages_in(&env.brokers, &env.dlq),
        0,
        "events sent to the DLQ"
    );
    let sink = env.start("search", &engine.basic_vars("pkgstream-sink"));
    wait_count(&env.changes(), sc.changes.len() as u64, LIMIT);
    assert!(sink.stop().success());
    assert_eq!(messages_in(&env.brokers, &env.dlq), 0);

    // The query CLI, wrong password and untrusted CA.
    let mut v = vars(&engine.basic_vars("pkgstream-query"));
    v.retain(|(k, _)| !k.ends_with("PASSWORD_FILE"));
    v.push((
        "PKGSTREAM__SEARCH_SINK__PASSWORD",
        "not-the-password".into(),
    ));
    let out = cli(&env, &["history", "web-00001.dc1"], &v);
    let code = out.status.code().unwrap_or(-1);
    assert_denial(
        "history, wrong password",
        code,
        &stderr(&out),
        "search engine",
        addr,
        &["HTTP 401"],
    );
    let mut v = vars(&engine.basic_vars("pkgstream-query"));
    v.push(("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", engine.other_ca()));
    let out = cli(&env, &["drift", "--package", "kernel-core"], &v);
    let code = out.status.code().unwrap_or(-1);
    assert_denial(
        "drift, untrusted CA",
        code,
        &stderr(&out),
        "search engine",
        addr,
        &["not trusted"],
    );

    // The query CLI: plaintext to the TLS port; a user without the
    // privilege to read the indices (the read-only role covers the
    // `pkgstream*` indices only); replay into an audit index as the
    // read-only user (no privilege to write): each stops with the engine's
    // reason, nothing half-written.
    let mut v = vars(&engine.basic_vars("pkgstream-query"));
    v.push((
        "PKGSTREAM__SEARCH_SINK__URL",
        "http://localhost:9250".into(),
    ));
    let out = cli(&env, &["history", "web-00001.dc1"], &v);
    assert_denial(
        "history, plaintext to TLS",
        out.status.code().unwrap_or(-1),
        &stderr(&out),
        "search engine",
        "http://localhost:9250",
        &["is this a TLS port"],
    );
    let outside = env.clone().with_prefix(&unique("outside").to_lowercase());
    let out = cli(
        &outside,
        &["drift", "--package", "kernel-core"],
        &engine.basic_vars("pkgstream-query"),
    );
    assert_denial(
        "drift, user without privileges",
        out.status.code().unwrap_or(-1),
        &stderr(&out),
        "search engine",
        addr,
        &["HTTP 403"],
    );
    assert!(
        stderr(&out).contains("security_exception"),
        "{}",
        stderr(&out)
    );
    let audit = format!("{}-audit", env.prefix);
    let mut v = vars(&engine.basic_vars("pkgstream-query"));
    v.push(("PKGSTREAM__KAFKA__BROKERS", env.brokers.clone()));
    let out = cli(
        &env,
        &[
            "replay",
            "--from",
            "1h",
            "--topic",
            &env.enriched,
            "--format",
            "index",
            "--index",
            &audit,
        ],
        &v,
    );
    assert_denial(
        "replay into an index, user without the privilege to write",
        out.status.code().unwrap_or(-1),
        &stderr(&out),
        "search engine",
        addr,
        &["HTTP 403"],
    );
    assert_eq!(
        count(&format!("{audit}-changes-*")),
        0,
        "nothing written by the read-only user"
    );

    // Remote write: plaintext to the TLS port.
    let mut v = prom.vars();
    v.push((
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL",
        "http://localhost:9098/api/v1/write".into(),
    ));
    let (code, log) = sink_must_stop(&env, "metrics", &v);
    assert_denial(
        "remote write, plaintext to TLS",
        code,
        &log,
        "Prometheus remote write",
        "http://localhost:9098/api/v1/write",
        &["TLS"],
    );

    // Remote write: wrong password, untrusted CA.
    let rw = format!("{}/api/v1/write", prom.url);
    let mut v = prom.vars();
    v.retain(|(k, _)| !k.ends_with("PASSWORD_FILE"));
    v.push((
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD",
        "not-the-password".into(),
    ));
    let (code, log) = sink_must_stop(&env, "metrics", &v);
    assert_denial(
        "remote write, wrong password",
        code,
        &log,
        "Prometheus remote write",
        &rw,
        &["HTTP 401"],
    );
    let mut v = prom.vars();
    v.push((
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_TLS__CA_FILE",
        engine.other_ca(),
    ));
    let (code, log) = sink_must_stop(&env, "metrics", &v);
    assert_denial(
        "remote write, untrusted CA",
        code,
        &log,
        "Prometheus remote write",
        &rw,
        &["not trusted"],
    );
}

/// The secrets of the leak test, and every form they could leak in.
struct Secrets(Vec<String>);

impl Secrets {
    fn new(engine: &SecureEngine, prom_password: &str, extra: &[&str]) -> Secrets {
        let mut s = vec![
            engine.password("pkgstream-sink"),
            engine.password("pkgstream-query"),
            prom_password.to_owned(),
        ];
        s.extend(extra.iter().map(|e| e.to_string()));
        let mut forms = s.clone();
        for (user, pw) in [
            ("pkgstream-sink", &s[0]),
            ("pkgstream-query", &s[1]),
            ("pkgstream-metrics", &s[2]),
        ] {
            let header = basic_auth(user, &Secret(pw.clone())).0;
            forms.push(header.trim_start_matches("Basic ").to_owned());
        }
        Secrets(forms)
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for s in &self.0 {
            assert!(
                !text.contains(s.as_str()),
                "{what}: a secret leaked:\n{}",
                text.lines()
                    .filter(|l| l.contains(s.as_str()))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Starts a sink logging to a file; returns it and the log path.
fn logged(
    env: &SinkEnv,
    kind: &str,
    extra: &[(&str, String)],
    dir: &Path,
) -> (SinkProcess, std::path::PathBuf) {
    let path = dir.join(format!("{kind}-{}.log", unique("run")));
    let file = std::fs::File::create(&path).unwrap();
    (env.start_logged(kind, extra, file), path)
}

fn wait_log(path: &Path, needle: &str, times: usize) {
    wait_for(
        &format!("{times}× '{needle}' in {}", path.display()),
        LIMIT,
        || read(path).matches(needle).count() >= times,
    );
}

#[test]
fn no_secret_leaks_on_any_failure_path() {
    let (engine, prom) = secure::init();
    let api_key = format!("QXBpS2V5LWxlYWstdGVzdA-{}", unique("key"));
    let wrong = format!("Wr0ng-{}", unique("pw"));
    let secrets = Secrets::new(&engine, &prom.password(), &[&api_key, &wrong]);
    let env = env("sec-leak");
    let dir = tempfile::tempdir().unwrap();
    let sink_pw = (
        "PKGSTREAM__SEARCH_SINK__PASSWORD",
        engine.password("pkgstream-sink"),
    );
    let sink_user = (
        "PKGSTREAM__SEARCH_SINK__USERNAME",
        "pkgstream-sink".to_owned(),
    );
    let ca = ("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", engine.ca());

    // Unreachable engine, password from the environment: the sink waits
    // and says so, again and again.
    let v = [
        (
            "PKGSTREAM__SEARCH_SINK__URL",
            "https://127.0.0.1:1".to_owned(),
        ),
        sink_user.clone(),
        sink_pw.clone(),
        ca.clone(),
    ];
    let (sink, log) = logged(&env, "search", &v, dir.path());
    wait_log(&log, "search engine not ready, waiting", 2);
    secrets.assert_absent("/metrics, engine unreachable", &scrape_text(sink.port));
    sink.stop();
    secrets.assert_absent("search sink, engine unreachable", &read(&log));

    // Unreachable, with an API key.
    let v = [
        (
            "PKGSTREAM__SEARCH_SINK__URL",
            "https://127.0.0.1:1".to_owned(),
        ),
        ("PKGSTREAM__SEARCH_SINK__API_KEY", api_key.clone()),
        ca.clone(),
    ];
    let (sink, log) = logged(&env, "search", &v, dir.path());
    wait_log(&log, "search engine not ready, waiting", 2);
    sink.stop();
    secrets.assert_absent("search sink, API key, unreachable", &read(&log));

    // Wrong CA, wrong password: the sink stops.
    for (what, v) in [
        (
            "wrong CA",
            vec![
                ("PKGSTREAM__SEARCH_SINK__URL", engine.url.clone()),
                sink_user.clone(),
                sink_pw.clone(),
                ("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", engine.other_ca()),
            ],
        ),
        (
            "wrong password",
            vec![
                ("PKGSTREAM__SEARCH_SINK__URL", engine.url.clone()),
                sink_user.clone(),
                ("PKGSTREAM__SEARCH_SINK__PASSWORD", wrong.clone()),
                ca.clone(),
            ],
        ),
    ] {
        let (code, log) = sink_must_stop(&env, "search", &v);
        assert_ne!(code, 0, "{what}");
        secrets.assert_absent(&format!("search sink, {what}"), &log);
    }

    // The engine down mid-stream (a gate that cuts every connection), then
    // back: bulks fail and are retried, nothing is lost.
    let sc = scenario(&env.prefix, 20, 15, 8, 0);
    let gate = Gate::to("127.0.0.1:9250", true);
    let v = [
        (
            "PKGSTREAM__SEARCH_SINK__URL",
            format!("https://{}", gate.addr),
        ),
        sink_user.clone(),
        sink_pw.clone(),
        ca.clone(),
        ("PKGSTREAM__SEARCH_SINK__RETRY_MAX_MS", "500".into()),
    ];
    let (sink, log) = logged(&env, "search", &v, dir.path());
    wait_log(&log, "search sink running", 1);
    gate.set(false);
    env.produce(&sc.records());
    wait_log(&log, "bulk failed, retrying", 2);
    secrets.assert_absent("/metrics, engine down", &scrape_text(sink.port));
    gate.set(true);
    wait_count(&env.changes(), sc.changes.len() as u64, LIMIT);
    sink.stop();
    secrets.assert_absent("search sink, engine down mid-stream", &read(&log));

    // Prometheus unreachable (gate closed), password from the environment.
    let gate = Gate::to("127.0.0.1:9098", false);
    let v = [
        (
            "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL",
            format!("https://{}/api/v1/write", gate.addr),
        ),
        (
            "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_USERNAME",
            "pkgstream-metrics".into(),
        ),
        (
            "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD",
            prom.password(),
        ),
        (
            "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_TLS__CA_FILE",
            prom.ca(),
        ),
    ];
    let (sink, log) = logged(&env, "metrics", &v, dir.path());
    wait_log(&log, "remote write failed", 2);
    secrets.assert_absent("/metrics of the metrics sink", &scrape_text(sink.port));
    sink.stop();
    secrets.assert_absent("metrics sink, Prometheus unreachable", &read(&log));
    // Wrong remote-write password.
    let mut v = v.to_vec();
    v[0] = (
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL",
        format!("{}/api/v1/write", prom.url),
    );
    v[2] = (
        "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD",
        wrong.clone(),
    );
    let (_, log) = sink_must_stop(&env, "metrics", &v);
    secrets.assert_absent("metrics sink, wrong password", &log);

    // The query CLI: unreachable, wrong password; and --help with every
    // secret in the environment.
    let q_pw = (
        "PKGSTREAM__SEARCH_SINK__PASSWORD",
        engine.password("pkgstream-query"),
    );
    let q_user = (
        "PKGSTREAM__SEARCH_SINK__USERNAME",
        "pkgstream-query".to_owned(),
    );
    for (what, url, pw) in [
        (
            "unreachable",
            "https://127.0.0.1:1".to_owned(),
            q_pw.clone(),
        ),
        (
            "wrong password",
            engine.url.clone(),
            ("PKGSTREAM__SEARCH_SINK__PASSWORD", wrong.clone()),
        ),
    ] {
        for args in [
            vec!["history", "web-00001.dc1"],
            vec!["drift", "--package", "kernel-core"],
            vec!["changes", "--since", "2026-10-01T00:00:00Z"],
        ] {
            let out = cli(
                &env,
                &args,
                &[
                    ("PKGSTREAM__SEARCH_SINK__URL", url.clone()),
                    q_user.clone(),
                    pw.clone(),
                    ca.clone(),
                ],
            );
            assert!(!out.status.success(), "{what} {args:?}");
            assert!(
                stderr(&out).contains("search engine at"),
                "{what} {args:?}: {}",
                stderr(&out)
            );
            secrets.assert_absent(&format!("{args:?}, {what}"), &stderr(&out));
            secrets.assert_absent(
                &format!("{args:?}, {what}"),
                &String::from_utf8_lossy(&out.stdout),
            );
        }
    }
    for args in [
        vec!["--help"],
        vec!["sink", "search", "--help"],
        vec!["sink", "metrics", "--help"],
        vec!["history", "--help"],
        vec!["drift", "--help"],
    ] {
        let out = Command::new(binary("pkgstream"))
            .args(&args)
            .env_remove("PKGSTREAM_CONFIG")
            .env(
                "PKGSTREAM__SEARCH_SINK__PASSWORD",
                engine.password("pkgstream-sink"),
            )
            .env("PKGSTREAM__SEARCH_SINK__API_KEY", &api_key)
            .env(
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD",
                prom.password(),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(text.contains("Usage"), "{args:?}: {text}");
        secrets.assert_absent(&format!("{args:?}"), &text);
    }
}

/// The whole `/metrics` text of a sink.
fn scrape_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("pkgstream_"), "{body}");
    body
}

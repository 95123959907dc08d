//! `/readyz` of the search sink tells the truth, against real Kafka and
//! OpenSearch: not ready while Kafka does not answer, nor while the engine
//! does not (at start, or mid-run: ready again when it is back, and what
//! waited is indexed); a lane that fails for good stops the process with
//! a non-zero exit and the engine's reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_tests::kafka_brokers;
use pkgstream_tests::router::free_port;
use pkgstream_tests::sinks::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The HTTP status of `GET path` on the sink's endpoint (None: no answer).
fn status(port: u16, path: &str) -> Option<u16> {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .call()
    {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(s, _)) => Some(s),
        Err(_) => None,
    }
}

/// Every `/readyz` answer for `d` is exactly 503 (at least 5 answers).
fn not_ready_for(sink: &SinkProcess, d: Duration) {
    let started = Instant::now();
    let mut answers = 0;
    while started.elapsed() < d {
        assert_eq!(status(sink.port, "/readyz"), Some(503), "/readyz");
        answers += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(answers >= 5, "{answers} answers");
}

fn closed_port() -> u16 {
    // Bound then dropped: nothing listens there.
    free_port()
}

#[test]
fn not_ready_while_kafka_does_not_answer() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-ready-kafka");
    let sink = env.start(
        "search",
        &[(
            "PKGSTREAM__KAFKA__BROKERS",
            format!("127.0.0.1:{}", closed_port()),
        )],
    );
    // The engine is set up (what came before "running" and readiness)...
    wait_for("the engine set up", LIMIT, || {
        sink.metric("pkgstream_search_sink_engine_up") == 1.0
    });
    assert_eq!(status(sink.port, "/healthz"), Some(200));
    // ... but with no Kafka the sink cannot make progress.
    not_ready_for(&sink, Duration::from_secs(8));
    assert!(sink.stop().success());
}

#[test]
fn not_ready_while_the_engine_is_unreachable_at_start() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-ready-closed");
    let sink = env.start(
        "search",
        &[(
            "PKGSTREAM__SEARCH_SINK__URL",
            format!("http://127.0.0.1:{}", closed_port()),
        )],
    );
    wait_for("/healthz", LIMIT, || {
        status(sink.port, "/healthz") == Some(200)
    });
    not_ready_for(&sink, Duration::from_secs(5));
    assert_eq!(sink.metric("pkgstream_search_sink_engine_up"), 0.0);
    assert!(sink.stop().success());
}

#[test]
fn not_ready_while_the_engine_stops_answering_mid_run_and_ready_again_after() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-ready-engine");
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let gateway = GatewayProxy::start(
        &engine_url(),
        Arc::new(move |_: &str, _: &str, _: usize| {
            d.load(Ordering::Relaxed).then(|| {
                (
                    503,
                    br#"{"error":{"type":"cluster_block_exception","reason":"test: engine unavailable"},"status":503}"#.to_vec(),
                )
            })
        }),
    );
    let sc = scenario(&env.prefix, 10, 11, 10, 0);
    let records = sc.records();
    let (first, rest) = records.split_at(100);
    env.produce(first);
    let sink = env.start(
        "search",
        &[
            ("PKGSTREAM__SEARCH_SINK__URL", gateway.url.clone()),
            ("PKGSTREAM__SEARCH_SINK__RETRY_MAX_MS", "500".into()),
        ],
    );
    wait_count(&env.changes(), 100, LIMIT);
    wait_for("ready", LIMIT, || status(sink.port, "/readyz") == Some(200));

    down.store(true, Ordering::Relaxed);
    env.produce(rest);
    let t = Instant::now();
    wait_for("not ready while the engine answers 503", LIMIT, || {
        status(sink.port, "/readyz") == Some(503)
    });
    let noticed = t.elapsed();
    assert_eq!(count(&env.changes()), 100, "nothing indexed while down");

    down.store(false, Ordering::Relaxed);
    let t = Instant::now();
    wait_for("ready again", LIMIT, || {
        status(sink.port, "/readyz") == Some(200)
    });
    let back = t.elapsed();
    wait_count(&env.changes(), 110, LIMIT);
    assert!(sink.stop().success());
    println!(
        "readiness: not ready {:.1} s after the engine stopped answering, ready {:.1} s after it came back",
        noticed.as_secs_f64(),
        back.as_secs_f64()
    );
}

#[test]
fn a_lane_refused_for_good_stops_the_process_with_the_engines_reason() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-lane-dies");
    // Credentials revoked mid-run: the gateway answers 403 to every bulk.
    let gateway = GatewayProxy::start(
        &engine_url(),
        Arc::new(|method: &str, path: &str, _: usize| {
            (method == "POST" && path.starts_with("/_bulk")).then(|| {
                (
                    403,
                    br#"{"error":{"type":"security_exception","reason":"no permissions for [indices:data/write/bulk]"},"status":403}"#.to_vec(),
                )
            })
        }),
    );
    let sc = scenario(&env.prefix, 3, 5, 5, 0);
    env.produce(&sc.records());
    let mut child = Command::new(pkgstream_tests::binary("pkgstream"))
        .args(["sink", "search"])
        .env_remove("PKGSTREAM_CONFIG")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env("PKGSTREAM__SEARCH_SINK__URL", &gateway.url)
        .env(
            "PKGSTREAM__SEARCH_SINK__METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("the sink still runs {LIMIT:?} after its lanes were refused for good");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(exit.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("HTTP 403") && last.contains("no permissions"),
        "{last}"
    );
    assert_eq!(count(&env.changes()), 0);
    println!(
        "dead lane: exit {exit} after {:.1} s: {last}",
        started.elapsed().as_secs_f64()
    );
}

//! The metrics sink's `/readyz` and its restarts, against real Kafka and
//! Prometheus: ready only once it has read the topic up to where it ended
//! at the sink's start (the counters and the rebuilt drift gauges hold
//! every event already there, in Prometheus too) and Prometheus' remote
//! write took a push; not ready again while Kafka or remote write stay
//! unreachable longer than `unready_after_secs`; without a broker it waits
//! (not ready, still running) instead of exiting, and SIGTERM stops it with
//! exit 0 at once, waiting or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_tests::sinks::*;
use pkgstream_tests::{create_topics, kafka_brokers, PrivateKafka};

const LIMIT: Duration = Duration::from_secs(180);

/// The status `/readyz` answers, `None` when nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// The sink's `/metrics` text, `None` when nothing answers.
fn try_scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    assert_eq!(body.split_whitespace().nth(1), Some("200"), "{body}");
    Some(body)
}

/// The sink's `/metrics` text; panics when it does not answer, so that a
/// value read from it cannot be a 0 that stands for "unreachable".
fn scrape(port: u16) -> String {
    try_scrape(port).expect("/metrics answers")
}

/// Waits until the sink's endpoint answers.
fn wait_up(sink: &SinkProcess) {
    wait_for("the sink's endpoint", LIMIT, || readyz(sink.port).is_some());
}

/// One series' value in a scrape (0 when the series is absent).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn events(scrape: &str, outcome: &str) -> f64 {
    value(
        scrape,
        &format!("pkgstream_metrics_sink_events_total{{outcome=\"{outcome}\"}}"),
    )
}

fn watch() -> (&'static str, String) {
    (
        "PKGSTREAM__METRICS_SINK__WATCH_PACKAGES",
        "openssl-libs,kernel-core".into(),
    )
}

fn prom_gauges(tag: &str) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = prom_query(&format!(
        "pkgstream_fleet_watched_package_hosts{{hostgroup=~\"{tag}-.*\"}}"
    ))
    .iter()
    .map(|s| {
        let m = &s["metric"];
        let l = |k: &str| m[k].as_str().unwrap().to_owned();
        (
            l("package"),
            l("version"),
            l("hostgroup"),
            s["value"][1].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    v.sort();
    v
}

/// Polls `/readyz` every 20 ms from the sink's start until it answers 200;
/// returns the `/metrics` scrape taken right after that 200 (the counters
/// only grow, so it shows at least what the sink had when it said ready),
/// how many 503s came before it and how long it took. Once the sink has
/// read its first `outcome` event, `stall` pauses the broker for 5 s
/// (SIGSTOP, then SIGCONT): a broker stall mid-catch-up, when the sink's
/// polls come back empty although it is far behind.
fn first_ready(
    sink: &mut SinkProcess,
    stall: Option<(&PrivateKafka, &str)>,
) -> (String, u32, Duration) {
    enum Stall {
        Before,
        Since(Instant),
        Over,
    }
    let started = Instant::now();
    let mut not_ready = 0;
    let mut state = Stall::Before;
    loop {
        if let Some((kafka, outcome)) = stall {
            match state {
                Stall::Before
                    if try_scrape(sink.port).is_some_and(|m| events(&m, outcome) > 0.0) =>
                {
                    kafka.signal("-STOP");
                    state = Stall::Since(Instant::now());
                }
                Stall::Since(t) if t.elapsed() > Duration::from_secs(5) => {
                    kafka.signal("-CONT");
                    state = Stall::Over;
                }
                _ => {}
            }
        }
        match readyz(sink.port) {
            Some(200) => {
                let m = scrape(sink.port);
                if let (Some((kafka, _)), Stall::Since(_)) = (stall, &state) {
                    kafka.signal("-CONT");
                }
                return (m, not_ready, started.elapsed());
            }
            Some(503) => not_ready += 1,
            None => {}
            Some(s) => panic!("/readyz answered {s}"),
        }
        assert!(started.elapsed() < LIMIT, "not ready after {LIMIT:?}");
        let exited = sink.child.0.try_wait().expect("wait");
        assert!(exited.is_none(), "the sink exited: {exited:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `env` moved to `kafka` (not necessarily running): brokers and topics.
fn on_private(env: &mut SinkEnv, kafka: &PrivateKafka) {
    env.brokers = kafka.brokers();
    env.vars.retain(|(k, _)| k != "PKGSTREAM__KAFKA__BROKERS");
    env.vars
        .push(("PKGSTREAM__KAFKA__BROKERS".into(), env.brokers.clone()));
}

#[test]
fn ready_only_once_every_event_already_in_the_topic_is_counted_and_pushed() {
    let kafka = PrivateKafka::new();
    kafka.start();
    let mut env = SinkEnv::new(&kafka_brokers(), "metrics-ready");
    on_private(&mut env, &kafka);
    create_topics(&env.brokers, &[&env.enriched, &env.dlq]);
    kafka.wait_for_coordinator(&env.enriched);
    let tag = env.prefix.clone();
    // 120,000 changes and 40 snapshots: more than the sink prefetches, and
    // seconds of catching up.
    let sc = scenario(&tag, 400, 300, 30, 40);
    let (changes, snapshots) = (sc.changes.len() as f64, sc.snapshots.len() as f64);
    let records = sc.records();
    let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
    env.produce(&records);
    let g = format!("hostgroup=~\"{tag}-.*\"");

    let mut sink = env.start("metrics", &[watch()]);
    let (m, not_ready, took) = first_ready(&mut sink, Some((&kafka, "counted")));
    println!(
        "first start ({} events, {} MB, a 5 s broker stall): ready after {took:?} ({not_ready} answers 503 before), counted {} of {changes}",
        records.len(),
        bytes >> 20,
        events(&m, "counted")
    );
    assert_eq!(
        (events(&m, "counted"), events(&m, "snapshot")),
        (changes, snapshots),
        "/readyz said 200 before every event in the topic was counted"
    );
    assert!(
        not_ready > 0,
        "the test saw no catching up (no 503 before the 200): it proves nothing"
    );
    // Ready means the push went through: Prometheus holds it all already.
    assert_eq!(
        prom_value(&format!(
            "sum(pkgstream_fleet_package_changes_total{{{g}}})"
        )),
        changes,
        "/readyz said 200 before Prometheus had the counters"
    );
    assert_eq!(
        prom_value(&format!("sum(pkgstream_fleet_hosts{{{g}}})")),
        400.0
    );
    let gauges = prom_gauges(&tag);
    assert!(gauges.len() > 6, "drift gauges to compare: {gauges:?}");
    assert!(sink.stop().success(), "SIGTERM: exit 0");

    // A restart rebuilds the drift gauges from the whole topic and counts
    // nothing: ready only once the rebuild is complete, and what it pushed
    // at that moment is the whole state, not a partial one.
    let mut sink = env.start("metrics", &[watch()]);
    let (m, not_ready, took) = first_ready(&mut sink, Some((&kafka, "state_only")));
    println!(
        "restart: ready after {took:?} ({not_ready} answers 503 before), state rebuilt from {} of {changes}",
        events(&m, "state_only")
    );
    assert_eq!(
        (
            events(&m, "state_only"),
            events(&m, "snapshot"),
            events(&m, "counted")
        ),
        (changes, snapshots, 0.0),
        "/readyz said 200 before the state was rebuilt from the whole topic"
    );
    assert!(not_ready > 0, "no rebuild seen: the test proves nothing");
    assert_eq!(
        prom_gauges(&tag),
        gauges,
        "the rebuilt gauges in Prometheus"
    );
    assert_eq!(
        prom_value(&format!("sum(pkgstream_fleet_hosts{{{g}}})")),
        400.0
    );
    assert!(sink.stop().success(), "SIGTERM: exit 0");
}

/// Stops `sink` with SIGTERM: exit 0 within 5 s.
fn stop_promptly(sink: SinkProcess, what: &str) {
    let started = Instant::now();
    let status = sink.stop();
    let took = started.elapsed();
    println!("{what}: SIGTERM → {status} in {took:?}");
    assert!(
        status.success(),
        "{what}: SIGTERM must exit 0, got {status}"
    );
    assert!(
        took < Duration::from_secs(5),
        "{what}: SIGTERM took {took:?}"
    );
}

#[test]
fn without_a_broker_it_waits_not_ready_then_counts_once_the_broker_comes_and_survives_its_crash() {
    let kafka = PrivateKafka::new();
    let mut env = SinkEnv::new(&kafka_brokers(), "metrics-nobroker");
    on_private(&mut env, &kafka);
    let bound = (
        "PKGSTREAM__METRICS_SINK__UNREADY_AFTER_SECS",
        "5".to_owned(),
    );
    let mut sink = env.start("metrics", &[watch(), bound.clone()]);
    // A second one, stopped while it waits.
    let mut waiting = Some(env.start("metrics", &[watch(), bound.clone()]));
    wait_up(&sink);

    // Nothing listens on the broker's port: for 40 s the sink keeps
    // running and says "not ready" (an answer, so the endpoint is up).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        let exited = sink.child.0.try_wait().expect("wait");
        assert!(
            exited.is_none(),
            "the sink exited without a broker: {exited:?}"
        );
        assert_eq!(readyz(sink.port), Some(503), "at {:?}", started.elapsed());
        if started.elapsed() > Duration::from_secs(5) {
            if let Some(w) = waiting.take() {
                assert_eq!(readyz(w.port), Some(503));
                stop_promptly(w, "waiting for a broker");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The broker comes (the topic only after it): the sink connects,
    // catches up, becomes ready and counts.
    kafka.start();
    create_topics(&env.brokers, &[&env.enriched, &env.dlq]);
    let tag = env.prefix.clone();
    let sc = scenario(&tag, 20, 20, 10, 5);
    env.produce(&sc.records());
    let n = sc.changes.len() as f64;
    wait_for("ready and every change counted", LIMIT, || {
        readyz(sink.port) == Some(200) && events(&scrape(sink.port), "counted") == n
    });

    // The broker crashes: not ready once it has been gone 5 s, still running.
    kafka.kill();
    let gone = Instant::now();
    // 5 s, plus a probe's timeout (3 s) and a push: well inside 20 s.
    wait_for(
        "not ready with the broker gone",
        Duration::from_secs(20),
        || readyz(sink.port) == Some(503),
    );
    println!("broker killed: /readyz 503 after {:?}", gone.elapsed());
    assert!(
        sink.child.0.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert!(
        gone.elapsed() >= Duration::from_secs(4),
        "not ready {:?} after the crash: before the 5 s bound",
        gone.elapsed()
    );

    // Back: ready again, and it counts what comes next.
    kafka.start();
    wait_for("ready again", LIMIT, || readyz(sink.port) == Some(200));
    let more = scenario(&tag, 1, 5, 3, 0);
    env.produce(&more.records());
    wait_for("the new changes counted", LIMIT, || {
        events(&scrape(sink.port), "counted") == n + 5.0
    });
    stop_promptly(sink, "running");
}

/// A TCP gate in front of Prometheus: while open it forwards connections
/// both ways, while closed it cuts every connection (those open included).
struct Gate {
    url: String,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn to(upstream: &str, open: bool) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gate");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let flag = Arc::new(AtomicBool::new(open));
        let (f, up) = (flag.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !f.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let f = f.clone();
                    std::thread::spawn(move || pipe(from, to, &f));
                }
            }
        });
        Gate { url, open: flag }
    }

    fn set(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side ends or the gate closes.
fn pipe(mut from: TcpStream, mut to: TcpStream, open: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while open.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn not_ready_while_remote_write_is_unreachable_longer_than_the_bound() {
    let env = SinkEnv::new(&kafka_brokers(), "metrics-rw");
    let tag = env.prefix.clone();
    let sc = scenario(&tag, 10, 20, 10, 0);
    env.produce(&sc.records());
    let n = sc.changes.len() as f64;
    let prometheus = prometheus_url();
    let gate = Gate::to(prometheus.trim_start_matches("http://"), false);
    let mut sink = env.start(
        "metrics",
        &[
            watch(),
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL",
                format!("{}/api/v1/write", gate.url),
            ),
            ("PKGSTREAM__METRICS_SINK__UNREADY_AFTER_SECS", "3".into()),
        ],
    );
    let failed = |m: &str| {
        value(
            m,
            "pkgstream_metrics_sink_remote_write_requests_total{outcome=\"failed\"}",
        )
    };
    // Caught up with the topic, but no push has gone through: not ready.
    wait_for("caught up, pushes failing", LIMIT, || {
        try_scrape(sink.port).is_some_and(|m| events(&m, "counted") == n && failed(&m) >= 2.0)
    });
    assert_eq!(
        readyz(sink.port),
        Some(503),
        "ready although no push ever reached Prometheus"
    );

    // Prometheus reachable: ready, and the counters are there.
    gate.set(true);
    wait_for("ready once a push went through", LIMIT, || {
        readyz(sink.port) == Some(200)
    });
    let g = format!("hostgroup=~\"{tag}-.*\"");
    assert_eq!(
        prom_value(&format!(
            "sum(pkgstream_fleet_package_changes_total{{{g}}})"
        )),
        n
    );

    // Cut again: still ready within the bound, not ready after it.
    gate.set(false);
    let cut = Instant::now();
    let before = failed(&scrape(sink.port));
    wait_for("not ready with Prometheus cut off", LIMIT, || {
        readyz(sink.port) == Some(503)
    });
    let took = cut.elapsed();
    println!("remote write cut: /readyz 503 after {took:?}");
    assert!(
        failed(&scrape(sink.port)) > before,
        "pushes failed meanwhile"
    );
    assert!(
        took >= Duration::from_secs(2),
        "not ready {took:?} after the cut: before the 3 s bound"
    );
    assert!(
        sink.child.0.try_wait().expect("wait").is_none(),
        "still running"
    );

    gate.set(true);
    wait_for("ready again", LIMIT, || readyz(sink.port) == Some(200));
    stop_promptly(sink, "remote write test");
}
